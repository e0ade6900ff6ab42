"""Structured channel pruning with Torch-Pruning's dependency graph.

Recipe: ``prune: {method: structured, ratio: 0.3, scope: layer|global, round_to: 8, iterative_steps: 1,
importance: l2|l1|bn_scale, stage_ratios: {blocks.5: 0.6}}``. After the dense round, Torch-Pruning removes
``ratio`` of the output channels of every prunable group (``layer``: the same ratio in each group; ``global``:
ranked across groups) together with everything that depends on them (BatchNorm, the next layer's input channels,
depthwise groups), keeping the widths multiples of ``round_to`` (8 suits the vector units of CPUs and tensor
cores). ``stage_ratios`` gives the layers under a module (a stage, ``blocks.5``) their own ratio, as
Torch-Pruning's ``pruning_ratio_dict`` does; ``edgeslim search`` sets them from each stage's measured sensitivity.
Layers frozen by ``train.freeze`` are not trained, so this pruning leaves them whole; ``frozen_ratio`` prunes their
hidden channels instead, with a least-squares refit that needs no training (:mod:`.reconstruct`).
The classifier (its outputs are the classes) is never pruned; the first conv and ``exclude`` patterns are kept at
full width unless ``prune_first_conv``. A layer no wider than ``round_to`` (a squeeze-excitation reduction of 8
channels in MobileNetV3 or EfficientNet) cannot be pruned at that rounding and is kept whole (Torch-Pruning's
``ignored_layers``); a wider one the ratio would empty is pruned to ``round_to`` channels (``pruning_ratio_dict``);
both are listed in the run's notes. The result is a smaller *dense* model, fine-tuned afterwards.

The pruned widths are recorded in ``info["structure"]`` with :func:`edgeslim.models.structure_spec`, and
:func:`edgeslim.models.rebuild_model` builds the smaller model again from an artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

from pydantic import Field, field_validator, model_validator

from ...errors import ConfigError, TrainingError
from ...models import prunable_layers, rebuild_model, restore_structure, structure_spec  # noqa: F401 - re-exported
from .base import (PRUNE_METHODS, LayerPruneConfig, PruneContext, PruneResult, dense_round_teacher, kept_width,
                   ratio_for, teacher_check)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .masks import MaskSet


class Structured(LayerPruneConfig):
    """Channel pruning (Torch-Pruning): a smaller dense model. The classifier is never pruned."""

    method: Literal["structured"] = "structured"
    ratio: float = Field(default=0.3, ge=0, lt=1, description="fraction of channels removed")
    scope: Literal["layer", "global"] = "layer"
    round_to: int | None = Field(default=8, ge=1, description="kept channels a multiple of this")
    iterative_steps: int = Field(default=1, ge=1, description="reach the ratio in this many steps")
    importance: Literal["l2", "l1", "bn_scale"] = Field(
        default="l2", description="channel score (group L2 / L1 norm, or BatchNorm scale)"
    )
    stage_ratios: dict[str, float] = Field(
        default_factory=dict, description="module name -> ratio of the layers under it (e.g. blocks.5: 0.6), over"
        " `ratio`; the layer scope only"
    )
    frozen_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="fraction of the hidden channels of the layers frozen by train.freeze"
        " removed, each group's consumer refit by least squares on training images (no training needed);"
        " stage_ratios under the frozen layers override it there"
    )
    frozen_samples: int = Field(default=256, ge=8, description="training images the frozen layers' refit uses")

    @field_validator("stage_ratios")
    @classmethod
    def _stage_ratios(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r < 1}
        if bad:
            raise ValueError(f"stage_ratios {bad}: every ratio must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _stage_scope(self) -> "Structured":
        if self.stage_ratios and self.scope != "layer":
            raise ValueError("stage_ratios sets each stage's own ratio: use scope 'layer' (global ranks all layers"
                             " against one ratio)")
        return self

# -- pruning ------------------------------------------------------------------------------------------------------


def _importance(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if kind == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise ConfigError(f"structured importance '{kind}': use 'l2', 'l1' or 'bn_scale'")


def _ignored(model: nn.Module, *, prune_first_conv: bool, exclude: Iterable[str]) -> list[nn.Module]:
    from .masks import skipped_layers

    # the classifier always: its outputs are the classes
    keep = skipped_layers(model, first_conv=not prune_first_conv, classifier=True, exclude=exclude)
    return [model.get_submodule(n) for n in sorted(keep)]


def kept_whole(model: nn.Module, cfg: Any, freeze: str | None) -> list[nn.Module]:
    """The layers of ``model`` that structured pruning as ``cfg`` leaves whole: the classifier, the stem unless
    ``prune_first_conv``, ``cfg.exclude``, and the layers frozen by ``train.freeze`` (no training would let them
    recover). Training and the search (its architectures and its sensitivity probes) prune around this one set."""
    return _ignored(model, prune_first_conv=cfg.prune_first_conv,
                    exclude=[*cfg.exclude, *_frozen_prunable(model, freeze)])


def _check_ratio(ratio: float, round_to: int | None, iterative_steps: int) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConfigError(f"structured ratio {ratio!r}: must be in [0, 1) (the fraction of channels removed)")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to {round_to!r}: must be a positive integer or None")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ConfigError(f"iterative_steps {iterative_steps!r}: must be an integer >= 1")


def _ratio_dict(model: nn.Module, stage_ratios: dict[str, float]) -> dict[Any, float]:
    """Torch-Pruning's ``pruning_ratio_dict`` (module -> ratio) from module names, checked."""
    from ...registry import did_you_mean

    names = dict(model.named_modules())
    unknown = [k for k in stage_ratios if k not in names]
    if unknown:
        near = [n for n in names if n.count(".") <= 1 and n]
        raise ConfigError(f"stage_ratios names no module of the model: {unknown}.{did_you_mean(unknown[0], near)}"
                          f" Stages look like: {', '.join(near[:12])}")
    return {names[k]: float(r) for k, r in stage_ratios.items()}


