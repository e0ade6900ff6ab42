"""Per-stage channel ratios from each stage's measured sensitivity (the search's ``:sens`` structured choices).

One global ratio prunes every stage alike, yet stages differ in how much accuracy they lose (Li et al., *Pruning
Filters for Efficient ConvNets*, 2017, measured it layer by layer; NetAdapt and AMC allocate per layer). The search
measures it once, on the trained dense reference: each stage pruned alone at the probe ratio (Torch-Pruning,
no fine-tune), its increase in val loss recorded: by default the loss of the critical classes' samples, since a
stage whose pruning costs little on average can still cost the detections that matter; the mean loss over all
samples is measured from the same passes and can be chosen instead (``search.sensitivity: mean``). A candidate
``structured:R:sens`` then gets per-stage ratios that prune the insensitive stages harder and the sensitive ones
less, at the same mean ratio as the uniform ``R`` (weighted by each stage's prunable parameters), each stage capped
where a layer would lose all its channels (layers no wider than ``round_to`` are kept whole and cap nothing).

Written here rather than taken from Torch-Pruning: it ranks channels (globally or per layer) by weight magnitude,
not stages by measured loss; its ``pruning_ratio_dict`` is what applies the ratios found here.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["allocate", "stage_names", "stage_sensitivity", "measure_artifact", "describe"]

_CONTAINERS = ("blocks", "features", "layers", "stages")


def _has_conv(m: "nn.Module") -> bool:
    from torch import nn

    return any(isinstance(x, nn.Conv2d) for x in m.modules())


def stage_names(model: "nn.Module") -> list[str]:
    """The model's stages: the children of its block container (timm's ``blocks``, torchvision's ``features``,
    ``layers`` / ``stages``) that hold a convolution, else its top-level children that do (ResNet's ``layer1..4``),
    the stem and the classifier left out."""
    from ..models import classifier_name

    for cname in _CONTAINERS:
        cont = getattr(model, cname, None)
        if cont is not None and hasattr(cont, "named_children"):
            names = [f"{cname}.{n}" for n, m in cont.named_children() if _has_conv(m)]
            if len(names) >= 2:
                return names
    head = (classifier_name(model) or "").split(".")[0]
    kids = [n for n, m in model.named_children() if _has_conv(m) and n != head]
    return kids[1:] if len(kids) > 2 else kids  # the first is the stem


def _under(name: str, stage: str) -> bool:
    return name == stage or name.startswith(stage + ".")


def _losses(model: "nn.Module", x: np.ndarray, y: np.ndarray, batch: int = 128) -> np.ndarray:
    """Per-sample cross-entropy of ``model`` on ``(x, y)``."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[i:i + batch]))
            out.append(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[i:i + batch]).long(),
                                                         reduction="none").numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _signals(losses: np.ndarray, critical_mask: np.ndarray) -> dict[str, float]:
    """The mean loss over all samples, and over the critical-class samples (NaN without any)."""
    mean = float(losses.mean()) if len(losses) else float("nan")
    crit = float(losses[critical_mask].mean()) if critical_mask.any() else float("nan")
    return {"mean": mean, "critical": crit}


