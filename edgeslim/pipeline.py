"""The main job: compress -> export -> validate -> profile, driven by a recipe.

This module composes the stages for the CLI (and for users who prefer Python); it holds no stage logic itself and
is the only code that reads every recipe section. Its summary table is :mod:`edgeslim.summary`; the single-stage
commands call the stages directly (:func:`edgeslim.export.export_existing`,
:func:`edgeslim.devices.profile_report.profile_to_report`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ._io import atomic_write_text
from .artifact import Manifest, TensorInfo
from .errors import ConfigError
from .recipe import Recipe
from .summary import PipelineResult as PipelineResult  # what a run produced; the summary renders it

STAGES = ("compress", "export", "profile")


#: exit code of ``edgeslim pipeline`` / ``edgeslim export`` when the artifacts were written without every format
EXIT_PARTIAL = 3


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

    from .compress.api import compress
    from .compress.data import load_data_from_recipe
    from .compress.prune.stats import count_params_macs
    from .compress.sources import load_pretrained, replace_head

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
    from .recipe import recipe_warnings

    for w in recipe_warnings(recipe):  # before minutes of training; the summary repeats them
        say(f"[yellow]warning: {w}[/yellow]")
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
    res = compress(model, data, run_dir=run_dir, resume=resume, progress=progress, **recipe.compress_options())
    result.notes = list(res.notes)
    for note in result.notes:
        say(f"[yellow]note: {note}[/]")
    qat_model = None  # the model a training quantization method trained, for export
    if recipe.quantize.needs_training:
        qat_model = _train_quantized(res, data, recipe, run_dir, resume=resume, progress=progress, say=say)
    result.seconds["compress"] = time.perf_counter() - t0
    if res.info.get("fpr_budget"):
        result.training["fpr_budget"] = fb = res.info["fpr_budget"]
        if not fb["held"]:
            why = (f"in {len(fb['unheld'])} epoch(s) with gamma, lambda and the critical balance at their floors"
                   if fb["unheld"] else f"at the end of training (val FPR {fb['last']['val_fpr']:.3f}; the epochs ran"
                   " out while it was still lowering the critical terms)")
            say(f"[yellow]warning: the loss did not hold the critical FPR budget {fb['budget']:g} on val {why};"
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
    for key, (m, metrics, _table) in variants.items():
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
        _finish_on_main(result, recipe, data, variants, base, formats, stages, out_dir, progress, say, t0,
                        qat_model=qat_model)
    finally:
        dist.barrier()
        dist.shutdown()
    return result


def _finish_on_main(result, recipe, data, variants, base, formats, stages, out_dir, progress, say, t0, *,
                    qat_model=None) -> None:
    """Calibrate, export, profile and write the reports (the single process, or rank 0 under torchrun)."""
    from .compress.data import calibration_arrays, split_arrays
    import numpy as np

    from .compress.metrics import split_logits
    from .export import export_artifact
    from .summary import write_pipeline_report

    thresholds: dict[str, dict[str, float]] = {}
    if recipe.decision.target_fnr is not None or recipe.decision.target_fpr is not None:
        thresholds = _calibrate(variants, data, recipe, say)

    t1 = time.perf_counter()
    int8 = recipe.quantize.makes_int8
    calib = calibration_arrays(data, recipe.quantize.calibration_size) if int8 else None
    # accuracy control (the method, or the fallback of an INT8 file that misses the validate budget) judges layers
    # on the val split; the test split stays for the final numbers
    # (and every exported file's val reference for the server's field monitoring: export.reference)
    val_split = split_arrays(data, "val") if recipe.data.val_fraction > 0 else None
    test_x, test_y = split_arrays(data, "test")
    for key, (m, _metrics, table) in variants.items():
        if key == "dense" and "profile" not in stages and not formats:
            continue
        precisions = ["fp32"] + (["int8"] if key == "compressed" and int8 else [])
        manifest = Manifest(
            name=f"{recipe.name}-{key}",
            thresholds=thresholds.get(key, {}),
            metrics={"test": result.metrics[key], **result.training},
            notes=result.notes if key == "compressed" else [],
            sparsity={"layers": table} if table else {},
            **base,
        )
        say(f"exporting {key}: {', '.join(formats) or 'torch'} ({', '.join(precisions)})")
        # the torch logits the compress stage scored and calibrated with (remembered per model): the export
        # validates every file against them instead of running the model over val and test again
        known = {}
        for split, (_, labels) in (("test", (test_x, test_y)), ("val", val_split or (None, None))):
            if labels is not None:
                logits, order = split_logits(m, data, split)
                if np.array_equal(order, labels):
                    known[split] = logits
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
            strict=recipe.export.strict,
            target=recipe.target,
            qat_model=qat_model if key == "compressed" else None,
            val_split=val_split,
            reference_logits=known,
        )
        result.artifacts[key] = out_dir / key
        for f in result.manifests[key].validation.get("failed", []):
            result.failed.append({"model": key, **f})
            say(f"[yellow]{key}: {f['file'] or f['format'] + '/' + f['precision']} left out: {f['reason']}[/]")
    result.seconds["export"] = time.perf_counter() - t1

    splits = {"test": (test_x, test_y)}
    if recipe.data.val_fraction > 0:  # the recommendation is judged on val, where decisions are made
        splits = {"val": val_split if val_split is not None else split_arrays(data, "val"), **splits}
    t2 = time.perf_counter()
    measure_artifacts(result, splits, recipe.profile, timed="profile" in stages, progress=progress, say=say)
    result.seconds["profile"] = time.perf_counter() - t2
    record_recommendations(result)
    result.seconds["total"] = time.perf_counter() - t0
    write_pipeline_report(result)


def measure_artifacts(result: PipelineResult, splits: dict[str, Any], profile: Any, *, timed: bool = True,
                      progress: bool = False, say=lambda *a, **k: None) -> None:
    """Score every exported file of ``result.artifacts`` on ``splits`` by the runtime that runs it, and time it on
    the backends of ``profile`` (the recipe's profile section) when ``timed``.

    Every file is scored, also one whose backend the profile leaves out: a row of the summary is then measured by
    the runtime that can run that file or shown as not measured, never filled with another file's figures. The
    test accuracy of a timed entry is the score of the same file on the same backend, computed once.
    """
    from .devices.profiler import ProfileConfig, add_accuracy_deltas, profile_artifact, score_artifact

    cfg = ProfileConfig(warmup=profile.warmup, iterations=profile.iterations, seconds=profile.seconds,
                        batch_sizes=tuple(profile.batch_sizes))
    for key, path in result.artifacts.items():
        scores = score_artifact(path, splits, backends=profile.backends, threads=profile.threads,
                                skip_formats=("torch",))
        result.scores[key] = scores
        if not timed:
            continue
        say(f"profiling {key} on {', '.join(profile.backends)}")
        entries = profile_artifact(path, backends=profile.backends, cfg=cfg, threads=profile.threads,
                                   progress=progress)
        for entry in entries:
            s = scores.get(entry["model"]["path"]) or {}
            if entry.get("status") == "ok" and s.get("measured_by") == entry["backend"]["name"] and "test" in s["splits"]:
                entry["accuracy"] = s["splits"]["test"]
            entry["artifact"] = key
            entry["variant"] = key
            entry["model"] = {**entry["model"], "path": f"{key}/{entry['model']['path']}"}
        add_accuracy_deltas(entries)
        result.profile.extend(entries)


def record_recommendations(result: PipelineResult) -> None:
    """Write each artifact's recommended file (:func:`edgeslim.summary.recommend`, restricted to the artifact's own
    files) into its manifest, atomically, so that the artifact directory deployed alone carries it and `edgeslim
    serve ARTIFACT` without --backend serves it. The host that measured it is recorded beside it: on another kind
    of host the figures, and so the choice, may differ."""
    from ._io import atomic_write_json
    from .artifact import MANIFEST
    from .hardware import cpu_info, host_target
    from .summary import recommend, recommendation_budgets, summary_rows

    rows = summary_rows(result)
    if not any(r["latency_ms"] for r in rows):
        return  # nothing was timed (no profile stage): nothing to recommend, and the manifests stay as exported
    budgets = recommendation_budgets(result.recipe)
    on = {"target": host_target().name, "cpu": cpu_info().get("model")}
    for key, path in result.artifacts.items():
        rec = recommend(rows, budgets, only=key)
        kept = {k: rec.get(k) for k in ("path", "format", "precision", "backend", "latency_ms", "latency_p90_ms",
                                         "val", "test", "budgets") if rec.get(k) is not None}
        entry = {"path": rec.get("path"), **kept, "reason": rec["reason"], "measured_on": on}
        manifest = result.manifests[key].model_copy(update={"recommended": entry})
        atomic_write_json(Path(path) / MANIFEST, manifest.model_dump(mode="json"))
        result.manifests[key] = manifest


def _check_quantize_request(model, data, recipe: Recipe) -> None:
    """Refuse, before any training, distillation without a teacher and a quantization method that trains (QAT)
    on a model it cannot train (the method's ``training_check``)."""
    from .compress.prune import check_distillation
    from .quant.config import resolve_hook

    q = recipe.quantize
    # compress() checks it too; here it also comes before the slower probe of the method's training
    check_distillation(recipe.prune, train=recipe.train, distill=recipe.distill, qat=q.needs_training)
    if q.needs_training and q.training_check:
        from .compress.prune.stats import example_shape

        resolve_hook(q.training_check)(model, example_shape(data), q)


def _train_quantized(res, data, recipe: Recipe, run_dir: Path, *, resume: bool, progress: bool, say):
    """The training of a quantization method that trains (QAT: the method's ``training_hook``) on the compressed
    model (masks kept); ``res`` then holds its FP32 weights; returns the trained model export quantizes."""
    from .compress.data import calibration_arrays
    from .compress.train import _evaluate_split
    from .quant.config import resolve_hook

    q = recipe.quantize
    say(q.training_note()
        + (f", distilling from the dense model (weight {recipe.distill.weight})" if recipe.distill.weight > 0 else ""))
    calib = calibration_arrays(data, q.calibration_size)
    trained = resolve_hook(q.training_hook)(
        res.model, data, recipe, run_dir=Path(run_dir) / q.method, calibration=calib, masks=res.masks,
        teacher=res.dense_model if recipe.distill.weight > 0 else None, resume=resume, progress=progress,
        target=recipe.target)
    res.model = trained.fp32_model
    res.metrics = _evaluate_split(trained.fp32_model, data, "test", recipe.data.batch_size, _torch_device(recipe))
    res.history = list(res.history) + trained.history
    res.info = {**res.info, q.method: trained.info}
    return trained.model


def _torch_device(recipe: Recipe):
    from .compress.train import _device

    return _device(recipe.train.device)


def _calibrate(variants, data, recipe: Recipe, say) -> dict[str, dict[str, float]]:
    """Per-model critical-class thresholds calibrated on the val split to the recipe's target FNR / FPR."""
    from .compress.metrics import split_logits
    from .compress.thresholds import calibrate_thresholds, manifest_thresholds
    from .errors import DataError
    from .scoring import softmax

    out = {}
    for key, (m, _, _) in variants.items():
        logits, labels = split_logits(m, data, "val")
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


from ._verbs import make_callable as _make_callable  # noqa: E402

# ``edgeslim.pipeline(recipe, out_dir)`` is the verb (run_pipeline) and this module at once
_make_callable(__name__, "edgeslim.pipeline:run_pipeline")
