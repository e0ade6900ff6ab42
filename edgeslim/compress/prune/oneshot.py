"""One-shot magnitude pruning: prune to the target sparsity once, then fine-tune under the masks.

Recipe: ``prune: {method: one_shot, sparsity: 0.8, scope: layer|global}``. The dense round (``train.epochs``)
adapts the pretrained backbone and the new head to the task first; its weights are then pruned by magnitude to
``sparsity`` (per layer, or ranked over all masked layers with ``global``) and fine-tuned for
``train.final_epochs`` with the pruned weights held at exactly zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from .base import PRUNE_METHODS, LayerPruneConfig, PruneContext, PruneResult, dense_round_teacher, teacher_check

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .masks import MaskSet


class OneShot(LayerPruneConfig):
    """Magnitude pruning to a target sparsity in one step, after the dense round."""

    method: Literal["one_shot"] = "one_shot"
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="target fraction of pruned weights")
    scope: Literal["layer", "global"] = "layer"


@PRUNE_METHODS.register(OneShot, aliases=("oneshot",))
@teacher_check(dense_round_teacher)
def one_shot(cfg: OneShot, ctx: PruneContext) -> PruneResult:
    """Magnitude pruning to ``sparsity`` (``scope``) after the dense round, then masked fine-tuning."""
    from .flow import train_dense_then_pruned

    def prune(model: nn.Module, masks: MaskSet) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
        masks.prune_to(model, cfg.sparsity, scope=cfg.scope)
        return model, masks, {"target_sparsity": cfg.sparsity, "scope": cfg.scope}

    return train_dense_then_pruned(ctx, cfg, prune)
