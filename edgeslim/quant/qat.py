"""Quantization-aware training (QAT) INT8 with NNCF: fake-quant on the torch model, and its exports.

The flow (``quantize.method: qat``; the training of step 3 is compress's, this module holds the rest):

1. :func:`check_qat_traceable` runs before any training: NNCF must be able to trace the model and insert its
   quantizers, else a :class:`~edgeslim.errors.TrainingError` says why.
2. :func:`prepare_qat` calls ``nncf.quantize`` on the (pruned, fine-tuned) torch model: NNCF inserts fake-quantize
   modules (symmetric INT8 per-channel weights, per-tensor activations) and initialises their ranges on training
   samples, as PTQ does.
3. :func:`edgeslim.compress.qat.quantize_aware_train` (the method's training hook) fine-tunes that model with the
   recipe's loss (class-dependent when configured, with the optional distillation term) through
   :class:`~edgeslim.compress.prune.PruneContext`, so checkpoints, resume, checkpoint selection and progress work as
   for pruning; the pruning masks are kept, so pruned weights stay exactly zero (a zero weight quantizes to zero
   under NNCF's symmetric weight quantizers).
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
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import TrainingError
from ..recipe import QuantizeSection
from ._quiet import quiet_cuda_home_on_cpu
from .config import QuantizeConfig
from .ptq import _nncf_kwargs, _quiet_nncf, _samples

if TYPE_CHECKING:  # pragma: no cover
    from ..hardware import Int8Scheme

__all__ = ["check_qat_traceable", "count_quantizers", "float_weights", "prepare_qat", "qat_to_onnx",
           "qat_to_openvino"]


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


def count_quantizers(model: nn.Module) -> int:
    """The number of NNCF fake-quantize modules of a QAT model."""
    from nncf.torch.quantization.layers import BaseQuantizer

    return sum(isinstance(m, BaseQuantizer) for m in model.modules())


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
