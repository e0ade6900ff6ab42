"""No pruning: dense fine-tuning, the baseline every pruned model is compared with.

Recipe: ``prune: {method: none}`` (alias ``dense``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ...methods import MethodConfig
from .base import PRUNE_METHODS, PruneContext, PruneResult, dense_only_teacher, round_summary, teacher_check


class NoPruning(MethodConfig):
    """Dense fine-tuning (alias ``dense``): no weight is pruned, so it takes no options."""

    method: Literal["none"] = "none"
    trains_once: ClassVar[bool] = True


@PRUNE_METHODS.register(NoPruning, aliases=("dense",))
@teacher_check(lambda cfg, train, qat: dense_only_teacher("prune.method 'none'", train, qat))
def no_pruning(cfg: NoPruning, ctx: PruneContext) -> PruneResult:
    """Dense fine-tuning with the configured loss (gamma throughout) and checkpoint selection; no weight is pruned.

    The trained model is the dense reference; distillation (``distill.weight > 0``) has no teacher here and applies
    only to QAT after it.
    """
    t = ctx.training
    epochs = ctx.final_epochs
    gamma = ctx.loss.gamma
    res = ctx.train(ctx.model, tag="dense", gamma=gamma, epochs=epochs, select=t.select)
    masks = ctx.make_masks(res.model, cfg)
    for h in res.history:
        h["round"] = 1
    return PruneResult(
        model=res.model,
        masks=masks,
        history=list(res.history),
        rounds=[round_summary(1, gamma, epochs, masks, res)],
        dense_model=res.model,
    )
