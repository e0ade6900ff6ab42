"""Export validation: run every model file of an artifact and compare it with the PyTorch reference.

Every file runs through the same runtime backend a user would load it with (``edgeslim.runtime.BACKENDS``) on
the same preprocessed test inputs. Per file it records max and mean |logit difference|, top-1 agreement with the
reference, accuracy and the false negatives of each critical class. Tolerances depend on the precision (see
:class:`~edgeslim.recipe.ValidateSection`): FP32 must match the logits (``fp32_atol``) and the top-1
(``fp32_min_agreement``); FP16 and INT8 are judged on top-1 agreement and on how many critical false negatives
they add, because their logits differ by design. Every mismatch across all files is collected and raised as one
:class:`~edgeslim.errors.ValidationError`.

Which split decides. FP32 parity may be checked on any split (it is a property of the conversion). Judging an
FP16 / INT8 file decides what ships (the file is left out, or re-quantized with accuracy control), so when a val
split is given (``val=``) those files are judged on it and the test split's figures are only reported; without
one they are judged on the inputs given, and the report says so (``decided_on``).

The extra-critical-FN limit scales with the deciding split (:func:`critical_fn_limit`): a file fails when it
misses more critical samples than the reference by more than a relative budget (``max_extra_critical_fnr`` of the
split's critical samples, at least 1) **and** a one-sided exact McNemar test on the discordant critical samples
says it misses more often than the reference at level ``critical_fn_alpha``. ``max_extra_critical_fn`` set to a
count overrides both with that fixed limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..artifact import Manifest, ModelFile
from ..errors import ConfigError, EdgeslimError, MissingDependencyError, ValidationError
from ..recipe import ValidateSection
from ..runtime.runners import DerivedTable, default_runner_names
from ..scoring import critical_fn, critical_missed, decide

#: which runtime backend validates each model format: the runner that runs it (``runtime.runner_for_format``),
#: read from the registered runners on each access, so a plugin's format is validated by its own runner
DEFAULT_BACKENDS: Mapping[str, str] = DerivedTable(default_runner_names, "model format -> runtime backend")

#: backend options used for validation. OpenVINO's CPU plugin runs FP32 IRs in bf16 by default on CPUs with
#: AMX / AVX512-BF16 (max |diff| ~1e-4 on TinyNet instead of ~1e-8): validation measures the export, so it
#: pins f32 execution; the runtime's own default is what profiling measures.
VALIDATION_OPTIONS: dict[str, dict[str, Any]] = {
    "openvino": {"device": "cpu", "extra": {"config": {"INFERENCE_PRECISION_HINT": "f32"}}},
    "onnxruntime": {"device": "cpu"},
}


def _critical_fn(pred: np.ndarray, labels: np.ndarray, critical: list[int]) -> dict[str, int]:
    # FN of class c: a sample of class c predicted as anything else (edgeslim.scoring counts it), keyed as JSON keys
    return {str(c): fn for c, fn in critical_fn(pred, labels, critical).items()}


def classification_summary(logits: np.ndarray, labels: np.ndarray | None, critical: list[int], *,
                           thresholds: Mapping[str, float] | None = None, rule: str = "threshold") -> dict[str, Any]:
    """Accuracy and the critical classes' false negatives of ``logits`` (empty when there are no labels).

    With ``thresholds`` (the manifest's calibrated critical thresholds) both are counted as the artifact decides
    when deployed (:func:`edgeslim.decision.predict` under ``rule``), as the profile, the summary and the
    recommendation count them, so one file has one accuracy in every report; the argmax accuracy is kept beside it
    as ``argmax_accuracy``.
    """
    if labels is None:
        return {}
    top1 = logits.argmax(1)
    decided = decide(logits, thresholds, rule)
    out: dict[str, Any] = {"accuracy": round(float((decided == labels).mean()), 6),
                           "critical_fn": _critical_fn(decided, labels, critical)}
    if thresholds:
        out["critical_fn_at"] = "calibrated thresholds"
        out["accuracy_at"] = "calibrated thresholds"
        out["argmax_accuracy"] = round(float((top1 == labels).mean()), 6)
    return out


def _run(backend: Any, inputs: np.ndarray, max_batch: int = 64) -> np.ndarray:
    """Run ``inputs`` through a backend in chunks its batch dimension accepts, padding the last fixed-size chunk."""
    spec = backend.inputs[0]
    fixed = spec.shape[0] if spec.shape and spec.shape[0] > 0 else None
    step = fixed or max_batch
    out = []
    for i in range(0, len(inputs), step):
        chunk = inputs[i : i + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        result = backend.infer(np.ascontiguousarray(chunk, dtype=np.float32))
        logits = result.get("logits")
        if logits is None:
            logits = next(iter(result.values()))
        out.append(np.asarray(logits)[:n])
    return np.concatenate(out)


def problem_line(p: Any) -> str:
    """``file: metric [on split] = value (limit ...)``, one validation problem as the error and the report say it."""
    if isinstance(p, dict):
        on = f" on {p['split']}" if p.get("split") else ""
        return f"{p.get('file')}: {p.get('metric')}{on} = {p.get('value')} (limit {p.get('limit')})"
    return str(p)


def _mcnemar_p(file_only: int, reference_only: int) -> float:
    """One-sided exact McNemar p-value of "the file misses critical samples more often than the reference": the
    chance of at least ``file_only`` of the discordant samples going against the file if each were a fair coin."""
    n = file_only + reference_only
    if n == 0 or file_only == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy comes with scikit-learn (edgeslim[serve]); the exact test, not a z-approximation

    return float(binomtest(file_only, n, 0.5, alternative="greater").pvalue)


def critical_fn_limit(cfg: ValidateSection, critical_samples: int, reference_caught: int,
                      reference_only_missed: int) -> dict[str, Any]:
    """The extra-critical-FN limit of an FP16 / INT8 file on a split, with the figures it comes from.

    Args:
        cfg: ``max_extra_critical_fn`` (a fixed count, overrides the rest), ``max_extra_critical_fnr`` and
            ``critical_fn_alpha``.
        critical_samples: samples of the critical classes in the deciding split.
        reference_caught: of those, how many the reference (PyTorch) decides correctly.
        reference_only_missed: critical samples the reference misses and the file catches (the discordant pairs in
            the file's favour, ``c`` in McNemar's table).

    Returns:
        ``{"limit", "rule", "critical_samples", "budget", ...}``: ``limit`` is the largest number of extra critical
        FN (file FN minus reference FN) that passes. Rule ``fixed``: ``max_extra_critical_fn``. Rule ``budget``:
        ``budget = max(1, floor(max_extra_critical_fnr * critical_samples))``; and where the one-sided exact McNemar
        test at ``critical_fn_alpha`` could reject on this split, ``noise`` is the largest excess it would not call
        significant given ``reference_only_missed``, and ``limit = max(budget, noise)``: a file fails only when it
        is both over the budget and significantly worse than the reference. A split on which even the worst outcome
        (the file missing every critical sample the reference catches) is not significant gives no ``noise`` term:
        there the budget alone decides.
    """
    out: dict[str, Any] = {"critical_samples": int(critical_samples)}
    if cfg.max_extra_critical_fn is not None:
        return {**out, "rule": "fixed", "limit": int(cfg.max_extra_critical_fn)}
    budget = max(1, int(math.floor(cfg.max_extra_critical_fnr * critical_samples + 1e-9)))
    out.update(rule="budget", budget=budget, max_extra_critical_fnr=cfg.max_extra_critical_fnr, limit=budget)
    alpha = cfg.critical_fn_alpha
    if alpha is None or reference_caught <= 0:
        return out
    out["alpha"] = alpha
    c = int(reference_only_missed)
    if _mcnemar_p(reference_caught, c) >= alpha:  # not even the worst case would be significant here
        out["noise"] = "too few critical samples for the test at this level"
        return out
    b = 1  # the smallest number of file-only misses the test calls significant (exists: the worst case is)
    while _mcnemar_p(b, c) >= alpha:
        b += 1
    noise = b - 1 - c
    out.update(noise=noise, limit=max(budget, noise))
    return out


def _limits(precision: str, cfg: ValidateSection) -> dict[str, float]:
    if precision == "fp32":
        return {"max_abs_diff": cfg.fp32_atol, "top1_agreement": cfg.fp32_min_agreement}
    return {"top1_agreement": cfg.fp16_min_agreement if precision == "fp16" else cfg.int8_min_agreement}


def _missed(logits: np.ndarray, labels: np.ndarray, critical: list[int], thresholds: Mapping[str, float] | None,
            rule: str) -> np.ndarray:
    """Per sample: a critical-class sample the decision (at ``thresholds``) gives another class."""
    return critical_missed(decide(logits, thresholds, rule), labels, critical)


def _reduced_figures(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, critical: list[int],
                     cfg: ValidateSection, thresholds: Mapping[str, float] | None, ref_thresholds: Mapping[str, float],
                     rule: str) -> dict[str, Any]:
    """Agreement, accuracy, critical FN and the extra-FN limit of an FP16 / INT8 file on one split.

    The agreement is that of the decisions each file ships with: this file at its own thresholds against the
    reference at the FP32 file's, under the manifest's rule (what a user of either file receives). The argmax the
    check used before is not what either file deploys: on ELPV the OpenVINO INT8 file agreed with FP32 on 94.9 % of
    val argmaxes but on 96.5 % of the deployed decisions, missing fewer defective cells.
    """
    out: dict[str, Any] = {"samples": int(len(logits))}
    if thresholds is not None or ref_thresholds:
        agree = decide(logits, thresholds, rule) == decide(reference, ref_thresholds or None, rule)
        out["top1_agreement"] = round(float(agree.mean()), 6)
        out["agreement_of"] = "deployed decisions"
    else:
        out["top1_agreement"] = round(float((logits.argmax(1) == reference.argmax(1)).mean()), 6)
        out["agreement_of"] = "argmax"
    if labels is None or not critical:
        return out
    out.update(classification_summary(logits, labels, critical, thresholds=thresholds, rule=rule))
    file_missed = _missed(logits, labels, critical, thresholds, rule)
    ref_missed = _missed(reference, labels, critical, ref_thresholds, rule)
    b, c = int((file_missed & ~ref_missed).sum()), int((ref_missed & ~file_missed).sum())
    n_crit = int(np.isin(labels, critical).sum())
    out["extra_critical_fn"] = b - c
    out["discordant_critical"] = {"file_only_missed": b, "reference_only_missed": c,
                                  "p_value": round(_mcnemar_p(b, c), 6)}
    out["critical_fn_limit"] = critical_fn_limit(cfg, n_crit, n_crit - int(ref_missed.sum()), c)
    return out


def _compare(mf: ModelFile, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
             critical: list[int], ref_summary: dict[str, Any], cfg: ValidateSection, *,
             thresholds: Mapping[str, float] | None = None, ref_thresholds: Mapping[str, float] | None = None,
             rule: str = "threshold", val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Judge one file. ``val``: ``(its logits, labels, reference logits)`` on the val split, which then decides an
    FP16 / INT8 file (agreement and extra critical FN); the figures on ``logits`` are reported beside it."""
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    finite = bool(np.isfinite(logits).all()) and (val is None or bool(np.isfinite(val[0]).all()))
    result: dict[str, Any] = {
        "format": mf.format,
        "precision": mf.precision,
        "max_abs_diff": float(diff.max()) if finite else float("inf"),
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "top1_agreement": round(float((logits.argmax(1) == reference.argmax(1)).mean()), 6),
    }
    summary = classification_summary(logits, labels, critical, thresholds=thresholds, rule=rule)
    result.update(summary)
    if summary and ref_summary:
        result["extra_critical_fn"] = int(sum(summary["critical_fn"].values()) - sum(ref_summary["critical_fn"].values()))
    limits: dict[str, Any] = _limits(mf.precision, cfg)
    problems = []
    if not finite:
        problems.append({"file": mf.path, "metric": "finite_logits", "value": "NaN/inf", "limit": "all finite"})
    judged, split = result, None
    if mf.precision != "fp32":
        ref_thr = ref_thresholds if ref_thresholds is not None else {}
        reported = _reduced_figures(logits, reference, labels, critical, cfg, thresholds, ref_thr, rule)
        result["top1_agreement"], result["agreement_of"] = reported["top1_agreement"], reported["agreement_of"]
        result["decided_on"] = split = "val" if val is not None else "test"
        if val is not None:
            judged = _reduced_figures(val[0], val[2], val[1], critical, cfg, thresholds, ref_thr, rule)
            result["val"] = judged
            result["test_discordant_critical"] = reported.get("discordant_critical")
        else:
            judged = reported
            for k in ("discordant_critical", "critical_fn_limit"):
                if k in reported:
                    result[k] = reported[k]
        if "critical_fn_limit" in judged:
            limits["extra_critical_fn"] = judged["critical_fn_limit"]["limit"]
    result["limits"] = limits
    for metric, limit in limits.items():
        value = (judged if metric != "max_abs_diff" else result).get(metric)
        if value is None:
            continue
        bad = value < limit if metric == "top1_agreement" else value > limit
        if bad:
            problem = {"file": mf.path, "metric": metric, "value": value,
                       "limit": f">= {limit}" if metric == "top1_agreement" else f"<= {limit}"}
            if split is not None:
                problem["split"] = split
            problems.append(problem)
    result["passed"] = not problems
    return result, problems


def validate_exports(
    directory: str | os.PathLike,
    manifest: Manifest,
    reference_logits: np.ndarray,
    inputs: np.ndarray,
    labels: np.ndarray | None,
    cfg: ValidateSection | None = None,
    *,
    backend_for: Mapping[str, str] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run every model file of an artifact on ``inputs`` and compare it with the PyTorch reference.

    Args:
        directory: the artifact directory (or the temporary one being written).
        manifest: lists the model files (``manifest.models``) and the critical classes.
        reference_logits: PyTorch logits on ``inputs``, shape ``[N, K]``.
        inputs: preprocessed float32 NCHW test inputs.
        labels: their int labels, or None to skip accuracy and critical FN.
        cfg: tolerances per precision.
        backend_for: model format -> runtime backend name (default :data:`DEFAULT_BACKENDS`).
        backend_options: backend name -> :class:`~edgeslim.runtime.BackendOptions` (or its kwargs) to load with
            (default :data:`VALIDATION_OPTIONS`).
        val: ``(inputs, labels, reference_logits)`` of the val split. When given, FP16 and INT8 files are judged on
            it (top-1 agreement, extra critical FN) and their figures on ``inputs`` are only reported: what ships
            is decided on val, never on test. FP32 parity is checked on ``inputs``.

    Returns:
        A JSON-ready report for ``manifest.validation``: ``passed``, ``samples``, ``reference`` (accuracy and
        critical FN of PyTorch), ``models`` (per file: backend, max/mean |diff|, top-1 agreement, accuracy,
        critical FN, extra critical FN, limits, passed), ``skipped`` files with the reason, ``problems`` (empty).
        The per-file figures are those of ``inputs`` (the test split: reported); an FP16 / INT8 file also has
        ``decided_on`` (``val`` or ``test``), ``val`` (its figures on the val split, when given), the discordant
        critical samples with McNemar's p-value and ``critical_fn_limit`` (how its limit was derived, see
        :func:`critical_fn_limit`); ``decided_on`` and ``val`` (samples, reference figures) are also at the top.
        The torch weights are the reference itself and are listed as skipped; a format whose backend is not
        registered or not installed here (TensorRT without a GPU) is skipped with the reason.

    Raises:
        ValidationError: any file fails to load or run, or breaks a tolerance. The message lists every
            (file, metric, value, limit); the full report is on the exception's ``report`` attribute.
        ConfigError: the reference, inputs and labels do not line up.
    """
    from ..runtime import BACKENDS, BackendOptions

    cfg = cfg or ValidateSection()
    directory = Path(directory)
    inputs = np.asarray(inputs, dtype=np.float32)
    reference = np.asarray(reference_logits, dtype=np.float32)
    if inputs.ndim != 4 or reference.ndim != 2 or len(inputs) != len(reference) or len(inputs) == 0:
        raise ConfigError(
            f"validation needs N>0 inputs [N, C, H, W] and reference logits [N, K]; got {list(inputs.shape)}"
            f" and {list(reference.shape)}"
        )
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(inputs):
            raise ConfigError(f"validation has {len(inputs)} inputs but {len(labels)} labels")
    if val is not None:
        vx, vy, vref = np.asarray(val[0], dtype=np.float32), np.asarray(val[1]).astype(np.int64).reshape(-1), \
            np.asarray(val[2], dtype=np.float32)
        if vx.ndim != 4 or len(vx) == 0 or len(vx) != len(vy) or vref.shape != (len(vx), reference.shape[1]):
            raise ConfigError(
                f"the val split needs N>0 inputs [N, C, H, W], N labels and reference logits [N, {reference.shape[1]}];"
                f" got {list(vx.shape)}, {list(vy.shape)} and {list(vref.shape)}"
            )
        val = (vx, vy, vref)
    backends = {**DEFAULT_BACKENDS, **dict(backend_for or {})}
    options = {**VALIDATION_OPTIONS, **dict(backend_options or {})}
    critical = list(manifest.critical)
    thresholds, rule = dict(manifest.thresholds), manifest.decision_rule
    ref_summary = classification_summary(reference, labels, critical, thresholds=thresholds, rule=rule)

    report: dict[str, Any] = {"samples": int(len(inputs)), "reference": ref_summary, "models": {}, "skipped": {},
                              "decided_on": "val" if val is not None else "test"}
    if val is not None:
        report["val"] = {"samples": int(len(val[0])),
                         "reference": classification_summary(val[2], val[1], critical, thresholds=thresholds, rule=rule)}
    problems: list[dict[str, Any]] = []
    for mf in manifest.models:
        if mf.format == "torch":
            report["skipped"][mf.path] = "PyTorch weights: the reference the others are compared with"
            continue
        name = backends.get(mf.format)
        if name is None or name not in BACKENDS:
            report["skipped"][mf.path] = f"no runtime backend for format '{mf.format}' is registered"
            continue
        opts = options.get(BACKENDS.canonical(name))
        if isinstance(opts, Mapping):
            opts = BackendOptions(**opts)
        try:
            with BACKENDS.get(name)(directory / mf.path, opts) as backend:
                logits = _run(backend, inputs)
                val_logits = _run(backend, val[0]) if val is not None and mf.precision != "fp32" else None
        except MissingDependencyError as exc:
            report["skipped"][mf.path] = f"cannot run here: {exc}"
            continue
        except (EdgeslimError, RuntimeError, ValueError) as exc:
            problems.append({"file": mf.path, "metric": "runs", "value": f"{type(exc).__name__}: {exc}",
                             "limit": f"loads and runs in {name}"})
            report["models"][mf.path] = {"format": mf.format, "precision": mf.precision, "backend": name,
                                         "passed": False, "error": str(exc)}
            continue
        if logits.shape != reference.shape:
            problems.append({"file": mf.path, "metric": "output_shape", "value": list(logits.shape),
                             "limit": list(reference.shape)})
            continue
        # each file at the thresholds it is deployed with (its own, calibrated on val, for INT8 / FP16)
        result, found = _compare(mf, logits, reference, labels, critical, ref_summary, cfg,
                                 thresholds=manifest.thresholds_for(mf), ref_thresholds=thresholds, rule=rule,
                                 val=None if val_logits is None or val is None else (val_logits, val[1], val[2]))
        if "thresholds" in mf.extra:
            result["thresholds"] = dict(mf.extra["thresholds"])
        result["backend"] = name
        report["models"][mf.path] = result
        problems += found
    report["problems"] = problems
    report["passed"] = not problems
    if problems:
        lines = "; ".join(problem_line(p) for p in problems)
        err = ValidationError(
            f"{len(problems)} export mismatch(es) against the PyTorch reference on {len(inputs)} samples: {lines}."
            " Re-export, or loosen the tolerance in the recipe's validate section if the difference is expected"
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report
