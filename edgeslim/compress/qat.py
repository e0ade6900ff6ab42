"""Quantization-aware training (QAT): the fine-tuning of an NNCF fake-quantized model, the QAT method's training hook.

:class:`~edgeslim.quant.QAT` names :func:`quantize_aware_train` as its ``training_hook``; the composer runs it after
compression without naming the method. Fake-quant insertion and the exports live in :mod:`edgeslim.quant.qat`
(re-exported here for the old import path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..quant.qat import _nncf as _nncf
from ..quant.qat import check_qat_traceable as check_qat_traceable
from ..quant.qat import count_quantizers as _count_quantizers
from ..quant.qat import float_weights, prepare_qat
from ..quant.qat import qat_to_onnx as qat_to_onnx
from ..quant.qat import qat_to_openvino as qat_to_openvino
from .prune.base import PruneContext
from .prune.masks import MaskSet

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import Recipe

__all__ = ["QatResult", "check_qat_traceable", "prepare_qat", "qat_to_onnx", "qat_to_openvino",
           "quantize_aware_train", "float_weights"]


# -- training ---------------------------------------------------------------------------------------------------


@dataclass
class QatResult:
    """The outcome of :func:`quantize_aware_train`.

    Attributes:
        model: the fine-tuned model with fake-quant (export with :func:`qat_to_onnx` / :func:`qat_to_openvino`).
        fp32_model: its float weights in the FP32 architecture (:func:`float_weights`).
        history: per-epoch records of the QAT fine-tuning.
        best_epoch: the selected epoch.
        val_metrics: metrics of the fake-quant model on the val split (``None`` without one).
        info: ``epochs``, ``lr``, ``quantizers`` (number of fake-quantize modules), ``distill``.
    """

    model: nn.Module
    fp32_model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    val_metrics: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def quantize_aware_train(
    model: nn.Module,
    data: Any,
    recipe: "Recipe",
    *,
    run_dir: Path | str,
    calibration: Iterable[np.ndarray],
    masks: MaskSet | None = None,
    teacher: nn.Module | None = None,
    resume: bool = False,
    progress: bool = True,
    target: str = "auto",
) -> QatResult:
    """Fake-quantize ``model`` with NNCF and fine-tune it with the recipe's loss for ``quantize.qat_epochs``.

    Args:
        model: the FP32 model (e.g. ``compress(...).model``); left unchanged.
        data: the DataBundle it was trained on.
        recipe: reads ``quantize`` (calibration, preset, ignored scope, ``qat_epochs``, ``qat_lr``), ``train``,
            ``loss`` and ``distill``.
        run_dir: checkpoint directory (``run_dir/qat/last.pt``); with ``resume`` an interrupted QAT continues.
        calibration: float32 NCHW training batches that initialise the quantizer ranges.
        masks: the pruning masks of ``model``; they are re-applied after every optimizer step (pruned weights stay
            exactly zero).
        teacher: the distillation teacher (the dense model), used when ``recipe.distill.weight > 0``.
        target: the device target whose INT8 scheme the fake-quantizers follow (``auto``: this host).

    Raises:
        ConfigError: distillation is configured without a teacher.
        TrainingError: NNCF cannot trace the model.
    """
    d = recipe.distill
    if d.weight > 0 and teacher is None:
        raise ConfigError("distill.weight > 0 needs a teacher (the dense model); none was given")
    qcfg = recipe.quantize
    from ..hardware import int8_scheme

    scheme = int8_scheme(target, "onnx")
    qmodel = prepare_qat(model, calibration, qcfg, scheme=scheme)
    r = recipe.model_copy(deep=True)
    r.train.lr = qcfg.qat_lr or recipe.train.lr / 10
    # the frozen layers stay frozen, but their fake-quantizers must see every batch: no cache of float outputs
    r.train.cache = False
    qmasks = None
    if masks is not None:
        # the wrapped model keeps the original module names, so the masks carry over by name
        qmasks = MaskSet({k: v.clone() for k, v in masks.state_dict().items()})
    ctx = PruneContext.from_recipe(r, model=qmodel, data=data, run_dir=Path(run_dir), resume=resume,
                                   progress=progress, teacher=teacher if d.weight > 0 else None)
    res = ctx.train(qmodel, tag="qat", masks=qmasks, gamma=recipe.loss.gamma, epochs=qcfg.qat_epochs,
                    select=recipe.train.select)
    for h in res.history:
        h["round"] = "qat"
    qmodel = res.model.eval()
    info = {"int8_scheme": scheme.to_dict(), "epochs": qcfg.qat_epochs, "lr": r.train.lr, "quantizers": _count_quantizers(qmodel),
            "distill": d.model_dump() if d.weight > 0 else None, "best_epoch": res.best_epoch}
    return QatResult(model=qmodel, fp32_model=float_weights(qmodel, model), history=res.history,
                     best_epoch=res.best_epoch, val_metrics=res.val_metrics, info=info)
