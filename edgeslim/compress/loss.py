"""The class-dependent loss of Entezari & Saukh (2020): weighted cross-entropy plus an AUC ranking term.

``L = L_wCE + lambda * L_rank`` (see ``docs/class-dependent-loss.md``):

* ``L_wCE`` is the per-sample cross-entropy multiplied by the weight of the sample's true class and averaged over
  the batch. Class weights come from the effective number of samples (Cui et al. 2019), normalised to mean 1,
  and are multiplied by ``gamma`` for critical classes.
* ``L_rank`` is a squared-hinge surrogate of one-vs-rest AUC-ROC for every critical class, on the score
  ``s_c = z_c - logsumexp_{j != c} z_j``. It is minimised (the paper's leading minus sign is a typo), is computed
  on the live logits (never detached) and is 0, with a valid graph, when a batch has no positives or no negatives.

:class:`FprBudgetGamma` holds a validation FPR budget between epochs by governing every term that favours the critical
classes: the boost ``gamma``, the ranking weight ``lambda`` and the critical classes' class-balancing up-weight
(gamma = 5 with lambda = 5 on top of effective-number weights can make the critical FPR explode at high sparsity,
and lambda alone pushed it to 26 % with gamma already at its floor). Its rule is the pure function
:func:`adapt_terms` (:func:`adapt_gamma` for gamma alone).
"""

from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write_json
from ..errors import ConfigError, DataError, TrainingError

