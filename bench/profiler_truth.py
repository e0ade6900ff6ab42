"""Truth check of the profiler: edgeslim's figures vs the vendor's own tool on the same model and settings.

OpenVINO (CPU): ``edgeslim.devices.profiler`` on the openvino backend vs ``benchmark_app``.
TensorRT (GPU host): ``profile_backend`` on the tensorrt backend vs ``trtexec``. Target: within 5 %.

Method (why each step: a shared machine makes each tool's numbers swing 20-30 % between runs):

* Many short interleaved rounds. Each round measures every mode with both tools, each in a fresh process (like
  benchmark_app / trtexec themselves), edgeslim first in even rounds and the reference first in odd ones, so load
  drifting within a round favours neither. Reported: every per-round ratio (edgeslim / reference), their median
  with the interquartile range and min-max, and each tool's own round-to-round spread (median, CV, min-max): the
  noise floor the ratio is read against. Verdict per measure: "within" when the median ratio is within 5 % of 1,
  "off" when even the interquartile range of the ratios is outside that band, else "undecided" (noise too large).
* Both tools on the same CPU set: this process sets its affinity (``--cpus``, default its current set) and every
  child inherits it; threads default to the number of CPUs in the set, given explicitly to both.
* Same model file, batch and settings. OpenVINO: one compile config for both -- the openvino backend's options
  (hint, ``streams``, ``threads``, ``inference_precision=f32``) and the same properties in benchmark_app's
  ``-load_config`` (no ``-hint``/``-nthreads`` flags, which would override it). Latency mode: LATENCY hint,
  1 stream, ``-api sync`` vs ``profile_backend`` (one call at a time). Throughput mode: THROUGHPUT hint, the
  streams it derives (or ``--streams``), ``-api async`` with its default ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``
  requests vs the profiler's throughput mode (the same number). Every round compares the compiled model's
  properties of both tools key by key (benchmark_app prints them in its step 8) and the number of requests; a
  difference fails the run (exit 2). f32 matters: on AMX CPUs OpenVINO otherwise runs FP32 IRs in bf16.
  TensorRT: the same engine; trtexec with one stream, ``--exposeDMA`` (no second query in flight), transfers
  included, no CUDA graph, spin wait, ``--warmUp`` ms vs the profiler's warm-up of the same length; its echoed
  inference options are checked (exit 2 on a difference).
* Same definitions. Warm-up: benchmark_app runs one "first inference" and nothing else, so edgeslim runs its first
  inference and no further warm-up (``ProfileConfig(warmup=0)``). Window: at least ``--seconds`` for both
  (benchmark_app's ``-t`` takes whole seconds). Latency: median over the window's requests; throughput: items /
  wall time of the window (benchmark_app: iterations / duration; async: rounded up to whole rounds of requests
  and including the final wait, which the profiler's throughput mode does the same way; trtexec: qps x batch).
  Latency on one clock: benchmark_app reports OpenVINO's own request latency (``InferRequest.latency``) with
  inputs set once, and trtexec CUDA-event time; the profiler records the same OpenVINO clock for every call
  (``runtime_latency_ms``, from ``Backend.last_latency_ms``), and that is the figure compared. The wall time of
  edgeslim's public ``infer`` call (input check and copy, output copy, the Python/C++ crossing) is the diagnostic
  row, not part of the verdict: it measured 0.3-0.8 ms above OpenVINO's clock on EfficientNet-Lite0 at 224 (~8 ms)
  on the quiet machine. benchmark_app's median is the lower middle value, the profiler's interpolates (a
  difference below one sample's spacing).

Run (the final measurement, on a quiet machine):

    python bench/profiler_truth.py --rounds 20 --seconds 3 --out bench/results/profiler_truth.json

Quick check: ``--rounds 2 --seconds 1``. GPU host: ``--backend tensorrt [--engine model.plan]`` (default
``--backend auto`` picks tensorrt when trtexec, the tensorrt package and an NVIDIA GPU are present; without
``--engine`` the model is exported to ONNX and built with edgeslim's trtexec command line).
Other options: ``--model tinynet|efficientnet``, ``--batch``, ``--threads``, ``--cpus 0,1``, ``--streams``,
``--modes latency,throughput``, ``--warmup-ms`` (trtexec). Exit status: 0 all measures within 5 %, 1 otherwise,
2 when the two tools did not run with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgeslim.devices.benchmark_app import benchmark_app_command, device_config, parse_benchmark_app  # noqa: E402
from edgeslim.devices.reference import round_order, summarize, verdict  # noqa: E402
from edgeslim.devices.trtexec import (  # noqa: E402
    find_trtexec,
    option_mismatches,
    parse_trtexec,
    trtexec_bench_command,
)

TOLERANCE = 0.05
#: measures compared per backend and mode: (mode, key, label)
MEASURES = {
    "openvino": [("latency", "runtime_median_ms",
                  "median latency, LATENCY hint, sync, on OpenVINO's clock (InferRequest.latency, as benchmark_app)"),
                 ("latency", "median_ms",
                  "  the same calls' wall time through edgeslim's infer (diagnostic: adds its input check and copies)"),
                 ("latency", "items_per_s", "sync throughput, LATENCY hint (items/s)"),
                 ("throughput", "items_per_s", "async throughput, THROUGHPUT hint (items/s)"),
                 ("throughput", "median_ms", "request latency under THROUGHPUT hint (ms)")],
    "tensorrt": [("latency", "median_ms", "median latency, sync, H2D + compute + D2H (ms)"),
                 ("latency", "items_per_s", "sync throughput (items/s)")],
}


# -- workers: each measurement of edgeslim runs in a fresh process ------------------------------------------------
def _model(name: str) -> tuple[Any, int]:
    import torch

    torch.manual_seed(0)
    if name == "tinynet":
        from edgeslim.testing import TinyNet

        return TinyNet(num_classes=10).eval(), 64
    import timm

    # random weights: latency does not depend on the weight values
    return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval(), 224


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    kind = job["kind"]
    if kind == "export-ir":
        import openvino as ov
        import torch

        model, size = _model(job["model"])
        shape = [job["batch"], 3, size, size]
        converted = ov.convert_model(model, example_input=torch.zeros(shape), input=[shape])
        xml = Path(job["out"]) / "model.xml"
        ov.save_model(converted, str(xml), compress_to_fp16=False)
        return {"path": str(xml), "shape": shape}
    if kind == "export-onnx":
        import torch

        model, size = _model(job["model"])
        shape = [job["batch"], 3, size, size]
        onnx = Path(job["out"]) / "model.onnx"
        torch.onnx.export(model, (torch.zeros(shape),), str(onnx), input_names=["input"], output_names=["logits"],
                          dynamo=False, opset_version=17)
        return {"path": str(onnx), "shape": shape}

    from edgeslim.devices.profiler import ProfileConfig, async_throughput, profile_backend
    from edgeslim.runtime.base import BackendOptions

    affinity = sorted(os.sched_getaffinity(0))
    if kind == "ov-latency":
        from edgeslim.runtime.openvino import OpenVINOBackend

        extra = {"hint": "LATENCY", "streams": 1, "inference_precision": "f32"}
        with OpenVINOBackend(job["path"], BackendOptions(threads=job["threads"], extra=extra)) as b:
            r = profile_backend(b, batch=job["batch"], cfg=ProfileConfig(warmup=0, iterations=1, seconds=job["seconds"]))
            props = b.compiled_properties()
        n = r["measured"]["iterations"]
        return {"median_ms": r["latency_ms"]["median"], "mean_ms": r["latency_ms"]["mean"],
                "items_per_s": r["throughput"]["items_per_s"], "count": n,
                "seconds": r["measured"]["seconds"], "first_ms": r["first_inference_ms"], "requests": 1,
                "runtime_median_ms": r["runtime_latency_ms"]["median"], "properties": props, "affinity": affinity}
    if kind == "ov-throughput":
        from edgeslim.runtime.openvino import OpenVINOBackend

        options = {"inference_precision": "f32", **({"streams": job["streams"]} if job.get("streams") else {})}
        r = async_throughput(OpenVINOBackend, job["path"], batch=job["batch"], threads=job["threads"],
                             backend_name="openvino", options=options,
                             cfg=ProfileConfig(warmup=0, iterations=1, seconds=job["seconds"]))
        return {"median_ms": r["latency_ms"]["median"], "mean_ms": r["latency_ms"]["mean"],
                "items_per_s": r["items_per_s"], "count": r["inferences"], "seconds": r["seconds"],
                "first_ms": r["first_inference_ms"], "requests": r["requests"], "properties": r["properties"],
                "affinity": affinity}
    if kind in ("trt-probe", "trt-latency"):
        import tensorrt

        from edgeslim.runtime.tensorrt import TensorRTBackend, gpu_identity

        with TensorRTBackend(job["path"], BackendOptions(device=f"cuda:{job['device']}")) as b:
            spec = b.inputs[0]
            if kind == "trt-probe":
                return {"input": spec.name, "shape": list(spec.shape), "tensorrt": tensorrt.__version__,
                        **gpu_identity(job["device"])}
            cfg = ProfileConfig(warmup=1, warmup_seconds=job["warmup_ms"] / 1e3, iterations=job["iterations"],
                                seconds=job["seconds"])
            r = profile_backend(b, batch=job["batch"], cfg=cfg, input_shape=job["shape"])
        return {"median_ms": r["latency_ms"]["median"], "mean_ms": r["latency_ms"]["mean"],
                "items_per_s": r["throughput"]["items_per_s"], "count": r["measured"]["iterations"],
                "seconds": r["measured"]["seconds"], "warmup": r["warmup"], "affinity": affinity}
    raise SystemExit(f"unknown worker job {kind!r}")


def in_child(job: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one worker job in a fresh Python process (it inherits this process's CPU affinity)."""
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                         timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"worker {job['kind']} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


