"""Quantization methods: one pydantic config per method, registered beside the function that makes an INT8 file.

A recipe's ``quantize:`` section is the chosen method's config, discriminated by ``method``::

    quantize: {method: ptq, calibration_size: 300}
    quantize: {method: accuracy_aware, max_drop: 0.01, max_extra_critical_fn: 0}
    quantize: {method: qat, qat_epochs: 1, qat_lr: 0.001}

Each method is one config class plus one handler ``handler(cfg, job, fmt, graph) -> (int8_graph, extra)``, where
``job`` (:class:`Int8Job`) is everything beyond the FP32 graph: calibration batches, the target's INT8 scheme, the
val split and decision thresholds for accuracy control, the QAT-trained model. The exporters build the job from
their context and call :func:`edgeslim.export.int8.quantize_graph`; they never switch on the method's name. A new
method registers the same way::

    class MyInt8(QuantizeConfig):
        method: Literal["my_int8"] = "my_int8"

    @QUANT_METHODS.register(MyInt8)
    def my_int8(cfg: MyInt8, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]: ...

This module is light (pydantic only): heavy imports happen inside the handlers, so parsing a recipe stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, cast

from pydantic import Field

from ..errors import ConfigError, ExportError
from ..methods import QUANT_METHODS, MethodConfig

__all__ = ["AccuracyControlledPTQ", "Int8Job", "NoQuantization", "PTQ", "QAT", "QUANT_METHODS", "QuantizeConfig"]


#: ``ignored_scope`` alias for the model's first convolution (the stem: it sees raw pixels, the layer INT8 hurts
#: most), resolved on the graph being quantized (:func:`edgeslim.compress.quantize.first_conv_name`). Node names
#: differ between exports of one architecture (a dynamic or a fixed batch axis, ONNX or OpenVINO), so a name taken
#: from one export misses in another.
FIRST_CONV = "@first_conv"


class QuantizeConfig(MethodConfig):
    """What every INT8 method shares: NNCF's calibration options (see :mod:`edgeslim.compress.quantize`)."""

    calibration_size: int = Field(default=300, gt=0, description="training samples NNCF calibrates on")
    preset: Literal["performance", "mixed"] = "performance"
    ignored_scope: list[str] = Field(default_factory=list, description="node names (regex) left in FP32;"
                                     " '@first_conv' is the graph's first convolution")
    fast_bias_correction: bool = Field(default=True, description="NNCF's fast bias correction (False: the full one)")
    model_type: Literal["cnn", "transformer"] = Field(default="cnn", description="transformer: NNCF's transformer scheme")


QUANT_METHODS.set_hooks(base=QuantizeConfig)  # every quantization method's config is one


class NoQuantization(QuantizeConfig):
    """No INT8 files (``int8`` is then not a valid export precision)."""

    method: Literal["none"] = "none"


class PTQ(QuantizeConfig):
    """NNCF post-training quantization of the exported FP32 graph, calibrated on ``calibration_size`` training
    samples, in the target's INT8 scheme."""

    method: Literal["ptq"] = "ptq"


class AccuracyControlledPTQ(QuantizeConfig):
    """PTQ with the most harmful layers kept in float (NNCF's accuracy control, on the val split) until the val
    top-1 drop is at most ``max_drop`` and the val critical FN, counted at the calibrated thresholds, at most
    FP32's + ``max_extra_critical_fn``."""

    method: Literal["accuracy_aware"] = "accuracy_aware"
    max_drop: float = Field(default=0.01, ge=0, lt=1, description="max absolute val top-1 drop")
    max_extra_critical_fn: int = Field(default=0, ge=0, description="val critical FN allowed above the FP32 model's")


class QAT(QuantizeConfig):
    """Quantization-aware training: fake-quant inserted into the torch model (calibrated like PTQ) and fine-tuned
    ``qat_epochs`` with the recipe's loss (masks kept), exported as Q/DQ ONNX and an INT8 OpenVINO IR."""

    method: Literal["qat"] = "qat"
    qat_epochs: int = Field(default=1, ge=0, description="fine-tuning epochs with fake-quant")
    qat_lr: float | None = Field(default=None, gt=0, description="learning rate (default: train.lr / 10)")


@dataclass
class Int8Job:
    """What a quantization method needs beyond the FP32 graph (built by the exporter from its context).

    Attributes:
        calibration: preprocessed float32 NCHW batches from the training split.
        scheme: the target's INT8 scheme for this file (:func:`edgeslim.hardware.int8_scheme`).
        val_split: ``(inputs, labels)`` of the val split (accuracy control), or None.
        critical: critical class indices.
        thresholds: the artifact's calibrated decision thresholds (critical FN are counted as deployed).
        rule: the artifact's decision rule.
        qat_model: the QAT-trained torch model, or None.
        example_input: ``f(batch or None) -> torch.Tensor``, for exporting the QAT model.
        opset, dynamic_batch, input_name, output_name: the export's graph contract.
    """

    calibration: list[Any] | None
    scheme: Any
    val_split: tuple[Any, Any] | None = None
    critical: list[int] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    rule: str = "threshold"
    qat_model: Any = None
    example_input: Callable[..., Any] | None = None
    opset: int = 18
    dynamic_batch: bool = True
    input_name: str = "input"
    output_name: str = "logits"

    def calibration_or_raise(self, fmt: str) -> list[Any]:
        if not self.calibration:
            raise ExportError(f"INT8 {fmt} needs calibration batches from the training split; none were given")
        return self.calibration


