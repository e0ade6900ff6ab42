"""Sparse transfer (Iofinova et al., *How Well Do Sparse ImageNet Models Transfer?*, CVPR 2022).

Recipe: ``model: {source: file:sparse_imagenet.pt, arch: ...}`` and ``prune: {method: sparse_transfer, mode:
full|linear_probe}``. The source checkpoint is already sparse; its zero pattern becomes the mask, so fine-tuning
on the downstream task keeps exactly those weights at zero. ``full`` trains every weight that is not masked;
``linear_probe`` freezes the backbone (weights and BatchNorm statistics) and trains only the new head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from ...errors import ConfigError
from ...models import classifier_name, prunable_layers
from .base import PRUNE_METHODS, PruneConfig, PruneContext, PruneResult, round_summary, teacher_check

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...recipe import TrainSection
    from .masks import MaskSet


class SparseTransfer(PruneConfig):
    """Fine-tune an already sparse source on the task, its zero pattern kept as the mask (the new head is dense)."""

    method: Literal["sparse_transfer"] = "sparse_transfer"
    trains_once: ClassVar[bool] = True
    mode: Literal["full", "linear_probe"] = Field(default="full", description="train everything, or only the new head")


def masks_from_zeros(model: nn.Module, *, exclude: tuple[str, ...] | list[str] = (), head: bool = False) -> MaskSet:
    """Masks that keep the existing zero pattern: ``mask = weight != 0`` for every Conv/Linear layer.

    Args:
        model: the sparse source model.
        exclude: globs of layers left unmasked (free to become dense).
        head: also mask the classifier (off: a new head is dense and trains freely).

    Raises:
        ConfigError: an exclude pattern matches nothing, or no layer has any zero (the source is not sparse).
    """
    from .masks import MaskSet, skipped_layers

    layers = prunable_layers(model)
    skip = skipped_layers(model, first_conv=False, classifier=not head, exclude=exclude, layers=layers)
    masks = {n: (m.weight.detach() != 0).cpu() for n, m in layers if n not in skip}
    if not masks or all(bool(v.all()) for v in masks.values()):
        raise ConfigError(
            "sparse_transfer needs a sparse source, but the model's weights have no zeros outside the head; load a"
            " pruned checkpoint (model.source: file:<path>) or use method one_shot / lottery_ticket to prune it"
        )
    return MaskSet(masks)


def freeze_backbone(model: nn.Module) -> list[str]:
    """``requires_grad = False`` for every parameter outside the classifier; returns the trainable names."""
    layers = prunable_layers(model)
    head_name = classifier_name(model, layers)
    head = model.get_submodule(head_name) if head_name else None
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad = id(p) in head_params
        if p.requires_grad:
            trainable.append(name)
    return trainable


def _no_teacher(cfg: SparseTransfer, train: "TrainSection", qat: bool) -> str:
    # The source is the only other model, and it is no teacher: its head is normally new for this task (untrained
    # logits: distilling towards them would fight the fine-tuning) and it is sparse, not the dense model.
    return ("prune.method 'sparse_transfer' has no dense model of this task to distil from (the source is sparse"
            " and its head is normally new for the task, with untrained logits), neither for the transfer nor for"
            " QAT after it;"
            " distillation needs a method with a dense round (one_shot, gradual, nm, structured, lottery_ticket)")


@PRUNE_METHODS.register(SparseTransfer, aliases=("transfer",))
@teacher_check(_no_teacher)
def sparse_transfer(cfg: SparseTransfer, ctx: PruneContext) -> PruneResult:
    """Fine-tune a sparse source on the task with its zero pattern as the mask (``full`` or ``linear_probe``).

    One training of ``train.final_epochs`` (default ``train.epochs``) with gamma and ``train.select``. There is no
    dense reference (``dense_model`` is ``None``), so there is no distillation teacher either: ``distill.weight >
    0`` is refused before training (:func:`~.base.check_distillation`).

    Raises:
        ConfigError: the source has no zeros (checked before training).
    """
    p, t, lossc = cfg, ctx.training, ctx.loss
    model = ctx.start_from_w0()
    masks = masks_from_zeros(model, exclude=p.exclude)
    source_sparsity = masks.sparsity()
    trainable = freeze_backbone(model) if p.mode == "linear_probe" else [n for n, _ in model.named_parameters()]
    epochs = ctx.final_epochs
    try:
        res = ctx.train(model, tag="transfer", masks=masks, gamma=lossc.gamma, epochs=epochs, select=t.select)
    finally:
        for prm in model.parameters():  # hand the next step (e.g. QAT) an ordinary trainable model
            prm.requires_grad_(True)
    for h in res.history:
        h["round"] = 1
    info: dict[str, Any] = {"mode": p.mode, "source_sparsity": source_sparsity, "trainable": len(trainable)}
    return PruneResult(model=res.model, masks=masks, history=list(res.history),
                       rounds=[round_summary(1, lossc.gamma, epochs, masks, res)], dense_model=None, info=info)
