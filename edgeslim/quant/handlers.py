"""The INT8 handlers of the built-in methods, registered by (method, format).

A handler ``handler(cfg, job, graph) -> (int8_graph, extra)`` makes one format's INT8 file for one method; it is
registered in :data:`HANDLERS` under ``"<method>:<format>"`` with :func:`handles`, and found by
:func:`handler_for`, never by comparing names. Each built-in method registers one function on
:data:`~edgeslim.methods.QUANT_METHODS` (:func:`by_format`), which dispatches to its format's handler, so the
method registry keeps one handler per method: a method registered from outside the package with
``@QUANT_METHODS.register(Config)`` and one ``handler(cfg, job, fmt, graph)`` for every format runs the same way
(see :func:`edgeslim.quant.quantize`).

Heavy imports (nncf, onnx, openvino, torch) happen inside the handlers.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError, ExportError
from ..methods import QUANT_METHODS
from ..registry import Registry
from .config import PTQ, QAT, AccuracyControlledPTQ, Int8Job, NoQuantization, QuantizeConfig

__all__ = ["HANDLERS", "Handler", "by_format", "handler_for", "handles"]

#: ``handler(cfg, job, graph) -> (int8_graph, extra)``
Handler = Callable[[Any, Int8Job, Any], "tuple[Any, dict[str, Any]]"]

#: the INT8 handlers by ``"<method>:<format>"``
HANDLERS: Registry[Handler] = Registry("INT8 handler (method:format)")


def handles(config: type[QuantizeConfig], *formats: str) -> Callable[[Handler], Handler]:
    """Decorator: register a handler for ``config``'s method in each of ``formats``."""

    def add(handler: Handler) -> Handler:
        for fmt in formats:
            HANDLERS.register(f"{config.method_name()}:{fmt}", handler)
        return handler

    return add


def handler_for(method: str, fmt: str) -> Handler:
    """The handler of method ``method`` (or an alias) for format ``fmt``; UnknownNameError lists the known pairs."""
    return HANDLERS.get(f"{QUANT_METHODS.canonical(method)}:{fmt}")