def _signed_if_needed(quantized: Any, fmt: str, job: Int8Job) -> Any:
    """TensorRT's scheme: NNCF's unsigned symmetric activations become signed INT8 Q/DQ (qdq.signed_activations)."""
    if fmt == "onnx" and job.scheme.signed_activations:
        from .qdq import signed_activations

        quantized, _ = signed_activations(quantized)
    return quantized


@QUANT_METHODS.register(NoQuantization, aliases=("off", "fp32"))
def no_quantization(cfg: NoQuantization, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    raise ConfigError("quantize.method is 'none': set it to 'ptq', 'qat' or 'accuracy_aware', or drop int8")


@QUANT_METHODS.register(PTQ, aliases=("post_training", "int8_ptq"))
def ptq(cfg: PTQ, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training quantization of the FP32 graph, in the target's INT8 scheme."""
    from .quantize import ptq_onnx, ptq_openvino

    fn = ptq_onnx if fmt == "onnx" else ptq_openvino
    quantized = fn(graph, job.calibration_or_raise(fmt), cfg, scheme=job.scheme)
    return _signed_if_needed(quantized, fmt, job), {"quantizer": "nncf.ptq"}


@QUANT_METHODS.register(AccuracyControlledPTQ, aliases=("accuracy_control", "accuracy_controlled_ptq"))
def accuracy_aware(cfg: AccuracyControlledPTQ, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """PTQ with the most harmful layers kept in float until the val top-1 drop and the critical-FN budget hold."""
    from .quantize import accuracy_aware_onnx, accuracy_aware_openvino

    if job.val_split is None:
        raise ExportError(
            "quantize.method 'accuracy_aware' needs the val split: pass export_artifact(..., val_split=(inputs,"
            " labels)) (the pipeline passes the recipe's val split)"
        )
    fn = accuracy_aware_onnx if fmt == "onnx" else accuracy_aware_openvino
    quantized, report = fn(graph, job.calibration_or_raise(fmt), job.val_split, job.critical, cfg, scheme=job.scheme,
                           thresholds=job.thresholds, rule=job.rule)
    return _signed_if_needed(quantized, fmt, job), dict(report)


@QUANT_METHODS.register(QAT, aliases=("quantization_aware",))
def qat(cfg: QAT, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """The QAT-trained model's fake-quantizers, exported as Q/DQ pairs (ONNX) or FakeQuantize nodes (OpenVINO)."""
    if job.qat_model is None or job.example_input is None:
        raise ExportError(
            "quantize.method is 'qat' but no QAT-trained model was given; train one with"
            " edgeslim.compress.qat.quantize_aware_train and pass export_artifact(..., qat_model=result.model)"
            " (the pipeline does)"
        )
    from .qat import qat_to_onnx, qat_to_openvino

    if fmt == "onnx":
        from .qdq import fold_qdq_weights

        quantized = qat_to_onnx(job.qat_model, job.example_input(None), opset=job.opset,
                                dynamic_batch=job.dynamic_batch, input_name=job.input_name,
                                output_name=job.output_name)
        # INT8 weight initializers and BN folded into the convs: the form onnxruntime's INT8 kernels and
        # TensorRT build from (the raw export runs every conv in float between Q/DQ pairs)
        quantized, folded = fold_qdq_weights(quantized)
        return quantized, {"quantizer": "nncf.qat", "folded_weight_quantizers": folded["weights"],
                           "folded_batchnorms": folded["batchnorms"]}
    return qat_to_openvino(job.qat_model, job.example_input(1)), {"quantizer": "nncf.qat"}


# the flat quantize section of recipes written before the methods were typed: every method's fields, at these defaults
_FLAT_DEFAULTS: dict[str, Any] = {"qat_epochs": 1, "qat_lr": None, "max_drop": 0.01, "max_extra_critical_fn": 0}


def upgrade_flat(section: Any) -> Any:
    """A flat quantize section (every method's fields, as recipes before typed methods wrote them) as the data
    of its method's config: a field the method does not have is dropped at its old default and refused at any
    other value (it would silently do nothing)."""
    if not isinstance(section, dict):
        return section
    method = section.get("method", "ptq")
    if not isinstance(method, str) or method not in QUANT_METHODS:
        return dict(section)
    config = QUANT_METHODS.config_class(QUANT_METHODS.canonical(method))
    out, stray = {}, []
    for key, value in section.items():
        if key == "method" or key in config.model_fields or key not in _FLAT_DEFAULTS:
            out[key] = value
        elif value != _FLAT_DEFAULTS[key]:
            stray.append(key)
    if stray:
        raise ConfigError(
            f"quantize: {', '.join(sorted(stray))} {'does' if len(stray) == 1 else 'do'} not apply to method"
            f" '{method}' (it uses: {', '.join(config.option_names()) or 'nothing'}); remove"
            f" {'it' if len(stray) == 1 else 'them'}"
        )
    return out


def with_method(cfg: QuantizeConfig, method: str, **options: Any) -> QuantizeConfig:
    """``cfg``'s shared calibration options under another method (e.g. the accuracy-control fallback of a PTQ)."""
    common = {k: getattr(cfg, k) for k in QuantizeConfig.model_fields if k != "method"}
    return parse_quantize({**common, **options, "method": method})


# the registry parses a quantize section by itself (the recipe imports no stage): a flat section is upgraded first
QUANT_METHODS.set_hooks(upgrade=upgrade_flat)


def parse_quantize(data: Any) -> QuantizeConfig:
    """A quantize section (typed, flat or a config) as its method's config (default method: ``ptq``)."""
    return cast(QuantizeConfig, QUANT_METHODS.parse(data, default="ptq"))  # the registry's base (set_hooks)
