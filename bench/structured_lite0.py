"""Structured channel pruning of EfficientNet-Lite0 (224x224): parameters, MACs and CPU latency vs dense.

One run: the dense model and Torch-Pruning channel pruning at each ratio (uniform per group, round_to 8, the
classifier and the stem kept at full width) are exported with ``export_artifact`` (ONNX + OpenVINO FP32,
validated against PyTorch), rebuilt from the artifact through ``build_model`` + ``restore_structure`` (checked
to give the same logits), then timed at batch 1 through the edgeslim runtime backends, models interleaved so
drift hits them equally. No fine-tuning: latency does not depend on the weight values (accuracy after pruning
needs the task fine-tuning of ``prune.method: structured``).

    python bench/structured_lite0.py [--ratios 0.3 0.5] [--iters 200] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--iters", type=int, default=200, help="timed batch-1 runs per model and backend")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="where the artifacts go (default: a temp dir)")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from edgeslim.artifact import Manifest, TensorInfo
    from edgeslim.compress.prune.stats import count_params_macs
    from edgeslim.compress.prune.structured import _ignored, prune_channels
    from edgeslim.compress.sources import load_pretrained
    from edgeslim.models import build_model, restore_structure, structure_spec
    from edgeslim.export.base import export_artifact
    from edgeslim.runtime import BACKENDS
    from edgeslim.runtime.base import BackendOptions

    torch.set_num_threads(args.threads)
    pre = load_pretrained("efficientnet_lite0")
    shape = (1, 3, 224, 224)
    example = torch.zeros(shape)
    out = args.out or Path(tempfile.mkdtemp(prefix="lite0-structured-"))
    rng = np.random.default_rng(0)
    check = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)

    rows, paths = [], {}
    for ratio in [0.0, *args.ratios]:
        model = copy.deepcopy(pre.model).eval()
        if ratio:
            prune_channels(model, example, ratio=ratio, round_to=8,
                           ignored_layers=_ignored(model, prune_first_conv=False, exclude=()))
        params, macs = count_params_macs(model, shape)
        spec = structure_spec(model, reference=build_model(pre.arch, pre.num_classes))
        manifest = Manifest(
            name=f"lite0-structured-{ratio}", arch=pre.arch, classes=pre.class_names,
            input=TensorInfo(name="input", dtype="float32", shape=[-1, 3, 224, 224]),
            outputs=[TensorInfo(name="logits", dtype="float32", shape=[-1, pre.num_classes])],
            preprocessing=pre.preprocessing,
        )
        adir = out / f"ratio{ratio}"
        m = export_artifact(model, adir, manifest, formats=["onnx", "openvino"], precisions=("fp32",),
                            validation=(check, None))
        # the artifact's weights rebuild the pruned model through build_model + restore_structure
        rebuilt = restore_structure(build_model(pre.arch, pre.num_classes), spec)
        rebuilt.load_state_dict(load_file(str(adir / "model.safetensors")), strict=True)
        with torch.inference_mode():
            diff = float((rebuilt.eval()(torch.from_numpy(check)) - model(torch.from_numpy(check))).abs().max())
        rows.append({"ratio": ratio, "params": params, "macs": macs, "rebuild_max_diff": diff,
                     "changed_modules": len(spec["modules"])})
        paths[ratio] = {"onnxruntime": adir / m.model("onnx", "fp32").path,
                        "openvino": adir / m.model("openvino", "fp32").path}
        print(f"ratio {ratio}: {params / 1e6:.3f} M params, {macs / 1e6:.1f} M MACs, rebuild diff {diff:.2e}", flush=True)

    x = rng.standard_normal(shape).astype(np.float32)
    for backend in ("onnxruntime", "openvino"):
        runners = {r: BACKENDS.get(backend)(p[backend], BackendOptions(threads=args.threads)) for r, p in paths.items()}
        times: dict[float, list[float]] = {r: [] for r in runners}
        for b in runners.values():
            for _ in range(20):
                b.infer({"input": x})
        chunk = 10
        for _ in range(max(1, args.iters // chunk)):
            for r, b in runners.items():  # interleaved: drift hits every model equally
                for _ in range(chunk):
                    t0 = time.perf_counter()
                    b.infer({"input": x})
                    times[r].append(time.perf_counter() - t0)
        for b in runners.values():
            b.close()
        dense = statistics.median(times[0.0])
        for row in rows:
            med = statistics.median(times[row["ratio"]])
            row[f"{backend}_ms"] = med * 1e3
            row[f"{backend}_speedup"] = dense / med
    print(json.dumps(rows, indent=2))
    print("\n| ratio | params (M) | MACs (M) | ORT ms | ORT speed-up | OpenVINO ms | OpenVINO speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio']:.1f} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.1f} | {r['onnxruntime_ms']:.2f} |"
              f" {r['onnxruntime_speedup']:.2f}x | {r['openvino_ms']:.2f} | {r['openvino_speedup']:.2f}x |")


if __name__ == "__main__":
    main()