# -- the reference tools ------------------------------------------------------------------------------------------
def run_benchmark_app(xml: str, *, mode: str, seconds: int, shape: list[int], config_file: Path) -> dict[str, Any]:
    cmd = benchmark_app_command(xml, api="sync" if mode == "latency" else "async", seconds=seconds, shape=shape,
                                config_file=str(config_file))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 300)
    if out.returncode != 0:
        raise SystemExit(f"benchmark_app failed (exit {out.returncode}): {' '.join(cmd)}\n{out.stdout[-3000:]}\n"
                         f"{out.stderr[-3000:]}")
    r = parse_benchmark_app(out.stdout)
    return {"median_ms": r["latency_ms"]["median"], "mean_ms": r["latency_ms"]["mean"],
            "items_per_s": r["throughput_fps"], "count": r["count"], "seconds": r["duration_ms"] / 1e3,
            "first_ms": r["first_inference_ms"], "requests": r["requests"], "properties": r["properties"],
            "version": r["version"], "command": cmd}


def run_trtexec(exe: str, engine: str, *, major: int, shapes: dict | None, batch: int, seconds: float,
                warmup_ms: float, iterations: int, device: int) -> dict[str, Any]:
    cmd = trtexec_bench_command(engine, tensorrt_major=major, shapes=shapes, warmup_ms=warmup_ms,
                                duration_s=seconds, iterations=iterations, device=device, executable=exe)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 300)
    r = parse_trtexec(out.stdout + "\n" + out.stderr)  # raises with the log tail when there is no summary
    return {"median_ms": r["latency_ms"]["median"], "mean_ms": r["latency_ms"]["mean"],
            "items_per_s": r["throughput_qps"] * batch, "count": r["queries"], "seconds": r["walltime_s"],
            "gpu_compute_median_ms": (r["gpu_compute_ms"] or {}).get("median"), "options": r["options"],
            "mismatches": option_mismatches(r), "shapes": r["shapes"], "version": r["version"], "command": cmd}


