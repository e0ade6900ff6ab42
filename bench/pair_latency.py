"""Batch-1 latency of several artifact files, interleaved in one process, with ratios to the first.

The profiler times one file after another; on a noisy 2-core VM the host's state drifts between them. Here the
files take turns, ``--rounds`` rounds of ``--calls`` calls each, so every file sees the same conditions; medians and
the ratio first/other are printed.

    python bench/pair_latency.py out/dense:openvino:fp32 out/compressed:openvino:fp32 out/compressed:openvino:int8
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="ARTIFACT:BACKEND:PRECISION; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args()
    import edgeslim

    models = []
    for spec in args.files:
        path, backend, precision = spec.rsplit(":", 2)
        models.append((spec, edgeslim.load(path, backend=backend, precision=precision)))
    shape = [1 if d in (-1, None) else int(d) for d in models[0][1].manifest.input.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: dict[str, list[float]] = {spec: [] for spec, _ in models}
    for _, m in models:
        for _ in range(args.warmup):
            m.infer(x)
    for _ in range(args.rounds):
        for spec, m in models:
            for _ in range(args.calls):
                t = time.perf_counter()
                m.infer(x)
                times[spec].append((time.perf_counter() - t) * 1e3)
    base = float(np.median(times[models[0][0]]))
    for spec, v in times.items():
        med = float(np.median(v))
        print(f"{spec}: median {med:.3f} ms, p90 {np.percentile(v, 90):.3f} ms, {base / med:.2f}x the first")


if __name__ == "__main__":
    main()
