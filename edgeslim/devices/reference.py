"""Comparing the profiler with a reference tool (benchmark_app, trtexec) on a noisy machine.

On a shared machine each tool's numbers swing between rounds by more than the difference being measured. So the
comparison runs many short rounds, alternating which tool goes first, and summarises the per-round ratios
(edgeslim / reference) by their median and spread, next to each tool's own round-to-round variation: a reader sees
both the agreement and the noise floor it was measured against.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (numpy's linear interpolation), min, max and coefficient of variation of some values.

    ``cv`` is the sample standard deviation over the mean (0 for a single value).

    Raises:
        ConfigError: no values.
    """
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        raise ConfigError("no values to summarise")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    mean = float(a.mean())
    cv = float(a.std(ddof=1) / mean) if a.size > 1 and mean else 0.0
    return {"n": int(a.size), "median": float(med), "q1": float(q1), "q3": float(q3), "min": float(a.min()),
            "max": float(a.max()), "cv": cv}


def round_order(index: int, tools: Sequence[str]) -> list[str]:
    """The tools in the order round ``index`` runs them: as given in even rounds, reversed in odd ones, so a drift
    of the machine's load within a round favours neither tool."""
    return list(tools) if index % 2 == 0 else list(reversed(tools))


def summarize(rounds: Sequence[dict[str, dict[str, float]]], measure: str, *, ours: str = "edgeslim",
              reference: str) -> dict[str, Any]:
    """Per-round ratios ``ours / reference`` of one measure and the spread of everything.

    Args:
        rounds: one dict per round, ``{tool: {measure: value}}``; a round missing either value is skipped.
        measure: the key to compare (e.g. ``"median_ms"``).
        ours, reference: the two tool names.

    Returns:
        ``ratios`` (per round, in order), ``ratio`` (:func:`spread` of the ratios), ``ours`` and ``reference``
        (:func:`spread` of each tool's own values: its round-to-round noise).

    Raises:
        ConfigError: no round has both values.
    """
    pairs = [(r[ours][measure], r[reference][measure]) for r in rounds
             if r.get(ours, {}).get(measure) is not None and r.get(reference, {}).get(measure) is not None]
    if not pairs:
        raise ConfigError(f"no round has '{measure}' from both {ours} and {reference}")
    ratios = [a / b for a, b in pairs]
    return {
        "measure": measure,
        "ratios": ratios,
        "ratio": spread(ratios),
        "ours": spread([a for a, _ in pairs]),
        "reference": spread([b for _, b in pairs]),
    }


def verdict(summary: dict[str, Any], tolerance: float = 0.05) -> str:
    """``"within"`` when the median ratio is within ``tolerance`` of 1; ``"off"`` when even the interquartile range
    of the ratios excludes that band; ``"undecided"`` when the band is only inside the interquartile range (the
    noise is too large to tell)."""
    r = summary["ratio"]
    lo, hi = 1 - tolerance, 1 + tolerance
    if lo <= r["median"] <= hi:
        return "within"
    if r["q3"] < lo or r["q1"] > hi:
        return "off"
    return "undecided"
