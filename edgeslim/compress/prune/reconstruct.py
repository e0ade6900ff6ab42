"""Channel pruning inside the frozen layers, recovered without training: least-squares reconstruction.

Layers frozen by ``train.freeze`` get no gradient (their outputs are cached once), so structured pruning leaves them
whole (:func:`~edgeslim.compress.prune.structured.kept_whole`). Once the trainable stages are pruned, those frozen
early stages at full resolution hold most of the INT8 latency (``docs/elpv.md``). ``prune.frozen_ratio`` removes
that fraction of the channels of every *hidden* group of the frozen layers and refits the group's consumer so that
its outputs on calibration images match the unpruned network's: channel pruning with linear reconstruction (He,
Zhang & Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017; Luo, Wu & Lin, "ThiNet",
ICCV 2017).

A hidden group is a set of coupled channels (Torch-Pruning's dependency graph) with one producing convolution, any
number of depthwise convolutions and norms, and exactly one consumer, a 1x1 convolution with fewer outputs than the
group has channels (an expanded representation, the redundancy a linear refit can recover): the expansion of an
inverted-residual block with its depthwise conv (consumed by the block's projection), or the stem with the first
depthwise conv (consumed by the first pointwise conv, with ``prune_first_conv``). Widths that residual additions
share, and so every block's output, stay as they are: the features at the freeze boundary keep their shape.
Blocks that gate their hidden channels with squeeze-excitation (EfficientNet-B0, some MobileNetV3 blocks) have a
second consumer and are left whole, as are ResNet bottlenecks (their 3x3 conv consumes, and their 1x1 projection
widens); EfficientNet-Lite and MobileNetV2 blocks qualify.

Each group is pruned in forward order. Its channels are ranked by the output energy each carries into the consumer,
``E[a_c^2] * ||W[:, c]||^2`` over the calibration images (a weight-only norm ignores that most frozen ImageNet
features are nearly silent on a narrow data set); the consumer's weights and an intercept are then the least-squares
fit, on the kept channels of the network pruned so far, to the *unpruned* network's consumer outputs, so each fit
also absorbs the errors of the groups before it. The intercept folds into the BatchNorm after the consumer (its
running mean), so the architecture stays a plain narrower copy of the original that
:func:`~edgeslim.models.rebuild_model` rebuilds from widths alone.

Why not a library: Torch-Pruning (used here for the dependency graph and for removing the channels) ranks and
removes channels but never refits the next layer; NNCF's filter pruning recovers by fine-tuning, which frozen
layers do not get. The refit is a ridge-regularised normal-equation solve in float64, a few lines.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["HiddenGroup", "ReconstructionReport", "hidden_groups", "prune_hidden_widths", "reconstruct_pruned"]

#: spatial positions sampled per image and layer: rows of the least-squares system (256 images x 64 = 16k rows
#: against at most a few hundred unknowns per output channel)
_POSITIONS = 64
#: images per forward pass while collecting statistics (bounds the memory of one pass at the highest resolution)
_CHUNK = 32
#: ridge term, relative to the mean diagonal of the Gram matrix: keeps the solve stable when kept channels are
#: nearly collinear, far below the signal (1e-4 of the mean energy)
_RIDGE = 1e-4


@dataclass(frozen=True)
class HiddenGroup:
    """One prunable hidden group: the conv that produces its channels and the 1x1 conv that consumes them."""

    producer: str
    consumer: str
    channels: int


@dataclass
class ReconstructionReport:
    """What :func:`reconstruct_pruned` did: one row per group and the time it took."""

    ratio: float
    samples: int
    seconds: float = 0.0
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "samples": self.samples, "seconds": round(self.seconds, 2),
                "layers": self.layers}

    def notes(self) -> list[str]:
        pruned = [r for r in self.layers if r["after"] < r["before"]]
        if not pruned:
            return []
        worst = max(pruned, key=lambda r: r["relative_error"])
        kept = sum(r["after"] for r in pruned) / sum(r["before"] for r in pruned)
        return [f"{len(pruned)} hidden groups of the frozen layers pruned to {kept:.0%} of their channels with least-squares"
                f" reconstruction on {self.samples} training images ({self.seconds:.0f} s); largest relative output"
                f" error {worst['relative_error']:.3f} at '{worst['consumer']}'"]


def _is_depthwise(m: Any) -> bool:
    from torch import nn

    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    import torch_pruning as tp

    import torch

    from ...models import eval_mode

    # Torch-Pruning traces through autograd: layers frozen by train.freeze (requires_grad False) would be missing
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        for p in frozen:
            p.requires_grad_(False)


def hidden_groups(model: nn.Module, example: torch.Tensor, allowed: Iterable[str], *,
                  graph: Any = None) -> list[HiddenGroup]:
    """The hidden groups of ``model`` (see the module doc) whose every layer is in ``allowed``, in forward order.

    Args:
        model: the network.
        example: an input batch to trace the dependency graph with.
        allowed: names of the modules that may change (the frozen layers, less those kept whole).
        graph: a Torch-Pruning dependency graph of ``model`` already built.
    """
    import torch_pruning as tp
    from torch import nn

    allowed = set(allowed)
    dg = graph if graph is not None else _dependency_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    found: list[HiddenGroup] = []
    for name, m in model.named_modules():
        if name not in allowed or not isinstance(m, nn.Conv2d) or _is_depthwise(m) or m.out_channels < 2:
            continue
        group = dg.get_pruning_group(m, tp.prune_conv_out_channels, idxs=list(range(m.out_channels)))
        producers, consumers, touched = [], [], set()
        for dep, _ in group:
            mod = dep.target.module
            if mod is None or not any(True for _ in mod.parameters(recurse=False)):
                continue
            touched.add(names.get(mod, "?"))
            if not isinstance(mod, (nn.Conv2d, nn.Linear)) or _is_depthwise(mod):
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                producers.append(mod)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                consumers.append(mod)
        if len(producers) != 1 or len(consumers) != 1 or not touched <= allowed:
            continue
        c = consumers[0]
        if not (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.groups == 1 and c.stride == (1, 1)):
            continue
        if m.out_channels <= c.out_channels:
            # a bottleneck (a block's output feeding the next block's expansion) carries no redundancy that a
            # linear refit could recover: only expanded groups, wider than their consumer's output, are hidden
            continue
        found.append(HiddenGroup(producer=name, consumer=names[c], channels=m.out_channels))
    return sorted(found, key=lambda g: order[g.consumer])


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has been seen (the rest of the network is not needed)."""


