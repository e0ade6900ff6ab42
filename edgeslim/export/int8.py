"""INT8 for the exporters: the INT8 verb (:func:`edgeslim.quant.quantize`) run on a format's FP32 graph, with
everything the method needs taken from the export context.

Every exporter that writes INT8 calls one function and never switches on the method's name::

    quantized, extra = quantize_graph(ctx, "onnx", fp32_graph)

The method's config is ``ctx.quantize`` (``PTQ``, ``AccuracyControlledPTQ``, ``QAT``, ...); what its handler needs
beyond the graph is an :class:`~edgeslim.quant.Int8Job` built here from typed fields of the
:class:`~edgeslim.export.base.ExportContext`: the calibration batches, the target's INT8 scheme
(:func:`edgeslim.hardware.int8_scheme`), the QAT-trained model, the val split and the calibrated thresholds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..methods import QUANT_METHODS
from ..quant import Int8Job, quantize

if TYPE_CHECKING:  # pragma: no cover
    from .base import ExportContext

__all__ = ["QUANT_METHODS", "int8_job", "quantize_graph"]


def int8_job(ctx: "ExportContext", fmt: str) -> Int8Job:
    """The :class:`~edgeslim.quant.Int8Job` of a ``fmt`` file from the export context."""
    from .gate import own_thresholds

    m = ctx.manifest
    return Int8Job(
        calibration=ctx.calibration, scheme=ctx.int8_scheme(fmt), val_split=ctx.val_split,
        critical=list(m.critical) if m is not None else [], thresholds=dict(m.thresholds) if m is not None else {},
        rule=m.decision_rule if m is not None else "threshold", calibrate=own_thresholds(m), qat_model=ctx.qat_model,
        example_input=ctx.example_input, opset=ctx.opset, dynamic_batch=ctx.dynamic_batch,
        input_name=ctx.input_name, output_name=ctx.output_name,
    )


def quantize_graph(ctx: "ExportContext", fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
    """Quantize ``graph`` (format ``fmt``) with the context's quantization method for ``ctx.target``.

    Returns:
        ``(int8_graph, extra)``; ``extra`` records the quantizer, its settings and the INT8 scheme (the target the
        file is made for), and goes into the model file's manifest entry.
    """
    job = int8_job(ctx, fmt)
    return quantize(graph, ctx.quantize, scheme=job.scheme, format=fmt, job=job)
