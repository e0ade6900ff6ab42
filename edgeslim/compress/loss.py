"""The class-dependent loss of Entezari & Saukh (2020): weighted cross-entropy plus an AUC ranking term.

``L = L_wCE + lambda * L_rank`` (see ``docs/class-dependent-loss.md``):

* ``L_wCE`` is the per-sample cross-entropy multiplied by the weight of the sample's true class and averaged over
  the batch. Class weights come from the effective number of samples (Cui et al. 2019), normalised to mean 1,
  and are multiplied by ``gamma`` for critical classes.
* ``L_rank`` is a squared-hinge surrogate of one-vs-rest AUC-ROC for every critical class, on the score
  ``s_c = z_c - logsumexp_{j != c} z_j``. It is minimised (the paper's leading minus sign is a typo), is computed
  on the live logits (never detached) and is 0, with a valid graph, when a batch has no positives or no negatives.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError

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
