"""INT8 on this host, per quantization scheme: NNCF's default vs the target-aware scheme vs accuracy control.

For the main job's compressed model (``edgeslim compress`` of the recipe, trained once and cached under --out), in
one run on this CPU, for OpenVINO and ONNX Runtime:

- ``fp32``: the exported FP32 file (the reference);
- ``nncf-default``: NNCF PTQ with its defaults (overflow fix on the first layer only: 8-bit weights elsewhere), as
  edgeslim quantized before the target was an input; the scheme made for VNNI hosts;
- ``target-aware``: the scheme :func:`edgeslim.hardware.int8_scheme` picks for this host (``target: auto``):
  7-bit weights on x86 without VNNI, NNCF's default on VNNI/AMX;
- ``accuracy-controlled``: the target-aware scheme with NNCF's accuracy control on the val split (top-1 drop at most
  ``quantize.max_drop``, no extra critical FN), the layers it keeps in float listed.

Per arm: top-1, critical FN, agreement with FP32 (test split, by the exported file in its runtime), per-class
recall, and batch-1 median latency against FP32, timed interleaved in rounds so machine noise hits every arm alike.
Where INT8 is not faster than FP32 the summary says so.

    python bench/int8_targets.py [--recipe default] [--out bench/results/int8_targets] [--iters 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def _host() -> str:
    from edgeslim.hardware import VNNI_FLAGS, cpu_info, host_target

    cpu = cpu_info()
    isa = [f for f in ("avx2", "avx512f", *VNNI_FLAGS) if (cpu.get("isa") or {}).get(f)]
    return f"{cpu['model']} ({cpu.get('logical_cores')} cores; {', '.join(isa) or 'no AVX2'}; target {host_target().name})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="default", help="the job whose compressed model is quantized")
    ap.add_argument("--out", type=Path, default=Path("bench/results/int8_targets"))
    ap.add_argument("--iters", type=int, default=200, help="timed batch-1 runs per file and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()


    from edgeslim._io import atomic_write_json, atomic_write_text
    from edgeslim.artifact import load_manifest
    from edgeslim.compress.data import calibration_arrays, load_data_from_recipe, split_arrays
    from edgeslim.compress.metrics import evaluate
    from edgeslim.compress.quant import with_method
    from edgeslim.compress.quantize import accuracy_aware_onnx, accuracy_aware_openvino, ptq_onnx, ptq_openvino
    from edgeslim.export import export_artifact
    from edgeslim.hardware import int8_scheme
    from edgeslim.models import rebuild_model
    from edgeslim.pipeline import run_pipeline
    from edgeslim.recipe import load_recipe
    from edgeslim.runtime import BACKENDS, BackendOptions

    t_start = time.perf_counter()
    recipe = load_recipe(args.recipe)
    job = args.out / "job"
    compressed = job / "compressed"
    if not (compressed / "manifest.json").exists():
        print(f"training the {recipe.name} job's compressed model into {job} (once; later runs reuse it)")
        run_pipeline(recipe, job, stages=("compress",), resume=(job / "run").exists(), progress=False)
    man = load_manifest(compressed)
    weights = man.model("torch", "fp32")
    model = rebuild_model(man.arch, len(man.classes), weights.extra.get("structure"))
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(compressed / weights.path)))
    model.eval()
    data = load_data_from_recipe(recipe.data, man.preprocessing, seed=recipe.seed)
    calib = calibration_arrays(data, recipe.quantize.calibration_size)
    val = split_arrays(data, "val")
    test_x, test_y = split_arrays(data, "test")
    fp32_dir = args.out / "files" / "fp32"
    fp32 = export_artifact(model, fp32_dir, man.model_copy(update={"models": [], "files": {}}),
                           formats=("onnx", "openvino"), precisions=("fp32",))

    import onnx
    import openvino as ov

    files: dict[tuple[str, str], Path] = {("fp32", "onnx"): fp32_dir / fp32.model("onnx", "fp32").path,
                                          ("fp32", "openvino"): fp32_dir / fp32.model("openvino", "fp32").path}
    notes: dict[tuple[str, str], dict] = {}
    qcfg = with_method(recipe.quantize, "ptq")
    for arm in ("nncf-default", "target-aware", "accuracy-controlled"):
        for fmt in ("onnx", "openvino"):
            scheme = int8_scheme("x86-vnni" if arm == "nncf-default" else "auto", fmt)
            t = time.perf_counter()
            graph = onnx.load(str(files[("fp32", "onnx")])) if fmt == "onnx" else ov.Core().read_model(
                str(files[("fp32", "openvino")]))
            info: dict = {"scheme": scheme.to_dict()}
            if arm == "accuracy-controlled":
                fn = accuracy_aware_onnx if fmt == "onnx" else accuracy_aware_openvino
                q, report = fn(graph, calib, val, list(man.critical), with_method(qcfg, "accuracy_aware"),
                               scheme=scheme, thresholds=dict(man.thresholds), rule=man.decision_rule)
                info["kept_in_float"] = report["reverted_to_fp32"]
                info["val"] = {"fp32": report["fp32"], "int8": report["int8"]}
            else:
                q = (ptq_onnx if fmt == "onnx" else ptq_openvino)(graph, calib, qcfg, scheme=scheme)
            info["quantize_s"] = round(time.perf_counter() - t, 1)
            path = args.out / "files" / arm / ("model_int8.onnx" if fmt == "onnx" else "model.xml")
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "onnx":
                onnx.save(q, str(path))
            else:
                ov.save_model(q, str(path), compress_to_fp16=False)
            files[(arm, fmt)] = path
            notes[(arm, fmt)] = info
            print(f"{arm} {fmt}: quantized in {info['quantize_s']} s" + (
                f", {len(info.get('kept_in_float', []))} layers kept in float" if "kept_in_float" in info else ""))

    runtimes = {"openvino": "openvino", "onnx": "onnxruntime"}
    rows: list[dict] = []
    ref_pred = {}
    for (arm, fmt), path in files.items():
        with BACKENDS.get(runtimes[fmt])(path, BackendOptions(threads=args.threads)) as b:
            logits = np.concatenate([b.infer({"input": test_x[i : i + 64]})["logits"] for i in range(0, len(test_x), 64)])
        met = evaluate(logits, test_y, data.classes, data.critical)
        pred = logits.argmax(1)
        if arm == "fp32":
            ref_pred[fmt] = pred
        rows.append({"arm": arm, "format": fmt, "runtime": runtimes[fmt], "top1": met.accuracy,
                     "critical_fn": met.critical_fn(), "agreement": float((pred == ref_pred[fmt]).mean()),
                     "per_class_recall": {data.classes[c]: (None if pc["recall"] is None else round(float(pc["recall"]), 4))
                                          for c, pc in enumerate(met.per_class)},
                     **({"kept_in_float": len(notes[(arm, fmt)].get("kept_in_float", []))}
                        if (arm, fmt) in notes and "kept_in_float" in notes[(arm, fmt)] else {})})

    # latency: interleaved rounds, batch 1, each runtime's files side by side
    x = test_x[:1].copy()
    lat: dict[tuple[str, str], list[float]] = {k: [] for k in files}
    for fmt, rt in runtimes.items():
        runners = {k: BACKENDS.get(rt)(p, BackendOptions(threads=args.threads)) for k, p in files.items() if k[1] == fmt}
        try:
            for r in runners.values():
                for _ in range(20):
                    r.infer({"input": x})
            for _ in range(args.rounds):
                for k, r in runners.items():
                    times = []
                    for _ in range(args.iters):
                        t = time.perf_counter()
                        r.infer({"input": x})
                        times.append((time.perf_counter() - t) * 1e3)
                    lat[k].append(statistics.median(times))
        finally:
            for r in runners.values():
                r.close()
    for row in rows:
        k = (row["arm"], row["format"])
        row["latency_ms"] = round(statistics.median(lat[k]), 4)
        row["speedup_vs_fp32"] = round(statistics.median(
            [a / b for a, b in zip(lat[("fp32", row["format"])], lat[k])]), 3)

    host = _host()
    cmd = "python bench/int8_targets.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    fp = {r["format"]: r for r in rows if r["arm"] == "fp32"}
    lines = [f"# INT8 per scheme on {platform.node() and 'this host'}: {host}", "",
             f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}, {time.perf_counter() - t_start:.0f} s in all). Model: the"
             f" `{recipe.name}` job's compressed {man.arch}, input {man.input.shape}, test split {len(test_y)} images,"
             f" critical {[man.classes[c] for c in man.critical]}.", "",
             "| runtime | arm | top-1 | Δ top-1 | critical FN | agreement with FP32 | layers in float | batch-1 ms |"
             " speed-up vs FP32 |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["runtime"], ["fp32", "nncf-default", "target-aware",
                                                         "accuracy-controlled"].index(r["arm"]))):
        ref = fp[row["format"]]
        lines.append(f"| {row['runtime']} | {row['arm']} | {row['top1']:.4f} | {row['top1'] - ref['top1']:+.4f} |"
                     f" {row['critical_fn']} | {row['agreement']:.4f} | {row.get('kept_in_float', '-')} |"
                     f" {row['latency_ms']:.3f} | {row['speedup_vs_fp32']:.2f}x |")
    lines += ["", "Per-class recall (test split):", "",
              "| runtime | arm | " + " | ".join(data.classes) + " |", "|---|---|" + "---|" * len(data.classes)]
    for row in rows:
        lines.append(f"| {row['runtime']} | {row['arm']} | " + " | ".join(
            ('-' if row['per_class_recall'][c] is None else f"{row['per_class_recall'][c]:.3f}") for c in data.classes) + " |")
    lines += ["", "Summary:"]
    for fmt, rt in runtimes.items():
        ta = next(r for r in rows if r["arm"] == "target-aware" and r["format"] == fmt)
        ref = fp[fmt]
        held = (ref["top1"] - ta["top1"] <= 0.005) and ta["critical_fn"] <= ref["critical_fn"]
        lines.append(f"- {rt}: target-aware INT8 {'holds' if held else 'misses'} the goal (within 0.5 point of FP32"
                     f" top-1, no extra critical FN): {ta['top1'] - ref['top1']:+.4f}, critical FN {ta['critical_fn']} vs"
                     f" {ref['critical_fn']}." + (
                         f" INT8 is NOT faster than FP32 in {rt} on this host ({ta['speedup_vs_fp32']:.2f}x): here it"
                         " is no compression of latency, only of size." if ta["speedup_vs_fp32"] < 1.0 else
                         f" INT8 is {ta['speedup_vs_fp32']:.2f}x FP32."))
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out.parent / "int8_targets.md", text)
    atomic_write_json(args.out / "int8_targets.json", {"host": host, "command": cmd, "rows": rows,
                                                       "notes": {f"{a}/{f}": v for (a, f), v in notes.items()}})


if __name__ == "__main__":
    main()
