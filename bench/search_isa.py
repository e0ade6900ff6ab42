"""Does the pick depend on the target? The search's architecture latencies on this host, as is and held to an
older instruction set (oneDNN's ``ONEDNN_MAX_CPU_ISA``, which OpenVINO's CPU plugin honours), no training.

Each ISA runs in its own process (oneDNN reads the cap once, when OpenVINO loads). For every candidate
(channel ratio x precision) the table gives the p90 on each ISA, its speed-up over dense FP32 on that ISA, and
which candidates meet a budget of dense FP32 p90 / ``--speedup`` there: the fastest candidate that meets it is
the search's latency-side pick on that target.

    python bench/search_isa.py [--source efficientnet_lite0] [--size 224] [--isas host,sse41] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, sys
from edgeslim.search.target import apply_isa
isa = sys.argv[1]
apply_isa(None if isa == "host" else isa)
from edgeslim.recipe import parse_recipe
from edgeslim.search.latency import measure_architecture
base = parse_recipe({"model": {"source": sys.argv[2]}, "data": {"image_size": int(sys.argv[3])},
                     "prune": {"method": "structured", "prune_first_conv": True,
                               "exclude": json.loads(sys.argv[7])}})
out = {}
for r in sys.argv[4].split(","):
    for p in sys.argv[5].split(","):
        c = {"prune": f"structured:{r}", "precision": p, "image_size": int(sys.argv[3])}
        m = measure_architecture(base, c, backend="openvino", num_classes=10, iterations=int(sys.argv[6]),
                                 seconds=1.0, threads=2, layers=True)
        kernels = sorted({l["exec"] for l in m.layers if l["kind"] in ("conv", "pw", "dw")})
        out[f"{r} {p}"] = {"p90": m.p90_ms, "median": m.median_ms, "kernels": kernels[:4]}
        print(json.dumps({"isa": isa, "cand": f"{r} {p}", **out[f"{r} {p}"]}), file=sys.stderr, flush=True)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratios", default="0,0.5,0.6")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--isas", default="host,sse41")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--speedup", type=float, default=3.0)
    ap.add_argument("--exclude", default='["blocks.0.0.conv_pw"]', help="JSON list of layers kept (Lite0's 16-ch)")
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    res = {}
    for isa in args.isas.split(","):
        p = subprocess.run([sys.executable, "-c", _CHILD, isa, args.source, str(args.size), args.ratios,
                            args.precisions, str(args.iters), args.exclude], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{isa}: {p.stderr[-3000:]}")
        res[isa] = json.loads(p.stdout.strip().splitlines()[-1])
    from edgeslim.devices.cpu import cpu_info

    cands = list(next(iter(res.values())))
    lines = [f"Command: `python bench/search_isa.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}`  ",
             f"Host CPU: {cpu_info().get('model')}; OpenVINO, batch 1, 2 threads, random weights (latency only)  ",
             f"Budget per ISA: dense FP32 p90 / {args.speedup}.", "",
             "| candidate | " + " | ".join(f"{i} p90 ms | {i} x dense | {i} meets" for i in res) + " |",
             "|---|" + "---|---|---|" * len(res)]
    picks = {}
    for isa, r in res.items():
        dense = r[f"{args.ratios.split(',')[0]} fp32"]["p90"]
        ok = [c for c in cands if r[c]["p90"] <= dense / args.speedup]
        picks[isa] = min(ok, key=lambda c: r[c]["p90"]) if ok else None
    for c in cands:
        cells = []
        for r in res.values():
            dense = r[f"{args.ratios.split(',')[0]} fp32"]["p90"]
            cells += [f"{r[c]['p90']:.3f}", f"{dense / r[c]['p90']:.2f}", "yes" if r[c]["p90"] <= dense / args.speedup
                      else "no"]
        lines.append(f"| ch {c} | " + " | ".join(cells) + " |")
    lines += ["", "Fastest candidate within budget: " + "; ".join(f"{i}: {picks[i] or 'none'}" for i in res), "",
              "Kernels (OpenVINO counters): " + "; ".join(
                  f"{i}: {', '.join(res[i][cands[0]]['kernels'])}" for i in res)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        from edgeslim._io import atomic_write_text

        atomic_write_text(args.md, text)


if __name__ == "__main__":
    main()
