"""Structured channel pruning with Torch-Pruning's dependency graph, and rebuilding the smaller model later.

Recipe: ``prune: {method: structured, ratio: 0.3, scope: layer|global, round_to: 8, iterative_steps: 1,
importance: l2|l1|bn_scale}``. After the dense round, Torch-Pruning removes ``ratio`` of the output channels of
every prunable group (``layer``: the same ratio in each group; ``global``: ranked across groups) together with
everything that depends on them (BatchNorm, the next layer's input channels, depthwise groups), keeping the widths
multiples of ``round_to`` (8 suits the vector units of CPUs and tensor cores). The classifier (its outputs are the
classes) is never pruned; the first conv and ``exclude`` patterns are kept at full width unless
``prune_first_conv``. The result is a smaller *dense* model, fine-tuned afterwards.

An artifact stores a state dict, and ``build_model(arch, num_classes)`` builds the unpruned widths. The widths
are therefore recorded with :func:`structure_spec` and put back with :func:`restore_structure` before
``load_state_dict``::

    spec = structure_spec(pruned, reference=build_model(arch, n))     # JSON-ready, only the changed modules
    ...
    model = restore_structure(build_model(arch, n), spec)            # same shapes as ``pruned``
    model.load_state_dict(state_dict)
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import ArtifactError, ConfigError, TrainingError
from .pruning import (
    PRUNERS,
    MaskSet,
    PruneContext,
    PruneResult,
    _classifier_name,
    count_params_macs,
    dense_round_teacher,
    example_shape,
    prunable_layers,
    teacher_check,
    train_dense_then_pruned,
)

SPEC_VERSION = 1
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# -- recording and restoring the pruned widths --------------------------------------------------------------------


def _attrs(m: nn.Module) -> dict[str, Any] | None:
    if isinstance(m, _CONV):
        return {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return {"type": "BatchNorm", "num_features": m.num_features}
    if isinstance(m, nn.LayerNorm):
        return {"type": "LayerNorm", "normalized_shape": list(m.normalized_shape)}
    if isinstance(m, nn.GroupNorm):
        return {"type": "GroupNorm", "num_groups": m.num_groups, "num_channels": m.num_channels}
    return None


def structure_spec(model: nn.Module, *, reference: nn.Module | None = None) -> dict[str, Any]:
    """The widths of every Conv / Linear / norm layer of ``model``, as JSON-ready data.

    Args:
        model: the (channel-pruned) model.
        reference: the unpruned architecture (e.g. ``build_model(arch, num_classes)``); when given, only modules
            whose widths differ from it are recorded, so an unpruned model gives an empty ``modules``.

    Returns:
        ``{"version": 1, "modules": {qualified name: {"type", widths...}}}``.
    """
    ref = dict(reference.named_modules()) if reference is not None else {}
    modules: dict[str, Any] = {}
    for name, m in model.named_modules():
        a = _attrs(m)
        if a is None:
            continue
        if reference is not None and name in ref and _attrs(ref[name]) == a:
            continue
        modules[name] = a
    return {"version": SPEC_VERSION, "modules": modules}


def _resize(m: nn.Module, name: str, shape: tuple[int, ...], *, buffer: bool = False) -> None:
    old = getattr(m, name, None)
    if old is None:
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if buffer:
        setattr(m, name, new.zero_() if name != "running_var" else new.fill_(1.0))
    else:
        setattr(m, name, nn.Parameter(new, requires_grad=old.requires_grad))


def restore_structure(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give a freshly built ``model`` the widths recorded by :func:`structure_spec`, in place.

    Parameters and buffers of the changed layers get the recorded shapes (uninitialised: load the state dict
    next). An empty spec is a no-op.

    Returns:
        ``model``, for chaining.

    Raises:
        ArtifactError: the spec is malformed or names a module the model lacks or of another type.
    """
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION or not isinstance(spec.get("modules"), dict):
        raise ArtifactError(
            f"structure spec {str(spec)[:80]!r} is not a version-{SPEC_VERSION} spec from structure_spec();"
            " re-export the artifact with this edgeslim"
        )
    mods = dict(model.named_modules())
    for name, a in spec["modules"].items():
        m = mods.get(name)
        have = _attrs(m) if m is not None else None
        if have is None or have["type"] != a.get("type"):
            raise ArtifactError(
                f"structure spec names '{name}' ({a.get('type')}) but {type(model).__name__} has"
                f" {'no such module' if m is None else type(m).__name__}: the spec belongs to another architecture"
            )
        try:
            if isinstance(m, _CONV):
                m.in_channels, m.out_channels = int(a["in_channels"]), int(a["out_channels"])
                m.groups = int(a["groups"])
                k = tuple(m.kernel_size)
                if m.transposed:
                    _resize(m, "weight", (m.in_channels, m.out_channels // m.groups, *k))
                else:
                    _resize(m, "weight", (m.out_channels, m.in_channels // m.groups, *k))
                _resize(m, "bias", (m.out_channels,))
            elif isinstance(m, nn.Linear):
                m.in_features, m.out_features = int(a["in_features"]), int(a["out_features"])
                _resize(m, "weight", (m.out_features, m.in_features))
                _resize(m, "bias", (m.out_features,))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.num_features = int(a["num_features"])
                for p in ("weight", "bias"):
                    _resize(m, p, (m.num_features,))
                for b in ("running_mean", "running_var"):
                    _resize(m, b, (m.num_features,), buffer=True)
            elif isinstance(m, nn.LayerNorm):
                m.normalized_shape = tuple(int(d) for d in a["normalized_shape"])
                for p in ("weight", "bias"):
                    _resize(m, p, m.normalized_shape)
            elif isinstance(m, nn.GroupNorm):
                m.num_groups, m.num_channels = int(a["num_groups"]), int(a["num_channels"])
                for p in ("weight", "bias"):
                    _resize(m, p, (m.num_channels,))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"structure spec entry '{name}' is malformed ({exc}): {a}") from None
    return model


def rebuild_model(arch: str, num_classes: int, structure: dict[str, Any] | None = None) -> nn.Module:
    """``build_model(arch, num_classes)`` with the recorded widths put back (``structure`` None or empty: as built).

    The one call an exporter or runtime needs before ``load_state_dict`` of an artifact's ``model.safetensors``.
    """
    from .sources import build_model

    model = build_model(arch, num_classes)
    return restore_structure(model, structure) if structure else model


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
    import fnmatch

    layers = prunable_layers(model)
    names = [n for n, _ in layers]
    keep: set[str] = set()
    head = _classifier_name(model, layers)
    if head is not None:
        keep.add(head)  # its outputs are the classes
    if not prune_first_conv:
        first = next((n for n, m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
        if first is not None:
            keep.add(first)
    for pattern in exclude:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(
                f"prune.exclude pattern '{pattern}' matches no prunable layer; layers are: {', '.join(names)}"
            )
        keep.update(hits)
    return [model.get_submodule(n) for n in sorted(keep)]


def _check_ratio(ratio: float, round_to: int | None, iterative_steps: int) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConfigError(f"structured ratio {ratio!r}: must be in [0, 1) (the fraction of channels removed)")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to {round_to!r}: must be a positive integer or None")
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ConfigError(f"iterative_steps {iterative_steps!r}: must be an integer >= 1")


def _kept(channels: int, ratio: float, round_to: int | None) -> int:
    # Torch-Pruning's arithmetic for a local (per-group) scope: keep int(C * (1 - ratio)), then round down
    kept = int(channels * (1 - ratio))
    if round_to:
        kept -= kept % round_to
    return kept


def check_structured(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, round_to: int | None = 8,
                     ignored_layers: Iterable[nn.Module] = ()) -> list[dict[str, Any]]:
    """Check, before any training, that ``ratio`` leaves at least one channel in every prunable group.

    Torch-Pruning silently skips a group whose rounded width would be 0 (the layer would vanish), which would
    leave that layer unpruned without a word; this turns it into an error. The widths follow Torch-Pruning's
    per-group arithmetic, exact for the ``layer`` scope; under ``global`` the ranking decides each group's width,
    so this check catches only what no ranking can avoid (``round_to`` above a group's width).

    Returns:
        One ``{"layer", "channels", "kept"}`` per prunable group.

    Raises:
        ConfigError: the ratio is out of range, or a group would lose all its channels (names the layer, its
            width, and the largest ratio that keeps it).
    """
    import torch_pruning as tp

    _check_ratio(ratio, round_to, 1)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    rows, bad = [], []
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored_layers)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root = group[0].dep.target.module
        c = dg.get_out_channels(root)
        if c is None:
            continue
        kept = _kept(int(c), ratio, round_to)
        rows.append({"layer": names.get(root, str(root)), "channels": int(c), "kept": kept})
        if kept < 1 and ratio > 0:
            bad.append(rows[-1])
    if bad:
        step = round_to or 1
        narrowest = min(r["channels"] for r in bad)
        # largest ratio with int(C * (1 - r)) >= step for the narrowest failing layer
        best = 1 - step / narrowest
        fix = (f"use a ratio <= {best:.3f}, a smaller round_to, or exclude the layer" if best > 0 else
               f"round_to {step} is not below the layer's width: use a smaller round_to or exclude the layer")
        raise ConfigError(
            f"structured ratio {ratio} with round_to {round_to} would remove every channel of "
            + ", ".join(f"'{r['layer']}' ({r['channels']} channels)" for r in bad[:4])
            + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            + f"; {fix}"
        )
    return rows


def prune_channels(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float, scope: str = "layer",
                   round_to: int | None = 8, iterative_steps: int = 1, importance: str = "l2",
                   ignored_layers: Iterable[nn.Module] = ()) -> nn.Module:
    """Remove ``ratio`` of the output channels with Torch-Pruning, in place; returns ``model`` (now smaller).

    Args:
        model: the network (on CPU, any mode).
        example_inputs: a batch to trace the dependency graph with.
        ratio: fraction of channels removed, in ``[0, 1)``.
        scope: ``"layer"`` (the same ratio in every group) or ``"global"`` (ranked across groups).
        round_to: kept widths are multiples of this (None: any width).
        iterative_steps: reach ``ratio`` in this many pruning steps (each re-scores what is left).
        importance: ``"l2"``, ``"l1"`` (group norms) or ``"bn_scale"``.
        ignored_layers: modules whose output channels are kept (the classifier at least).

    Raises:
        ConfigError: bad arguments, or a layer would lose all its channels.
        TrainingError: (global scope) the ranking emptied a layer anyway.
    """
    import torch_pruning as tp

    _check_ratio(ratio, round_to, iterative_steps)
    if scope not in ("layer", "global"):
        raise ConfigError(f"structured scope '{scope}': use 'layer' (uniform ratio) or 'global'")
    ignored = list(ignored_layers)
    check_structured(model, example_inputs, ratio=ratio, round_to=round_to, ignored_layers=ignored)
    if ratio == 0:
        return model
    was_training = model.training
    model.eval()  # tracing must not update BatchNorm statistics
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=_importance(importance), pruning_ratio=ratio,
        global_pruning=scope == "global", ignored_layers=ignored, round_to=round_to, iterative_steps=iterative_steps,
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


@PRUNERS.register("structured", aliases=("channel",))
@teacher_check(dense_round_teacher)
def structured(ctx: PruneContext) -> PruneResult:
    """Dense round, Torch-Pruning channel pruning to ``prune.ratio``, then fine-tuning of the smaller model.

    The returned model is dense (its masks are all ones); ``info`` holds params/MACs before and after, the widths
    per layer and ``structure`` (a :func:`structure_spec` of every layer, for rebuilding it).

    Raises:
        ConfigError: ratio outside [0, 1) or one that would remove a whole layer; checked on W0 before training.
    """
    p = ctx.recipe.prune
    shape = example_shape(ctx.data)
    example = torch.zeros(shape)
    ignored = _ignored(ctx.model, prune_first_conv=p.prune_first_conv, exclude=p.exclude)
    check_structured(ctx.model, example, ratio=p.ratio, round_to=p.round_to, ignored_layers=ignored)

    def prune(model: nn.Module, _masks: MaskSet) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
        before = copy.deepcopy(model)
        params0, macs0 = count_params_macs(model, shape)
        ign = _ignored(model, prune_first_conv=p.prune_first_conv, exclude=p.exclude)
        prune_channels(model, example, ratio=p.ratio, scope=p.scope, round_to=p.round_to,
                       iterative_steps=p.iterative_steps, importance=p.importance, ignored_layers=ign)
        params1, macs1 = count_params_macs(model, shape)
        info = {"ratio": p.ratio, "scope": p.scope, "round_to": p.round_to, "params_before": params0,
                "macs_before": macs0, "params_after": params1, "macs_after": macs1,
                "widths": channel_table(before, model), "structure": structure_spec(model, reference=before)}
        # dense: an all-ones mask set over the new widths keeps the shared reporting (sparsity table) working
        return model, MaskSet({n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model)}), info

    return train_dense_then_pruned(ctx, prune)