log = logging.getLogger(__name__)

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
        self._balance = 1.0
        self.gamma = gamma
        self.last_parts: dict[str, float] = {}

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        self._set_weights(float(value), self._balance)

    @property
    def critical_balance(self) -> float:
        """How much of its class-balancing up-weight a rare critical class keeps, in ``[0, 1]`` (1: all of it).

        Balancing alone moves the critical operating point when the critical class is the rare one: at 0 a critical
        class's effective-number weight is capped at 1 (an equally frequent class's), so gamma, lambda and this at
        their floors leave no term favouring the critical class. The FPR budget lowers it last.
        """
        return self._balance

    @critical_balance.setter
    def critical_balance(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"critical_balance = {value}: must be in [0, 1]")
        self._set_weights(self._gamma, float(value))

    def _set_weights(self, gamma: float, balance: float) -> None:
        w = class_weights(self.class_counts, self.critical, beta=self.beta, gamma=gamma)
        if balance < 1.0:
            base = effective_number_weights(self.class_counts, self.beta)
            for c in self.critical:
                if base[c] > 1.0:  # only an up-weight is governed; a frequent critical class keeps its weight
                    w[c] = gamma * (1.0 + balance * (base[c] - 1.0))
        self.weight = w.to(self.weight.device)
        self._gamma, self._balance = float(gamma), float(balance)

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

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is None else weight.float(), persistent=False)
        self.label_smoothing = label_smoothing
        self.last_parts: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)
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
        :class:`ClassDependentLoss` for ``class_dependent``; :class:`CrossEntropy` (no ranking term; inverse
        frequency class weights with ``balance``, and ``label_smoothing``) for ``cross_entropy``.
    """
    if section.name == "cross_entropy":
        weight = None
        if section.balance:
            counts = torch.as_tensor(list(class_counts), dtype=torch.float32).clamp(min=1)
            weight = counts.sum() / (len(counts) * counts)  # inverse frequency, mean weight over samples = 1
        return CrossEntropy(weight, section.label_smoothing)
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


#: The terms the FPR budget governs, in the order it lowers them (and raises them back in reverse): the critical
#: boost first, then the ranking weight, then the critical classes' class-balancing up-weight.
GOVERNED = ("gamma", "rank_weight", "balance")
# lambda and the balance have a floor of 0, which a multiplicative step never reaches: below this fraction of their
# ceiling they snap to 0, and from 0 they come back at it
_SNAP = 0.25


def adapt_terms(
    terms: dict[str, float],
    fpr: float | None,
    *,
    ceilings: dict[str, float],
    budget: float,
    gamma_min: float = 1.0,
    down: float = 0.5,
    up: float = 1.5,
    slack: float = 0.5,
) -> tuple[dict[str, float], bool]:
    """One step of the FPR-budget controller over every governed term: the terms of the next epoch.

    Over budget (``fpr > budget``), the first term of :data:`GOVERNED` still above its floor is multiplied by
    ``down`` (gamma's floor is ``gamma_min``; lambda's and the balance's is 0, reached below a quarter of their
    ceiling). Well under it (``fpr <= slack * budget``), the last term below its ceiling is multiplied by ``up``
    (from 0: a quarter of its ceiling), so the critical boost is the last thing restored. In the dead band, or with an
    undefined FPR, nothing moves.

    Args:
        terms: ``gamma``, ``rank_weight``, ``balance`` of the epoch just finished (as the loss used them).
        fpr: that epoch's validation critical FPR (the maximum over critical classes), or ``None``.
        ceilings: the most each term may be, e.g. ``{"gamma": 5, "rank_weight": 5, "balance": 1}``; gamma's ceiling
            is the training's own (1 in round 1 of the paper's schedule).
        budget, gamma_min, down, up, slack: see :func:`adapt_gamma`.

    Returns:
        ``(next_terms, held)``: ``held`` is False when the epoch was over budget with every term at its floor,
        i.e. the loss has nothing left to give and the budget cannot hold through it.
    """
    adapt_gamma(max(gamma_min, ceilings["gamma"]), None, budget=budget, gamma_max=max(gamma_min, ceilings["gamma"]),
                gamma_min=gamma_min, down=down, up=up, slack=slack)  # validates the rule
    floors = {"gamma": gamma_min, "rank_weight": 0.0, "balance": 0.0}
    cur = {k: float(min(max(terms[k], floors[k]), max(ceilings[k], floors[k]))) for k in GOVERNED}
    nxt = dict(cur)
    if fpr is None or slack * budget < fpr <= budget:
        return nxt, True
    if fpr > budget:
        above = [k for k in GOVERNED if cur[k] > floors[k]]
        if not above:
            return nxt, False
        k = above[0]
        v = cur[k] * down
        nxt[k] = max(floors[k], v) if k == "gamma" else (v if v >= _SNAP * ceilings[k] else 0.0)
        return nxt, True
    below = [k for k in GOVERNED if cur[k] < ceilings[k]]
    if below:
        k = below[-1]
        v = cur[k] * up if cur[k] > 0 else _SNAP * ceilings[k]
        nxt[k] = min(ceilings[k], v)
    return nxt, True


class FprBudgetGamma:
    """Holds a validation critical-FPR budget by governing every term of a :class:`ClassDependentLoss` that moves
    the critical operating point: ``gamma``, ``rank_weight`` (lambda) and ``critical_balance``.

    Use one instance per compression run and, for every training with the class-dependent loss (round 1 of the
    paper's schedule too, where gamma's ceiling is 1 but lambda and the balance still act), :meth:`attach` it to
    that training's loss and pass it as ``fine_tune(..., on_epoch_end=controller)``. After each epoch it measures the
    critical classes' FPR on the val split (the maximum over them, at argmax), applies :func:`adapt_terms` and sets
    the loss's terms for the next epoch. The terms carry over from one training (round) to the next, so a round at
    higher sparsity starts from the terms that kept the previous round within budget; gamma is carried as the
    budget left it and capped by each training's own ceiling.

    When an epoch is over budget with every term at its floor, the budget cannot hold through the loss: a warning is
    logged, the record says ``held: False`` and :attr:`unheld` lists it (the pipeline reports it in the manifest).

    Every epoch is recorded in :attr:`trajectory` (``tag, epoch``, the terms used, ``val_fpr``, the next terms,
    ``held``) and, with ``state_path``, written atomically before ``fine_tune`` writes that epoch's checkpoint. The
    rule is deterministic, so a resumed run (:meth:`attach` with the checkpoint) continues with exactly the terms an
    uninterrupted run would have used.

    Args:
        data: a DataBundle with a non-empty ``val`` split and ``critical`` classes.
        budget: the critical FPR budget in ``(0, 1)``.
        gamma_max: the ceiling and the starting weight (the recipe's ``gamma``).
        gamma_min: the floor.
        down, up, slack: see :func:`adapt_gamma`.
        rank_max: lambda's ceiling and starting value (default: the first attached loss's ``rank_weight``).
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
        rank_max: float | None = None,
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
        if rank_max is not None and not rank_max >= 0:
            raise ConfigError(f"rank_max (lambda) = {rank_max}: must be >= 0")
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
        self.rank_max = None if rank_max is None else float(rank_max)
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
            if self.rank_max is None and state.get("rank_max") is not None:
                self.rank_max = float(state["rank_max"])
        self._loss: ClassDependentLoss | None = None
        self._tag: str | None = None
        self._gamma_ceiling = self._rule["gamma_max"]
        self._terms: dict[str, float] = {}

    @classmethod
    def from_section(cls, section: "LossSection", data: Any, **kwargs: Any) -> "FprBudgetGamma":
        """The controller a recipe's loss section asks for (``section.fpr_budget`` must be set)."""
        if section.fpr_budget is None:
            raise ConfigError("loss.fpr_budget is not set: nothing to adapt")
        return cls(
            data, budget=section.fpr_budget, gamma_max=section.gamma, down=section.gamma_down,
            up=section.gamma_up, slack=section.budget_slack, rank_max=section.rank_weight, **kwargs,
        )

    def _carried(self) -> dict[str, float]:
        """The budget's terms after the last recorded epoch (gamma before any training's cap)."""
        if not self.trajectory:
            return {"gamma": self._rule["gamma_max"], "rank_weight": self.rank_max or 0.0, "balance": 1.0}
        last = self.trajectory[-1]
        return {
            "gamma": float(last.get("next_gamma_budget", last["next_gamma"])),
            "rank_weight": float(last.get("next_rank_weight", self.rank_max or 0.0)),
            "balance": float(last.get("next_balance", 1.0)),
        }

    @property
    def gamma(self) -> float:
        """The weight the next epoch will use (the ceiling before any epoch ran)."""
        return float(self.trajectory[-1]["next_gamma"]) if self.trajectory else self._rule["gamma_max"]

    @property
    def rank_weight(self) -> float:
        """The ranking weight (lambda) the next epoch will use, before a ranking warm-up turns it off."""
        return self._terms.get("rank_weight", self._carried()["rank_weight"])

    @property
    def unheld(self) -> list[dict[str, Any]]:
        """The epochs that were over budget with every governed term at its floor."""
        return [r for r in self.trajectory if r.get("held") is False]

    def summary(self) -> dict[str, Any]:
        """What the budget did, for reports and manifests.

        ``held`` is True only when no epoch ran out of terms (``unheld``) and the last epoch ended within the budget:
        a training that ends over it (``over_at_end``: the controller was still lowering a term when the epochs ran
        out) did not hold it either.
        """
        last = self.trajectory[-1] if self.trajectory else None
        final = None if last is None else last.get("val_fpr")
        over_at_end = final is not None and final > self._rule["budget"]
        return {
            "budget": self._rule["budget"], "governs": list(GOVERNED), "epochs": len(self.trajectory),
            "held": not self.unheld and not over_at_end, "over_at_end": over_at_end,
            "unheld": [{k: r[k] for k in ("tag", "epoch", "val_fpr")} for r in self.unheld],
            "last": None if last is None else {k: last.get(k) for k in ("tag", "epoch", "val_fpr", "gamma",
                                                                        "rank_weight", "balance")},
        }

    def _apply(self) -> None:
        loss = self._loss
        if loss is None:
            raise TrainingError("FprBudgetGamma has no loss to govern: call attach(loss_fn, tag) first")
        loss.gamma = self._terms["gamma"]
        loss.critical_balance = self._terms["balance"]
        loss.rank_weight = self._terms["rank_weight"]

    def attach(
        self, loss_fn: "ClassDependentLoss", tag: str, *, start_epoch: int = 0, gamma_ceiling: float | None = None
    ) -> float:
        """Bind the controller to one training's loss and set the terms of its first epoch to run.

        Args:
            loss_fn: the training's loss (its ``gamma``, ``rank_weight`` and ``critical_balance`` are overwritten
                now and after every epoch).
            tag: the training's name (``fine_tune``'s ``tag``).
            start_epoch: epochs of this training already done (the epoch of the checkpoint a resumed
                ``fine_tune`` continues from; 0 for a fresh training). Records of later epochs, left by a crash
                between this controller's write and the checkpoint's, are dropped.
            gamma_ceiling: this training's most gamma (default: the rule's ``gamma_max``); round 1 of the paper's
                schedule passes 1.

        Returns:
            The gamma set on ``loss_fn``.
        """
        if not isinstance(loss_fn, ClassDependentLoss):
            raise ConfigError(
                f"the FPR budget adapts the class-dependent loss's terms; got {type(loss_fn).__name__}"
                " (set loss.name: class_dependent or drop loss.fpr_budget)"
            )
        if self.rank_max is None:
            self.rank_max = float(loss_fn.rank_weight)
        self._gamma_ceiling = self._rule["gamma_max"] if gamma_ceiling is None else float(gamma_ceiling)
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
            self.trajectory = [r for r in self.trajectory if r is not done[-1]] + [done[-1]]
        else:
            self.trajectory = [r for r in self.trajectory if r["tag"] != tag]
        carried = self._carried()
        self._terms = {**carried, "gamma": min(carried["gamma"], max(self._gamma_ceiling, self._rule["gamma_min"]))}
        self._loss, self._tag = loss_fn, tag
        self._apply()
        return self._terms["gamma"]

    def _val_fpr(self, model: nn.Module) -> float | None:
        from .metrics import evaluate, predict_logits

        logits, labels = predict_logits(
            model, self.data.loader("val", batch_size=self.batch_size, shuffle=False), device=self.device
        )
        m = evaluate(logits, labels, self.data.classes, self.data.critical)
        fprs = [m.critical_stats[c]["fpr"] for c in m.critical if m.critical_stats[c]["fpr"] is not None]
        return max(fprs) if fprs else None

    def __call__(self, epoch: int, model: nn.Module) -> dict[str, Any]:
        """``on_epoch_end`` hook: measure, record, set the next epoch's terms.

        Returns:
            The fields ``fine_tune`` adds to the epoch's history record: ``val_critical_fpr``, ``fpr_budget``, the
            terms used and ``budget_held``.
        """
        if self._loss is None or self._tag is None:
            raise TrainingError("FprBudgetGamma was called before attach(loss_fn, tag)")
        used = dict(self._terms)
        fpr = self._val_fpr(model)
        r = self._rule
        ceilings = {"gamma": max(self._gamma_ceiling, r["gamma_min"]), "rank_weight": self.rank_max or 0.0,
                    "balance": 1.0}
        nxt, held = adapt_terms(used, fpr, ceilings=ceilings, budget=r["budget"], gamma_min=r["gamma_min"],
                                down=r["down"], up=r["up"], slack=r["slack"])
        # gamma the budget carries to later trainings: what this step moved it to, else as the budget had it (a
        # training's cap, e.g. 1 in round 1 of the paper's schedule, is not the budget's doing and is not carried)
        budget_gamma = nxt["gamma"] if nxt["gamma"] != used["gamma"] else self._carried()["gamma"]
        record = {
            "tag": self._tag, "epoch": int(epoch), "gamma": used["gamma"], "rank_weight": used["rank_weight"],
            "balance": used["balance"], "val_fpr": fpr, "next_gamma": nxt["gamma"],
            "next_rank_weight": nxt["rank_weight"], "next_balance": nxt["balance"], "next_gamma_budget": budget_gamma,
            "held": held,
        }
        if not held:
            log.warning(
                "%s epoch %d: val critical FPR %.4f is over the budget %.4f with gamma, lambda and the critical"
                " balance all at their floors (%s, 0, 0): the loss cannot hold the budget; calibrate a threshold"
                " (decision.target_fpr) or loosen loss.fpr_budget",
                self._tag, epoch, fpr, r["budget"], r["gamma_min"],
            )
        self.trajectory.append(record)
        self._terms = nxt
        self._apply()
        if self.state_path is not None:
            from .distributed import is_main

            if is_main():  # every rank holds the same trajectory; one writer under torchrun
                atomic_write_json(
                    self.state_path, {"rule": self._rule, "rank_max": self.rank_max, "trajectory": self.trajectory}
                )
        return {
            "val_critical_fpr": fpr, "fpr_budget": r["budget"], "gamma": used["gamma"],
            "rank_weight": used["rank_weight"], "critical_balance": used["balance"], "budget_held": held,
        }


