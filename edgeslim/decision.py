"""The deployed decision rule: per-class probability thresholds over softmax probabilities.

One function decides for every consumer (metrics, the runtime, the server, the profiler), so a threshold means the
same thing wherever a model is scored or served. ``Manifest.decision_rule`` names the rule an artifact was
calibrated for:

* ``"threshold"`` (format 2 artifacts, the default): a thresholded class ``c`` is called **iff** ``p_c >= t_c``,
  the one-vs-rest operating point on ``p_c``. A threshold therefore moves the operating point both ways: a low one
  adds critical calls (fewer false negatives, more false positives), a high one removes the least confident argmax
  calls (fewer false positives), so a model that is too eager on a critical class can still be deployed at a
  target FPR. When several thresholded classes fire, the most probable one wins (ties: the lowest index); when
  none fires, the prediction is the argmax over the classes without a threshold.
* ``"argmax_or_threshold"`` (format 1 artifacts): called when ``c`` is the argmax **or** ``p_c >= t_c``; a
  threshold can only add calls. Kept so older artifacts decide exactly as they were calibrated.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["DecisionRule", "RULES", "fired_classes", "predict"]

DecisionRule = Literal["threshold", "argmax_or_threshold"]
RULES: tuple[str, ...] = ("threshold", "argmax_or_threshold")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown decision rule {rule!r}: use one of {', '.join(RULES)}")


def predict(
    probs: np.ndarray, thresholds: Mapping[int, float] | Mapping[str, float] | None = None,
    rule: str = "threshold",
) -> np.ndarray:
    """Class predictions for ``(n, K)`` probabilities under ``rule`` (argmax when there are no thresholds).

    ``thresholds`` maps a class index (``int``, or ``str`` as a manifest stores it) to a probability threshold.
    """
    _check_rule(rule)
    p = np.asarray(probs)
    top = p.argmax(axis=1)
    if not thresholds:
        return top
    cls = np.array(sorted(int(c) for c in thresholds), dtype=np.int64)
    t = np.array([float(thresholds[c if c in thresholds else str(c)]) for c in cls.tolist()])  # type: ignore[index]
    pc = p[:, cls]
    fired = pc >= t
    best = np.where(fired, pc, -np.inf).argmax(axis=1)  # first (lowest index) on ties
    if rule == "threshold" and len(cls) < p.shape[1]:
        rest = np.array(p, dtype=np.float64, copy=True)
        rest[:, cls] = -np.inf
        fallback = rest.argmax(axis=1)
    else:  # argmax_or_threshold, or every class thresholded: nothing left to fall back to but the argmax
        fallback = top
    return np.where(fired.any(axis=1), cls[best], fallback)


def fired_classes(
    probs: np.ndarray, label: int, critical: Sequence[int], thresholds: Mapping[str, float]
) -> list[int]:
    """The critical classes that fired for one probability vector whose decision is ``label``, most probable
    first: a thresholded class fires when it reaches its threshold, one without a threshold when it is the
    decision."""
    out = []
    for c in critical:
        thr = thresholds.get(str(c))
        if (thr is not None and probs[c] >= thr) or (thr is None and int(c) == label):
            out.append(int(c))
    out.sort(key=lambda c: -float(probs[c]))
    return out
