"""Decision thresholds for critical classes, calibrated on the validation split, and FNR at a matched FPR.

A threshold ``t`` for critical class ``c`` decides under :mod:`edgeslim.decision`'s ``"threshold"`` rule, the one
metrics, the runtime and the server apply: a sample is called ``c`` iff ``p_c >= t``. So a threshold moves the
operating point both ways: below the argmax it trades false positives for fewer false negatives, above it removes
the least confident argmax calls of a model that is too eager on ``c``. :func:`calibrate_thresholds` calibrates
against exactly that rule, so the rates it targets are the rates the deployed model shows on the same data. Store
the result in ``Manifest.thresholds`` with :func:`manifest_thresholds` (and ``Manifest.decision_rule`` at its
default, ``"threshold"``).

:func:`fnr_at_fpr` is the ranking view used by the class-dependent benchmark: the one-vs-rest FNR at the lowest
score threshold whose FPR stays within a target, independent of argmax.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["calibrate_thresholds", "fnr_at_fpr", "manifest_thresholds"]


def _check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} = {value!r}: a rate must be a number in [0, 1], e.g. 0.01")
    return float(value)


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0:
        raise DataError(f"probabilities of shape {p.shape}: pass (samples, classes) softmax probabilities")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise DataError(f"labels of shape {y.shape} do not match {p.shape[0]} probability rows")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"labels must be class indices in [0, {p.shape[1]})")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise DataError("probabilities must be finite, non-negative and sum to 1 per row (apply softmax to logits)")
    return p, y.astype(np.int64)


def _between(lo: float, hi: float) -> float:
    """A threshold strictly above ``lo`` and at most ``hi``: the midpoint, so small score shifts keep decisions."""
    mid = (lo + hi) / 2.0
    return mid if lo < mid <= hi else float(np.nextafter(lo, math.inf))


def calibrate_thresholds(
    probs_val: np.ndarray,
    labels_val: np.ndarray,
    critical: Sequence[int],
    *,
    target_fnr: float | None = None,
    target_fpr: float | None = None,
) -> dict[int, float]:
    """Per-critical-class probability thresholds calibrated on the validation split.

    Give exactly one target. Each critical class ``c`` is calibrated one-vs-rest under the deployed rule
    "called ``c`` iff ``p_c >= t``" (:mod:`edgeslim.decision`), so any target is reachable, below or above the
    argmax's own rate:

    * ``target_fnr``: the **highest** threshold whose val FNR is ``<= target_fnr`` (the fewest extra false
      positives that reach the target). With ``m = floor(target_fnr * positives)`` misses allowed, ``t`` lies
      just below the ``(m+1)``-th lowest positive score.
    * ``target_fpr``: the **lowest** threshold whose val FPR is ``<= target_fpr`` (the most recall within the
      budget), i.e. just above the ``(m+1)``-th highest negative score with ``m = floor(target_fpr * negatives)``.

    Ties: samples with equal scores always fall on the same side, so the achieved val rate is the closest
    achievable one that does not exceed the target (it can be below it). The threshold is placed halfway between
    the two val scores bounding the admissible interval (a max-margin choice), and is always in ``[0, 1]``.
    With several critical classes each is calibrated on its own; a sample firing for two goes to the more
    probable one at predict time, so their joint rates can differ slightly from the per-class targets.

    Args:
        probs_val: ``(n, K)`` softmax probabilities on the validation split.
        labels_val: ``(n,)`` true classes.
        critical: the critical class indices.
        target_fnr: FNR target in ``[0, 1]``.
        target_fpr: FPR target in ``[0, 1]``.

    Returns:
        ``{class index: threshold}``; store it in a manifest with :func:`manifest_thresholds`.

    Raises:
        ConfigError: not exactly one target, a target outside ``[0, 1]``, a bad class index.
        DataError: bad arrays; a critical class without positives (``target_fnr``) or negatives (``target_fpr``)
            on the val split; or a ``target_fpr`` that saturated scores (``p_c == 1`` on more negatives than
            the target allows) put out of reach.
    """
    if (target_fnr is None) == (target_fpr is None):
        raise ConfigError("calibrate_thresholds needs exactly one of target_fnr=... or target_fpr=...")
    target = _check_rate("target_fnr" if target_fnr is not None else "target_fpr",
                         target_fnr if target_fnr is not None else target_fpr)  # type: ignore[arg-type]
    p, y = _check_probs_labels(probs_val, labels_val)
    k = p.shape[1]
    out: dict[int, float] = {}
    for c in critical:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < k:
            raise ConfigError(f"critical class {c!r} is not a class index in [0, {k})")
        c = int(c)
        pos, neg = y == c, y != c
        eff = p[:, c]  # the deployed rule is one-vs-rest on p_c
        finite = np.unique(eff)  # sorted
        if target_fnr is not None:
            n_pos = int(pos.sum())
            if n_pos == 0:
                raise DataError(f"class {c} has no samples on the val split: its FNR cannot be calibrated")
            m = int(math.floor(target * n_pos + 1e-9))
            if m >= n_pos:
                out[c] = 1.0  # every miss is allowed (only saturated p_c == 1 fire)
                continue
            kth = float(np.sort(eff[pos])[m])  # the (m+1)-th lowest positive score must still be called c
            below = finite[finite < kth]
            out[c] = _between(float(below[-1]), kth) if below.size else kth
        else:
            n_neg = int(neg.sum())
            if n_neg == 0:
                raise DataError(f"class {c} is the only class on the val split: its FPR cannot be calibrated")
            m = int(math.floor(target * n_neg + 1e-9))
            if m >= n_neg:
                out[c] = 0.0  # every negative may be called c
                continue
            kth = float(np.sort(eff[neg])[::-1][m])  # the (m+1)-th highest negative score must not be called c
            if kth >= 1.0:
                raise DataError(
                    f"class {c}: more than {m} val negatives score p={kth:g} (saturated), so no threshold in [0, 1]"
                    f" reaches target_fpr {target}; the model is overconfident on this class: retrain it (e.g. a"
                    " lower loss.gamma or loss.fpr_budget) or raise target_fpr"
                )
            above = finite[finite > kth]
            out[c] = _between(kth, float(above[0])) if above.size else min(1.0, float(np.nextafter(kth, math.inf)))
    return out


def manifest_thresholds(thresholds: Mapping[int, float]) -> dict[str, float]:
    """``{class index: t}`` as ``Manifest.thresholds`` stores it (``str(class) -> float``)."""
    return {str(int(c)): float(t) for c, t in thresholds.items()}


def fnr_at_fpr(scores: np.ndarray, labels: np.ndarray, c: int, fpr: float) -> float | None:
    """One-vs-rest FNR of class ``c`` at the lowest score threshold whose FPR is ``<= fpr``.

    The operating point is the empirical one (no ROC interpolation): with ``m = floor(fpr * negatives)``, the
    threshold sits just above the ``(m+1)``-th highest negative score, and a positive scored at or below it is a
    false negative (a positive tied with a negative cannot be separated from it, so ties count against the
    model). Comparing models at the same FPR removes the pure threshold shift that a re-weighted loss buys.

    Args:
        scores: ``(n,)`` scores of class ``c`` (probability or log-odds; any monotone score), or ``(n, K)``
            scores of which column ``c`` is used.
        labels: ``(n,)`` true classes.
        c: the class.
        fpr: the FPR budget in ``[0, 1]``.

    Returns:
        The FNR, or ``None`` when ``labels`` has no positives or no negatives of ``c``.
    """
    fpr = _check_rate("fpr", fpr)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim == 2:
        if not 0 <= c < s.shape[1]:
            raise ConfigError(f"class {c} is not a column of scores with {s.shape[1]} columns")
        s = s[:, c]
    if s.ndim != 1 or y.ndim != 1 or s.shape[0] != y.shape[0]:
        raise DataError(f"scores {np.asarray(scores).shape} and labels {y.shape} do not line up")
    if not np.isfinite(s).all():
        raise DataError("scores contain NaN or inf")
    pos, neg = s[y == c], s[y != c]
    if pos.size == 0 or neg.size == 0:
        return None
    m = int(math.floor(fpr * neg.size + 1e-9))
    if m >= neg.size:
        return 0.0
    cut = float(np.sort(neg)[::-1][m])
    return float((pos <= cut).sum()) / pos.size
