#!/usr/bin/env bash
# One prepared check for a bare CUDA machine with PyTorch and no network, under 5 minutes:
#   1. the machine (nvidia-smi, torch.cuda, compute capability);
#   2. the torch backend on CUDA in FP32 and FP16 (a TinyNet artifact; FP16 logits checked against FP32);
#   3. NVML power around a timed loop;
#   4. a profile report (report.json/md/html) for the detected GPU target;
#   5. a small budget search on that target (TinyNet + scikit-learn digits, which ship with the packages);
#   6. the TensorRT steps (FP16 + INT8 engines built, loaded and timed) when `import tensorrt` works.
# Prints one summary table; every step runs even when an earlier one fails. On a machine without CUDA the GPU
# steps say "skipped" with the reason, so the script itself can be checked anywhere.
#
#   bash bench/device_check.sh [OUT_DIR]      (default OUT_DIR: ./device-check-out)
#   DEVICE_CHECK_ON_CPU=1 bash bench/device_check.sh   (no GPU: steps 2 and 4 on the CPU, to check the script)
#
# Needs: edgeslim installed (pip install -e '.[tensorrt]' for steps 3 and 6), run from the repository root.
set -uo pipefail
OUT="${1:-device-check-out}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDGESLIM_OFFLINE=1
cd "$(dirname "$0")/.."
timeout 290 python - "$OUT" <<'PY'
import json, sys, time, traceback
from pathlib import Path

out = Path(sys.argv[1]).resolve()
rows = []


def step(name):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            status, detail = fn()
        except Exception as exc:  # noqa: BLE001 - the check reports every step
            status, detail = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            (out / f"{name.split()[0]}.traceback.txt").write_text(traceback.format_exc())
        rows.append((name, status, detail, time.perf_counter() - t0))
        return fn
    return wrap


import torch  # noqa: E402

import os  # noqa: E402

cuda = torch.cuda.is_available()
why = "no CUDA device (torch.cuda.is_available() is False)"
# DEVICE_CHECK_ON_CPU=1 runs steps 2 and 4 on the CPU: a check of this script's own code paths, not of a GPU
on_cpu = not cuda and os.environ.get("DEVICE_CHECK_ON_CPU") == "1"
dev = "cuda:0" if cuda else "cpu"
if on_cpu:
    torch.set_num_threads(1)


def sync():
    if cuda:
        torch.cuda.synchronize()


@step("1 machine")
def _machine():
    import subprocess
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if cuda else None
    if not cuda:
        return "skipped", why + f"; torch {torch.__version__}"
    cc = torch.cuda.get_device_capability(0)
    return "ok", f"{torch.cuda.get_device_name(0)}, sm_{cc[0]}{cc[1]}, torch {torch.__version__}, " \
                 f"CUDA {torch.version.cuda}; {(smi.stdout or '').strip().splitlines()[0] if smi else ''}"


def tiny_artifact():
    """A TinyNet artifact (torch + ONNX) with random weights, built once."""
    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
    from edgeslim.export import export_artifact
    from edgeslim.testing import TinyNet

    art = out / "tiny-artifact"
    if (art / "manifest.json").is_file():
        return art
    torch.manual_seed(0)
    m = Manifest(name="tiny", arch="tiny", classes=[str(i) for i in range(10)], critical=[8],
                 input=TensorInfo(name="input", shape=[-1, 3, 64, 64]),
                 outputs=[TensorInfo(name="logits", shape=[-1, 10])], preprocessing=Preprocessing(resize=64, crop=64))
    export_artifact(TinyNet().eval(), art, m, formats=["onnx"], precisions=["fp32"])
    return art


N = 200 if cuda else 10  # CPU mode only checks the code paths