# -- settings checks ----------------------------------------------------------------------------------------------
def openvino_settings_diff(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Compiled-model properties and request counts that differ between the two tools' runs."""
    a, b = ours.get("properties") or {}, ref.get("properties") or {}
    diff: dict[str, Any] = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    if not a or not b:
        diff["properties"] = "missing from one tool's report"
    if ours.get("requests") != ref.get("requests"):
        diff["requests"] = (ours.get("requests"), ref.get("requests"))
    return diff


# -- backend choice -----------------------------------------------------------------------------------------------
def gpu_host() -> tuple[bool, str]:
    import importlib.util

    if find_trtexec() is None:
        return False, "no trtexec (PATH, /usr/src/tensorrt/bin)"
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed"
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return False, "no NVIDIA GPU (no nvidia-smi, no /dev/nvidia0)"
    return True, "trtexec, tensorrt and an NVIDIA GPU found"


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


# -- the rounds ---------------------------------------------------------------------------------------------------
def openvino_rounds(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], dict[str, Any]]:
    exported = in_child({"kind": "export-ir", "model": args.model, "batch": args.batch, "out": str(tmp)})
    xml, shape = exported["path"], exported["shape"]
    seconds = max(1, round(args.seconds))  # benchmark_app's -t takes whole seconds: both tools use the same window
    configs = {
        "latency": device_config(hint="LATENCY", threads=args.threads, streams=1),
        "throughput": device_config(hint="THROUGHPUT", threads=args.threads, streams=args.streams),
    }
    files = {}
    for mode, cfg in configs.items():
        files[mode] = tmp / f"{mode}.json"
        files[mode].write_text(json.dumps(cfg))
    setup = {"model_file": "OpenVINO IR FP32", "shape": shape, "seconds": seconds, "load_config": configs}
    print(f"IR {args.model} {shape}, {seconds} s windows, threads {args.threads}, CPUs {sorted(args.cpu_set)}",
          flush=True)

    def ours(mode: str) -> dict[str, Any]:
        kind = "ov-latency" if mode == "latency" else "ov-throughput"
        return in_child({"kind": kind, "path": xml, "batch": args.batch, "seconds": seconds, "threads": args.threads,
                         "streams": args.streams})

    def reference(mode: str) -> dict[str, Any]:
        return run_benchmark_app(xml, mode=mode, seconds=seconds, shape=shape, config_file=files[mode])

    return _rounds(args, "benchmark_app", ours, reference, openvino_settings_diff), setup


