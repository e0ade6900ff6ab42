"""Quantization-aware training (QAT) INT8 with NNCF on the torch model, and its exports.

The flow (``quantize.method: qat``):

1. :func:`check_qat_traceable` runs before any training: NNCF must be able to trace the model and insert its
   quantizers, else a :class:`~edgeslim.errors.TrainingError` says why.
2. :func:`prepare_qat` calls ``nncf.quantize`` on the (pruned, fine-tuned) torch model: NNCF inserts fake-quantize
   modules (symmetric INT8 per-channel weights, per-tensor activations) and initialises their ranges on training
   samples, as PTQ does.
3. :func:`quantize_aware_train` fine-tunes that model with the recipe's loss (class-dependent when configured, with
   the optional distillation term) through :class:`~edgeslim.compress.prune.PruneContext`, so checkpoints,
   resume, checkpoint selection and progress work as for pruning; the pruning masks are kept, so pruned weights
   stay exactly zero (a zero weight quantizes to zero under NNCF's symmetric weight quantizers).
4. :func:`qat_to_onnx` writes an ONNX graph with explicit ``QuantizeLinear``/``DequantizeLinear`` pairs (runs in
   onnxruntime CPU; the form TensorRT 10/11 build INT8 engines from); :func:`qat_to_openvino` an OpenVINO model
   with ``FakeQuantize`` nodes (INT8 kernels on the CPU plugin).

NNCF's torch backend compiles a C++ extension on first use (about 30 s on an idle 2-core machine, cached in
``~/.cache/torch_extensions``); on a loaded machine that exceeds NNCF's 60 s load timeout, so a longer default is set
unless the user chose one (``NNCF_EXTENSION_LOAD_TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, TrainingError
from ..recipe import QuantizeSection
from .quant import QuantizeConfig
from ._quiet import quiet_cuda_home_on_cpu
from .prune.base import PruneContext
from .prune.masks import MaskSet
from .quantize import _nncf_kwargs, _quiet_nncf, _samples

if TYPE_CHECKING:  # pragma: no cover
    from ..hardware import Int8Scheme
    from ..recipe import Recipe

__all__ = ["QatResult", "check_qat_traceable", "prepare_qat", "qat_to_onnx", "qat_to_openvino",
           "quantize_aware_train", "float_weights"]


def _nncf() -> Any:
    # a loaded 2-core machine compiles NNCF's extension in more than NNCF's default 60 s
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    quiet_cuda_home_on_cpu()  # before nncf.torch imports torch.utils.cpp_extension
    import nncf

    return nncf


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def prepare_qat(model: nn.Module, calibration: Iterable[np.ndarray], cfg: QuantizeConfig | None = None, *,
                scheme: "Int8Scheme | None" = None, verbose: bool = False) -> nn.Module:
    """Insert NNCF fake-quantize modules into a copy of ``model`` and initialise their ranges.

    Args:
        model: the FP32 torch model (left unchanged).
        calibration: preprocessed float32 NCHW batches from the training split.
        cfg: ``calibration_size``, ``preset``, ``ignored_scope``, ``fast_bias_correction``, ``model_type``.
        scheme: the target's INT8 scheme for its ONNX file (default: this host's); the OpenVINO IR of a QAT model
            carries the same quantizers.
        verbose: show NNCF's logs and progress bars.

    Returns:
        The model with fake-quant, in train mode's counterpart of the input (eval), ready to fine-tune.

    Raises:
        TrainingError: NNCF cannot trace the model or calibration is empty.
    """
    cfg = cfg or QuantizeSection(method="qat")
    nncf = _nncf()
    samples = [torch.from_numpy(s) for s in _samples(calibration, cfg.calibration_size)]
    from ..hardware import int8_scheme

    kwargs = _nncf_kwargs(nncf, cfg, len(samples), scheme or int8_scheme("auto", "onnx"), model)
    work = copy.deepcopy(model).eval().cpu()
    try:
        with _quiet_nncf(verbose), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nncf.quantize(work, nncf.Dataset(samples), **kwargs)
    except Exception as exc:
        raise TrainingError(
            f"NNCF cannot prepare {type(model).__name__} for quantization-aware training ({_one_line(exc)}). QAT"
            " needs a model NNCF can trace (tensor in, logits tensor out, torch ops only); use quantize.method: ptq"
            " on the exported graph instead, or quantize.ignored_scope for the layers NNCF rejects"
        ) from exc


def check_qat_traceable(model: nn.Module, input_shape: tuple[int, ...] | list[int], cfg: QuantizeConfig | None = None
                        ) -> None:
    """Fail fast, before any training, when NNCF cannot trace ``model`` for QAT or its output is not logits.

    Runs :func:`prepare_qat` on a copy with one random sample and one forward pass of the result.

    Raises:
        TrainingError: NNCF cannot trace the model, or the quantized model does not return a logits tensor.
    """
    shape = (1, *tuple(input_shape)[1:]) if len(input_shape) == 4 else (1, *tuple(input_shape))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    probe_cfg = (cfg or QuantizeSection(method="qat")).model_copy(update={"calibration_size": 1})
    q = prepare_qat(model, [x], probe_cfg)
    try:
        with torch.no_grad():
            out = q(torch.from_numpy(x))
    except Exception as exc:
        raise TrainingError(f"the NNCF-quantized {type(model).__name__} fails to run: {_one_line(exc)}") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise TrainingError(
            f"the NNCF-quantized {type(model).__name__} returns {type(out).__name__}; QAT needs a model returning one"
            " logits tensor [N, classes]"
        )


def float_weights(qat_model: nn.Module, fp32_model: nn.Module) -> nn.Module:
    """A copy of ``fp32_model`` holding the QAT model's trained float weights (quantizers dropped).

    It is the FP32 counterpart of the QAT INT8 model (same weights, same BatchNorm statistics): the torch artifact
    and the reference the INT8 exports are validated against.
    """
    out = copy.deepcopy(fp32_model).cpu()
    own = out.state_dict()
    state = {k: v for k, v in qat_model.state_dict().items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise TrainingError(f"the QAT model lacks weights of the FP32 model: {missing[:5]}")
    out.load_state_dict(state)
    return out.eval()


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


def _count_quantizers(model: nn.Module) -> int:
    from nncf.torch.quantization.layers import BaseQuantizer

    return sum(isinstance(m, BaseQuantizer) for m in model.modules())


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


# -- export -----------------------------------------------------------------------------------------------------


def _set_export_mode(model: nn.Module, mode: str) -> None:
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    m = {"qdq": QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS, "fq": QuantizerExportMode.FAKE_QUANTIZE}[mode]
    for q in model.modules():
        if isinstance(q, BaseQuantizer):
            q.set_export_mode(m)


def qat_to_onnx(qat_model: nn.Module, example: torch.Tensor, *, opset: int = 18, dynamic_batch: bool = True,
                input_name: str = "input", output_name: str = "logits") -> Any:
    """Export a QAT model to an in-memory ONNX model with explicit QuantizeLinear/DequantizeLinear pairs.

    The TorchScript exporter is used: NNCF's quantizers export through their ONNX symbolic (Q/DQ pairs with the
    learned scales); torch.export cannot trace them.

    Raises:
        TrainingError: the export failed or produced no Q/DQ node.
    """
    import onnx

    model = qat_model.eval().cpu()
    _set_export_mode(model, "qdq")
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), buf, dynamo=False, opset_version=opset, input_names=[input_name],
                output_names=[output_name], do_constant_folding=True,
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None,
            )
    except Exception as exc:
        raise TrainingError(f"ONNX export of the QAT model failed: {_one_line(exc)}") from exc
    finally:
        _set_export_mode(model, "fq")
    proto = onnx.load_from_string(buf.getvalue())
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise TrainingError("the QAT model exported without QuantizeLinear nodes: it holds no NNCF quantizer")
    return proto


def qat_to_openvino(qat_model: nn.Module, example: torch.Tensor) -> Any:
    """Convert a QAT model to an ``openvino.Model`` with FakeQuantize nodes (INT8 on the CPU plugin)."""
    import openvino as ov

    model = qat_model.eval().cpu()
    _set_export_mode(model, "fq")
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return ov.convert_model(model, example_input=example)
    except Exception as exc:
        raise TrainingError(f"OpenVINO conversion of the QAT model failed: {_one_line(exc)}") from exc
