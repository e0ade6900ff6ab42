"""One way to score a model's outputs: softmax, the deployed decision, critical FN/FPR, per-class figures.

Every table, validation, search objective, server monitor and profile scores logits through this module, so a
critical miss is counted the same way everywhere: :func:`softmax` (the one implementation; float32 for serving,
float64 where a threshold is compared), :func:`decide` (the manifest's decision rule at its thresholds, through
:mod:`edgeslim.decision`), :func:`critical_fn` / :func:`critical_missed`, and :func:`score`, the full
:class:`ClassificationMetrics` (accuracy, per-class TP/FN/FP/TN, recall, FNR, FPR, critical AUC, confusion).

A shared module below every stage: it imports numpy (and scikit-learn's ROC AUC inside :func:`score`), no
torch and no runtime. Every evaluation is computed fresh from the logits (or probabilities) it is given: nothing
accumulates across calls, epochs or splits (one of the mistakes the class-dependent-loss spec lists).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .decision import predict
from .errors import ConfigError, DataError

__all__ = ["ClassificationMetrics", "critical_fn", "critical_missed", "decide", "score", "softmax"]


def softmax(logits: np.ndarray, *, dtype: Any = np.float32) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed and returned in ``dtype``.

    float32 (the default) is what the runtime and the server return; float64 is what scoring compares with a
    calibrated threshold (so a probability sitting on a threshold decides the same way in every stage).
    """
    x = np.asarray(logits)
    z = x.astype(dtype) - x.max(axis=-1, keepdims=True).astype(dtype)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(dtype)


def decide(logits: np.ndarray, thresholds: Mapping[int, float] | Mapping[str, float] | None = None,
           rule: str = "threshold") -> np.ndarray:
    """Class predictions as deployed: the argmax without thresholds, else :func:`edgeslim.decision.predict` under
    ``rule`` over the float64 softmax of ``logits``."""
    if not thresholds:
        return np.asarray(logits).argmax(1)
    return predict(softmax(logits, dtype=np.float64), thresholds, rule)


def critical_missed(pred: np.ndarray, labels: np.ndarray, critical: Sequence[int]) -> np.ndarray:
    """Per sample: a sample of a critical class predicted as any other class (a critical false negative)."""
    return np.isin(labels, list(critical)) & (np.asarray(pred) != labels)


def critical_fn(pred: np.ndarray, labels: np.ndarray, critical: Sequence[int]) -> dict[int, int]:
    """False negatives per critical class: samples of class ``c`` predicted as anything else (the miss the
    class-dependent loss targets). ``sum(critical_fn(...).values())`` is the total."""
    p, y = np.asarray(pred), np.asarray(labels)
    return {int(c): int(((y == c) & (p != c)).sum()) for c in critical}


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den else None


