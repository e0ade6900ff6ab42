"""One-shot magnitude pruning: prune to the target sparsity once, then fine-tune under the masks.

Recipe: ``prune: {method: one_shot, sparsity: 0.8, scope: layer|global}``. The dense round (``train.epochs``)
adapts the pretrained backbone and the new head to the task first; its weights are then pruned by magnitude to
``sparsity`` (per layer, or ranked over all masked layers with ``global``) and fine-tuned for
``train.final_epochs`` with the pruned weights held at exactly zero.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .pruning import (
    PRUNERS,
    MaskSet,
    PruneContext,
    PruneResult,
    dense_round_teacher,
    teacher_check,
    train_dense_then_pruned,
)


@PRUNERS.register("one_shot", aliases=("oneshot",))
@teacher_check(dense_round_teacher)
def one_shot(ctx: PruneContext) -> PruneResult:
    """Magnitude pruning to ``prune.sparsity`` (``prune.scope``) after the dense round, then masked fine-tuning."""
    p = ctx.recipe.prune

    def prune(model: nn.Module, masks: MaskSet) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
        masks.prune_to(model, p.sparsity, scope=p.scope)
        return model, masks, {"target_sparsity": p.sparsity, "scope": p.scope}

    return train_dense_then_pruned(ctx, prune)
