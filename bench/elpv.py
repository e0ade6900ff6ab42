"""ELPV solar-cell defects held against the dataset paper's table (Deitsch et al., Solar Energy 2019).

The paper's protocol: 25 % test stratified by defect probability and module type (edgeslim's built-in ``elpv``
split, seeded), val from the training part; binary task functional / defective (p >= 0.5). Paper: fine-tuned
VGG-19 on a GPU 88.42 % average accuracy, SVM on hand-crafted features 82.44 %.

Every run is a whole ``edgeslim pipeline`` (``edgeslim.pipeline.run_pipeline``: fine-tune, compress, export,
validate, profile), nothing re-implemented. Arms, per seed:

* ``dense FP32``      the dense reference of the main job's recipe (its ONNX FP32 file);
* ``main INT8``       the main job's compressed INT8 model (the recipe's loss);
* ``fast INT8``       the fastest built-in recipe, ``lite0-fast-int8``, adapted to elpv (same data section);
* ``CD INT8`` / ``CE INT8``  the main recipe with the class-dependent loss and with plain cross-entropy, both
  re-thresholded on val to the same FPR (the three-arm protocol of ``bench/class_dependent.py``: is the loss
  better than a threshold alone?). One of them is the main job itself.
* ``shift mono->poly``: the main recipe trained on mono cells, tested on every poly cell (first seed only).

Per arm: binary accuracy and defective recall at the deployed threshold (val-calibrated to the recipe's
``decision.target_fpr``), FN and FNR with the threshold calibrated on val to 1 % and to 5 % FPR (and the test FPR
that reached), AUC, model size and batch-1 latency in OpenVINO and ONNX Runtime on this host. Means over seeds with
95 % t-intervals.

    python bench/elpv.py                  # the main run, 224 px, 3+1 epochs, 3 seeds (about 1.5 h on 2 cores)
    python bench/elpv.py --runs main,alt,fast,shift   # every arm (about 25 min per run and seed)
    python bench/elpv.py --quick          # smoke: 1 seed, 640 cells at 64x64, 1+1 epochs
    python bench/elpv.py --seeds 5 --out /tmp/elpv-bench

Every (arm, seed) result is cached in ``<out>/cache/`` as soon as its run finishes (keyed by the resolved recipe),
so an interrupted study continues where it stopped. The report is ``<out>/results.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PAPER = {"VGG-19 CNN (GPU)": 0.8842, "SVM, hand-crafted features (CPU)": 0.8244}
FPRS = (0.01, 0.05)


# ------------------------------------------------------------------------------------------------ recipes


def recipes(args) -> dict[str, dict]:
    """The resolved recipe dicts of every run: main, its loss swapped (alt), fast, and the domain shift."""
    from edgeslim.recipe import load_recipe

    main = load_recipe("default").to_dict()
    if args.quick:
        main["data"]["image_size"] = 64
        main["data"]["elpv"] = {"subset": 640}
        main["train"].update(epochs=1, final_epochs=1)
        main["quantize"]["calibration_size"] = 100
    else:  # the full recipe: longer than the main job's
        main["data"]["image_size"] = args.image_size
        main["train"].update(epochs=args.epochs, final_epochs=args.final_epochs)
    main["profile"].update(seconds=args.profile_seconds, iterations=50 if args.quick else 200)
    alt = json.loads(json.dumps(main))
    if main["loss"]["name"] == "class_dependent":
        alt["loss"]["name"] = "cross_entropy"
    else:
        alt["loss"].update(name="class_dependent", gamma=2.0, fpr_budget=main["decision"]["target_fpr"])
        alt["loss"]["lambda"] = 1.0
    fast = load_recipe("lite0-fast-int8").to_dict()
    fast["data"] = json.loads(json.dumps(main["data"]))
    fast["train"].update(epochs=main["train"]["epochs"], final_epochs=main["train"]["final_epochs"])
    fast["decision"] = dict(main["decision"])
    fast["profile"] = dict(main["profile"])
    fast["quantize"]["calibration_size"] = main["quantize"]["calibration_size"]
    if args.quick:
        fast["quantize"]["qat_epochs"] = 1
    shift = json.loads(json.dumps(main))
    shift["data"]["elpv"] = {**(shift["data"].get("elpv") or {}), "domain_shift": "mono->poly"}
    for name, r in (("main", main), ("alt", alt), ("fast", fast), ("shift", shift)):
        r["name"] = f"elpv-bench-{name}"
    return {"main": main, "alt": alt, "fast": fast, "shift": shift}


# ------------------------------------------------------------------------------------------------ one run


def _probs(directory: Path, mf, *splits: np.ndarray) -> list[np.ndarray]:
    """Probabilities of one manifest file on each of ``splits``, run (loaded once) by the runner that deploys its
    format (an OpenVINO IR by OpenVINO, an ONNX file by ONNX Runtime), so the INT8 file the summary recommends is
    scored as it ships."""
    from edgeslim.runtime import load, runner_for_format
    from edgeslim.scoring import softmax

    with load(directory, backend=runner_for_format(mf.format).name, precision=mf.precision) as pred:
        return [softmax(pred.infer(x), dtype=np.float64) for x in splits]


def _score(pv, yv, pt, yt, c: int, thresholds: dict[int, float]) -> dict[str, Any]:
    from edgeslim.compress.metrics import evaluate
    from edgeslim.compress.thresholds import calibrate_thresholds
    from edgeslim.decision import predict

    classes = ["functional", "defective"]
    m = evaluate(pt, yt, classes, [c], thresholds=thresholds or None, from_logits=False)
    st = m.critical_stats[c]
    out: dict[str, Any] = {
        "accuracy": m.accuracy, "recall": 1 - st["fnr"], "fn": int(st["fn"]), "fpr": st["fpr"], "auc": st["auc"],
        "positives": int((yt == c).sum()),
    }
    for f in FPRS:
        thr = calibrate_thresholds(pv, yv, [c], target_fpr=f)
        pred = predict(pt, thr)
        pos, neg = yt == c, yt != c
        fn = int(((pred != c) & pos).sum())
        out[f"fn@{f:g}"] = fn
        out[f"fnr@{f:g}"] = fn / max(1, int(pos.sum()))
        out[f"test_fpr@{f:g}"] = float(((pred == c) & neg).sum() / max(1, int(neg.sum())))
    return out


def run_one(name: str, recipe: dict, seed: int, out: Path) -> dict[str, Any]:
    """One whole pipeline run; returns per-model-file metrics, sizes and latencies."""
    from edgeslim.artifact import load_manifest
    from edgeslim.compress.data import load_data_from_recipe, split_arrays
    from edgeslim.compress.sources import load_pretrained
    from edgeslim.pipeline import run_pipeline
    from edgeslim.recipe import parse_recipe

    r = parse_recipe({**recipe, "seed": seed})
    run_dir = out / "runs" / f"{name}-s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a half-finished run is redone (its cache entry was never written)
    t0 = time.perf_counter()
    res = run_pipeline(r, run_dir, progress=False)
    seconds = time.perf_counter() - t0
    src = load_pretrained(r.model.source, arch=r.model.arch, pretrained=r.model.pretrained)
    data = load_data_from_recipe(r.data, src.preprocessing, seed=r.seed)
    xv, yv = split_arrays(data, "val")
    xt, yt = split_arrays(data, "test")
    c = data.critical[0]
    rows = {}
    for key in ("dense", "compressed"):
        man = load_manifest(run_dir / key)
        # one file per precision: the ONNX file where there is one (as before), else the OpenVINO IR (the default
        # recipe exports INT8 for OpenVINO only)
        chosen: dict[str, Any] = {}
        for mf in man.models:
            if mf.format in ("onnx", "openvino") and (mf.precision not in chosen or mf.format == "onnx"):
                chosen[mf.precision] = mf
        for mf in chosen.values():
            # as deployed: a reduced-precision file at its own threshold, calibrated on val to the recipe's FPR
            thresholds = {int(k): float(v) for k, v in man.thresholds_for(mf).items()}
            pv, pt = _probs(run_dir / key, mf, xv, xt)
            scored = _score(pv, yv, pt, yt, c, thresholds)
            paths = {f"{key}/{m2.path}" for m2 in man.models if m2.precision == mf.precision}
            lat = {e["backend"]["name"]: e["latency_ms"]["median"] for e in res.profile
                   if e["model"]["path"] in paths and e.get("status") == "ok" and e.get("batch") == 1}
            size = sum(p.stat().st_size for p in (run_dir / key).glob(Path(mf.path).stem + ".*")
                       if p.suffix in (".onnx", ".data", ".bin", ".xml"))
            rows[f"{key}/{mf.precision}"] = {**scored, "latency_ms": lat, "file": f"{mf.format}/{mf.precision}",
                                             "onnx_mb": size / 1e6}
    return {"rows": rows, "seconds": seconds, "pipeline_seconds": res.seconds,
            "split": {s: len(data.labels(s)) for s in ("train", "val", "test")},
            "fpr_budget": res.training.get("fpr_budget")}


# ------------------------------------------------------------------------------------------------ report


def _ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % t-interval (0 for a single value)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    from scipy import stats

    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def arms(results: dict[str, dict[int, dict]], main_loss: str) -> dict[str, list[dict]]:
    """Arm name -> one row per seed."""
    pick = {
        "dense FP32": ("main", "dense/fp32"),
        "main FP32 (compressed)": ("main", "compressed/fp32"),
        "main INT8": ("main", "compressed/int8"),
        "fast INT8 (lite0-fast-int8)": ("fast", "compressed/int8"),
        ("CD INT8" if main_loss == "class_dependent" else "CE INT8"): ("main", "compressed/int8"),
        ("CE INT8" if main_loss == "class_dependent" else "CD INT8"): ("alt", "compressed/int8"),
        "shift mono->poly dense FP32": ("shift", "dense/fp32"),
        "shift mono->poly main INT8": ("shift", "compressed/int8"),
    }
    if "alt" not in results:  # without the alt run there is no loss comparison: the main run is "main INT8"
        pick = {k: v for k, v in pick.items() if k not in ("CD INT8", "CE INT8")}
    out = {}
    for arm, (run, row) in pick.items():
        per_seed = [{**r["rows"][row], "seed": seed} for seed, r in sorted(results.get(run, {}).items())
                    if row in r["rows"]]
        if per_seed:
            out[arm] = per_seed
    # what the main run ships per seed: its INT8 file, or its FP32 file where the export's val check left INT8 out
    main = results.get("main", {})
    shipped = [{**(r["rows"].get("compressed/int8") or r["rows"]["compressed/fp32"]), "seed": seed}
               for seed, r in sorted(main.items()) if "compressed/fp32" in r["rows"]]
    if shipped and len(shipped) > len(out.get("main INT8", [])):
        out["main compressed as shipped (INT8, else FP32)"] = shipped
    return out


def markdown(table: dict[str, list[dict]], meta: dict) -> str:
    def cell(rows, key, spec=".3f", scale=1.0):
        m, h = _ci([None if r.get(key) is None else r[key] * scale for r in rows])
        if np.isnan(m):
            return "-"
        return f"{m:{spec}}" + (f" ± {h:{spec}}" if len(rows) > 1 else "")

    def lat(rows, backend):
        return cell([{"x": r["latency_ms"].get(backend)} for r in rows], "x", ".2f")

    head = ["arm", "seeds", "accuracy", "defective recall", "FN", "FN @1% FPR", "FNR @1% FPR", "FN @5% FPR",
            "FNR @5% FPR", "AUC", "ONNX MB", "OpenVINO ms", "ORT ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, rows in table.items():
        lines.append("| " + " | ".join([
            arm, str(len(rows)), cell(rows, "accuracy", ".4f"), cell(rows, "recall"), cell(rows, "fn", ".1f"),
            cell(rows, "fn@0.01", ".1f"), cell(rows, "fnr@0.01"), cell(rows, "fn@0.05", ".1f"),
            cell(rows, "fnr@0.05"), cell(rows, "auc", ".4f"), cell(rows, "onnx_mb", ".2f"),
            lat(rows, "openvino"), lat(rows, "onnxruntime"),
        ]) + " |")
    for name, acc in PAPER.items():
        lines.append(f"| paper: {name} | - | {acc:.4f} | - | - | - | - | - | - | - | - | - | - |")
    return "\n".join(lines)


def goal(table: dict[str, list[dict]]) -> list[str]:
    """Issue 20, goal 2: dense FP32 at least the paper's 88.42 %, compressed INT8 within 1 point of its dense model,
    and fewer missed defective cells than that dense model at 1 % and 5 % FPR (val-calibrated). Means over seeds;
    the intervals are in the table. INT8 is compared with dense on the seeds that have an INT8 file (paired by
    seed); a seed whose INT8 file the export's val check left out ships none, so the INT8 goals are not met as a
    whole there. The INT8 speed against dense is reported, not a goal of this bench."""
    out = []
    dense, comp = table.get("dense FP32"), table.get("main INT8")
    if not dense or not comp:
        return ["goal: not measured (the main run has no result yet)"]
    d_acc, d_h = _ci([r["accuracy"] for r in dense])
    out.append(f"- dense FP32 accuracy {d_acc:.4f} ± {d_h:.4f} vs the paper's GPU CNN 0.8842: "
               + ("MET" if d_acc >= 0.8842 else "NOT met"))
    by_seed = {r["seed"]: r for r in dense}
    pairs = [(by_seed[r["seed"]], r) for r in comp if r["seed"] in by_seed]
    missing = sorted(set(by_seed) - {r["seed"] for r in comp})
    seeds = ", ".join(str(c["seed"]) for _, c in pairs)
    if missing:
        out.append(f"- compressed INT8: **no INT8 file in seed(s) {', '.join(map(str, missing))}** (the export's val"
                   " check left it out; that seed ships its FP32 file): the INT8 goals below are compared on seeds"
                   f" {seeds} only and are NOT met as a whole")
    dd, cc = _ci([d["accuracy"] for d, _ in pairs])[0], _ci([c["accuracy"] for _, c in pairs])
    out.append(f"- compressed INT8 accuracy {cc[0]:.4f} ± {cc[1]:.4f}, {100 * (cc[0] - dd):+.2f} points from dense on"
               f" seeds {seeds}: " + ("MET (within 1 point)" if cc[0] >= dd - 0.01 and not missing else "NOT met"))
    for f in FPRS:
        d, c = (_ci([x[f"fn@{f:g}"] for x in side])[0] for side in zip(*pairs))
        per = ", ".join(f"{int(b[f'fn@{f:g}']) - int(a[f'fn@{f:g}']):+d}" for a, b in pairs)
        out.append(f"- missed defective cells at {f:.0%} FPR (val-calibrated), seeds {seeds}: compressed INT8 {c:.1f}"
                   f" vs dense {d:.1f} (per seed {per}): " + ("MET (fewer)" if c < d and not missing else "NOT met"))
    for b in ("openvino", "onnxruntime"):
        d = _ci([x["latency_ms"].get(b) for x, _ in pairs])[0]
        c = _ci([x["latency_ms"].get(b) for _, x in pairs])[0]
        if np.isfinite(d) and np.isfinite(c) and c > 0:
            out.append(f"- batch-1 {b} (reported): dense FP32 {d:.2f} ms / compressed INT8 {c:.2f} ms = {d / c:.2f}x")
    return out


def host() -> dict[str, str]:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [n for n, f in (("AVX-512 VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"), ("AMX", "amx_int8"),
                          ("AVX-512", "avx512f"), ("AVX2", "avx2")) if f in flags.split()]
    import os

    return {"cpu": model, "int8_isa": ", ".join(isa) or "none", "cores": str(os.cpu_count()),
            "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 640 cells at 64x64, 1+1 epochs")
    p.add_argument("--image-size", type=int, default=224, help="full recipe input side")
    p.add_argument("--epochs", type=int, default=3, help="full recipe: dense epochs (over the 8-symmetry cache)")
    p.add_argument("--final-epochs", type=int, default=1, help="full recipe: pruned fine-tune epochs")
    p.add_argument("--profile-seconds", type=float, default=3.0)
    p.add_argument("--runs", default="main", help="which runs (comma list of main, alt, fast, shift); the default "
                   "fits 150 minutes on 2 cores, every run adds about 25 minutes per seed")
    p.add_argument("--out", type=Path, default=Path("bench-elpv-out"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.profile_seconds = 1, 1.0
    from edgeslim._io import atomic_write_json, atomic_write_text
    from edgeslim.errors import EdgeslimError

    failures: list[str] = []

    rs = recipes(args)
    (args.out / "cache").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {}
    meta = {"host": host(), "command": "python bench/elpv.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": args.quick}
    def report() -> None:
        table = arms(results, rs["main"]["loss"]["name"])
        md = (f"# ELPV bench\n\nHost: {meta['host']}\n\nCommand: `{meta['command']}`\n\n" + markdown(table, meta)
              + "\n\nGoal (issue 20, goal 2):\n" + "\n".join(goal(table)) + "\n")
        atomic_write_text(args.out / "results.md", md)
        atomic_write_json(args.out / "results.json", {"meta": meta, "recipes": rs, "results": results})

    for name in [n.strip() for n in args.runs.split(",") if n.strip()]:
        seeds = [0] if name == "shift" else list(range(args.seeds))
        for seed in seeds:
            key = hashlib.sha256(json.dumps([rs[name], seed], sort_keys=True).encode()).hexdigest()[:12]
            cache = args.out / "cache" / f"{name}-s{seed}-{key}.json"
            if cache.is_file():
                results.setdefault(name, {})[seed] = json.loads(cache.read_text())
                print(f"{name} seed {seed}: cached", flush=True)
                continue
            print(f"{name} seed {seed}: running", flush=True)
            try:
                rec = run_one(name, rs[name], seed, args.out)
            except EdgeslimError as exc:  # e.g. an INT8 export refused by validation: reported, not cached
                print(f"{name} seed {seed}: FAILED: {exc}", flush=True)
                failures.append(f"{name} seed {seed}: {exc}")
                continue
            atomic_write_json(cache, rec)
            results.setdefault(name, {})[seed] = rec
            print(f"{name} seed {seed}: {rec['seconds']:.0f} s", flush=True)
            report()  # after every run, so a stopped study still has its report
    if results:
        report()  # from the cache too: a rerun rebuilds the report with this version's tables
    print((args.out / "results.md").read_text() if (args.out / "results.md").exists() else "no results")
    for f in failures:
        print(f"failed run: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