def _capture(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, *, inputs: bool,
             last: str) -> dict[str, torch.Tensor]:
    """Inputs (or outputs) of ``layers`` for batch ``x``; the pass stops after ``last``."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in layers.items():
        def hook(_m: Any, args: Any, out: Any = None, *, _name: str = name) -> None:
            got[_name] = (args[0] if inputs else out).detach()
            if _name == last:
                raise _Stop
        handles.append(layer.register_forward_pre_hook(hook) if inputs else layer.register_forward_hook(hook))
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def _sample(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``(N * P, C)`` of ``t`` (N, C, H, W) at flat spatial positions ``pos`` (N, P)."""
    flat = t.flatten(2)
    rows = flat.gather(2, pos[:, None, :].expand(-1, flat.shape[1], -1))
    return rows.permute(0, 2, 1).reshape(-1, flat.shape[1])


def _positions(n: int, hw: int, key: int) -> torch.Tensor:
    import torch

    g = torch.Generator().manual_seed(key)
    return torch.randint(0, hw, (n, min(_POSITIONS, hw)), generator=g)


def _check_ratios(ratio: float, stage_ratios: Mapping[str, float] | None) -> None:
    if not 0 <= ratio < 1:
        raise ConfigError(f"prune.frozen_ratio = {ratio}: must be in [0, 1)")
    bad = {k: r for k, r in (stage_ratios or {}).items() if not 0 <= r < 1}
    if bad:
        raise ConfigError(f"prune.stage_ratios {bad}: every ratio must be in [0, 1)")


