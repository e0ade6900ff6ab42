"""The class-dependent loss of Entezari & Saukh (2020): weighted cross-entropy plus an AUC ranking term.

``L = L_wCE + lambda * L_rank`` (see ``docs/class-dependent-loss.md``):

* ``L_wCE`` is the per-sample cross-entropy multiplied by the weight of the sample's true class and averaged over
  the batch. Class weights come from the effective number of samples (Cui et al. 2019), normalised to mean 1,
  and are multiplied by ``gamma`` for critical classes.
* ``L_rank`` is a squared-hinge surrogate of one-vs-rest AUC-ROC for every critical class, on the score
  ``s_c = z_c - logsumexp_{j != c} z_j``. It is minimised (the paper's leading minus sign is a typo), is computed
  on the live logits (never detached) and is 0, with a valid graph, when a batch has no positives or no negatives.

:class:`FprBudgetGamma` adapts the critical weight ``gamma`` to a validation FPR budget between epochs (gamma = 5
with lambda = 5 on top of effective-number weights can make the critical class's FPR explode at high sparsity);
its rule is the pure function :func:`adapt_gamma`.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write_json
from ..errors import ConfigError, DataError, TrainingError

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import LossSection


def _check_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0:
        raise DataError("class_counts is empty: pass the number of training samples of every class")
    bad = [i for i, n in enumerate(counts.tolist()) if not n > 0 or n != int(n)]
    if bad:
        raise DataError(
            f"class_counts {counts.long().tolist()}: class(es) {bad} have no (or a non-integer number of) training"
            " samples; every class needs at least one training sample to get a weight"
        )
    return counts


def _check_critical(critical: Sequence[int], num_classes: int) -> list[int]:
    out: list[int] = []
    for c in critical:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < num_classes:
            raise ConfigError(
                f"critical class {c!r} is not a class index in [0, {num_classes}); pass indices of the task's classes"
            )
        c = int(c)
        if c not in out:
            out.append(c)
    return out


def effective_number_weights(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balancing weights from the effective number of samples.

    ``b_c = (1 - beta) / (1 - beta ** n_c)``, normalised so that the weights average 1 over classes. ``beta = 0``
    gives equal weights; ``beta -> 1`` approaches inverse class frequency.

    Args:
        class_counts: training samples per class (every count >= 1).
        beta: in ``[0, 1)``.

    Returns:
        float32 tensor of shape ``(num_classes,)``.
    """
    if not 0 <= beta < 1:
        raise ConfigError(f"beta = {beta}: the effective-number beta must be in [0, 1), e.g. 0.999")
    counts = _check_counts(class_counts)
    b = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (b / b.mean()).to(torch.float32)


def class_weights(
    class_counts: Sequence[int] | torch.Tensor, critical: Sequence[int], *, beta: float, gamma: float
) -> torch.Tensor:
    """Per-class weights of the weighted cross-entropy: effective-number weights, times ``gamma`` if critical.

    The boost is applied after the mean-1 normalisation, so ``gamma`` is the critical class's weight relative to
    an equally frequent non-critical class.
    """
    if not gamma > 0:
        raise ConfigError(f"gamma = {gamma}: the critical-class boost must be > 0 (1 = no boost; the paper uses 5)")
    w = effective_number_weights(class_counts, beta)
    for c in _check_critical(critical, w.numel()):
        w[c] = w[c] * gamma
    return w


def critical_scores(logits: torch.Tensor, c: int) -> torch.Tensor:
    """``s_c = z_c - logsumexp_{j != c} z_j``: the log-odds of class ``c`` against all others."""
    others = logits.clone()
    others[:, c] = float("-inf")
    return logits[:, c] - torch.logsumexp(others, dim=1)