def tensorrt_rounds(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], dict[str, Any]]:
    from edgeslim.export.tensorrt import trtexec_command

    exe = find_trtexec()
    engine = args.engine
    if engine is None:
        onnx = in_child({"kind": "export-onnx", "model": args.model, "batch": args.batch, "out": str(tmp)})
        engine = str(tmp / "model.plan")
        cmd = trtexec_command(onnx["path"], engine)  # edgeslim's own build line (static shape: no profile)
        built = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=3600)
        if built.returncode != 0:
            raise SystemExit(f"trtexec build failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
    probe = in_child({"kind": "trt-probe", "path": engine, "device": args.device})
    shape = [args.batch, *probe["shape"][1:]]
    shapes = {probe["input"]: shape} if -1 in probe["shape"] else None
    major = int(probe["tensorrt"].split(".")[0])
    setup = {"engine": engine, "shape": shape, "tensorrt": probe["tensorrt"], "gpu": probe.get("gpu"),
             "compute_capability": probe.get("compute_capability"), "seconds": args.seconds,
             "warmup_ms": args.warmup_ms, "iterations": args.iterations}
    print(f"engine {engine} {shape} on {probe.get('gpu')} (TensorRT {probe['tensorrt']}), {args.seconds:g} s windows,"
          f" {args.warmup_ms:g} ms warm-up", flush=True)

    def ours(mode: str) -> dict[str, Any]:
        return in_child({"kind": "trt-latency", "path": engine, "device": args.device, "batch": args.batch,
                         "shape": shape, "seconds": args.seconds, "warmup_ms": args.warmup_ms,
                         "iterations": args.iterations})

    def reference(mode: str) -> dict[str, Any]:
        return run_trtexec(exe, engine, major=major, shapes=shapes, batch=args.batch, seconds=args.seconds,
                           warmup_ms=args.warmup_ms, iterations=args.iterations, device=args.device)

    def diff(_ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
        d = dict(ref["mismatches"])
        if shapes and ref["shapes"] != {k: "x".join(map(str, v)) for k, v in shapes.items()}:
            d["shapes"] = (shapes, ref["shapes"])
        return d

    return _rounds(args, "trtexec", ours, reference, diff), setup


def _rounds(args, ref_name, ours, reference, settings_diff) -> list[dict]:
    tools = {"edgeslim": ours, ref_name: reference}
    rounds = []
    for i in range(args.rounds):
        load = os.getloadavg()[0]
        rnd: dict[str, Any] = {"round": i + 1, "load_1min": load, "order": round_order(i, list(tools)), "modes": {}}
        for mode in args.modes:
            got = {name: tools[name](mode) for name in rnd["order"]}
            got["settings_diff"] = settings_diff(got["edgeslim"], got[ref_name])
            rnd["modes"][mode] = got
            e, r = got["edgeslim"], got[ref_name]
            own = f" (OpenVINO clock {e['runtime_median_ms']:.3f})" if "runtime_median_ms" in e else ""
            print(f"round {i + 1}/{args.rounds} {mode:10s} ({' then '.join(rnd['order'])}, load {load:.2f}): "
                  f"median {e['median_ms']:.3f}{own} vs {r['median_ms']:.3f} ms (ratio "
                  f"{e['median_ms'] / r['median_ms']:.3f}), {e['items_per_s']:.1f} vs {r['items_per_s']:.1f} items/s"
                  f" (ratio {e['items_per_s'] / r['items_per_s']:.3f})"
                  + (f"  SETTINGS DIFFER: {got['settings_diff']}" if got["settings_diff"] else ""), flush=True)
        rounds.append(rnd)
    return rounds


def report(backend: str, ref_name: str, rounds: list[dict], modes: list[str]) -> tuple[list[dict], str]:
    rows = []
    lines = [f"| measure | edgeslim (median, CV, min-max) | {ref_name} (median, CV, min-max) | "
             "ratio median [IQR] (min-max) | verdict |", "|---|---|---|---|---|"]
    for mode, key, label in MEASURES[backend]:
        if mode not in modes:
            continue
        # OpenVINO latency: the profiler's runtime-clock median against benchmark_app's (the same clock); the
        # diagnostic row puts the wall time of edgeslim's calls against that same median
        per_round = [{"edgeslim": {key: r["modes"][mode]["edgeslim"].get(key)},
                      ref_name: {key: r["modes"][mode][ref_name].get(key if key != "runtime_median_ms" else "median_ms")}}
                     for r in rounds]
        s = summarize(per_round, key, reference=ref_name)
        diagnostic = backend == "openvino" and mode == "latency" and key == "median_ms"
        s.update({"mode": mode, "label": label, "verdict": verdict(s, TOLERANCE), "primary": not diagnostic})
        rows.append(s)
        o, f, q = s["ours"], s["reference"], s["ratio"]
        lines.append(
            f"| {label} | {o['median']:.3f} ({o['cv']:.1%}, {o['min']:.3f}-{o['max']:.3f}) | "
            f"{f['median']:.3f} ({f['cv']:.1%}, {f['min']:.3f}-{f['max']:.3f}) | "
            f"{q['median']:.3f} [{q['q1']:.3f}, {q['q3']:.3f}] ({q['min']:.3f}-{q['max']:.3f}) | {s['verdict']} |")
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(_worker(json.loads(argv[1]))), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("auto", "openvino", "tensorrt"), default="auto")
    ap.add_argument("--model", choices=("efficientnet", "tinynet"), default="efficientnet")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (each: every mode, both tools)")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="measured window per tool, mode and round (OpenVINO: rounded to whole seconds)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cpus", default=None, help="CPU set for both tools, e.g. 0,1 or 0-3 (default: this process's)")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: CPUs in the set)")
    ap.add_argument("--streams", type=int, default=None, help="OpenVINO throughput streams (default: the hint's)")
    ap.add_argument("--modes", default="latency,throughput", help="openvino: latency,throughput; tensorrt: latency")
    ap.add_argument("--engine", default=None, help="TensorRT engine (default: build one from the model with trtexec)")
    ap.add_argument("--device", type=int, default=0, help="CUDA device (tensorrt)")
    ap.add_argument("--warmup-ms", type=float, default=200.0, help="trtexec --warmUp and edgeslim's warm-up")
    ap.add_argument("--iterations", type=int, default=10, help="minimum measured queries (tensorrt)")
    ap.add_argument("--out", default=None, help="write every round, the settings and the summary as JSON")
    args = ap.parse_args(argv)

    args.cpu_set = parse_cpus(args.cpus) if args.cpus else set(os.sched_getaffinity(0))
    os.sched_setaffinity(0, args.cpu_set)  # inherited by every worker, benchmark_app and trtexec
    args.threads = args.threads or len(args.cpu_set)
    backend = args.backend
    if backend == "auto":
        ok, why = gpu_host()
        backend = "tensorrt" if ok else "openvino"
        print(f"backend: {backend} ({why})", flush=True)
    elif backend == "tensorrt":
        ok, why = gpu_host()
        if not ok:
            raise SystemExit(f"--backend tensorrt needs a GPU host: {why}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if backend == "tensorrt":
        args.modes = ["latency"]  # the tensorrt backend has no asynchronous mode to compare
    ref_name = "trtexec" if backend == "tensorrt" else "benchmark_app"

    load_before = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeslim-truth-") as tmp:
        runner = tensorrt_rounds if backend == "tensorrt" else openvino_rounds
        rounds, setup = runner(args, Path(tmp))
    rows, table = report(backend, ref_name, rounds, args.modes)
    mismatched = [(r["round"], m, v["settings_diff"]) for r in rounds for m, v in r["modes"].items()
                  if v["settings_diff"]]
    load_after = os.getloadavg()
    print()
    print(table)
    print(f"\n{len(rounds)} rounds in {time.time() - t0:.0f} s on CPUs {sorted(args.cpu_set)}; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs. CV = each tool's own "
          f"round-to-round variation: a ratio cannot be read more finely than that noise.")
    if mismatched:
        print(f"SETTINGS DIFFERED between the tools in {len(mismatched)} measurements, e.g. {mismatched[0]}: "
              "the comparison is void")
    if args.out:
        from edgeslim._io import atomic_write_json

        atomic_write_json(args.out, {
            "backend": backend, "reference": ref_name, "model": args.model, "batch": args.batch,
            "cpus": sorted(args.cpu_set), "threads": args.threads, "streams": args.streams, "rounds": rounds,
            "setup": setup, "summary": rows, "tolerance": TOLERANCE,
            "load_average": {"before": load_before, "after": load_after},
        })
        print(f"wrote {args.out}")
    if mismatched:
        return 2
    return 0 if all(r["verdict"] == "within" for r in rows if r["primary"]) else 1


if __name__ == "__main__":
    sys.exit(main())
