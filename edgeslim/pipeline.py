"""The main job: compress -> export -> validate -> profile, driven by a recipe.

This module composes the stages for the CLI (and for users who prefer Python); it holds no stage logic itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._io import atomic_write_text
from .artifact import Manifest, TensorInfo, load_manifest
from .errors import ConfigError
from .recipe import Recipe

STAGES = ("compress", "export", "profile")


@dataclass
class PipelineResult:
    """What one pipeline run produced (paths, metrics, profile entries, timings)."""

    out_dir: Path
    recipe: Recipe
    artifacts: dict[str, Path] = field(default_factory=dict)  # "dense" / "compressed" -> directory
    manifests: dict[str, Manifest] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # "dense" / "compressed" -> test metrics dict
    profile: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # e.g. "fpr_budget": whether the loss held it


def _calibration_batches(data, n: int, batch_size: int = 32):
    """Up to ``n`` preprocessed training images (seeded order) as float32 NCHW numpy batches."""
    from .compress.quantize import calibration_batches

    return calibration_batches(data.loader("train", batch_size=batch_size, shuffle=True, seed=1234), n,
                               batch_size=batch_size)


def _split_arrays(data, split: str):
    import numpy as np

    xs, ys = [], []
    for x, y in data.loader(split, batch_size=64, shuffle=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def run_pipeline(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    console=None,
    stages: Sequence[str] = STAGES,
) -> PipelineResult:
    """Run the recipe end to end and write artifacts, the resolved recipe and the reports to ``out_dir``.

    Args:
        recipe: a validated recipe (see :func:`edgeslim.recipe.load_recipe`).
        out_dir: output directory; ``out_dir/run`` holds resumable checkpoints.
        resume: continue a killed run from its last checkpoint instead of starting over.
        stages: a subset of ``("compress", "export", "profile")``.

    Under ``torchrun --nproc_per_node N`` (see :mod:`edgeslim.compress.distributed`) every process runs this same
    call: training is data-parallel, and only rank 0 writes checkpoints, artifacts and reports, calibrates,
    exports and profiles; the other ranks wait for it and return a result without artifacts.
    """
    import torch

    from .compress import distributed as dist

    from .compress.data import load_data_from_recipe
    from .compress.pruning import count_params_macs
    from .compress.sources import load_pretrained, replace_head
    from .compress.train import compress

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown pipeline stage(s) {unknown}; valid: {', '.join(STAGES)}")
    recipe.check_names()
    out_dir = Path(out_dir)
    run_dir = out_dir / "run"
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise ConfigError(
            f"{run_dir} holds checkpoints of an earlier run; pass --resume to continue it, "
            f"or choose another --out (or delete {run_dir})"
        )
    dist.init_from_env()
    dist.barrier()  # every rank has checked run_dir before rank 0 starts writing into out_dir
    with dist.main_writes() as writer:
        if writer:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "recipe.yaml", recipe.to_yaml())
    result = PipelineResult(out_dir=out_dir, recipe=recipe)
    say = console.print if console is not None and dist.is_main() else (lambda *a, **k: None)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    src = load_pretrained(recipe.model.source, arch=recipe.model.arch, pretrained=recipe.model.pretrained)
    data = load_data_from_recipe(recipe.data, src.preprocessing, seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    model = replace_head(src.model, len(data.classes))
    say(
        f"source {src.source} ({src.arch}); data {recipe.data.dataset}: "
        + ", ".join(f"{k} {sum(v.values())}" for k, v in data.info.get("split_sizes", {}).items())
        + f"; critical {[data.classes[c] for c in data.critical]}; training class counts {data.class_counts}"
    )
    _check_quantize_request(model, data, recipe)
    res = compress(model, data, recipe, run_dir=run_dir, resume=resume, progress=progress)
    if recipe.quantize.method == "qat":
        _quantize_aware(res, data, recipe, run_dir, resume=resume, progress=progress, say=say)
    result.seconds["compress"] = time.perf_counter() - t0
    if res.info.get("fpr_budget"):
        result.training["fpr_budget"] = fb = res.info["fpr_budget"]
        if not fb["held"]:
            say(f"[yellow]warning: the loss could not hold the critical FPR budget {fb['budget']:g} on val in"
                f" {len(fb['unheld'])} epoch(s) with gamma, lambda and the critical balance at their floors;"
                " the calibrated threshold (decision.target_fpr) is what holds it[/yellow]")
    c, h, w = next(iter(data.loader("test", batch_size=1)))[0].shape[1:]
    input_shape = (1, int(c), int(h), int(w))

    base = dict(
        source=src.source,
        arch=src.arch,
        classes=list(data.classes),
        critical=list(data.critical),
        input=TensorInfo(name="input", shape=[-1 if recipe.export.dynamic_batch else 1, int(c), int(h), int(w)]),
        outputs=[TensorInfo(name="logits", shape=[-1 if recipe.export.dynamic_batch else 1, len(data.classes)])],
        preprocessing=data.preprocessing,
        recipe=recipe.to_dict(),
    )
    variants = {
        "dense": (res.dense_model, res.dense_metrics, None),
        "compressed": (res.model, res.metrics, res.sparsity_table),
    }
    for key, (m, metrics, table) in variants.items():
        params, macs = count_params_macs(m, input_shape)
        result.metrics[key] = {
            **metrics.to_dict(),
            "params": int(params),
            "macs": int(macs),
            "nonzero_params": int(sum(int((p != 0).sum()) for p in m.parameters())),
        }
    if "export" not in stages:
        # still leave a loadable torch artifact of the compressed model
        stages = ("export",) if "compress" in stages else stages
        formats: list[str] = []
    else:
        formats = list(recipe.export.formats)

    if not dist.is_main():
        # rank 0 alone calibrates, exports, profiles and writes the reports; wait for it, then leave the group
        dist.barrier()
        dist.shutdown()
        result.seconds["total"] = time.perf_counter() - t0
        return result
    try:
        _finish_on_main(result, recipe, data, variants, base, formats, stages, out_dir, progress, say, t0)
    finally:
        dist.barrier()
        dist.shutdown()
    return result


def _finish_on_main(result, recipe, data, variants, base, formats, stages, out_dir, progress, say, t0) -> None:
    """Calibrate, export, profile and write the reports (the single process, or rank 0 under torchrun)."""
    from .export import export_artifact

    thresholds: dict[str, dict[str, float]] = {}
    if recipe.decision.target_fnr is not None or recipe.decision.target_fpr is not None:
        thresholds = _calibrate(variants, data, recipe, say)

    t1 = time.perf_counter()
    int8 = recipe.quantize.method != "none"
    calib = _calibration_batches(data, recipe.quantize.calibration_size) if int8 else None
    if recipe.quantize.method == "accuracy_aware":
        from .compress.quantize import Int8Plan, attach_int8_plan

        # the accuracy control judges layers on the val split; the test split stays for the final numbers
        attach_int8_plan(variants["compressed"][0], Int8Plan(validation=_split_arrays(data, "val"),
                                                             critical=list(data.critical)))
    test_x, test_y = _split_arrays(data, "test")
    for key, (m, metrics, table) in variants.items():
        if key == "dense" and "profile" not in stages and not formats:
            continue
        precisions = ["fp32"] + (["int8"] if key == "compressed" and int8 else [])
        manifest = Manifest(
            name=f"{recipe.name}-{key}",
            thresholds=thresholds.get(key, {}),
            metrics={"test": result.metrics[key], **result.training},
            sparsity={"layers": table} if table else {},
            **base,
        )
        say(f"exporting {key}: {', '.join(formats) or 'torch'} ({', '.join(precisions)})")
        result.manifests[key] = export_artifact(
            m.eval(),
            out_dir / key,
            manifest,
            formats=formats,
            precisions=precisions if formats else ["fp32"],
            calibration=calib,
            validation=(test_x, test_y),
            export_cfg=recipe.export,
            quantize_cfg=recipe.quantize,
            validate_cfg=recipe.validate_,
        )
        result.artifacts[key] = out_dir / key
    result.seconds["export"] = time.perf_counter() - t1

    if "profile" in stages:
        from .devices.profiler import ProfileConfig, profile_artifact

        t2 = time.perf_counter()
        p = recipe.profile
        cfg = ProfileConfig(
            warmup=p.warmup, iterations=p.iterations, seconds=p.seconds, batch_sizes=tuple(p.batch_sizes)
        )
        for key, path in result.artifacts.items():
            say(f"profiling {key} on {', '.join(p.backends)}")
            for entry in profile_artifact(
                path, backends=p.backends, cfg=cfg, threads=p.threads, progress=progress, data=(test_x, test_y)
            ):
                entry["artifact"] = key
                entry["variant"] = key
                entry["model"] = {**entry["model"], "path": f"{key}/{entry['model']['path']}"}
                result.profile.append(entry)
        result.seconds["profile"] = time.perf_counter() - t2
    result.seconds["total"] = time.perf_counter() - t0
    write_pipeline_report(result)


def _check_quantize_request(model, data, recipe: Recipe) -> None:
    """Refuse, before any training, distillation without a teacher and a QAT request NNCF cannot serve."""
    from .compress.pruning import check_distillation

    check_distillation(recipe)  # compress() checks it too; here it also comes before the slower QAT probe
    if recipe.quantize.method == "qat":
        from .compress.pruning import example_shape
        from .compress.qat import check_qat_traceable

        check_qat_traceable(model, example_shape(data), recipe.quantize)


def _quantize_aware(res, data, recipe: Recipe, run_dir: Path, *, resume: bool, progress: bool, say) -> None:
    """QAT of the compressed model (masks kept); ``res`` then holds its FP32 weights with the QAT model attached."""
    from .compress.qat import quantize_aware_train
    from .compress.quantize import Int8Plan, attach_int8_plan
    from .compress.train import _evaluate_split

    say(f"quantization-aware training: {recipe.quantize.qat_epochs} epoch(s)"
        + (f", distilling from the dense model (weight {recipe.distill.weight})" if recipe.distill.weight > 0 else ""))
    calib = _calibration_batches(data, recipe.quantize.calibration_size)
    q = quantize_aware_train(res.model, data, recipe, run_dir=Path(run_dir) / "qat", calibration=calib,
                             masks=res.masks, teacher=res.dense_model if recipe.distill.weight > 0 else None,
                             resume=resume, progress=progress)
    attach_int8_plan(q.fp32_model, Int8Plan(qat_model=q.model))
    res.model = q.fp32_model
    res.metrics = _evaluate_split(q.fp32_model, data, "test", recipe.data.batch_size, _torch_device(recipe))
    res.history = list(res.history) + q.history
    res.info = {**res.info, "qat": q.info}


def _torch_device(recipe: Recipe):
    from .compress.train import _device

    return _device(recipe.train.device)


def _calibrate(variants, data, recipe: Recipe, say) -> dict[str, dict[str, float]]:
    """Per-model critical-class thresholds calibrated on the val split to the recipe's target FNR / FPR."""
    from .compress.metrics import predict_logits
    from .compress.thresholds import calibrate_thresholds, manifest_thresholds
    from .errors import DataError
    from .runtime.predictor import softmax

    out = {}
    for key, (m, _, _) in variants.items():
        logits, labels = predict_logits(m, data.loader("val", batch_size=64))
        probs = softmax(logits)
        try:
            thr = calibrate_thresholds(
                probs, labels, data.critical, target_fnr=recipe.decision.target_fnr,
                target_fpr=recipe.decision.target_fpr,
            )
        except DataError as exc:
            # no threshold reaches the target (saturated scores): deployed at argmax, and the run's trained
            # results are not thrown away over its decision rule
            say(f"[yellow]warning: {key}: no critical threshold, argmax kept: {exc}[/yellow]")
            out[key] = {}
            continue
        out[key] = manifest_thresholds(thr)
        say(f"{key}: critical thresholds " + ", ".join(f"{data.classes[c]} >= {t:.4f}" for c, t in thr.items()))
    return out


