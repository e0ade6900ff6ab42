"""The gate every written model file passes before the artifact is written: its own decision thresholds (INT8,
FP16), validation against the torch model, the accuracy-control fallback of an INT8 file that misses the budget
(with a batch-1 timer for the cost it records), and leaving out what still fails (:func:`edgeslim.export.base.
export_artifact` runs it)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import Manifest, ModelFile
from ..errors import EdgeslimError, ValidationError
from ..recipe import ValidateSection
from .contract import EXPORTERS, ExportContext


def own_threshold_targets(m: Any) -> dict[str, float] | None:
    """The decision target a reduced-precision file's own thresholds are calibrated to on val (``{"target_fpr":
    0.05}``, from the manifest's recipe), or None where files keep the manifest's thresholds: none to start from,
    not exactly one target, or the format-1 ``argmax_or_threshold`` rule."""
    decision = (getattr(m, "recipe", None) or {}).get("decision") or {}
    targets = {k: float(decision[k]) for k in ("target_fnr", "target_fpr") if decision.get(k) is not None}
    if m is None or not m.thresholds or not m.critical or len(targets) != 1 or m.decision_rule != "threshold":
        return None
    return targets


def own_thresholds(m: Any) -> Callable[[np.ndarray, np.ndarray], dict[int, float]] | None:
    """``f(val probabilities, val labels) -> thresholds``: how a reduced-precision file gets its own thresholds
    (:func:`_calibrate_file_thresholds`, and accuracy control counting critical misses where this export will judge
    them), or None where files keep the manifest's (:func:`own_threshold_targets`)."""
    from ..compress.thresholds import calibrate_thresholds

    targets = own_threshold_targets(m)
    if targets is None:
        return None
    return functools.partial(calibrate_thresholds, critical=list(m.critical), **targets)


def _calibrate_file_thresholds(directory: Path, m: Manifest, files: Sequence[ModelFile],
                               val_split: tuple[np.ndarray, np.ndarray]) -> None:
    """Give each reduced-precision file (INT8, FP16) its own critical-class thresholds, calibrated on the val split
    to the recipe's decision target (``decision.target_fpr`` / ``target_fnr``), in ``extra["thresholds"]``.

    Why: quantization shifts the scores a little. At the FP32 file's threshold an INT8 file then runs at another
    operating point (here on ELPV: 4 more missed defective cells of 190 at a lower false-alarm rate), and the
    validation would charge the shift to quantization. Calibrated like FP32, every file is deployed, validated and
    compared at the same val FPR (or FNR), which is the comparison the critical-class budget means. The runtime,
    the server and the profiler apply a file's own thresholds (:meth:`Manifest.thresholds_for`). Nothing happens
    without manifest thresholds, without a decision target in the manifest's recipe, or under the format-1
    ``argmax_or_threshold`` rule.
    """
    from ..compress.thresholds import manifest_thresholds
    from ..runtime import BACKENDS, BackendOptions
    from ..runtime.predictor import softmax
    from .validate import DEFAULT_BACKENDS, VALIDATION_OPTIONS, _run

    calibrate, targets = own_thresholds(m), own_threshold_targets(m)
    if calibrate is None:
        return
    x, y = np.asarray(val_split[0], dtype=np.float32), np.asarray(val_split[1]).astype(np.int64)
    for mf in files:
        name = DEFAULT_BACKENDS.get(mf.format)
        if mf.precision not in ("int8", "fp16") or name is None or name not in BACKENDS:
            continue
        try:
            with BACKENDS.get(name)(directory / mf.path, BackendOptions(**VALIDATION_OPTIONS.get(name, {}))) as b:
                probs = softmax(_run(b, x))
            thr = calibrate(probs, y)
        except EdgeslimError as exc:  # cannot run here, or no threshold reaches the target: the manifest's apply
            mf.extra["thresholds_note"] = f"the manifest's thresholds apply: {exc}"
            continue
        mf.extra["thresholds"] = manifest_thresholds(thr)
        mf.extra["thresholds_calibrated_on"] = {"split": "val", "samples": int(len(y)), **targets}


