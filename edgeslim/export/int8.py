"""INT8 quantizers: one registered function per ``quantize.method``, shared by every exporter that writes INT8.

A quantizer takes the export context, the format (``onnx`` or ``openvino``) and that format's FP32 graph, and
returns the INT8 graph and what to record about it. Everything it needs beyond the graph is a typed field of the
:class:`~edgeslim.export.base.ExportContext`: the calibration batches, the target (whose INT8 scheme decides
the overflow fix and the activation form, :func:`edgeslim.hardware.int8_scheme`), the QAT-trained model, and the
val split that accuracy control judges layers on. Exporters never switch on the method's name::

    quantized, extra = quantize_graph(ctx, "onnx", fp32_graph)

Adding a quantizer is one decorated function::

    @QUANTIZERS.register("my_int8")
    def my_int8(ctx: ExportContext, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, ExportError
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .base import ExportContext

Quantizer = Callable[["ExportContext", str, Any], "tuple[Any, dict[str, Any]]"]

QUANTIZERS: Registry[Quantizer] = Registry("quantizer")


def quantize_graph(ctx: "ExportContext", fmt: str, graph: Any, *, method: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Quantize ``graph`` (format ``fmt``) with ``method`` (default ``ctx.quantize.method``) for ``ctx.target``.

    Returns:
        ``(int8_graph, extra)``; ``extra`` records the quantizer, its settings and the INT8 scheme (the target the
        file is made for), and goes into the model file's manifest entry.
    """
    method = method or ctx.quantize.method
    if method == "none":
        raise ConfigError("quantize.method is 'none': set it to 'ptq', 'qat' or 'accuracy_aware', or drop int8")
    scheme = ctx.int8_scheme(fmt)
    quantized, extra = QUANTIZERS.get(method)(ctx, fmt, graph)
    extra = {**extra, "int8_scheme": scheme.to_dict()}
    if method != "qat":
        cal = ctx.calibration or []
        extra.update(calibration_samples=min(ctx.quantize.calibration_size, sum(len(b) for b in cal)),
                     preset=ctx.quantize.preset, fast_bias_correction=ctx.quantize.fast_bias_correction,
                     ignored_scope=list(ctx.quantize.ignored_scope))
    return quantized, extra


def _calibration(ctx: "ExportContext", fmt: str) -> list[Any]:
    if not ctx.calibration:
        raise ExportError(f"INT8 {fmt} needs calibration batches from the training split; none were given")
    return ctx.calibration


@QUANTIZERS.register("ptq")
def ptq(ctx: "ExportContext", fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training quantization of the FP32 graph, in the target's INT8 scheme."""
    from ..compress.quantize import ptq_onnx, ptq_openvino

    scheme = ctx.int8_scheme(fmt)
    fn = ptq_onnx if fmt == "onnx" else ptq_openvino
    quantized = fn(graph, _calibration(ctx, fmt), ctx.quantize, scheme=scheme)
    return _signed_if_needed(quantized, fmt, scheme), {"quantizer": "nncf.ptq"}


def _signed_if_needed(quantized: Any, fmt: str, scheme: Any) -> Any:
    """TensorRT's scheme: NNCF's unsigned symmetric activations become signed INT8 Q/DQ (see qdq.signed_activations)."""
    if fmt == "onnx" and scheme.signed_activations:
        from .qdq import signed_activations

        quantized, _ = signed_activations(quantized)
    return quantized


@QUANTIZERS.register("accuracy_aware", aliases=("accuracy_control", "accuracy_controlled_ptq"))
def accuracy_aware(ctx: "ExportContext", fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """PTQ with the most harmful layers kept in float until the val top-1 drop and the critical-FN budget hold
    (NNCF's accuracy control; critical FN counted at the artifact's calibrated thresholds)."""
    from ..compress.quantize import accuracy_aware_onnx, accuracy_aware_openvino

    if ctx.val_split is None:
        raise ExportError(
            "quantize.method 'accuracy_aware' needs the val split: pass export_artifact(..., val_split=(inputs,"
            " labels)) (the pipeline passes the recipe's val split)"
        )
    fn = accuracy_aware_onnx if fmt == "onnx" else accuracy_aware_openvino
    manifest = ctx.manifest
    thresholds = dict(manifest.thresholds) if manifest is not None else {}
    rule = manifest.decision_rule if manifest is not None else "threshold"
    critical = list(manifest.critical) if manifest is not None else []
    scheme = ctx.int8_scheme(fmt)
    quantized, report = fn(graph, _calibration(ctx, fmt), ctx.val_split, critical, ctx.quantize,
                           scheme=scheme, thresholds=thresholds, rule=rule)
    return _signed_if_needed(quantized, fmt, scheme), dict(report)


@QUANTIZERS.register("qat")
def qat(ctx: "ExportContext", fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """The QAT-trained model's fake-quantizers, exported as Q/DQ pairs (ONNX) or FakeQuantize nodes (OpenVINO)."""
    if ctx.qat_model is None:
        raise ExportError(
            "quantize.method is 'qat' but no QAT-trained model was given; train one with"
            " edgeslim.compress.qat.quantize_aware_train and pass export_artifact(..., qat_model=result.model)"
            " (the pipeline does)"
        )
    from ..compress.qat import qat_to_onnx, qat_to_openvino

    if fmt == "onnx":
        from .qdq import fold_qdq_weights

        quantized = qat_to_onnx(ctx.qat_model, ctx.example_input(), opset=ctx.opset, dynamic_batch=ctx.dynamic_batch,
                                input_name=ctx.input_name, output_name=ctx.output_name)
        # INT8 weight initializers and BN folded into the convs: the form onnxruntime's INT8 kernels and
        # TensorRT build from (the raw export runs every conv in float between Q/DQ pairs)
        quantized, folded = fold_qdq_weights(quantized)
        return quantized, {"quantizer": "nncf.qat", "folded_weight_quantizers": folded["weights"],
                           "folded_batchnorms": folded["batchnorms"]}
    return qat_to_openvino(ctx.qat_model, ctx.example_input(1)), {"quantizer": "nncf.qat"}