def _cap(channels: int, round_to: int | None) -> float:
    """The largest ratio that leaves ``channels`` exactly ``round_to`` (or 1) channels under :func:`_kept`."""
    step = round_to or 1
    r = (channels - step) / channels
    while r > 0 and kept_width(channels, r, round_to) < step:  # float rounding of C * (1 - r)
        r = math.nextafter(r, 0.0)
    return max(0.0, r)


@dataclass
class ChannelPlan:
    """What channel pruning at a ratio does to each prunable group, decided before anything is pruned.

    Attributes:
        rows: one ``{"layer", "channels", "kept", "ratio", "action"}`` per prunable group; ``action`` is
            ``pruned``, ``kept_whole`` (no multiple of ``round_to`` lies below its width: squeeze-excitation
            layers and other narrow ones, left to Torch-Pruning's ``ignored_layers``), ``capped`` (the asked ratio
            would leave it no channel: pruned to ``round_to`` channels instead, through ``pruning_ratio_dict``) or
            ``unpruned`` (ratio 0).
        scope: ``layer`` or ``global``.
        round_to: the rounding the plan was made for.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    scope: str = "layer"
    round_to: int | None = 8

    @property
    def kept_whole(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["action"] == "kept_whole"]

    @property
    def capped(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["action"] == "capped"]

    def caps(self) -> dict[str, float]:
        """Layer name -> its capped ratio (Torch-Pruning's ``pruning_ratio_dict`` entries)."""
        return {r["layer"]: r["capped_ratio"] for r in self.capped}

    def notes(self) -> list[str]:
        """One line per kind of deviation from the asked ratio, for the run's notes (empty when there is none)."""
        def names(rows: list[dict[str, Any]]) -> str:
            shown = ", ".join(f"'{r['layer']}' ({r['channels']})" for r in rows[:8])
            return shown + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")

        out = []
        whole = self.kept_whole
        if whole:
            out.append(f"structured: {len(whole)} layer(s) kept whole, no multiple of round_to {self.round_to} below"
                       f" their width (channels in brackets): {names(whole)}")
        capped = self.capped
        if capped:
            out.append(f"structured: {len(capped)} layer(s) pruned to round_to {self.round_to} channels, less than"
                       f" the asked ratio (which would remove every channel): {names(capped)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kept_whole": [r["layer"] for r in self.kept_whole], "capped": self.caps()}


def channel_plan(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, round_to: int | None = 8,
                 ignored_layers: Iterable[nn.Module] = (), stage_ratios: dict[str, float] | None = None,
                 scope: str = "layer") -> ChannelPlan:
    """Each prunable group's width after pruning at ``ratio`` (and ``stage_ratios``), checked before any training.

    Torch-Pruning silently skips a group whose rounded width would be 0, which would leave that layer unpruned
    without a word. Here such a group is decided explicitly: a layer no wider than ``round_to`` (a
    squeeze-excitation reduction of 8 channels at ``round_to`` 8) cannot be pruned at that rounding and is kept
    whole; a wider one the ratio would empty is pruned to ``round_to`` channels. The widths follow Torch-Pruning's
    per-group arithmetic, exact for the ``layer`` scope; under ``global`` the ranking decides each group's width, so
    only the narrow layers are decided here.

    Raises:
        ConfigError: a ratio out of range, or ``stage_ratios`` naming no module of the model.
    """
    import torch_pruning as tp
    from torch import nn

    _check_ratio(ratio, round_to, 1)
    for r in (stage_ratios or {}).values():
        _check_ratio(r, round_to, 1)
    if stage_ratios:
        _ratio_dict(model, stage_ratios)
    step = round_to or 1
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    plan = ChannelPlan(scope=scope, round_to=round_to)
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored_layers)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root = group[0].dep.target.module
        c = dg.get_out_channels(root)
        if c is None:
            continue
        name = names.get(root, str(root))
        r = ratio_for(name, ratio, stage_ratios)
        kept = kept_width(int(c), r, round_to)
        row = {"layer": name, "channels": int(c), "kept": kept, "ratio": r, "action": "pruned"}
        if r <= 0:
            row.update(kept=int(c), action="unpruned")
        elif int(c) <= step:
            row.update(kept=int(c), action="kept_whole")
        elif kept < 1 and scope == "layer":
            cap = _cap(int(c), round_to)
            row.update(kept=kept_width(int(c), cap, round_to), action="capped", capped_ratio=cap)
        plan.rows.append(row)
    return plan