def ranking_loss(
    logits: torch.Tensor, targets: torch.Tensor, critical: Sequence[int], margin: float = 1.0
) -> torch.Tensor:
    """Squared-hinge AUC surrogate, averaged over the critical classes.

    For critical class ``c``, with P the batch's samples of class ``c`` and N the others:
    ``mean_{i in P, j in N} max(0, margin - (s_c(x_i) - s_c(x_j)))^2``. A class without positives or negatives in
    the batch contributes 0 (through the graph, so ``backward`` still works); the mean is over all critical classes.

    Args:
        logits: ``(B, K)`` raw logits.
        targets: ``(B,)`` int64 labels.
        critical: critical class indices.
        margin: the hinge margin ``m``.
    """
    if logits.ndim != 2:
        raise ConfigError(f"ranking_loss expects (batch, classes) logits, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ConfigError("ranking_loss needs at least 2 classes")
    critical = _check_critical(list(critical), logits.shape[1])
    # Multiplying by zero keeps the result attached to the graph when nothing contributes.
    zero = logits.sum() * 0.0
    if not critical:
        return zero
    total = zero
    for c in critical:
        pos = targets == c
        neg = ~pos
        if not bool(pos.any()) or not bool(neg.any()):
            continue
        s = critical_scores(logits, c)
        diff = s[pos].unsqueeze(1) - s[neg].unsqueeze(0)  # (|P|, |N|)
        total = total + torch.clamp(margin - diff, min=0.0).pow(2).mean()
    return total / len(critical)


class ClassDependentLoss(nn.Module):
    """``L = L_wCE + rank_weight * L_rank`` for the given class counts and critical classes.

    Args:
        class_counts: training samples per class (sets the effective-number weights).
        critical: critical class indices.
        beta: effective-number beta.
        gamma: critical-class boost; settable between rounds (the paper's schedule uses 1 in round 1).
        rank_weight: lambda, the weight of the ranking term (0 disables it).
        margin: hinge margin of the ranking term.

    Attributes:
        last_parts: ``{"wce": float, "rank": float}`` of the latest forward, for logging.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        critical: Sequence[int],
        *,
        beta: float = 0.999,
        gamma: float = 5.0,
        rank_weight: float = 5.0,
        margin: float = 1.0,
    ) -> None:
        super().__init__()
        if rank_weight < 0:
            raise ConfigError(f"rank_weight (lambda) = {rank_weight}: must be >= 0")
        if not margin > 0:
            raise ConfigError(f"margin = {margin}: must be > 0")
        self.class_counts = [int(n) for n in _check_counts(class_counts).tolist()]
        self.critical = _check_critical(list(critical), len(self.class_counts))
        self.beta = float(beta)
        self.rank_weight = float(rank_weight)
        self.margin = float(margin)
        self.register_buffer("weight", torch.ones(len(self.class_counts)), persistent=False)
        self._gamma = 1.0
        self.gamma = gamma
        self.last_parts: dict[str, float] = {}

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        w = class_weights(self.class_counts, self.critical, beta=self.beta, gamma=float(value))
        self.weight = w.to(self.weight.device)
        self._gamma = float(value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != len(self.class_counts):
            raise ConfigError(
                f"logits of shape {tuple(logits.shape)} do not match the loss's {len(self.class_counts)} classes"
            )
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        # Per-sample weighting averaged over the batch (the spec's -w_y log p_y), not torch's weighted mean,
        # which divides by the summed weights and so cancels most of the critical boost.
        wce = (self.weight.to(logits.dtype)[targets] * per_sample).mean()
        if self.rank_weight > 0 and self.critical:
            rank = ranking_loss(logits, targets, self.critical, self.margin)
            loss = wce + self.rank_weight * rank
        else:
            rank = logits.sum() * 0.0
            loss = wce
        self.last_parts = {"wce": float(wce.detach()), "rank": float(rank.detach())}
        return loss

    def extra_repr(self) -> str:
        return (
            f"critical={self.critical}, beta={self.beta}, gamma={self.gamma}, "
            f"rank_weight={self.rank_weight}, margin={self.margin}"
        )


class CrossEntropy(nn.Module):
    """Plain, class-agnostic cross-entropy with the same ``last_parts`` logging as :class:`ClassDependentLoss`."""

    def __init__(self) -> None:
        super().__init__()
        self.last_parts: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets)
        self.last_parts = {"wce": float(loss.detach()), "rank": 0.0}
        return loss


def build_loss(
    section: "LossSection",
    class_counts: Sequence[int] | torch.Tensor,
    critical: Sequence[int],
    *,
    gamma: float | None = None,
) -> nn.Module:
    """Build the loss a recipe's ``loss`` section asks for.

    Args:
        section: the recipe's :class:`~edgeslim.recipe.LossSection`.
        class_counts: training samples per class.
        critical: critical class indices.
        gamma: overrides ``section.gamma`` (the round schedule passes 1.0 for round 1).

    Returns:
        :class:`ClassDependentLoss` for ``class_dependent``; :class:`CrossEntropy` (no class weights, no ranking
        term) for ``cross_entropy``.
    """
    if section.name == "cross_entropy":
        return CrossEntropy()
    if section.name == "class_dependent":
        return ClassDependentLoss(
            class_counts,
            critical,
            beta=section.beta,
            gamma=section.gamma if gamma is None else gamma,
            rank_weight=section.rank_weight,
            margin=section.margin,
        )
    raise ConfigError(f"unknown loss '{section.name}'; known: class_dependent, cross_entropy")


# -- FPR-budget critical weight ------------------------------------------------------------------------------------


def adapt_gamma(
    gamma: float,
    fpr: float | None,
    *,
    budget: float,
    gamma_max: float,
    gamma_min: float = 1.0,
    down: float = 0.5,
    up: float = 1.5,
    slack: float = 0.5,
) -> float:
    """One step of the FPR-budget controller: the critical weight for the next epoch.

    ``gamma * down`` when ``fpr > budget``; ``gamma * up`` when ``fpr <= slack * budget``; otherwise unchanged.
    The result is clipped to ``[gamma_min, gamma_max]``. An undefined FPR (``None``: no negatives on the val
    split) leaves gamma unchanged. The dead band between ``slack * budget`` and ``budget`` stops the weight from
    oscillating around the budget epoch after epoch.

    Args:
        gamma: the weight used in the epoch just finished.
        fpr: that epoch's validation FPR of the critical class(es) (the maximum over them).
        budget: the FPR budget, in ``(0, 1)``.
        gamma_max: the ceiling (the recipe's ``gamma``).
        gamma_min: the floor (1 = no boost beyond class balancing).
        down: factor in ``(0, 1)`` applied over budget.
        up: factor ``> 1`` applied well under budget.
        slack: fraction of the budget below which the weight grows again, in ``[0, 1)``.

    Raises:
        ConfigError: an argument outside its range.
    """
    if not 0 < budget < 1:
        raise ConfigError(f"fpr_budget = {budget}: must be in (0, 1), e.g. 0.01 for 1% critical FPR")
    if not 0 < gamma_min <= gamma_max:
        raise ConfigError(f"gamma bounds [{gamma_min}, {gamma_max}]: need 0 < gamma_min <= gamma_max")
    if not 0 < down < 1:
        raise ConfigError(f"gamma_down = {down}: must be in (0, 1)")
    if not up > 1:
        raise ConfigError(f"gamma_up = {up}: must be > 1")
    if not 0 <= slack < 1:
        raise ConfigError(f"budget_slack = {slack}: must be in [0, 1)")
    if fpr is None:
        new = gamma
    elif fpr > budget:
        new = gamma * down
    elif fpr <= slack * budget:
        new = gamma * up
    else:
        new = gamma
    return float(min(gamma_max, max(gamma_min, new)))


class FprBudgetGamma:
    """Adapts a :class:`ClassDependentLoss`'s ``gamma`` to a validation FPR budget, epoch by epoch.

    Use one instance per compression run and, for every boosted training, :meth:`attach` it to that training's
    loss and pass it as ``fine_tune(..., on_epoch_end=controller)``. After each epoch it measures the critical
    classes' FPR on the val split (the maximum over them, at argmax), applies :func:`adapt_gamma` and sets the
    loss's gamma for the next epoch. The weight carries over from one training (round) to the next, so a round at
    higher sparsity starts from the weight that kept the previous round within budget.

    Every epoch is recorded in :attr:`trajectory` (``tag, epoch, gamma`` used, ``val_fpr``, ``next_gamma``) and,
    with ``state_path``, written atomically before ``fine_tune`` writes that epoch's checkpoint. The rule is
    deterministic, so a resumed run (:meth:`attach` with the checkpoint) continues with exactly the weights an
    uninterrupted run would have used.

    Args:
        data: a DataBundle with a non-empty ``val`` split and ``critical`` classes.
        budget: the critical FPR budget in ``(0, 1)``.
        gamma_max: the ceiling and the starting weight (the recipe's ``gamma``).
        gamma_min: the floor.
        down, up, slack: see :func:`adapt_gamma`.
        state_path: JSON file holding the trajectory (loaded when it exists and ``resume``).
        resume: continue the trajectory in ``state_path`` instead of starting over.
        batch_size: evaluation batch size.
        device: where the model runs during the measurement.
    """

    def __init__(
        self,
        data: Any,
        *,
        budget: float,
        gamma_max: float,
        gamma_min: float = 1.0,
        down: float = 0.5,
        up: float = 1.5,
        slack: float = 0.5,
        state_path: str | Path | None = None,
        resume: bool = False,
        batch_size: int = 256,
        device: str = "cpu",
    ) -> None:
        self._rule = {
            "budget": float(budget), "gamma_max": float(gamma_max), "gamma_min": float(gamma_min),
            "down": float(down), "up": float(up), "slack": float(slack),
        }
        adapt_gamma(gamma_max, None, **self._rule)  # validates the rule before any training starts
        if not list(getattr(data, "critical", []) or []):
            raise ConfigError("loss.fpr_budget needs critical classes (data.critical is empty)")
        try:
            n_val = len(data.labels("val"))
        except (KeyError, ValueError):
            n_val = 0
        if n_val == 0:
            raise ConfigError("loss.fpr_budget measures the critical FPR on the val split; set data.val_fraction > 0")
        self.data = data
        self.batch_size = int(batch_size)
        self.device = device
        self.state_path = Path(state_path) if state_path is not None else None
        self.trajectory: list[dict[str, Any]] = []
        if resume and self.state_path is not None and self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
            except (OSError, ValueError) as exc:
                raise TrainingError(f"cannot read {self.state_path} ({exc}); delete it or resume=False") from exc
            if state.get("rule") != self._rule:
                raise TrainingError(
                    f"{self.state_path} was written with another FPR-budget rule {state.get('rule')}; now"
                    f" {self._rule}: use the same loss section, another run_dir, or resume=False"
                )
            self.trajectory = list(state.get("trajectory", []))
        self._loss: ClassDependentLoss | None = None
        self._tag: str | None = None

    @classmethod
    def from_section(cls, section: "LossSection", data: Any, **kwargs: Any) -> "FprBudgetGamma":
        """The controller a recipe's loss section asks for (``section.fpr_budget`` must be set)."""
        if section.fpr_budget is None:
            raise ConfigError("loss.fpr_budget is not set: nothing to adapt")
        return cls(
            data, budget=section.fpr_budget, gamma_max=section.gamma, down=section.gamma_down,
            up=section.gamma_up, slack=section.budget_slack, **kwargs,
        )

    @property
    def gamma(self) -> float:
        """The weight the next epoch will use (the ceiling before any epoch ran)."""
        return float(self.trajectory[-1]["next_gamma"]) if self.trajectory else self._rule["gamma_max"]

    def attach(self, loss_fn: "ClassDependentLoss", tag: str, *, start_epoch: int = 0) -> float:
        """Bind the controller to one training's loss and set the gamma of its first epoch to run.

        Args:
            loss_fn: the training's loss (its ``gamma`` is overwritten now and after every epoch).
            tag: the training's name (``fine_tune``'s ``tag``).
            start_epoch: epochs of this training already done (the epoch of the checkpoint a resumed
                ``fine_tune`` continues from; 0 for a fresh training). Records of later epochs, left by a crash
                between this controller's write and the checkpoint's, are dropped.

        Returns:
            The gamma set on ``loss_fn``.
        """
        if not isinstance(loss_fn, ClassDependentLoss):
            raise ConfigError(
                f"the FPR budget adapts the class-dependent loss's gamma; got {type(loss_fn).__name__}"
                " (set loss.name: class_dependent or drop loss.fpr_budget)"
            )
        self.trajectory = [
            r for r in self.trajectory if not (r["tag"] == tag and int(r["epoch"]) > start_epoch)
        ]
        if start_epoch > 0:
            done = [r for r in self.trajectory if r["tag"] == tag and int(r["epoch"]) == start_epoch]
            if not done:
                raise TrainingError(
                    f"no FPR-budget record for {tag} epoch {start_epoch} in {self.state_path}: the trajectory was"
                    " lost; restart this run with resume=False"
                )
            gamma = float(done[-1]["next_gamma"])
        else:
            self.trajectory = [r for r in self.trajectory if r["tag"] != tag]
            gamma = self.gamma
        loss_fn.gamma = gamma
        self._loss, self._tag = loss_fn, tag
        return gamma

    def _val_fpr(self, model: nn.Module) -> float | None:
        from .metrics import evaluate, predict_logits

        logits, labels = predict_logits(
            model, self.data.loader("val", batch_size=self.batch_size, shuffle=False), device=self.device
        )
        m = evaluate(logits, labels, self.data.classes, self.data.critical)
        fprs = [m.critical_stats[c]["fpr"] for c in m.critical if m.critical_stats[c]["fpr"] is not None]
        return max(fprs) if fprs else None

    def __call__(self, epoch: int, model: nn.Module) -> None:
        """``on_epoch_end`` hook: measure, record, set the next epoch's gamma."""
        if self._loss is None or self._tag is None:
            raise TrainingError("FprBudgetGamma was called before attach(loss_fn, tag)")
        used = self._loss.gamma
        fpr = self._val_fpr(model)
        nxt = adapt_gamma(used, fpr, **self._rule)
        self.trajectory.append(
            {"tag": self._tag, "epoch": int(epoch), "gamma": used, "val_fpr": fpr, "next_gamma": nxt}
        )
        self._loss.gamma = nxt
        if self.state_path is not None:
            from .distributed import is_main

            if is_main():  # every rank holds the same trajectory; one writer under torchrun
                atomic_write_json(self.state_path, {"rule": self._rule, "trajectory": self.trajectory})