def _validate(directory: Path, m: Manifest, reference: np.ndarray, inputs: np.ndarray, labels: Any,
              cfg: ValidateSection, *, val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """:func:`~edgeslim.export.validate.validate_exports`, its report also when it finds problems."""
    from .validate import validate_exports

    try:
        return validate_exports(directory, m, reference, inputs, labels, cfg, val=val)
    except ValidationError as exc:
        return getattr(exc, "report", {"passed": False, "problems": [str(exc)]})


def _batch1_latency_ms(path: Path, fmt: str, *, seconds: float = 0.5) -> float | None:
    """Median batch-1 latency of a model file on this CPU, in its reference runtime (a cost figure for the
    manifest, not a benchmark: :mod:`edgeslim.devices.profiler` measures properly)."""
    import time

    from ..runtime import BACKENDS, BackendOptions
    from .validate import DEFAULT_BACKENDS

    name = DEFAULT_BACKENDS.get(fmt)
    if name is None or name not in BACKENDS:
        return None
    try:
        with BACKENDS.get(name)(path, BackendOptions(device="cpu")) as backend:
            spec = backend.inputs[0]
            x = np.zeros([1, *[d if d > 0 else 1 for d in spec.shape[1:]]], dtype=np.float32)
            for _ in range(5):
                backend.infer(x)
            times: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 20:
                t = time.perf_counter()
                backend.infer(x)
                times.append((time.perf_counter() - t) * 1e3)
        return round(float(np.median(times)), 4)
    except EdgeslimError:
        return None


def _model_paths(directory: Path, mf: ModelFile) -> list[Path]:
    p = directory / mf.path
    return [p, p.with_suffix(".bin")] if mf.format == "openvino" else [p]


def _int8_fallback(ctx: ExportContext, m: Manifest, report: dict[str, Any], reference: np.ndarray,
                   inputs: np.ndarray, labels: Any, validate_cfg: ValidateSection, *,
                   val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """Re-quantize every INT8 file that missed the validate budget (judged on val, see ``validate_exports(val=)``)
    with accuracy control.

    NNCF's ``quantize_with_accuracy_control`` keeps the most harmful layers in float until the val top-1 drop is
    within ``max_drop`` (1 point by default) and the val critical FN, counted at the calibrated thresholds, are no
    more than FP32's: stricter than the validate limit the val split is then judged by. The
    new file replaces the failed one only when it passes validation; its manifest entry says which layers stayed in
    float and the batch-1 latency of FP32, of the failed INT8 and of the new file on this CPU;
    ``report["int8_fallback"]`` records every attempt.
    """
    bad = {p["file"] for p in report.get("problems", []) if isinstance(p, dict)}
    failing = [mf for mf in m.models if mf.precision == "int8" and mf.path in bad and mf.format in EXPORTERS]
    if not failing:
        return
    attempts = report.setdefault("int8_fallback", [])
    for mf in failing:
        old_problems = [p for p in report["problems"] if isinstance(p, dict) and p.get("file") == mf.path]
        entry: dict[str, Any] = {"file": mf.path, "format": mf.format, "failed": old_problems,
                                 "from": mf.extra.get("quantizer")}
        attempts.append(entry)
        # on val with no extra critical FN (and the recipe's max_drop, if it chose accuracy control): stricter than
        # the validate limit on val, so a file accuracy control accepts is not left out by the gate after it
        cfg = ctx.quantize.fallback()
        if cfg is None:
            entry["result"] = "not retried: the file already came from accuracy control"
            continue
        if ctx.val_split is None:
            entry["result"] = "not retried: accuracy control needs the val split (export_artifact(val_split=...))"
            continue
        fp32 = ctx.find(mf.format, "fp32")
        latency = {"fp32": _batch1_latency_ms(ctx.directory / fp32.path, mf.format) if fp32 else None,
                   "int8_failed": _batch1_latency_ms(ctx.directory / mf.path, mf.format)}
        old_paths = _model_paths(ctx.directory, mf)
        stash = {p: p.read_bytes() for p in old_paths if p.exists()}
        for p in stash:
            p.unlink()
        sub = dataclasses.replace(ctx, precisions=("int8",), quantize=cfg, errors=[], skipped=[],
                                  written=[w for w in ctx.written if w is not mf])
        files = sub.attempt(mf.format, "int8", lambda mf=mf, sub=sub: EXPORTERS.get(mf.format)().export(sub))
        new = next((f for f in files if f.precision == "int8"), None)
        if new is None:
            for p, data in stash.items():  # keep the failed file for _drop_failed / strict to judge as before
                p.write_bytes(data)
            entry["result"] = "accuracy control failed: " + "; ".join(e["error"] for e in sub.errors)
            continue
        latency["int8_accuracy_control"] = _batch1_latency_ms(ctx.directory / new.path, mf.format)
        kept_float = list(new.extra.get("reverted_to_fp32", []))
        new.extra["accuracy_control"] = {"fallback_from": mf.extra.get("quantizer"), "failed_validation": old_problems,
                                         "kept_in_float": kept_float, "latency_ms": latency}
        _calibrate_file_thresholds(ctx.directory, m, [new], ctx.val_split)
        sub_manifest = m.model_copy(update={"models": [new]})
        r = _validate(ctx.directory, sub_manifest, reference, inputs, labels, validate_cfg, val=val)
        m.models[m.models.index(mf)] = new
        ctx.written[ctx.written.index(mf)] = new
        report["models"][new.path] = r.get("models", {}).get(new.path, {})
        report["problems"] = [p for p in report["problems"] if not (isinstance(p, dict) and p.get("file") == mf.path)]
        report["problems"] += r.get("problems", [])
        report["passed"] = not report["problems"]
        entry.update(result="passed" if r.get("passed") else "still failing", kept_in_float=kept_float,
                     latency_ms=latency, problems=r.get("problems", []))


def _drop_failed(directory: Path, m: Manifest, report: dict[str, Any]) -> None:
    """Remove the model files that failed validation from the artifact; record each with its reason."""
    bad: dict[str, list[str]] = {}
    for p in report.get("problems", []):
        if isinstance(p, dict) and p.get("file"):
            bad.setdefault(p["file"], []).append(_problem_line(p))
    failed = report.setdefault("failed", [])
    for mf in [mf for mf in m.models if mf.path in bad]:
        for path in _model_paths(directory, mf):
            path.unlink(missing_ok=True)
        folder = (directory / mf.path).parent
        if folder != directory and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # openvino_int8/ and the like: an empty folder would say the file was there
        m.models.remove(mf)
        failed.append({"file": mf.path, "format": mf.format, "precision": mf.precision,
                       "reason": "failed validation: " + "; ".join(bad[mf.path])})
    if bad:
        report["problems"] = [p for p in report["problems"] if not (isinstance(p, dict) and p.get("file") in bad)]
        report["passed"] = not report["problems"]


def _problem_line(p: Any) -> str:
    from .validate import problem_line

    return problem_line(p)