# -- reports -------------------------------------------------------------------------------------------------------
def _file_mb(artifact: Path, manifest: Manifest, path: str) -> float:
    """Size of a model file (an OpenVINO IR counts its .bin too)."""
    p = artifact / path
    size = p.stat().st_size
    if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
        size += p.with_suffix(".bin").stat().st_size
    return size / 1e6


def summary_rows(result: PipelineResult) -> list[dict[str, Any]]:
    """One row per (artifact, model file): accuracy and critical FN / FNR / AUC measured on the test split by
    the exported model itself, sparsity, parameters, file size and median latency per backend."""
    rows = []
    for key, manifest in result.manifests.items():
        art = result.artifacts[key]
        m = result.metrics[key]
        for mf in manifest.models:
            if mf.format == "torch":
                continue
            entries = [e for e in result.profile if e["model"]["path"] == f"{key}/{mf.path}"]
            ok = [e for e in entries if e.get("status") == "ok"]
            acc = next((e["accuracy"] for e in ok if isinstance(e.get("accuracy"), dict) and "accuracy" in e["accuracy"]), None)
            src = acc or m
            crit = {int(k): v for k, v in (src.get("critical_stats") or {}).items()}
            rows.append(
                {
                    "model": key,
                    "critical_names": [manifest.classes[c] for c in crit if 0 <= c < len(manifest.classes)],
                    "critical_recall": [None if v.get("fnr") is None else 1.0 - v["fnr"] for v in crit.values()],
                    "thresholds": dict(manifest.thresholds),
                    "file": mf.path,
                    "format": mf.format,
                    "precision": mf.precision,
                    "accuracy": src.get("accuracy"),
                    "critical_fn": sum(v["fn"] for v in crit.values()),
                    "critical_fnr": [v.get("fnr") for v in crit.values()],
                    "critical_fpr": [v.get("fpr") for v in crit.values()],
                    "critical_auc": [v.get("auc") for v in crit.values()],
                    "measured_by": (f"{ok[0]['backend']['name']}" if acc else "torch"),
                    "weight_sparsity": m.get("weight_sparsity"),
                    "params": m["params"],
                    "nonzero_params": m["nonzero_params"],
                    "size_mb": _file_mb(art, manifest, mf.path),
                    "latency_ms": {
                        e["backend"]["name"]: e["latency_ms"]["median"] for e in ok if e.get("batch") == 1
                    },
                }
            )
    return rows


