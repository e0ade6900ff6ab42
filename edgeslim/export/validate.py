"""Export validation: run every model file of an artifact and compare it with the PyTorch reference.

Every file runs through the same runtime backend a user would load it with (``edgeslim.runtime.BACKENDS``) on
the same preprocessed test inputs. Per file it records max and mean |logit difference|, top-1 agreement with the
reference, accuracy and the false negatives of each critical class. Tolerances depend on the precision (see
:class:`~edgeslim.recipe.ValidateSection`): FP32 must match the logits (``fp32_atol``) and the top-1
(``fp32_min_agreement``); FP16 and INT8 are judged on top-1 agreement and on how many critical false negatives
they add (``max_extra_critical_fn``), because their logits differ by design. Every mismatch across all files is
collected and raised as one :class:`~edgeslim.errors.ValidationError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..artifact import Manifest, ModelFile
from ..errors import ConfigError, EdgeslimError, MissingDependencyError, ValidationError
from ..recipe import ValidateSection

#: which runtime backend validates each model format
DEFAULT_BACKENDS: dict[str, str] = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}

#: backend options used for validation. OpenVINO's CPU plugin runs FP32 IRs in bf16 by default on CPUs with
#: AMX / AVX512-BF16 (max |diff| ~1e-4 on TinyNet instead of ~1e-8): validation measures the export, so it
#: pins f32 execution; the runtime's own default is what profiling measures.
VALIDATION_OPTIONS: dict[str, dict[str, Any]] = {
    "openvino": {"device": "cpu", "extra": {"config": {"INFERENCE_PRECISION_HINT": "f32"}}},
    "onnxruntime": {"device": "cpu"},
}


def _critical_fn(pred: np.ndarray, labels: np.ndarray, critical: list[int]) -> dict[str, int]:
    # FN of class c: a sample of class c predicted as anything else (the miss the class-dependent loss targets).
    return {str(c): int(((labels == c) & (pred != c)).sum()) for c in critical}


def classification_summary(logits: np.ndarray, labels: np.ndarray | None, critical: list[int], *,
                           thresholds: Mapping[str, float] | None = None, rule: str = "threshold") -> dict[str, Any]:
    """Accuracy (top-1) and the critical classes' false negatives of ``logits`` (empty when there are no labels).

    With ``thresholds`` (the manifest's calibrated critical thresholds) the false negatives are counted as the
    artifact decides when deployed (:func:`edgeslim.decision.predict` under ``rule``), not at the argmax.
    """
    if labels is None:
        return {}
    top1 = logits.argmax(1)
    decided = top1
    if thresholds:
        from ..decision import predict

        z = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
        decided = predict(z / z.sum(axis=1, keepdims=True), thresholds, rule)
    out: dict[str, Any] = {"accuracy": round(float((top1 == labels).mean()), 6),
                           "critical_fn": _critical_fn(decided, labels, critical)}
    if thresholds:
        out["critical_fn_at"] = "calibrated thresholds"
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


def _limits(precision: str, cfg: ValidateSection) -> dict[str, float]:
    if precision == "fp32":
        return {"max_abs_diff": cfg.fp32_atol, "top1_agreement": cfg.fp32_min_agreement}
    agreement = cfg.fp16_min_agreement if precision == "fp16" else cfg.int8_min_agreement
    return {"top1_agreement": agreement, "extra_critical_fn": cfg.max_extra_critical_fn}


def _compare(mf: ModelFile, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
             critical: list[int], ref_summary: dict[str, Any], cfg: ValidateSection, *,
             thresholds: Mapping[str, float] | None = None, rule: str = "threshold",
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    finite = bool(np.isfinite(logits).all())
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
    limits = _limits(mf.precision, cfg)
    result["limits"] = limits
    problems = []
    if not finite:
        problems.append({"file": mf.path, "metric": "finite_logits", "value": "NaN/inf", "limit": "all finite"})
    for metric, limit in limits.items():
        value = result.get(metric)
        if value is None:
            continue
        bad = value < limit if metric == "top1_agreement" else value > limit
        if bad:
            problems.append({"file": mf.path, "metric": metric, "value": value,
                             "limit": f">= {limit}" if metric == "top1_agreement" else f"<= {limit}"})
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

    Returns:
        A JSON-ready report for ``manifest.validation``: ``passed``, ``samples``, ``reference`` (accuracy and
        critical FN of PyTorch), ``models`` (per file: backend, max/mean |diff|, top-1 agreement, accuracy,
        critical FN, extra critical FN, limits, passed), ``skipped`` files with the reason, ``problems`` (empty).
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
    backends = {**DEFAULT_BACKENDS, **dict(backend_for or {})}
    options = {**VALIDATION_OPTIONS, **dict(backend_options or {})}
    critical = list(manifest.critical)
    thresholds, rule = dict(manifest.thresholds), manifest.decision_rule
    ref_summary = classification_summary(reference, labels, critical, thresholds=thresholds, rule=rule)

    report: dict[str, Any] = {"samples": int(len(inputs)), "reference": ref_summary, "models": {}, "skipped": {}}
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
                                 thresholds=manifest.thresholds_for(mf), rule=rule)
        if "thresholds" in mf.extra:
            result["thresholds"] = dict(mf.extra["thresholds"])
        result["backend"] = name
        report["models"][mf.path] = result
        problems += found
    report["problems"] = problems
    report["passed"] = not problems
    if problems:
        lines = "; ".join(f"{p['file']}: {p['metric']} = {p['value']} (limit {p['limit']})" for p in problems)
        err = ValidationError(
            f"{len(problems)} export mismatch(es) against the PyTorch reference on {len(inputs)} samples: {lines}."
            " Re-export, or loosen the tolerance in the recipe's validate section if the difference is expected"
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report