def _group_ratio(group: HiddenGroup, ratio: float, stage_ratios: Mapping[str, float] | None) -> float:
    from .base import ratio_for

    return ratio_for(group.producer, ratio, dict(stage_ratios or {}))


def _kept(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels a group keeps: the width structured pruning gives the same ratio (:func:`.base.kept_width`, rounded
    down), at least one multiple of ``round_to``; a group no wider than ``round_to`` is kept whole."""
    from .base import kept_width

    if round_to and channels <= round_to:
        return channels
    return min(channels, max(round_to or 1, kept_width(channels, ratio, round_to)))


def _following_norm(graph: Any, layer: nn.Module) -> nn.Module | None:
    """The BatchNorm that takes ``layer``'s output directly, if any (its running mean absorbs an intercept)."""
    from torch import nn

    node = graph.module2node.get(layer)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    return nxt if isinstance(nxt, nn.BatchNorm2d) and nxt.track_running_stats else None


def reconstruct_pruned(model: nn.Module, images: torch.Tensor, *, ratio: float, allowed: Iterable[str],
                       round_to: int | None = 8, stage_ratios: Mapping[str, float] | None = None
                       ) -> ReconstructionReport:
    """Prune ``ratio`` of every hidden group among ``allowed`` layers and refit each consumer, in place.

    Args:
        model: the network (CPU); left in the mode it came in.
        images: calibration inputs ``(N, C, H, W)`` (preprocessed training images).
        ratio: fraction of each group's channels removed, in ``[0, 1)``.
        allowed: names of the modules that may change (the frozen layers, less those kept whole).
        round_to: kept widths are multiples of this; a group no wider than it is left whole.
        stage_ratios: module name -> the ratio of the groups whose producer lies under it (the longest match
            wins), over ``ratio``: early high-resolution stages hold the latency and refit with the least error.

    Returns:
        A :class:`ReconstructionReport` (per group: widths before and after, and the consumer's residual on the
        sampled positions relative to the mean square of its unpruned outputs there).

    Raises:
        ConfigError: ``ratio`` outside ``[0, 1)`` or no calibration images.
    """
    from ...models import eval_mode

    _check_ratios(ratio, stage_ratios)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConfigError(f"reconstruction needs a batch of calibration images (N, C, H, W); got {tuple(images.shape)}")
    report = ReconstructionReport(ratio=ratio, samples=int(images.shape[0]))
    if ratio == 0 and not any((stage_ratios or {}).values()):
        return report
    t0 = time.perf_counter()
    with eval_mode(model):  # each module's own mode back afterwards (frozen norms stay in eval)
        _refit(model, images, ratio, allowed, round_to, stage_ratios, report)
    report.seconds = time.perf_counter() - t0
    return report


def _refit(model: nn.Module, images: torch.Tensor, ratio: float, allowed: Iterable[str], round_to: int | None,
           stage_ratios: Mapping[str, float] | None, report: ReconstructionReport) -> None:
    """The body of :func:`reconstruct_pruned`, with ``model`` in eval mode; fills ``report.layers``."""
    import torch
    import torch_pruning as tp

    original = copy.deepcopy(model).eval()
    example = images[:1]
    graph = _dependency_graph(model, example)
    groups = hidden_groups(model, example, allowed, graph=graph)
    if not groups:
        return
    chunks = list(images.split(_CHUNK))
    consumers0 = {g.consumer: original.get_submodule(g.consumer) for g in groups}
    # the unpruned network's consumer outputs at the sampled positions: one pass for every group
    targets: dict[str, list[torch.Tensor]] = {g.consumer: [] for g in groups}
    with torch.no_grad():
        for ci, x in enumerate(chunks):
            outs = _capture(original, consumers0, x, inputs=False, last=groups[-1].consumer)
            for gi, g in enumerate(groups):
                y = outs[g.consumer]
                targets[g.consumer].append(_sample(y, _positions(len(x), y.shape[2] * y.shape[3], gi * 100_003 + ci)))
    del original, consumers0
    with torch.no_grad():
        for gi, g in enumerate(groups):
            producer, consumer = model.get_submodule(g.producer), model.get_submodule(g.consumer)
            h = consumer.in_channels
            keep = _kept(h, _group_ratio(g, ratio, stage_ratios), round_to)
            row: dict[str, Any] = {"producer": g.producer, "consumer": g.consumer, "before": h, "after": h,
                                   "relative_error": 0.0}
            report.layers.append(row)
            if keep >= h:
                continue
            gram = torch.zeros(h + 1, h + 1, dtype=torch.float64)
            cross = torch.zeros(h + 1, consumer.out_channels, dtype=torch.float64)
            tt = torch.zeros(consumer.out_channels, dtype=torch.float64)
            for ci, x in enumerate(chunks):
                a = _capture(model, {g.consumer: consumer}, x, inputs=True, last=g.consumer)[g.consumer]
                rows = _sample(a, _positions(len(x), a.shape[2] * a.shape[3], gi * 100_003 + ci)).double()
                rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=torch.float64)], 1)
                t = targets[g.consumer][ci].double()
                gram += rows.T @ rows
                cross += rows.T @ t
                tt += (t * t).sum(0)
            n = float(gram[h, h])
            w = consumer.weight.detach()[:, :, 0, 0].double()  # (out, h)
            energy = torch.diagonal(gram)[:h] / n * (w * w).sum(0)
            kept = torch.sort(torch.topk(energy, keep).indices).values
            sub = torch.cat([kept, torch.tensor([h])])
            g_kept = gram[sub][:, sub]
            ridge = _RIDGE * float(torch.diagonal(g_kept)[:-1].mean())
            g_sub = g_kept + ridge * torch.eye(len(sub), dtype=torch.float64)
            g_sub[-1, -1] -= ridge  # the intercept is not shrunk
            sol = torch.linalg.solve(g_sub, cross[sub])  # (keep + 1, out)
            residual = tt - 2 * (sol * cross[sub]).sum(0) + (sol * (g_kept @ sol)).sum(0)
            row["relative_error"] = round(float(residual.sum() / tt.sum().clamp_min(1e-30)), 5)
            row["after"] = keep
            removed = sorted(set(range(h)) - set(kept.tolist()))
            graph.get_pruning_group(producer, tp.prune_conv_out_channels, idxs=removed).prune()
            weight = sol[:keep].T.to(consumer.weight.dtype).reshape(consumer.out_channels, keep, 1, 1)
            consumer.weight.data = weight.contiguous()
            bias = sol[keep].to(consumer.weight.dtype)
            if consumer.bias is not None:
                consumer.bias.data = bias
            else:
                norm = _following_norm(graph, consumer)
                if norm is not None:
                    norm.running_mean.sub_(bias)  # BN(y + b) with mean m = BN(y) with mean m - b
                else:  # no place for an intercept: refit without one
                    fit = torch.linalg.solve(g_sub[:-1, :-1], cross[kept])
                    consumer.weight.data = fit.T.to(consumer.weight.dtype).reshape_as(consumer.weight).contiguous()


def prune_hidden_widths(model: nn.Module, example: torch.Tensor, *, ratio: float, allowed: Iterable[str],
                        round_to: int | None = 8, stage_ratios: Mapping[str, float] | None = None) -> nn.Module:
    """The architecture :func:`reconstruct_pruned` makes, without its data or refit (channels ranked by L2 norm):
    for timing a candidate (the search), where only the widths matter. In place; returns ``model``."""
    import torch_pruning as tp

    _check_ratios(ratio, stage_ratios)
    if ratio == 0 and not any((stage_ratios or {}).values()):
        return model
    graph = _dependency_graph(model, example)
    for g in hidden_groups(model, example, allowed, graph=graph):
        producer = model.get_submodule(g.producer)
        keep = _kept(g.channels, _group_ratio(g, ratio, stage_ratios), round_to)
        if keep < g.channels:
            order = producer.weight.detach().flatten(1).norm(dim=1).argsort()
            graph.get_pruning_group(producer, tp.prune_conv_out_channels,
                                    idxs=order[: g.channels - keep].tolist()).prune()
    return model
