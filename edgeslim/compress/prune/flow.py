"""The flow the one-shot families share (one_shot, gradual, nm, structured): dense round, prune, masked fine-tune."""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from ...methods import MethodConfig
from ..distributed import sync_masks
from .base import PruneContext, PruneResult, round_summary
from .masks import MaskSet


def train_dense_then_pruned(
    ctx: PruneContext,
    cfg: MethodConfig,
    prune: Callable[[nn.Module, MaskSet], tuple[nn.Module, MaskSet, dict[str, Any]]],
    *,
    on_step_end: Callable[[MaskSet], Callable[[int, nn.Module], None] | None] | None = None,
) -> PruneResult:
    """The flow the one-shot families share: dense fine-tuning, pruning, then fine-tuning under the masks.

    Round 1 (``tag="dense"``) fine-tunes W0 for ``train.epochs`` with gamma = 1 under the ``paper`` gamma schedule
    (else gamma) and keeps its last epoch: that is the dense reference and the weights ``prune`` scores. With
    ``train.epochs = 0`` there is no dense round and W0 itself is pruned (no dense reference). ``prune(model,
    masks)`` returns the model to fine-tune (the same one, or a smaller one for channel pruning), its masks and
    facts for the report. Round 2 (``tag="pruned"``) fine-tunes it for ``train.final_epochs`` (default
    ``train.epochs``) with gamma and keeps the checkpoint chosen by ``train.select``; ``on_step_end(masks)`` may
    give a per-step hook for it (gradual pruning). Pruning is deterministic given the round-1 weights, so a resumed
    run rebuilds the same masks / structure and continues round 2 from its checkpoint. The dense model is round 2's
    distillation teacher (``distill.weight > 0``); its methods declare :func:`dense_round_teacher`.
    """
    t, lossc = ctx.training, ctx.loss
    model = ctx.start_from_w0()
    history: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    dense_model: nn.Module | None = None
    masks = ctx.make_masks(model, cfg)  # before training: a bad exclude pattern fails here, not after round 1
    r = 0
    if t.epochs > 0:
        r = 1
        gamma = 1.0 if lossc.gamma_schedule == "paper" else lossc.gamma
        res = ctx.train(model, tag="dense", gamma=gamma, epochs=t.epochs, select="last")
        model = res.model
        for h in res.history:
            h["round"] = r
        history.extend(res.history)
        rounds.append(round_summary(r, gamma, t.epochs, ctx.make_masks(model, cfg), res))
        dense_model = copy.deepcopy(model)  # before prune(): channel pruning shrinks ``model`` in place
        ctx.teacher = dense_model  # of the pruned round (used only when distill.weight > 0)
    model, masks, info = prune(model, masks)
    sync_masks(masks, model)  # under torchrun: rank 0's masks on every rank
    r += 1
    epochs = ctx.final_epochs
    hook = on_step_end(masks) if on_step_end is not None else None
    res = ctx.train(model, tag="pruned", masks=masks, gamma=lossc.gamma, epochs=epochs, select=t.select,
                    on_step_end=hook)
    for h in res.history:
        h["round"] = r
    history.extend(res.history)
    rounds.append(round_summary(r, lossc.gamma, epochs, masks, res))
    return PruneResult(model=res.model, masks=masks, history=history, rounds=rounds, dense_model=dense_model, info=info)