def stage_sensitivity(model: "nn.Module", x: np.ndarray, y: np.ndarray, *, ratio: float, cfg: Any,
                      critical: Sequence[int] = (), signal: str = "critical",
                      freeze: str | None = None) -> dict[str, Any]:
    """Each stage pruned alone at ``ratio`` (``cfg``: the :class:`~edgeslim.compress.prune.Structured` options), its
    val loss increase, its prunable parameters and the largest ratio that leaves every layer of it a channel.

    Two losses are measured from the same forward passes: the mean cross-entropy over all val samples, and that
    over the samples of the ``critical`` classes (the loss of the cases a missed detection costs). ``signal`` picks
    the one the allocation follows (``loss_increase``); ``critical`` falls back to ``mean`` when the val samples
    hold no critical one. Layers no wider than ``round_to`` are kept whole by the pruning and do not cap a stage.

    Returns:
        ``{"probe_ratio", "signal", "base_loss", "base_critical_loss", "stages": {name: {"loss_increase",
        "mean_loss_increase", "critical_loss_increase", "params", "max_ratio"}}}``; a stage that cannot be pruned to
        ``ratio`` gets ``loss_increase`` None (it is then kept at its largest safe ratio).

    Raises:
        ConfigError: ``signal`` is neither ``critical`` nor ``mean``.
    """
    import torch

    from ..compress.prune.structured import check_structured, kept_whole, prune_channels

    if signal not in ("critical", "mean"):
        raise ConfigError(f"sensitivity signal '{signal}': use 'critical' (the critical classes' val loss) or 'mean'")
    model = copy.deepcopy(model).eval()
    example = torch.from_numpy(x[:1])
    ignored = kept_whole(model, cfg, freeze)  # as training prunes: layers frozen by train.freeze stay whole
    rows = check_structured(model, example, ratio=0.0, round_to=cfg.round_to, ignored_layers=ignored)
    step = cfg.round_to or 1
    crit_mask = np.isin(y, np.asarray(list(critical), dtype=y.dtype)) if len(critical) else np.zeros(len(y), bool)
    used = signal if signal == "mean" or crit_mask.any() else "mean"
    base = _signals(_losses(model, x, y), crit_mask)
    names = dict(model.named_modules())
    out: dict[str, Any] = {}
    for stage in stage_names(model):
        # a layer no wider than round_to is kept whole at any ratio: it does not limit the stage
        mine = [r for r in rows if _under(r["layer"], stage) and r["channels"] > step]
        params = sum(int(m.weight.numel()) for n, m in names.items()
                      if _under(n, stage) and isinstance(m, torch.nn.Conv2d) and m not in ignored)
        max_ratio = min((1 - step / r["channels"] for r in mine), default=0.0)
        if not mine or max_ratio <= 0:
            out[stage] = {"loss_increase": None, "mean_loss_increase": None, "critical_loss_increase": None,
                          "params": params, "max_ratio": 0.0}
            continue
        probe = copy.deepcopy(model)
        inc: dict[str, float | None] = {"mean": None, "critical": None}
        try:
            prune_channels(probe, example, ratio=0.0, round_to=cfg.round_to, importance=cfg.importance,
                           ignored_layers=kept_whole(probe, cfg, freeze),
                           stage_ratios={stage: min(ratio, max_ratio)})
            after = _signals(_losses(probe.eval(), x, y), crit_mask)
            inc = {k: after[k] - base[k] if math.isfinite(after[k] - base[k]) else None for k in after}
        except ConfigError:
            pass
        out[stage] = {"loss_increase": inc[used], "mean_loss_increase": inc["mean"],
                      "critical_loss_increase": inc["critical"], "params": params,
                      "max_ratio": round(max(0.0, max_ratio - 0.005), 3)}
    return {"probe_ratio": ratio, "signal": used, "critical": [int(c) for c in critical],
            "critical_samples": int(crit_mask.sum()), "base_loss": base["mean"],
            "base_critical_loss": base["critical"] if math.isfinite(base["critical"]) else None, "stages": out}


def measure_artifact(artifact: Path, x: np.ndarray, y: np.ndarray, *, ratio: float, cfg: Any,
                     critical: Sequence[int] = (), signal: str = "critical",
                     freeze: str | None = None) -> dict[str, Any]:
    """:func:`stage_sensitivity` of the trained model in ``artifact`` (the search's dense reference), loaded with
    the torch backend."""
    from ..runtime import load

    with load(artifact, backend="torch") as pred:
        return stage_sensitivity(pred.backend.model, x, y, ratio=ratio, cfg=cfg, critical=critical,  # type: ignore[attr-defined]
                                 signal=signal, freeze=freeze)


def describe(sens: dict[str, Any], seconds: float) -> str:
    """One line of a :func:`stage_sensitivity` result: each stage's loss increase."""
    return (f"stage sensitivity ({'critical-class' if sens['signal'] == 'critical' else 'mean'} val loss increase,"
            f" each stage alone at ratio {sens['probe_ratio']:g}; {seconds:.0f} s): " + ", ".join(
                f"{k} {'-' if v['loss_increase'] is None else format(v['loss_increase'], '+.3f')}"
                for k, v in sens["stages"].items()))


def allocate(sens: dict[str, Any], ratio: float) -> dict[str, float]:
    """Per-stage ratios at the mean ``ratio`` (weighted by prunable parameters), inversely to the square root of
    each stage's loss increase, each within ``[0, min(max_ratio, (1 + ratio) / 2)]``.

    The square root softens the measured spread (one probe ratio, no fine-tune: a coarse signal); a small floor
    (5 % of the mean increase) keeps a stage that lost nothing from taking the whole budget.
    """
    stages = {k: v for k, v in sens["stages"].items() if v["params"] > 0 and v["max_ratio"] > 0}
    if ratio <= 0 or not stages:
        return {}
    incs = [v["loss_increase"] for v in stages.values() if v["loss_increase"] is not None]
    floor = 0.05 * (float(np.mean([max(i, 0.0) for i in incs])) if incs else 1.0) + 1e-6
    worst = max(incs, default=1.0)
    w = {k: 1.0 / math.sqrt(max(v["loss_increase"] if v["loss_increase"] is not None else worst, 0.0) + floor)
         for k, v in stages.items()}
    total = sum(v["params"] for v in stages.values())

    # no stage beyond halfway from the mean ratio to 1 (0.8 at 0.6): one probe without fine-tuning is too coarse
    # a signal to strip a stage to its last channels
    cap = ratio + (1 - ratio) / 2

    def ratios(scale: float) -> dict[str, float]:
        return {k: min(v["max_ratio"], cap, scale * w[k]) for k, v in stages.items()}

    def mean(scale: float) -> float:
        return sum(stages[k]["params"] * r for k, r in ratios(scale).items()) / total

    lo, hi = 0.0, 1.0
    while mean(hi) < ratio and hi < 1e6:
        hi *= 2
    for _ in range(60):  # mean() is non-decreasing in the scale: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < ratio else (lo, mid)
    return {k: round(r, 3) for k, r in ratios(hi).items()}