def write_pipeline_report(result: PipelineResult) -> dict[str, Path]:
    """Write report.json and report.md (the profiler's report plus the pipeline summary) into the output dir."""
    from .devices.report import make_report, render_markdown

    for key, m in result.metrics.items():
        man = result.manifests.get(key)
        if man is not None and man.sparsity:
            m["weight_sparsity"] = (man.sparsity.get("torch") or {}).get("ratio")
    rows = summary_rows(result)
    report = make_report(
        result.profile,
        title=f"edgeslim pipeline: {result.recipe.name}",
        extra={
            "pipeline": {
                "recipe": result.recipe.to_dict(),
                "recipe_sha256": result.recipe.digest(),
                "artifacts": {k: str(v) for k, v in result.artifacts.items()},
                "metrics": result.metrics,
                "summary": rows,
                "seconds": result.seconds,
            }
        },
    )
    result.report = report
    from ._io import atomic_write_json

    md = render_markdown(report) + "\n" + _summary_markdown(rows, result)
    return {
        "json": atomic_write_json(result.out_dir / "report.json", {k: v for k, v in report.items() if not k.startswith("_")}),
        "md": atomic_write_text(result.out_dir / "report.md", md),
    }


def _f(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(_f(x, spec) for x in v) or "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def _summary_header(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Columns in the task's words: the critical class by name (``defective recall``, ``missed defective (FN)``)
    and its false positives as ``false alarms (FPR)``, measured where the deployed decision rule puts them."""
    backends = sorted({b for r in rows for b in r["latency_ms"]})
    names = next(("/".join(r["critical_names"]) for r in rows if r.get("critical_names")), "critical")
    head = ["model", "format", "prec", "accuracy", f"{names} recall", f"missed {names} (FN)", "false alarms (FPR)",
            f"{names} AUC", "sparsity", "params (nonzero)", "size MB"] + [f"{b} ms" for b in backends]
    return head, backends


def _summary_title(result: PipelineResult, rows: list[dict[str, Any]]) -> str:
    at = "at the calibrated threshold" if any(r.get("thresholds") for r in rows) else "at argmax"
    return f"edgeslim pipeline: {result.recipe.name} (test split {at}, batch 1 median latency)"


def _summary_cells(r: dict[str, Any], backends: list[str]) -> list[str]:
    return [
        r["model"], r["format"], r["precision"], _f(r["accuracy"]), _f(r.get("critical_recall"), ".3f"),
        str(r["critical_fn"]), _f(r["critical_fpr"], ".3f"), _f(r["critical_auc"], ".4f"),
        "-" if r["weight_sparsity"] is None else f"{100 * r['weight_sparsity']:.1f}%",
        f"{r['params'] / 1e6:.2f}M ({r['nonzero_params'] / 1e6:.2f}M)", f"{r['size_mb']:.2f}",
    ] + [_f(r["latency_ms"].get(b), ".2f") for b in backends]


def _summary_markdown(rows: list[dict[str, Any]], result: PipelineResult) -> str:
    head, backends = _summary_header(rows)
    lines = ["## Dense vs compressed", "", _summary_title(result, rows), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_summary_cells(r, backends)) + " |" for r in rows]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()), ""]
    return "\n".join(lines)


def print_summary(result: PipelineResult, *, console=None) -> None:
    """Print the dense-vs-compressed table with rich."""
    from rich.console import Console
    from rich.table import Table

    from .compress import distributed as dist

    if not dist.is_main():  # under torchrun only rank 0 has the artifacts and prints
        return
    console = console or Console()
    rows = summary_rows(result)
    head, backends = _summary_header(rows)
    table = Table(title=_summary_title(result, rows))
    for h in head:
        table.add_column(h, justify="left" if h in ("model", "format", "prec") else "right", no_wrap=True)
    for r in rows:
        table.add_row(*_summary_cells(r, backends))
    if console.width < 200:  # a narrow or non-terminal console would squeeze 14 columns into ellipses
        from rich.console import Console as _C

        console = _C(file=console.file, width=200, force_terminal=console.is_terminal, no_color=console.no_color)
    console.print(table)
    console.print(
        "wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        + f"; outputs in {result.out_dir} (report.json, report.md, recipe.yaml, "
        + ", ".join(f"{k}/" for k in result.artifacts) + ")"
    )


# -- single stages on an existing artifact -----------------------------------------------------------------------
def _artifact_data(manifest: Manifest, *, calibration: bool):
    """Re-create the artifact's data (from its recorded recipe) for calibration and validation, if possible."""
    from .recipe import parse_recipe

    if not manifest.recipe:
        return None, None
    recipe = parse_recipe(manifest.recipe)
    from .compress.data import load_data_from_recipe

    data = load_data_from_recipe(recipe.data, manifest.preprocessing, seed=recipe.seed)
    calib = _calibration_batches(data, recipe.quantize.calibration_size) if calibration else None
    return calib, _split_arrays(data, "test")


def export_existing(
    artifact: str | Path,
    out: str | Path,
    *,
    formats: Iterable[str],
    precisions: Iterable[str] = ("fp32",),
    console=None,
) -> Manifest:
    """Add formats/precisions to an artifact, validated on the test split of the data recorded in its recipe."""
    from .export import export_existing as _export_existing

    manifest = load_manifest(artifact)
    precisions = list(precisions)
    calib, validation = _artifact_data(manifest, calibration="int8" in precisions)
    if console is not None and validation is None:
        console.print("[yellow]the artifact records no recipe: exports are checked for parity only[/yellow]")
    return _export_existing(
        artifact, out, formats=list(formats), precisions=precisions, calibration=calib, validation=validation
    )


def labelled_folder(directory: str | Path, manifest: Manifest):
    """A labelled ImageFolder (``DIR/<class>/*.jpg``) preprocessed for ``manifest``: ``(inputs, labels)``.

    Raises:
        DataError: no class folders, or a folder whose name is not one of the model's classes (did-you-mean).
    """
    import numpy as np

    from .compress.data import IMAGE_EXTENSIONS
    from .errors import DataError
    from .preprocess import preprocess
    from .registry import did_you_mean

    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"--data {root}: not a directory of class folders")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DataError(f"--data {root}: no class folders (expected {root}/<class name>/<image files>)")
    index = {c: i for i, c in enumerate(manifest.classes)}
    xs, ys = [], []
    for d in folders:
        if d.name not in index:
            raise DataError(
                f"--data {root}: folder '{d.name}' is not a class of model '{manifest.name}'."
                f"{did_you_mean(d.name, list(index))} The model's classes: {', '.join(manifest.classes[:20])}"
            )
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            xs.append(preprocess(f, manifest.preprocessing)[0])
            ys.append(index[d.name])
    if not xs:
        raise DataError(f"--data {root}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def profile_to_report(
    artifact: str | Path,
    out: str | Path,
    *,
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    seconds: float | None,
    iterations: int,
    warmup: int,
    threads: int | None,
    data_dir: str | Path | None = None,
    loadgen: str | None = None,
    html: bool = True,
    progress=True,
    console=None,
) -> Path:
    """Profile an artifact on this machine and write report.json / report.md / report.html into ``out``.

    Accuracy, per-class recall and critical FN come from ``data_dir`` (a labelled ImageFolder) or, by default,
    the test split of the data recorded in the artifact's recipe. ``loadgen`` adds an MLPerf LoadGen run
    (``single-stream`` or ``offline``) per model file and backend. Returns the report.json path.
    """
    from .devices.profiler import ProfileConfig, backend_class, profile_artifact
    from .devices.report import make_report, write_report
    from .devices.targets import detect

    manifest = load_manifest(artifact)
    if loadgen is not None and loadgen not in ("single-stream", "offline"):
        raise ConfigError(f"--loadgen '{loadgen}': use single-stream or offline")
    data = labelled_folder(data_dir, manifest) if data_dir else _artifact_data(manifest, calibration=False)[1]
    cfg = ProfileConfig(
        warmup=warmup, iterations=iterations, seconds=2.0 if seconds is None else seconds,
        batch_sizes=tuple(batch_sizes or (1,)),
    )
    target = detect()
    entries = profile_artifact(
        artifact, backends=backends, cfg=cfg, threads=threads, data=data, progress=progress, device_state=target
    )
    extra: dict[str, Any] = {}
    if loadgen:
        from .devices.loadgen import LoadGenConfig, run_loadgen
        from .runtime.base import BackendOptions

        runs = []
        for mf in manifest.models:
            for b in backends:
                cls = backend_class(b)
                if mf.format not in getattr(cls, "formats", ()):
                    continue
                with cls(Path(artifact) / mf.path, BackendOptions(threads=threads)) as be:
                    res = run_loadgen(be, cfg=LoadGenConfig(scenario=loadgen, min_duration_s=seconds or 10.0))
                res.update(model=mf.path, precision=mf.precision, backend=b)
                runs.append(res)
                if console is not None:
                    metric = (f"p90 {res.get('p90_latency_ms'):.3f} ms" if loadgen == "single-stream"
                              else f"{res.get('samples_per_second'):.1f} samples/s")
                    console.print(f"loadgen {loadgen} {mf.path} on {b}: {metric} ({res.get('result')})")
        extra["loadgen"] = runs
    report = make_report(entries, artifact_dir=artifact, target=target, extra=extra)
    return write_report(out, report, html=html)["json"]


def profile_remote_to_report(
    url: str,
    model: str,
    out: str | Path,
    *,
    batch_sizes: Sequence[int],
    seconds: float | None,
    iterations: int,
    warmup: int,
    token: str | None = None,
    concurrency: int = 1,
    html: bool = True,
) -> Path:
    """Profile a model behind an edgeslim (or any KServe v2) server over HTTP; write the report into ``out``."""
    from .devices.profiler import ProfileConfig
    from .devices.remote import profile_remote
    from .devices.report import make_report, write_report

    cfg = ProfileConfig(warmup=warmup, iterations=iterations, seconds=2.0 if seconds is None else seconds)
    runs = [
        profile_remote(url, model, cfg=cfg, batch=b, token=token, concurrency=concurrency)
        for b in (batch_sizes or (1,))
    ]
    report = make_report([], title=f"edgeslim remote profile: {model} at {url}", extra={"remote": runs})
    return write_report(out, report, html=html)["json"]
