"""ONNX exporter: FP32 ``model.onnx`` from PyTorch and INT8 ``model_int8.onnx`` (explicit Q/DQ) from NNCF.

INT8 comes from the registered quantizer of ``quantize.method`` (:mod:`edgeslim.export.int8`): ``ptq`` quantizes the
FP32 graph in the target's INT8 scheme, ``accuracy_aware`` does so with layers kept in float under the val budget,
``qat`` exports the QAT-trained model of the export context (its quantizers become Q/DQ pairs).

The FP32 graph comes from ``torch.onnx.export(dynamo=True)`` (torch.export based; on this project's CPUs its
graph runs about 30% faster in onnxruntime than the TorchScript exporter's), written as one self-contained file
(``external_data=False``). If the dynamo path cannot trace the model, the TorchScript exporter (``dynamo=False``)
is tried; the path used is recorded in ``ModelFile.extra["exporter"]``.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..artifact import ModelFile
from ..errors import ExportError
from .base import EXPORTERS, ExportContext, Exporter

FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"


def _serialize(model: Any) -> bytes:
    return model.SerializeToString()


def _summary(exc: BaseException) -> str:
    """One informative line of a torch.onnx error (its "Exception summary" when present), without colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        rest = lines[lines.index("## Exception summary") + 1 :]
        if rest:
            return rest[0]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def torch_to_onnx(ctx: ExportContext) -> tuple[Any, str, list[str]]:
    """Export ``ctx.model`` to an in-memory ``onnx.ModelProto``.

    Returns:
        ``(model, path_used, notes)`` where ``path_used`` is ``"dynamo"`` or ``"torchscript"`` and ``notes`` holds
        why the dynamo path was abandoned, if it was.

    Raises:
        ExportError: both exporters failed; the message carries both errors.
    """
    import onnx
    import torch

    example = ctx.example_input()
    notes: list[str] = []
    try:
        # torch.onnx prints progress to stdout and, on failure, graph dumps to stderr; keep the caller's output
        # clean (the error itself is kept in the notes).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                ctx.model,
                (example,),
                dynamo=True,
                external_data=False,
                opset_version=ctx.opset,
                input_names=[ctx.input_name],
                output_names=[ctx.output_name],
                # A positional spec: the forward argument may have any name.
                dynamic_shapes=({0: torch.export.Dim("batch")},) if ctx.dynamic_batch else None,
                verbose=False,
            )
        if program is None:  # pragma: no cover - torch returns the program when dynamo=True
            raise ExportError("torch.onnx.export(dynamo=True) returned no program")
        model = program.model_proto
        # Round-trip through bytes: the proto must be self-contained (no external data) and parse back.
        model = onnx.load_from_string(model.SerializeToString())
        return model, "dynamo", notes
    except Exception as exc:
        notes.append(f"dynamo export failed: {_summary(exc)}")
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                ctx.model,
                (example,),
                buf,
                dynamo=False,
                opset_version=ctx.opset,
                input_names=[ctx.input_name],
                output_names=[ctx.output_name],
                dynamic_axes={ctx.input_name: {0: "batch"}, ctx.output_name: {0: "batch"}}
                if ctx.dynamic_batch
                else None,
                do_constant_folding=True,
            )
        return onnx.load_from_string(buf.getvalue()), "torchscript", notes
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed on both paths: {notes[0]}; TorchScript: {_summary(exc)}."
            " Make the model traceable (no data-dependent Python control flow) or export it yourself"
        ) from exc


def check_io(model: Any, ctx: ExportContext, what: str) -> None:
    """Raise :class:`ExportError` unless the graph has exactly the input ``input`` and output ``logits``."""
    ins = [i.name for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    outs = [o.name for o in model.graph.output]
    if ins != [ctx.input_name] or outs != [ctx.output_name]:
        raise ExportError(
            f"{what} has inputs {ins} and outputs {outs}; edgeslim artifacts need one input '{ctx.input_name}'"
            f" and one output '{ctx.output_name}' (a classifier returning one logits tensor)"
        )


def count_qdq(model: Any) -> int:
    """Number of QuantizeLinear + DequantizeLinear nodes in an ONNX graph."""
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _smoke_run(path: Path, ctx: ExportContext) -> None:
    # The file must load and run in onnxruntime CPU, the reference runtime for ONNX artifacts.
    from ..runtime import BACKENDS, BackendOptions

    backend_cls = BACKENDS.get("onnxruntime")
    batch = 1 if not ctx.dynamic_batch else 2
    with backend_cls(path, BackendOptions(device="cpu", threads=1)) as backend:
        out = backend.infer(ctx.example_input(batch).numpy())[ctx.output_name]
    if out.shape != (batch, ctx.num_classes):
        raise ExportError(f"{path.name} returns {list(out.shape)}; expected [{batch}, {ctx.num_classes}]")


@EXPORTERS.register("onnx")
class OnnxExporter(Exporter):
    """``model.onnx`` (FP32) and ``model_int8.onnx`` (INT8 with QuantizeLinear/DequantizeLinear)."""

    name = "onnx"
    precisions = ("fp32", "int8")

    def export(self, ctx: ExportContext) -> list[ModelFile]:
        import onnx

        existing = ctx.find("onnx", "fp32")
        if existing is not None and not ctx.wants("fp32"):
            # INT8 again from the FP32 file already in the artifact (the accuracy-control fallback re-runs INT8)
            model = onnx.load(str(ctx.directory / existing.path))
            return ctx.attempt(self.name, "int8", lambda: [self._int8(ctx, model)]) if ctx.wants("int8") else []
        model, path_used, notes = torch_to_onnx(ctx)
        check_io(model, ctx, "the exported ONNX graph")
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:
            raise ExportError(f"the exported ONNX graph is invalid: {exc}") from exc
        fp32_path = ctx.path(FP32_FILE)
        atomic_write_bytes(fp32_path, _serialize(model))
        _smoke_run(fp32_path, ctx)
        extra: dict[str, Any] = {"exporter": path_used, "opset": ctx.opset, "nodes": len(model.graph.node)}
        if notes:
            extra["notes"] = notes
        files = [ModelFile(format="onnx", precision="fp32", path=FP32_FILE, extra=extra)]
        if ctx.wants("int8"):
            # A failed INT8 is recorded and keeps the FP32 file.
            files += ctx.attempt(self.name, "int8", lambda: [self._int8(ctx, model)])
        return files

    def _int8(self, ctx: ExportContext, fp32: Any) -> ModelFile:
        import onnx

        from .int8 import quantize_graph

        quantized, extra = quantize_graph(ctx, "onnx", fp32)
        qdq = count_qdq(quantized)
        if qdq == 0:
            raise ExportError(
                "NNCF returned an ONNX graph without QuantizeLinear/DequantizeLinear nodes: nothing was quantized"
                " (is quantize.ignored_scope excluding every layer?)"
            )
        check_io(quantized, ctx, "the INT8 ONNX graph")
        try:
            onnx.checker.check_model(quantized)
        except Exception as exc:
            raise ExportError(f"the INT8 ONNX graph from NNCF is invalid: {exc}") from exc
        path = ctx.path(INT8_FILE)
        atomic_write_bytes(path, _serialize(quantized))
        _smoke_run(path, ctx)
        return ModelFile(format="onnx", precision="int8", path=INT8_FILE,
                         extra={**extra, "qdq_nodes": qdq, "opset": ctx.opset})