@dataclass
class ClassificationMetrics:
    """The result of :func:`score`.

    Attributes:
        accuracy: fraction of correct predictions.
        n: number of samples.
        classes: class names.
        critical: critical class indices.
        per_class: one dict per class with ``tp, fn, fp, tn, recall, fnr, fpr, precision, support`` (a ratio whose
            denominator is 0 is ``None``).
        critical_stats: per critical class ``fn, fnr, fpr, recall, auc, threshold`` (``auc`` is ``None`` when the
            labels hold only one side; ``threshold`` is ``None`` at argmax).
        confusion: ``confusion[true][pred]`` counts.
    """

    accuracy: float
    n: int
    classes: list[str]
    critical: list[int]
    per_class: list[dict[str, Any]]
    critical_stats: dict[int, dict[str, Any]]
    confusion: list[list[int]]
    thresholds: dict[int, float] = field(default_factory=dict)

    def critical_fn(self) -> int:
        """False negatives summed over the critical classes."""
        return int(sum(self.per_class[c]["fn"] for c in self.critical))

    def critical_recall(self) -> float | None:
        """Mean recall over the critical classes (``None`` without critical classes or critical samples)."""
        vals = [self.critical_stats[c]["recall"] for c in self.critical]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    def critical_auc(self) -> float | None:
        """Mean one-vs-rest AUC over the critical classes (``None`` when undefined for all of them)."""
        vals = [self.critical_stats[c]["auc"] for c in self.critical]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data (critical-class keys become strings)."""
        d = asdict(self)
        d["critical_stats"] = {str(k): v for k, v in self.critical_stats.items()}
        d["thresholds"] = {str(k): v for k, v in self.thresholds.items()}
        d["critical_fn"] = self.critical_fn()
        d["critical_recall"] = self.critical_recall()
        d["critical_auc"] = self.critical_auc()
        return d

    def summary(self) -> str:
        """One line: accuracy and, per critical class, recall, FN, FPR and AUC."""
        parts = [f"acc {self.accuracy:.4f} (n={self.n})"]
        for c in self.critical:
            s = self.critical_stats[c]
            auc = "n/a" if s["auc"] is None else f"{s['auc']:.4f}"
            rec = "n/a" if s["recall"] is None else f"{s['recall']:.4f}"
            fpr = "n/a" if s["fpr"] is None else f"{s['fpr']:.4f}"
            parts.append(f"{self.classes[c]}: recall {rec} FN {s['fn']} FPR {fpr} AUC {auc}")
        return "; ".join(parts)


def _check_thresholds(thresholds: Mapping[Any, float] | None, k: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, t in (thresholds or {}).items():
        try:
            c = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold key {key!r} is not a class index; use the class's integer index") from None
        if not 0 <= c < k:
            raise ConfigError(f"threshold for class {c}: not a class index in [0, {k})")
        if not isinstance(t, numbers.Real) or not 0.0 <= float(t) <= 1.0:
            raise ConfigError(f"threshold for class {c} is {t!r}: a probability threshold must be in [0, 1]")
        out[c] = float(t)
    return out


def score(
    logits_or_probs: np.ndarray,
    labels: np.ndarray,
    classes: Any,
    critical: Sequence[int] | None = None,
    *,
    thresholds: Mapping[int, float] | Mapping[str, float] | None = None,
    rule: str | None = None,
    from_logits: bool = True,
) -> ClassificationMetrics:
    """Compute accuracy, per-class counts and rates, critical-class AUC and the confusion matrix.

    Args:
        logits_or_probs: ``(n, K)`` scores.
        labels: ``(n,)`` true class indices.
        classes: the K class names, or a manifest (:class:`~edgeslim.artifact.Manifest`, or anything with its
            ``classes``, ``critical``, ``thresholds`` and ``decision_rule``): the file is then scored as it decides
            when deployed; ``critical``, ``thresholds`` and ``rule`` given here win over the manifest's.
        critical: critical class indices (required with class names).
        thresholds: class index -> probability threshold, applied under ``rule`` (:func:`edgeslim.decision.predict`).
        rule: the decision rule the thresholds were calibrated for (``Manifest.decision_rule``; default
            ``"threshold"``).
        from_logits: ``True`` when the scores are logits (softmax is applied), ``False`` for probabilities.

    Raises:
        DataError: shapes disagree, there are no samples, or labels fall outside the classes.
        ConfigError: a critical class or threshold is invalid.
    """
    from sklearn.metrics import roc_auc_score

    if hasattr(classes, "classes") and hasattr(classes, "decision_rule"):  # a manifest: scored as it deploys
        man = classes
        classes = list(man.classes)
        critical = list(man.critical) if critical is None else critical
        thresholds = dict(man.thresholds or {}) if thresholds is None else thresholds
        rule = man.decision_rule if rule is None else rule
    if critical is None:
        raise ConfigError("score(): pass the critical class indices with the class names (or pass the manifest)")
    rule = rule or "threshold"
    scores = np.asarray(logits_or_probs, dtype=np.float64)
    y = np.asarray(labels)
    k = len(classes)
    if scores.ndim != 2 or scores.shape[1] != k:
        raise DataError(f"scores of shape {scores.shape} do not match {k} classes: pass (samples, {k}) logits")
    if y.ndim != 1 or y.shape[0] != scores.shape[0]:
        raise DataError(f"labels of shape {y.shape} do not match {scores.shape[0]} score rows")
    if scores.shape[0] == 0:
        raise DataError("no samples to evaluate: the split is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"labels outside [0, {k}): min {y.min()}, max {y.max()}")
    if not np.isfinite(scores).all():
        raise DataError("scores contain NaN or inf: the model diverged or the input is broken")
    crit: list[int] = []
    for c in critical:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < k:
            raise ConfigError(f"critical class {c!r} is not a class index in [0, {k})")
        if int(c) not in crit:
            crit.append(int(c))
    thr = _check_thresholds(thresholds, k)

    if from_logits:
        probs = softmax(scores, dtype=np.float64)
    else:
        if (scores < 0).any() or not np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
            raise DataError("probabilities must be non-negative and sum to 1 per row; pass from_logits=True for logits")
        probs = scores
    pred = predict(probs, thr, rule)

    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    n = int(y.shape[0])
    per_class = []
    for c in range(k):
        tp = int(confusion[c, c])
        fn = int(confusion[c].sum() - tp)
        fp = int(confusion[:, c].sum() - tp)
        tn = n - tp - fn - fp
        per_class.append(
            {
                "class": str(classes[c]),
                "tp": tp,
                "fn": fn,
                "fp": fp,
                "tn": tn,
                "recall": _ratio(tp, tp + fn),
                "fnr": _ratio(fn, tp + fn),
                "fpr": _ratio(fp, fp + tn),
                "precision": _ratio(tp, tp + fp),
                "support": tp + fn,
            }
        )
    critical_stats: dict[int, dict[str, Any]] = {}
    for c in crit:
        is_c = y == c
        auc = float(roc_auc_score(is_c, probs[:, c])) if 0 < is_c.sum() < n else None
        pc = per_class[c]
        critical_stats[c] = {
            "fn": pc["fn"],
            "fnr": pc["fnr"],
            "fpr": pc["fpr"],
            "recall": pc["recall"],
            "auc": auc,
            "threshold": thr.get(c),
        }
    return ClassificationMetrics(
        accuracy=float((pred == y).mean()),
        n=n,
        classes=[str(c) for c in classes],
        critical=crit,
        per_class=per_class,
        critical_stats=critical_stats,
        confusion=confusion.tolist(),
        thresholds=thr,
    )
