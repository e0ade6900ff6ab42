"""Runtime overhead benchmark: edgeslim's ``Backend.infer`` vs the raw library call, same model, same inputs.

EfficientNet-Lite0 FP32 (the ``efficientnet_lite0`` source) is exported once with
:func:`edgeslim.export.export_artifact` (ONNX + OpenVINO IR). Then, per backend, in one process and one run:

* raw ONNX Runtime: ``session.run(None, {"input": x})`` on an ``InferenceSession`` built with the same options
  edgeslim uses (the session edgeslim itself holds, so the graph and threads are identical);
* raw OpenVINO: ``compiled_model(x)`` / ``infer_request.infer(x)`` on the backend's compiled model;
* edgeslim: ``backend.infer(x)`` (validation of names, shapes and dtypes, then the same call, outputs by name).

Calls alternate raw/edgeslim in blocks so that machine load drifts hit both sides alike. Batch 1.

    python bench/runtime_overhead.py                       # 300 calls per side, both backends
    python bench/runtime_overhead.py --calls 1000 --threads 2 --backends onnxruntime
    python bench/runtime_overhead.py --artifact path/to/artifact

Prints medians, the overhead ratio (edgeslim / raw - 1; target <= 3 %) and the absolute overhead in microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build_artifact(directory: Path) -> Path:
    """EfficientNet-Lite0 FP32 exported to ONNX and OpenVINO with edgeslim's exporter (validated)."""
    from edgeslim.artifact import Manifest, TensorInfo
    from edgeslim.compress.sources import load_pretrained
    from edgeslim.export import export_artifact

    pre = load_pretrained("efficientnet_lite0")
    size = pre.preprocessing.crop
    manifest = Manifest(
        name="lite0",
        source=pre.source,
        arch=pre.arch,
        classes=list(pre.class_names),
        input=TensorInfo(name="input", shape=[-1, 3, size, size]),
        outputs=[TensorInfo(name="logits", shape=[-1, pre.num_classes])],
        preprocessing=pre.preprocessing,
    )
    rng = np.random.default_rng(0)
    val = rng.standard_normal((4, 3, size, size), dtype=np.float32)
    out = directory / "lite0"
    export_artifact(pre.model, out, manifest, formats=["onnx", "openvino"], precisions=["fp32"],
                    validation=(val, None))
    return out


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _check_cost_us(backend, x: np.ndarray, n: int = 20000) -> float:
    """What edgeslim adds per call, timed alone: input validation (the rest is the raw call itself)."""
    t0 = time.perf_counter()
    for _ in range(n):
        backend.check_feeds(x)
    return (time.perf_counter() - t0) / n * 1e6


def interleave(raw, wrapped, x: np.ndarray, *, calls: int, block: int, warmup: int) -> tuple[list[float], list[float]]:
    """Time ``raw(x)`` and ``wrapped(x)`` alternately in blocks of ``block`` calls; seconds per call."""
    for _ in range(warmup):
        raw(x)
        wrapped(x)
    t_raw: list[float] = []
    t_es: list[float] = []
    clock = time.perf_counter
    order = 0
    while len(t_raw) < calls:
        # Alternate which side goes first in a block so neither always gets the warmer cache.
        pairs = ((raw, t_raw), (wrapped, t_es)) if order % 2 == 0 else ((wrapped, t_es), (raw, t_raw))
        for fn, sink in pairs:
            for _ in range(block):
                t0 = clock()
                fn(x)
                sink.append(clock() - t0)
        order += 1
    return t_raw[:calls], t_es[:calls]


def bench_onnxruntime(path: Path, x: np.ndarray, args: argparse.Namespace) -> dict:
    from edgeslim.runtime.base import BackendOptions
    from edgeslim.runtime.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, BackendOptions(threads=args.threads))
    session = backend._session  # the very same session: only edgeslim's wrapper differs
    name = backend.inputs[0].name

    def raw(a: np.ndarray) -> list:
        return session.run(None, {name: a})

    ref = raw(x)[0]
    got = backend.infer(x)["logits"]
    np.testing.assert_array_equal(ref, got)  # same call, same numbers
    t_raw, t_es = interleave(raw, backend.infer, x, calls=args.calls, block=args.block, warmup=args.warmup)
    check = _check_cost_us(backend, x)
    backend.close()
    return {"check_us": check, "backend": "onnxruntime", "raw_call": "session.run(None, feeds)", "raw": t_raw, "edgeslim": t_es}


def bench_openvino(path: Path, x: np.ndarray, args: argparse.Namespace) -> dict:
    from edgeslim.runtime.base import BackendOptions
    from edgeslim.runtime.openvino import OpenVINOBackend

    backend = OpenVINOBackend(path, BackendOptions(threads=args.threads))
    request = backend._compiled.create_infer_request()  # same compiled model, its own request
    port = backend._compiled.outputs[0]

    def raw(a: np.ndarray):
        # What a user of OpenVINO writes: infer and read the output. Copy it, as anyone keeping the result must
        # (the request reuses its output tensor), and as edgeslim does.
        return np.array(request.infer({0: a})[port], copy=True)  # noqa: F821 - deleted only after the timing

    np.testing.assert_array_equal(raw(x), backend.infer(x)["logits"])
    t_raw, t_es = interleave(raw, backend.infer, x, calls=args.calls, block=args.block, warmup=args.warmup)
    check = _check_cost_us(backend, x)
    del request
    backend.close()
    return {"check_us": check, "backend": "openvino", "raw_call": "infer_request.infer({0: x})", "raw": t_raw, "edgeslim": t_es}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="existing artifact with onnx and openvino fp32 models")
    p.add_argument("--backends", default="onnxruntime,openvino")
    p.add_argument("--calls", type=int, default=300, help="timed calls per side")
    p.add_argument("--block", type=int, default=10, help="calls per side before switching")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the library's)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or build_artifact(Path(tmp))
        from edgeslim.artifact import load_manifest

        manifest = load_manifest(artifact)
        shape = [1, *manifest.input.shape[1:]]
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        rows = []
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            fmt = {"onnxruntime": "onnx", "openvino": "openvino"}[name]
            path = artifact / manifest.model(fmt, "fp32").path
            fn = bench_onnxruntime if name == "onnxruntime" else bench_openvino
            rows.append(fn(path, x, args))

    print(f"\nEfficientNet-Lite0 FP32, batch 1, input {shape}, {args.calls} calls per side interleaved in blocks of"
          f" {args.block}, threads={args.threads or 'default'}, {os.cpu_count()} CPUs\n")
    print("| backend | raw call | raw median (ms) | edgeslim infer median (ms) | overhead | overhead (us) | validation alone (us) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for r in rows:
        raw_us, es_us = _median_us(r["raw"]), _median_us(r["edgeslim"])
        ratio = es_us / raw_us - 1.0
        worst = max(worst, ratio)
        print(f"| {r['backend']} | `{r['raw_call']}` | {raw_us / 1e3:.3f} | {es_us / 1e3:.3f} | {ratio * 100:+.2f} % |"
              f" {es_us - raw_us:+.1f} | {r['check_us']:.1f} |")
    print(f"\nworst overhead {worst * 100:+.2f} % (target <= 3 %): {'OK' if worst <= 0.03 else 'MISSED'}")
    return 0 if worst <= 0.03 else 1


if __name__ == "__main__":
    raise SystemExit(main())
