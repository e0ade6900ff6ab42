"""Gradual magnitude pruning during fine-tuning (Zhu & Gupta, *To prune, or not to prune*, 2017).

Recipe: ``prune: {method: gradual, sparsity: s_f, initial_sparsity: s_i, start_step: t0, end_step: t_end,
frequency: dt, scope: layer|global}``. During the pruned round the masks are tightened every ``frequency``
optimizer steps from ``start_step`` to ``end_step`` to

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3,    n * dt = t_end - t0,

pruning fast while redundancy is high and slowly near the target; after ``end_step`` the masks stay fixed and
training goes on (recovery). ``t`` is the optimizer step of that round, which :func:`~.train.fine_tune`
checkpoints, so the schedule state is derived from the step count and a resumed run prunes at the same steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, model_validator

from ...errors import ConfigError
from .base import PRUNE_METHODS, LayerPruneConfig, PruneContext, PruneResult, dense_round_teacher, teacher_check

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .masks import MaskSet


class Gradual(LayerPruneConfig):
    """Gradual magnitude pruning on Zhu & Gupta's cubic schedule during the pruned round."""

    method: Literal["gradual"] = "gradual"
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="s_f, the final fraction of pruned weights")
    initial_sparsity: float = Field(default=0.0, ge=0, lt=1, description="s_i at start_step")
    start_step: int = Field(default=0, ge=0, description="optimizer step t0 where pruning starts")
    end_step: int | None = Field(
        default=None, gt=0, description="step where s_f is reached (default: 3/4 of the pruned training)"
    )
    frequency: int = Field(default=10, gt=0, description="prune every this many optimizer steps")
    scope: Literal["layer", "global"] = "layer"

    @model_validator(mode="after")
    def _schedule(self) -> "Gradual":
        if self.initial_sparsity > self.sparsity:
            raise ValueError(
                f"initial_sparsity {self.initial_sparsity} > sparsity {self.sparsity}: gradual pruning only adds zeros"
            )
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(f"end_step {self.end_step} must be > start_step {self.start_step}")
        return self


def cubic_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0, end: int) -> float:
    """Zhu & Gupta's target sparsity at optimizer step ``step`` (``initial`` until ``start``, then up to ``final``)."""
    if end <= start:
        raise ConfigError(f"end_step {end} must be > start_step {start}")
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def pruning_steps(start: int, end: int, frequency: int) -> list[int]:
    """The steps where the masks are updated: ``start, start + dt, ...`` up to and including ``end``."""
    steps = list(range(start, end + 1, frequency))
    if steps[-1] != end:
        steps.append(end)  # always reach s_f exactly, even when dt does not divide the span
    return steps


@PRUNE_METHODS.register(Gradual, aliases=("gmp",))
@teacher_check(dense_round_teacher)
def gradual(cfg: Gradual, ctx: PruneContext) -> PruneResult:
    """Dense round, then fine-tuning during which the masks follow the cubic schedule to ``sparsity``.

    Raises:
        ConfigError: ``end_step`` beyond the steps the pruned round has (``train.final_epochs`` x batches per
            epoch), or ``start_step`` not before it; raised before any training.
    """
    from .flow import train_dense_then_pruned

    p = cfg
    epochs = ctx.final_epochs
    per_epoch = len(ctx.data.loader("train", batch_size=ctx.batch_size, shuffle=False))
    total = epochs * per_epoch
    # default: finish at 3/4 of the round so the last quarter recovers at the final sparsity (Zhu & Gupta
    # stop pruning well before training ends)
    end = p.end_step if p.end_step is not None else max(p.start_step + 1, (3 * total) // 4)
    if total == 0 or end > total or p.start_step >= end:
        raise ConfigError(
            f"gradual pruning from step {p.start_step} to {end}, but the pruned round has only {total} optimizer"
            f" steps ({epochs} epochs x {per_epoch} batches); set prune.end_step <= {total} (and start_step below it)"
            " or raise train.final_epochs"
        )
    schedule = {s: cubic_sparsity(s, final=p.sparsity, initial=p.initial_sparsity, start=p.start_step, end=end)
                for s in pruning_steps(p.start_step, end, p.frequency)}

    def prune(model: nn.Module, masks: MaskSet) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
        if p.start_step == 0:  # step 0 is before the first optimizer step: s_i applies from the start
            masks.prune_to(model, p.initial_sparsity, scope=p.scope)
        info = {"target_sparsity": p.sparsity, "initial_sparsity": p.initial_sparsity, "start_step": p.start_step,
                "end_step": end, "frequency": p.frequency, "steps": total, "schedule": schedule}
        return model, masks, info

    def hook(masks: MaskSet) -> Callable[[int, nn.Module], None]:
        def on_step_end(step: int, model: nn.Module) -> None:
            target = schedule.get(step)
            if target is not None:
                masks.prune_to(model, target, scope=p.scope)

        return on_step_end

    return train_dense_then_pruned(ctx, cfg, prune, on_step_end=hook)
