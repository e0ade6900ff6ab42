"""The INT8 verb: ``quantize(graph, config, scheme=...)`` runs a quantization method on one format's FP32 graph."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..methods import QUANT_METHODS
from .config import Int8Job, QuantizeConfig, parse_quantize

if TYPE_CHECKING:  # pragma: no cover
    from ..hardware import Int8Scheme

__all__ = ["graph_format", "quantize"]


def graph_format(graph: Any) -> str:
    """``onnx`` for an ``onnx.ModelProto``, ``openvino`` for an ``openvino.Model`` (what the handlers take)."""
    if hasattr(graph, "graph") and hasattr(graph, "SerializeToString"):
        return "onnx"
    if hasattr(graph, "get_ordered_ops"):
        return "openvino"
    raise TypeError(f"cannot tell the format of a {type(graph).__name__}; pass quantize(..., format='onnx')")


def quantize(model_or_graph: Any, config: QuantizeConfig | dict[str, Any] | None = None, *,
             scheme: "Int8Scheme | str" = "auto", format: str | None = None, job: Int8Job | None = None,
             **job_fields: Any) -> tuple[Any, dict[str, Any]]:
    """Make the INT8 version of one format's FP32 graph with a quantization method, in a target's INT8 scheme.

    The method's handler is found by (method, format) in the registries (:data:`~edgeslim.methods.QUANT_METHODS`,
    :data:`~edgeslim.quant.handlers.HANDLERS`); nothing here switches on the method's name.

    Args:
        model_or_graph: the FP32 ``onnx.ModelProto`` or ``openvino.Model`` (a QAT method exports its trained model,
            ``qat_model=``, instead).
        config: the method's config (``PTQ()``, ``AccuracyControlledPTQ(max_drop=0.02)``, ...) or its data
            (``{"method": "qat"}``); default PTQ.
        scheme: the target's INT8 scheme (:func:`edgeslim.hardware.int8_scheme`), or a target name it is derived
            from for this format (``auto``: this host).
        format: ``onnx`` or ``openvino`` (default: told from the graph).
        job: what the method needs beyond the graph (:class:`~edgeslim.quant.Int8Job`); or give its fields as
            keywords (``calibration=``, ``val_split=``, ``critical=``, ``thresholds=``, ``qat_model=``, ...).

    Returns:
        ``(int8_graph, extra)``; ``extra`` records the quantizer, its settings and the INT8 scheme (the target the
        file is made for), as a model file's manifest entry does.
    """
    cfg = parse_quantize(config)
    fmt = format or graph_format(model_or_graph)
    if isinstance(scheme, str):
        from ..hardware import int8_scheme

        resolved = job.scheme if job is not None and scheme == "auto" else int8_scheme(scheme, fmt)
    else:
        resolved = scheme
    if job is None:
        job = Int8Job(calibration=job_fields.pop("calibration", None), scheme=resolved, **job_fields)
    else:
        job = dataclasses.replace(job, scheme=resolved, **job_fields)
    quantized, extra = QUANT_METHODS.handler(cfg)(cfg, job, fmt, model_or_graph)
    extra = {**extra, "int8_scheme": job.scheme.to_dict()}
    if cfg.calibrates_graph:
        cal = job.calibration or []
        extra.update(calibration_samples=min(cfg.calibration_size, sum(len(b) for b in cal)), preset=cfg.preset,
                     fast_bias_correction=cfg.fast_bias_correction, ignored_scope=list(cfg.ignored_scope))
    return quantized, extra