def by_format(cfg: QuantizeConfig, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """The method handler of every built-in method: its format's handler (:data:`HANDLERS`)."""
    return handler_for(cfg.method, fmt)(cfg, job, graph)


QUANT_METHODS.register(PTQ, aliases=("post_training", "int8_ptq"))(by_format)
QUANT_METHODS.register(AccuracyControlledPTQ, aliases=("accuracy_control", "accuracy_controlled_ptq"))(by_format)
QUANT_METHODS.register(QAT, aliases=("quantization_aware",))(by_format)


@QUANT_METHODS.register(NoQuantization, aliases=("off", "fp32"))
def no_quantization(cfg: NoQuantization, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    raise ConfigError("quantize.method is 'none': set it to 'ptq', 'qat' or 'accuracy_aware', or drop int8")


def _signed_if_needed(quantized: Any, job: Int8Job) -> Any:
    """TensorRT's scheme: NNCF's unsigned symmetric activations become signed INT8 Q/DQ (qdq.signed_activations)."""
    if job.scheme.signed_activations:
        from .qdq import signed_activations

        quantized, _ = signed_activations(quantized)
    return quantized


@handles(PTQ, "onnx")
def ptq_onnx(cfg: PTQ, job: Int8Job, graph: Any) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training quantization of the FP32 ONNX graph (Q/DQ pairs), in the target's INT8 scheme."""
    from .ptq import ptq_onnx

    quantized = ptq_onnx(graph, job.calibration_or_raise("onnx"), cfg, scheme=job.scheme)
    return _signed_if_needed(quantized, job), {"quantizer": "nncf.ptq"}


@handles(PTQ, "openvino")
def ptq_openvino(cfg: PTQ, job: Int8Job, graph: Any) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training quantization of the FP32 OpenVINO model (FakeQuantize), in the target's INT8 scheme."""
    from .ptq import ptq_openvino

    return ptq_openvino(graph, job.calibration_or_raise("openvino"), cfg, scheme=job.scheme), {"quantizer": "nncf.ptq"}


def _val_split_or_raise(job: Int8Job) -> tuple[Any, Any]:
    if job.val_split is None:
        raise ExportError(
            "quantize.method 'accuracy_aware' needs the val split: pass export_artifact(..., val_split=(inputs,"
            " labels)) (the pipeline passes the recipe's val split)"
        )
    return job.val_split


@handles(AccuracyControlledPTQ, "onnx")
def accuracy_aware_onnx(cfg: AccuracyControlledPTQ, job: Int8Job, graph: Any) -> tuple[Any, dict[str, Any]]:
    """PTQ with the most harmful layers kept in float until the val top-1 drop and the critical-FN budget hold."""
    from .ptq import accuracy_aware_onnx

    val_split = _val_split_or_raise(job)
    quantized, report = accuracy_aware_onnx(graph, job.calibration_or_raise("onnx"), val_split, job.critical, cfg,
                                            scheme=job.scheme, thresholds=job.thresholds, rule=job.rule,
                                            calibrate=job.calibrate)
    return _signed_if_needed(quantized, job), dict(report)


@handles(AccuracyControlledPTQ, "openvino")
def accuracy_aware_openvino(cfg: AccuracyControlledPTQ, job: Int8Job, graph: Any) -> tuple[Any, dict[str, Any]]:
    """The OpenVINO counterpart of :func:`accuracy_aware_onnx` (reverted layers stay FP32)."""
    from .ptq import accuracy_aware_openvino

    val_split = _val_split_or_raise(job)
    quantized, report = accuracy_aware_openvino(graph, job.calibration_or_raise("openvino"), val_split, job.critical,
                                                cfg, scheme=job.scheme, thresholds=job.thresholds, rule=job.rule,
                                                calibrate=job.calibrate)
    return quantized, dict(report)


def _qat_model_or_raise(job: Int8Job) -> tuple[Any, Callable[..., Any]]:
    if job.qat_model is None or job.example_input is None:
        raise ExportError(
            "quantize.method is 'qat' but no QAT-trained model was given; train one with"
            " edgeslim.compress.qat.quantize_aware_train and pass export_artifact(..., qat_model=result.model)"
            " (the pipeline does)"
        )
    return job.qat_model, job.example_input


@handles(QAT, "onnx")
def qat_onnx(cfg: QAT, job: Int8Job, graph: Any) -> tuple[Any, dict[str, Any]]:
    """The QAT-trained model's fake-quantizers exported as Q/DQ pairs, in the canonical deployable form."""
    model, example_input = _qat_model_or_raise(job)
    from .qat import qat_to_onnx
    from .qdq import fold_qdq_weights

    quantized = qat_to_onnx(model, example_input(None), opset=job.opset, dynamic_batch=job.dynamic_batch,
                            input_name=job.input_name, output_name=job.output_name)
    # INT8 weight initializers and BN folded into the convs: the form onnxruntime's INT8 kernels and
    # TensorRT build from (the raw export runs every conv in float between Q/DQ pairs)
    quantized, folded = fold_qdq_weights(quantized)
    return quantized, {"quantizer": "nncf.qat", "folded_weight_quantizers": folded["weights"],
                       "folded_batchnorms": folded["batchnorms"]}


@handles(QAT, "openvino")
def qat_openvino(cfg: QAT, job: Int8Job, graph: Any) -> tuple[Any, dict[str, Any]]:
    """The QAT-trained model's fake-quantizers as FakeQuantize nodes (INT8 kernels on the OpenVINO CPU plugin)."""
    model, example_input = _qat_model_or_raise(job)
    from .qat import qat_to_openvino

    return qat_to_openvino(model, example_input(1)), {"quantizer": "nncf.qat"}