def loss_schedule(
    loss: nn.Module,
    section: "LossSection",
    *,
    tag: str,
    gamma: float | None,
    controller: "Callable[[], FprBudgetGamma]",
) -> tuple["Callable[[int, nn.Module], None] | None", "FprBudgetGamma | None"]:
    """The per-epoch loss schedule of one training: ``(on_epoch_start, on_epoch_end)`` hooks for ``fine_tune``.

    - Ranking warm-up: the AUC term is off for the first ``loss.rank_warmup_epochs`` epochs of every training.
      Every lottery round rewinds to W0 with a fresh head, and the squared hinge on a random head's scores
      dominated the gradient and kept EfficientNet-Lite0 near chance (val accuracy 0.21 after 2 epochs vs
      0.96 with one warm-up epoch, digits 64x64).
    - FPR budget (``loss.fpr_budget``): every training with the class-dependent loss is governed from its first
      epoch, round 1 of the paper's schedule included (gamma is capped at 1 there, lambda and the critical balance
      are not); see :class:`FprBudgetGamma`.

    Args:
        loss: the training's loss (a KD wrapper's task loss is governed, not the KD term).
        section: the recipe's loss section.
        tag: the training's name.
        gamma: the training's gamma (its ceiling under the budget); ``None``: the section's.
        controller: returns the run's one :class:`FprBudgetGamma` (created on first use, shared by trainings).

    Returns:
        The start hook (``None`` when nothing is scheduled) and the budget controller to call at every epoch's end
        (``None`` without a budget); the controller returns the fields it adds to the epoch's history record.
    """
    from .distill import DistillationLoss

    if isinstance(loss, DistillationLoss):
        loss = loss.task  # the schedule drives the task loss's knobs; the FPR budget binds to it, not to KD
    rank = getattr(loss, "rank_weight", None)
    warmup = section.rank_warmup_epochs if rank else 0
    governed = section.fpr_budget is not None and isinstance(loss, ClassDependentLoss)
    if not warmup and not governed:
        return None, None
    budget = controller() if governed else None
    attached = {"done": False}

    def start(epoch: int, model: nn.Module) -> None:
        if budget is not None and not attached["done"]:
            budget.attach(loss, tag, start_epoch=epoch - 1, gamma_ceiling=gamma)
            attached["done"] = True
        live = budget.rank_weight if budget is not None else rank
        loss.rank_weight = 0.0 if warmup and epoch <= warmup else live

    return start, budget