def timed(fn, n=N):
    for _ in range(10 if cuda else 1):
        fn()
    sync()
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); sync(); t.append(time.perf_counter() - t0)
    t.sort()
    return 1e3 * t[len(t) // 2], 1e3 * t[int(0.9 * len(t))]


@step("2 torch CUDA FP32/FP16")
def _torch_cuda():
    if not cuda and not on_cpu:
        return "skipped", why
    import numpy as np
    from edgeslim.runtime import load

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with load(tiny_artifact(), backend="torch", device=dev) as p:
        ref = p.infer(x)
        med32, p90_32 = timed(lambda: p.backend.infer({p.backend.inputs[0].name: x}))
    from edgeslim.testing import TinyNet
    from safetensors.torch import load_file

    model = TinyNet()
    model.load_state_dict(load_file(str(tiny_artifact() / "model.safetensors")))
    model = model.eval().to(dev).half()
    xh = torch.from_numpy(x).to(dev).half()
    with torch.inference_mode():
        y16 = model(xh).float().cpu().numpy()
        med16, p90_16 = timed(lambda: model(xh))
    diff = float(np.abs(y16 - ref).max())
    ok = diff < 5e-2 and int(y16.argmax()) == int(ref.argmax())
    return ("ok" if ok else "FAIL"), f"FP32 p50 {med32:.3f} / p90 {p90_32:.3f} ms; FP16 p50 {med16:.3f} / p90 " \
                                     f"{p90_16:.3f} ms; max |FP16-FP32| logit {diff:.2e}"


@step("3 NVML power")
def _nvml():
    if not cuda:
        return "skipped", why
    from edgeslim.devices.power import NvmlReader

    r = NvmlReader(0)
    if not r.available:
        return "skipped", r.reason
    a = torch.randn(2048, 2048, device="cuda")
    r.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        a = a @ a
        a = a / a.norm()
    torch.cuda.synchronize()
    res = r.stop()
    return "ok", json.dumps({k: v for k, v in res.items() if not isinstance(v, (list, dict))})[:160]


@step("4 profile report (GPU target)")
def _profile():
    if not cuda and not on_cpu:
        return "skipped", why
    from edgeslim.devices.profiler import ProfileConfig, profile_backend
    from edgeslim.devices.report import make_report, write_report
    from edgeslim.devices.targets import detect
    from edgeslim.runtime import load

    target = detect()
    entries = []
    with load(tiny_artifact(), backend="torch", device=dev) as p:
        e = profile_backend(p.backend, batch=1, cfg=ProfileConfig(iterations=N, seconds=1.0 if cuda else 0.0,
                                                                    warmup=10 if cuda else 1, throughput=False))
    e.update(status="ok", backend={"name": "torch", "device": dev}, model={"path": "model.safetensors",
             "precision": "fp32", "format": "torch"})
    entries.append(e)
    paths = write_report(out / "profile", make_report(entries, artifact_dir=tiny_artifact(), target=target))
    return ("ok" if target["kind"] in ("gpu", "jetson") or on_cpu else "FAIL"), \
        f"target {target['name']} ({target['why'][:60]}); p90 {e['latency_ms']['p90']:.3f} ms; {paths['html']}"


@step("5 search on the GPU target")
def _search():
    if not cuda:
        return "skipped", why
    from edgeslim.recipe import parse_recipe
    from edgeslim.search.engine import search

    base = parse_recipe({
        "name": "device-check", "model": {"source": "tiny"},
        "data": {"dataset": "digits", "image_size": 16, "critical": [8], "imbalance": {"8": 0.25}, "batch_size": 64},
        "train": {"epochs": 1, "lr": 0.05, "device": "cuda"}, "prune": {"method": "structured", "round_to": 4},
        "quantize": {"method": "none", "calibration_size": 64}, "decision": {"target_fnr": 0.1},
        "validate": {"int8_min_agreement": 0.3, "max_extra_critical_fn": 100},
        "search": {"ratios": [0.0, 0.5], "max_top1_drop": 0.5, "trials": 2, "fine_tune_epochs": 1,
                   "measure_iterations": 50, "measure_seconds": 0.2, "time_budget_s": 120}})
    res = search(base, out / "search", progress=False)
    p = res.pick
    return "ok", f"{res.target['name']} via {res.target['backend']}: pick {p['label']} p90 {p['latency_ms']:.3f} ms," \
                 f" {len(res.front)} on the front, {res.seconds:.0f} s"


@step("6 TensorRT FP16/INT8")
def _trt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        return "skipped", f"tensorrt does not import ({exc})"
    if not cuda:
        return "skipped", why
    import numpy as np
    from edgeslim.artifact import load_manifest
    from edgeslim.export import export_existing
    from edgeslim.runtime import load

    art = out / "tiny-trt"
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    export_existing(tiny_artifact(), art, formats=["tensorrt"], precisions=["fp16", "int8"], calibration=calib)
    got = []
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    for mf in load_manifest(art).models:
        if mf.format != "tensorrt":
            continue
        with load(art, backend="tensorrt", precision=mf.precision, device="cuda:0") as p:
            med, p90 = timed(lambda: p.backend.infer({p.backend.inputs[0].name: x}))
        got.append(f"{mf.precision} p50 {med:.3f} / p90 {p90:.3f} ms")
    return ("ok" if got else "FAIL"), "; ".join(got) or "no TensorRT engine was written"


w = max(len(r[0]) for r in rows)
print(f"\n{'step':<{w}}  status   seconds  detail")
for name, status, detail, s in rows:
    print(f"{name:<{w}}  {status:<7} {s:7.1f}  {detail}")
(out / "summary.json").write_text(json.dumps([dict(zip(("step", "status", "detail", "seconds"), r)) for r in rows],
                                             indent=1))
sys.exit(1 if any(r[1] == "FAIL" for r in rows) else 0)
PY
rc=$?
[ $rc -eq 124 ] && echo "device_check: timed out after 290 s (steps above finished; see $OUT)"
exit $rc