def check_structured(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, round_to: int | None = 8,
                     ignored_layers: Iterable[nn.Module] = (),
                     stage_ratios: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The rows of :func:`channel_plan` (one ``{"layer", "channels", "kept", "ratio", "action"}`` per prunable
    group), checked before any training.

    Raises:
        ConfigError: the ratio is out of range, or ``stage_ratios`` names no module.
    """
    return channel_plan(model, example_inputs, ratio=ratio, round_to=round_to, ignored_layers=ignored_layers,
                        stage_ratios=stage_ratios).rows


def prune_channels(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, scope: str = "layer",
                   round_to: int | None = 8, iterative_steps: int = 1, importance: str = "l2",
                   ignored_layers: Iterable[nn.Module] = (),
                   stage_ratios: dict[str, float] | None = None) -> nn.Module:
    """Remove ``ratio`` of the output channels with Torch-Pruning, in place; returns ``model`` (now smaller).

    Layers that cannot be pruned at ``round_to`` are kept whole and layers the ratio would empty are pruned to
    ``round_to`` channels (:func:`channel_plan` says which; its ``notes()`` say it in words).

    Args:
        model: the network (on CPU, any mode).
        example_inputs: a batch to trace the dependency graph with.
        ratio: fraction of channels removed, in ``[0, 1)``.
        scope: ``"layer"`` (the same ratio in every group) or ``"global"`` (ranked across groups).
        round_to: kept widths are multiples of this (None: any width).
        iterative_steps: reach ``ratio`` in this many pruning steps (each re-scores what is left).
        importance: ``"l2"``, ``"l1"`` (group norms) or ``"bn_scale"``.
        ignored_layers: modules whose output channels are kept (the classifier at least).
        stage_ratios: module name -> the ratio of the layers under it (layer scope only); the rest get ``ratio``.

    Raises:
        ConfigError: bad arguments.
        TrainingError: (global scope) the ranking emptied a layer anyway.
    """
    import torch_pruning as tp

    _check_ratio(ratio, round_to, iterative_steps)
    if scope not in ("layer", "global"):
        raise ConfigError(f"structured scope '{scope}': use 'layer' (uniform ratio) or 'global'")
    if stage_ratios and scope != "layer":
        raise ConfigError("stage_ratios needs scope 'layer'")
    ignored = list(ignored_layers)
    plan = channel_plan(model, example_inputs, ratio=ratio, round_to=round_to, ignored_layers=ignored,
                        stage_ratios=stage_ratios, scope=scope)
    if ratio == 0 and not any((stage_ratios or {}).values()):
        return model
    mods = dict(model.named_modules())
    ignored += [mods[r["layer"]] for r in plan.kept_whole]
    # stage entries first: Torch-Pruning lets a later key override an earlier one for the layers under both
    ratios = {**(stage_ratios or {}), **plan.caps()}
    was_training = model.training
    model.eval()  # tracing must not update BatchNorm statistics
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=_importance(importance), pruning_ratio=ratio,
        global_pruning=scope == "global", ignored_layers=ignored, round_to=round_to, iterative_steps=iterative_steps,
        pruning_ratio_dict=_ratio_dict(model, ratios) if ratios else None,
    )
    for _ in range(iterative_steps):
        pruner.step()
    model.train(was_training)
    empty = [n for n, m in prunable_layers(model) if m.weight.numel() == 0]
    if empty:
        raise TrainingError(f"channel pruning emptied {', '.join(empty)}; lower prune.ratio or use scope 'layer'")
    return model


def channel_table(before: nn.Module, after: nn.Module) -> list[dict[str, Any]]:
    """Per Conv/Linear layer: output widths before and after channel pruning."""
    b = dict(prunable_layers(before))
    rows = []
    for name, m in prunable_layers(after):
        w0 = b.get(name)
        rows.append({"name": name, "before": int(w0.weight.shape[0]) if w0 is not None else None,
                     "after": int(m.weight.shape[0])})
    return rows


@PRUNE_METHODS.register(Structured, aliases=("channel",))
@teacher_check(dense_round_teacher)
def structured(cfg: Structured, ctx: PruneContext) -> PruneResult:
    """Dense round, Torch-Pruning channel pruning to ``ratio``, then fine-tuning of the smaller model.

    The returned model is dense (its masks are all ones); ``info`` holds params/MACs before and after, the widths
    per layer and ``structure`` (a :func:`structure_spec` of every layer, for rebuilding it).

    Layers that cannot be pruned at ``round_to`` are kept whole, and layers the ratio would empty are pruned to
    ``round_to`` channels; both are listed in ``info`` (``kept_whole``, ``capped``) and in the result's ``notes``.

    Raises:
        ConfigError: a ratio outside [0, 1) or ``stage_ratios`` naming no module; checked on W0 before training.
    """
    import copy

    import torch

    from .flow import train_dense_then_pruned
    from .masks import MaskSet
    from .stats import count_params_macs, example_shape

    p = cfg
    shape = example_shape(ctx.data)
    example = torch.zeros(shape)
    # layers frozen by train.freeze are never pruned: no training would let them recover, and the pruned round's
    # cache and its distillation teacher need the frozen layers unchanged
    ignored = kept_whole(ctx.model, p, ctx.training.freeze)
    # decided on W0 (the dense round changes weights, not widths): bad options fail before any training, and the
    # layers kept whole or pruned less than asked are the run's notes
    plan = channel_plan(ctx.model, example, ratio=p.ratio, round_to=p.round_to, ignored_layers=ignored,
                        stage_ratios=p.stage_ratios, scope=p.scope)

    if p.frozen_ratio and not ctx.training.freeze:
        raise ConfigError(f"prune.frozen_ratio = {p.frozen_ratio} prunes the layers that train.freeze freezes, and"
                          " train.freeze is not set; set train.freeze (e.g. blocks.4) or prune.frozen_ratio: 0")

    def prune(model: nn.Module, _masks: MaskSet) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
        before = copy.deepcopy(model)
        params0, macs0 = count_params_macs(model, shape)
        frozen_info = _prune_frozen(model, p, ctx)
        ign = kept_whole(model, p, ctx.training.freeze)
        prune_channels(model, example, ratio=p.ratio, scope=p.scope, round_to=p.round_to,
                       iterative_steps=p.iterative_steps, importance=p.importance, ignored_layers=ign,
                       stage_ratios=p.stage_ratios)
        params1, macs1 = count_params_macs(model, shape)
        info = {"ratio": p.ratio, "scope": p.scope, "round_to": p.round_to, "params_before": params0,
                "macs_before": macs0, "params_after": params1, "macs_after": macs1,
                "widths": channel_table(before, model), "structure": structure_spec(model, reference=before),
                **plan.to_dict()}
        if frozen_info is not None:
            info["frozen_reconstruction"] = frozen_info.to_dict()
            notes.extend(frozen_info.notes())
        # dense: an all-ones mask set over the new widths keeps the shared reporting (sparsity table) working
        return model, MaskSet({n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model)}), info

    notes: list[str] = []
    res = train_dense_then_pruned(ctx, cfg, prune)
    res.notes.extend(plan.notes())
    frozen = _frozen_prunable(ctx.model, ctx.training.freeze)
    if frozen and not p.frozen_ratio:
        res.notes.append(f"{len(frozen)} layers up to '{ctx.training.freeze}' kept whole: frozen by train.freeze")
    res.notes.extend(notes)
    return res


def _prune_frozen(model: nn.Module, cfg: Structured, ctx: PruneContext) -> Any:
    """``cfg.frozen_ratio`` of the hidden channels of the frozen layers removed with a least-squares refit
    (:mod:`.reconstruct`), on ``cfg.frozen_samples`` training images; ``None`` when the ratio is 0."""
    if not cfg.frozen_ratio:  # stage_ratios alone never reach into the frozen layers: frozen_ratio turns it on
        return None
    import numpy as np
    import torch

    from ..data import calibration_arrays
    from .reconstruct import reconstruct_pruned

    images = torch.from_numpy(np.concatenate(calibration_arrays(ctx.data, cfg.frozen_samples)))
    return reconstruct_pruned(model, images, ratio=cfg.frozen_ratio, allowed=frozen_refittable(model, cfg,
                              ctx.training.freeze), round_to=cfg.round_to, stage_ratios=cfg.stage_ratios)


def frozen_refittable(model: nn.Module, cfg: Structured, freeze: str | None) -> set[str]:
    """The modules ``frozen_ratio`` may change: those ``train.freeze`` freezes, less the stem (unless
    ``prune_first_conv``) and ``exclude``; training and the search's architectures use this one set."""
    if not freeze:
        return set()
    from ...models import frozen_modules

    whole = {id(m) for m in _ignored(model, prune_first_conv=cfg.prune_first_conv, exclude=cfg.exclude)}
    return {n for n in frozen_modules(model, freeze) if id(model.get_submodule(n)) not in whole}


def _frozen_prunable(model: nn.Module, freeze: str | None) -> list[str]:
    if not freeze:
        return []
    from ...models import frozen_modules

    frozen = set(frozen_modules(model, freeze))
    return [n for n, _ in prunable_layers(model) if n in frozen]
