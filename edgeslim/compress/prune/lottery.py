"""Lottery-ticket pruning: iterative magnitude pruning with rewinding (Frankle & Carbin; Entezari & Saukh).

Recipe: ``prune: {method: lottery_ticket, rounds: 2, rate: 0.3, scope: layer|global, score: magnitude|
magnitude_increase, rewind: init|<epoch>}`` (aliases ``lth``, ``imp``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import Field

from ...errors import ConfigError, TrainingError
from .base import PRUNE_METHODS, LayerPruneConfig, PruneContext, PruneResult, dense_only_teacher, \
    dense_round_teacher, round_summary, teacher_check

if TYPE_CHECKING:  # pragma: no cover
    from ...recipe import TrainSection


class LotteryTicket(LayerPruneConfig):
    """Iterative magnitude pruning with rewinding."""

    method: Literal["lottery_ticket"] = "lottery_ticket"
    rounds: int = Field(default=2, ge=0, description="pruning rounds after the dense one")
    rate: float = Field(default=0.3, ge=0, lt=1, description="fraction of remaining weights pruned per round")
    scope: Literal["layer", "global"] = "layer"
    score: Literal["magnitude", "magnitude_increase"] = "magnitude"
    rewind: Union[Literal["init"], int] = Field(default="init", description="'init' or an epoch k (late rewinding)")


def _no_teacher(cfg: LotteryTicket, train: "TrainSection", qat: bool) -> str | None:
    if cfg.rounds == 0:
        return dense_only_teacher(f"prune.rounds = 0 with method '{cfg.method}'", train, qat)
    return dense_round_teacher(cfg, train, qat)


@PRUNE_METHODS.register(LotteryTicket, aliases=("lth", "imp"))
@teacher_check(_no_teacher)
def lottery_ticket(cfg: LotteryTicket, ctx: PruneContext) -> PruneResult:
    """Iterative magnitude pruning with rewinding (the loop of ``docs/class-dependent-loss.md``).

    Round 1 trains the dense model (gamma = 1 under the ``paper`` schedule; that model is the dense reference).
    Each of ``rounds`` rounds then scores the surviving weights, prunes ``rate`` of them, rewinds the
    survivors to W0 (or to the weights after epoch ``rewind`` of round 1) and trains again with gamma. The
    last training keeps the checkpoint chosen by ``train.select`` on the validation split; earlier ones keep their
    last epoch (the weights the next round scores). With ``rounds = 0`` there is one, dense, training with
    gamma. Every training checkpoints each epoch under ``run_dir/round<r>``; with ``resume`` finished rounds are
    not repeated. Rounds 2 and later distil from the round-1 (dense) model when ``distill.weight > 0``.
    """
    import copy

    from torch import nn

    from ..distributed import sync_masks
    from ..checkpoint import load_checkpoint, save_checkpoint

    p, t, lossc = cfg, ctx.training, ctx.loss
    model = ctx.start_from_w0()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}

    late = p.rewind if isinstance(p.rewind, int) and p.rewind > 0 else None
    if late is not None and p.rounds > 0 and late > t.epochs:
        raise ConfigError(
            f"prune.rewind = {late}: late rewinding needs an epoch of round 1, which has train.epochs = {t.epochs};"
            f" use an epoch in 0..{t.epochs} or 'init'"
        )
    rewind_path = ctx.run_dir / "rewind.pt"

    def keep_rewind_point(epoch: int, m: nn.Module) -> None:
        if epoch == late:
            save_checkpoint(rewind_path, m.state_dict())

    masks = ctx.make_masks(model, cfg)
    history: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    dense_model: nn.Module | None = None
    total = p.rounds + 1
    for r in range(1, total + 1):
        final = r == total
        gamma = 1.0 if (lossc.gamma_schedule == "paper" and r == 1 and not final) else lossc.gamma
        epochs = t.final_epochs if (final and t.final_epochs is not None) else t.epochs
        res = ctx.train(
            model,
            tag=f"round{r}",
            masks=masks,
            gamma=gamma,
            epochs=epochs,
            select=t.select if final else "last",
            on_epoch_end=keep_rewind_point if (r == 1 and late is not None) else None,
        )
        model = res.model
        for h in res.history:
            h["round"] = r
        history.extend(res.history)
        rounds.append(round_summary(r, gamma, epochs, masks, res))
        if r == 1:
            dense_model = copy.deepcopy(model)
            ctx.teacher = dense_model  # of every later round (used only when distill.weight > 0)
        if final:
            break
        masks.prune(model, p.rate, scope=p.scope, score=p.score, reference_state=w0)
        sync_masks(masks, model)  # under torchrun: rank 0's masks on every rank
        if late is not None:
            if not rewind_path.is_file():
                raise TrainingError(
                    f"the late-rewinding point {rewind_path} is missing; restart this run with resume=False"
                )
            model.load_state_dict(load_checkpoint(rewind_path))
        else:
            model.load_state_dict(w0)
        masks.apply(model)
    return PruneResult(model=model, masks=masks, history=history, rounds=rounds, dense_model=dense_model)
