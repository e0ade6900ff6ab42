"""Batch-1 latency of several artifact files, interleaved in one process, with ratios to the first.

The profiler times one file after another; on a noisy 2-core VM the host's state drifts between them. Here the
files take turns (:func:`edgeslim.devices.measure.paired_latency`), ``--rounds`` rounds of ``--calls`` calls each,
so every file sees the same conditions; medians and the ratio first/other are printed.

    python bench/pair_latency.py out/dense:openvino:fp32 out/compressed:openvino:fp32 out/compressed:openvino:int8
"""

from __future__ import annotations

import argparse
import contextlib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="ARTIFACT:BACKEND:PRECISION; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args()
    import edgeslim
    from edgeslim.devices.measure import paired_latency

    with contextlib.ExitStack() as stack:
        preds = []
        for spec in args.files:
            path, backend, precision = spec.rsplit(":", 2)
            preds.append(stack.enter_context(edgeslim.load(path, backend=backend, precision=precision)))
        res = paired_latency([p.backend for p in preds], rounds=args.rounds, calls=args.calls, warmup=args.warmup)
    for spec, r in zip(args.files, res):
        lat = r["latency_ms"]
        print(f"{spec}: median {lat['median']:.3f} ms, p90 {lat['p90']:.3f} ms, {r['ratio']:.2f}x the first")


if __name__ == "__main__":
    main()
