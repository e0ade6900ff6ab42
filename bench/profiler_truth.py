"""Truth check of the profiler: edgeslim's numbers vs OpenVINO's own ``benchmark_app`` on the same IR and settings.

One run: exports an EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, random weights: latency does not depend on
the weight values) to an FP32 OpenVINO IR, then measures

* latency mode: ``benchmark_app -hint latency`` vs ``profile_backend`` (OpenVINO backend, LATENCY hint), median
  latency and synchronous throughput;
* throughput mode: ``benchmark_app -hint throughput`` vs the profiler's async mode (THROUGHPUT hint, the plugin's
  optimal number of requests), items/s;

alternating the two tools so drift on a shared machine hits both, and prints the ratios (target: within 5%).
Each measurement runs in a fresh process, like benchmark_app does: forking benchmark_app from a process that holds
OpenVINO's thread pools can abort it ("Resource deadlock avoided"), and a fresh process is the fair comparison.
On a GPU host run ``trtexec`` against the TensorRT backend the same way (not available here).

    python bench/profiler_truth.py [--seconds 10] [--threads 2] [--model tinynet|efficientnet]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def export_ir(out: Path, model_name: str) -> tuple[Path, list[int]]:
    import openvino as ov
    import torch

    torch.manual_seed(0)
    if model_name == "tinynet":
        from edgeslim.testing import TinyNet

        model, shape = TinyNet(num_classes=10), [1, 3, 64, 64]
    else:
        import timm

        model, shape = timm.create_model("tf_efficientnet_lite0", pretrained=False), [1, 3, 224, 224]
    model.eval()
    ov_model = ov.convert_model(model, example_input=torch.zeros(shape), input=[shape])
    xml = out / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    return xml, shape


def benchmark_app(xml: Path, hint: str, seconds: float, threads: int | None, shape: list[int]) -> dict[str, float]:
    # -ip f32: benchmark_app otherwise turns a 4-D input into u8 images with a conversion step, which is not the
    # graph edgeslim runs.
    cmd = ["benchmark_app", "-m", str(xml), "-d", "CPU", "-hint", hint, "-t", str(max(1, round(seconds))),
           "-shape", f"[{','.join(map(str, shape))}]", "-ip", "f32",
           # edgeslim's openvino backend runs FP32 IRs in f32; benchmark_app would pick bf16 on AMX/AVX512-BF16 CPUs
           # (about 1.6x faster here), which is a different computation, not a measurement difference
           "-infer_precision", "f32"]
    if threads:
        cmd += ["-nthreads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    if out.returncode != 0:
        raise SystemExit(f"benchmark_app failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    text = out.stdout

    def grab(pattern: str) -> float:
        m = re.search(pattern, text)
        if not m:
            raise SystemExit(f"benchmark_app output has no {pattern!r}:\n{text[-3000:]}")
        return float(m.group(1))

    return {
        "median_ms": grab(r"Median:\s+([\d.]+) ms"),
        "mean_ms": grab(r"Average:\s+([\d.]+) ms"),
        "fps": grab(r"Throughput:\s+([\d.]+) FPS"),
        "count": grab(r"Count:\s+(\d+) iterations"),
        "first_ms": grab(r"First inference took ([\d.]+) ms"),
    }


def edgeslim_latency(xml: Path, seconds: float, threads: int | None, shape: list[int]) -> dict[str, float]:
    from edgeslim.devices.profiler import ProfileConfig, profile_backend
    from edgeslim.runtime.base import BackendOptions
    from edgeslim.runtime.openvino import OpenVINOBackend

    t0 = time.perf_counter()
    with OpenVINOBackend(xml, BackendOptions(threads=threads, extra={"hint": "LATENCY"})) as b:
        load = time.perf_counter() - t0
        r = profile_backend(b, batch=shape[0], cfg=ProfileConfig(warmup=10, iterations=100, seconds=seconds),
                            load_seconds=load)
    return {"median_ms": r["latency_ms"]["median"], "mean_ms": r["latency_ms"]["mean"],
            "fps": r["throughput"]["items_per_s"], "count": r["measured"]["iterations"],
            "first_ms": r["first_inference_ms"]}


def edgeslim_throughput(xml: Path, seconds: float, threads: int | None, shape: list[int]) -> dict[str, float]:
    from edgeslim.devices.profiler import ProfileConfig, async_throughput
    from edgeslim.runtime.openvino import OpenVINOBackend

    # isolate=False: this worker already is the fresh process (see _in_child).
    r = async_throughput(OpenVINOBackend, xml, batch=shape[0], threads=threads, backend_name="openvino",
                         cfg=ProfileConfig(iterations=100, seconds=seconds), isolate=False)
    return {"fps": r["items_per_s"], "count": r["inferences"], "requests": r["requests"]}


def _worker(kind: str, target: str, arg: str, threads: str, shape: str) -> None:
    """One measurement in this (fresh) process; prints its result as JSON on the last line.

    ``export``: target = output directory, arg = model name. ``latency`` / ``throughput``: target = IR path,
    arg = seconds.
    """
    import json

    if kind == "export":
        path, shp = export_ir(Path(target), arg)
        print(json.dumps({"xml": str(path), "shape": shp}))
        return
    fn = edgeslim_latency if kind == "latency" else edgeslim_throughput
    print(json.dumps(fn(Path(target), float(arg), int(threads) or None, [int(d) for d in shape.split(",")])))


def _in_child(*args: str) -> dict:
    import json

    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, timeout=900)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"worker {args[0]} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    if out.returncode != 0:  # OpenVINO 2026.4 may abort while tearing down a THROUGHPUT model: the result stands
        print(f"  (worker {args[0]} exited {out.returncode} after reporting its result)", flush=True)
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(*sys.argv[2:7])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured window per tool, mode and round")
    ap.add_argument("--threads", type=int, default=None, help="inference threads for both tools (default: all)")
    ap.add_argument("--model", choices=("efficientnet", "tinynet"), default="efficientnet")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds (short windows, so load from other processes hits both tools alike); "
                         "the median ratio is reported")
    args = ap.parse_args()

    import os

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgeslim-truth-") as tmp:
        exported = _in_child("export", tmp, args.model, "0", "1")
        xml, shape = Path(exported["xml"]), exported["shape"]
        shp, thr = ",".join(map(str, shape)), str(args.threads or 0)
        print(f"IR: {args.model} {shape}, {args.seconds:.0f} s per measurement, threads={args.threads or 'default'}",
              flush=True)
        lat_ratios, fps_ratios, tput_ratios = [], [], []
        rows = []
        for rnd in range(args.rounds):
            ba_l = benchmark_app(xml, "latency", args.seconds, args.threads, shape)
            es_l = _in_child("latency", str(xml), str(args.seconds), thr, shp)
            ba_t = benchmark_app(xml, "throughput", args.seconds, args.threads, shape)
            es_t = _in_child("throughput", str(xml), str(args.seconds), thr, shp)
            lat_ratios.append(es_l["median_ms"] / ba_l["median_ms"])
            fps_ratios.append(es_l["fps"] / ba_l["fps"])
            tput_ratios.append(es_t["fps"] / ba_t["fps"])
            rows.append((rnd + 1, ba_l, es_l, ba_t, es_t))
            print(f"round {rnd + 1}: median {es_l['median_ms']:.3f} vs {ba_l['median_ms']:.3f} ms, "
                  f"sync {es_l['fps']:.1f} vs {ba_l['fps']:.1f} FPS, "
                  f"async {es_t['fps']:.1f} vs {ba_t['fps']:.1f} FPS", flush=True)

    def med(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    print()
    print("| measure | edgeslim | benchmark_app | ratio (edgeslim / benchmark_app) |")
    print("|---|---|---|---|")
    last = rows[-1]
    print(f"| median latency, LATENCY hint (ms) | {last[2]['median_ms']:.3f} | {last[1]['median_ms']:.3f} | "
          f"{med(lat_ratios):.3f} |")
    print(f"| mean latency, LATENCY hint (ms) | {last[2]['mean_ms']:.3f} | {last[1]['mean_ms']:.3f} | "
          f"{last[2]['mean_ms'] / last[1]['mean_ms']:.3f} |")
    print(f"| sync throughput, LATENCY hint (FPS) | {last[2]['fps']:.1f} | {last[1]['fps']:.1f} | "
          f"{med(fps_ratios):.3f} |")
    print(f"| async throughput, THROUGHPUT hint (FPS) | {last[4]['fps']:.1f} ({last[4]['requests']} requests) | "
          f"{last[3]['fps']:.1f} | {med(tput_ratios):.3f} |")
    print(f"| first inference (ms) | {last[2]['first_ms']:.2f} | {last[1]['first_ms']:.2f} | - |")
    worst = max(abs(med(r) - 1) for r in (lat_ratios, fps_ratios, tput_ratios))
    cores = os.cpu_count() or 1
    load_after = os.getloadavg()[0]
    print(f"\nload average {load_before:.2f} before, {load_after:.2f} after, on {cores} CPUs"
          + (" -- the machine was busy with other work: treat the ratios as approximate" if max(load_before, load_after)
             > cores else ""))
    verdict = "within 5%" if worst <= 0.05 else f"OFF by {worst:.1%}"
    print(f"ratios are medians over {args.rounds} alternating rounds; worst deviation {worst:.1%}: {verdict}")
    sys.exit(0 if worst <= 0.05 else 1)


if __name__ == "__main__":
    main()
