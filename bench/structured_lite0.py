"""Structured channel pruning of EfficientNet-Lite0: parameters, MACs and CPU latency vs dense, FP32 and INT8.

One run: the dense model and Torch-Pruning channel pruning at each ratio (uniform per group, round_to 8, the
classifier and the stem kept at full width; with ``--freeze`` the layers up to that boundary too, as
``train.freeze`` leaves them in the pipeline) are exported with ``export_artifact`` (ONNX + OpenVINO FP32,
validated against PyTorch), rebuilt from the artifact through ``build_model`` + ``restore_structure`` (checked
to give the same logits), then timed at batch 1 through the edgeslim runtime backends, models interleaved so
drift hits them equally. No fine-tuning: latency does not depend on the weight values (accuracy after pruning
needs the task fine-tuning of ``prune.method: structured``).

    python bench/structured_lite0.py [--ratios 0.3 0.5] [--iters 200] [--threads 2] [--out DIR]
    # the main job's compressed file: 192 px, stages up to blocks.4 frozen, 2 classes, OpenVINO INT8 too
    python bench/structured_lite0.py --image-size 192 --classes 2 --freeze blocks.4 blocks.3 --ratios 0.5 0.6 0.7 --int8

With ``--int8`` every model also gets an OpenVINO INT8 file (NNCF PTQ with its default, this host's, scheme; 32
random calibration images: latency does not depend on the scale values) and the table a column for it, against the
dense FP32 file in OpenVINO (the main job's "INT8 x dense" figure).
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
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=0, help="replace the ImageNet head by this many classes")
    ap.add_argument("--freeze", nargs="*", default=[""], help="train.freeze boundaries whose layers stay whole "
                    "('' = none); each boundary x each ratio is one model")
    ap.add_argument("--int8", action="store_true", help="also time an OpenVINO INT8 (NNCF PTQ) file of each model")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from edgeslim.artifact import Manifest, TensorInfo
    from edgeslim.compress.prune.stats import count_params_macs
    from edgeslim.compress.prune.structured import _ignored, prune_channels
    from edgeslim.compress.sources import load_pretrained
    from edgeslim.models import build_model, frozen_modules, prunable_layers, restore_structure, structure_spec
    from edgeslim.export.base import export_artifact
    from edgeslim.runtime import BACKENDS
    from edgeslim.runtime.base import BackendOptions

    torch.set_num_threads(args.threads)
    pre = load_pretrained("efficientnet_lite0")
    num_classes = args.classes or pre.num_classes
    classes = pre.class_names if not args.classes else [f"class{i}" for i in range(num_classes)]
    base = pre.model
    if args.classes:
        base = build_model(pre.arch, num_classes)
        base.load_state_dict({k: v for k, v in pre.model.state_dict().items() if not k.startswith("classifier")},
                             strict=False)
    side = args.image_size
    shape = (1, 3, side, side)
    example = torch.zeros(shape)
    out = args.out or Path(tempfile.mkdtemp(prefix="lite0-structured-"))
    rng = np.random.default_rng(0)
    check = rng.standard_normal((4, 3, side, side)).astype(np.float32)

    rows, paths = [], {}
    arms = [("", 0.0)] + [(f, r) for f in args.freeze for r in args.ratios]
    for freeze, ratio in arms:
        model = copy.deepcopy(base).eval()
        if ratio:
            ignored = _ignored(model, prune_first_conv=False, exclude=())
            if freeze:  # the pipeline leaves frozen layers whole (compress/prune/structured.py)
                frozen = set(frozen_modules(model, freeze))
                mods = dict(model.named_modules())
                ignored += [mods[n] for n, _ in prunable_layers(model) if n in frozen]
            prune_channels(model, example, ratio=ratio, round_to=8, ignored_layers=ignored)
        params, macs = count_params_macs(model, shape)
        spec = structure_spec(model, reference=build_model(pre.arch, num_classes))
        manifest = Manifest(
            name=f"lite0-structured-{ratio}", arch=pre.arch, classes=classes,
            input=TensorInfo(name="input", dtype="float32", shape=[-1, 3, side, side]),
            outputs=[TensorInfo(name="logits", dtype="float32", shape=[-1, num_classes])],
            preprocessing=pre.preprocessing,
        )
        key = (freeze, ratio)
        adir = out / (f"ratio{ratio}" + (f"-{freeze}" if freeze else ""))
        m = export_artifact(model, adir, manifest, formats=["onnx", "openvino"], precisions=("fp32",),
                            validation=(check, None))
        # the artifact's weights rebuild the pruned model through build_model + restore_structure
        rebuilt = restore_structure(build_model(pre.arch, num_classes), spec)
        rebuilt.load_state_dict(load_file(str(adir / "model.safetensors")), strict=True)
        with torch.inference_mode():
            diff = float((rebuilt.eval()(torch.from_numpy(check)) - model(torch.from_numpy(check))).abs().max())
        rows.append({"key": key, "freeze": freeze or "-", "ratio": ratio, "params": params, "macs": macs, "rebuild_max_diff": diff,
                     "changed_modules": len(spec["modules"])})
        paths[key] = {"onnxruntime": adir / m.model("onnx", "fp32").path,
                      "openvino": adir / m.model("openvino", "fp32").path}
        if args.int8:
            paths[key]["openvino-int8"] = _ptq(paths[key]["openvino"], rng, shape)
        print(f"freeze {freeze or '-'} ratio {ratio}: {params / 1e6:.3f} M params, {macs / 1e6:.1f} M MACs, "
              f"rebuild diff {diff:.2e}", flush=True)

    x = rng.standard_normal(shape).astype(np.float32)
    for backend in ("onnxruntime", "openvino") + (("openvino-int8",) if args.int8 else ()):
        runtime = backend.split("-")[0]
        runners = {r: BACKENDS.get(runtime)(p[backend], BackendOptions(threads=args.threads))
                   for r, p in paths.items()}
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
        for row in rows:
            row[f"{backend}_ms"] = statistics.median(times[row["key"]]) * 1e3
    for row in rows:  # against the dense FP32 file in the same runtime (INT8: against dense FP32 in OpenVINO)
        dense = rows[0]
        row["onnxruntime_speedup"] = dense["onnxruntime_ms"] / row["onnxruntime_ms"]
        row["openvino_speedup"] = dense["openvino_ms"] / row["openvino_ms"]
        if args.int8:
            row["openvino-int8_speedup"] = dense["openvino_ms"] / row["openvino-int8_ms"]
    print(json.dumps([{k: v for k, v in r.items() if k != "key"} for r in rows], indent=2))
    head = "| frozen up to | ratio | params (M) | MACs (M) | ORT ms | ORT speed-up | OpenVINO ms | OpenVINO speed-up |"
    print(f"\n{side} px, {num_classes} classes, {args.threads} threads, batch 1, medians of interleaved runs\n")
    print(head + (" OV INT8 ms | OV INT8 x dense FP32 |" if args.int8 else ""))
    print("|---" * (8 + 2 * args.int8) + "|")
    for r in rows:
        line = (f"| {r['freeze']} | {r['ratio']:.2f} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.1f} |"
                f" {r['onnxruntime_ms']:.2f} | {r['onnxruntime_speedup']:.2f}x | {r['openvino_ms']:.2f} |"
                f" {r['openvino_speedup']:.2f}x |")
        if args.int8:
            line += f" {r['openvino-int8_ms']:.2f} | {r['openvino-int8_speedup']:.2f}x |"
        print(line)


def _ptq(ir: Path, rng: np.random.Generator, shape: tuple[int, ...]) -> Path:
    """An OpenVINO INT8 copy of the IR ``ir`` by NNCF PTQ (default preset, this host's scheme)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(32)]
    q = nncf.quantize(core.read_model(str(ir)), nncf.Dataset(calib), subset_size=len(calib))
    dst = ir.with_name(ir.stem + "_int8.xml")
    ov.save_model(q, str(dst))
    return dst


if __name__ == "__main__":
    main()
