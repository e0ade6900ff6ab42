"""OpenVINO exporter: IR files ``openvino/model.xml`` (FP32), ``openvino_fp16/`` and ``openvino_int8/`` (NNCF).

The model is converted from the FP32 ONNX file an earlier ``onnx`` exporter wrote (the same graph every other
format starts from), or straight from PyTorch with an example input when no ONNX was exported. ``ov.save_model``
compresses weights to FP16 unless told not to (max |logit diff| about 1e-2 on EfficientNet-Lite0), so the FP32
IR is saved with ``compress_to_fp16=False`` and FP16 is its own, explicit precision.
"""

from __future__ import annotations

from typing import Any

from ..artifact import ModelFile
from ..errors import ExportError
from .base import EXPORTERS, ExportContext, Exporter

DIRS = {"fp32": "openvino", "fp16": "openvino_fp16", "int8": "openvino_int8"}


def _name_ports(model: Any, ctx: ExportContext) -> None:
    # Models converted from PyTorch have unnamed ports; the artifact contract is input 'input', output 'logits'.
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"the OpenVINO model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; expected one each"
        )
    model.inputs[0].get_tensor().set_names({ctx.input_name})
    model.outputs[0].get_tensor().set_names({ctx.output_name})


def to_openvino(ctx: ExportContext) -> tuple[Any, str]:
    """Convert the model to an ``ov.Model`` with the context's batch shape; returns ``(model, source)``."""
    import openvino as ov

    onnx_file = ctx.find("onnx", "fp32")
    try:
        if onnx_file is not None:
            model, source = ov.convert_model(str(ctx.directory / onnx_file.path)), onnx_file.path
        else:
            import warnings

            import torch

            # convert_model traces with torch.jit, which warns that it is deprecated on every call.
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = ov.convert_model(ctx.model, example_input=ctx.example_input())
            source = "torch"
    except Exception as exc:
        raise ExportError(f"openvino.convert_model failed on {'the ONNX file' if onnx_file else 'the torch model'}: {exc}") from exc
    _name_ports(model, ctx)
    model.reshape({model.inputs[0]: ov.PartialShape(ctx.input_dims())})
    return model, source


@EXPORTERS.register("openvino", aliases=("ov",))
class OpenVINOExporter(Exporter):
    """OpenVINO IR in FP32, FP16 (weights compressed) and INT8 (NNCF PTQ on the FP32 model)."""

    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    after = ("onnx",)

    def export(self, ctx: ExportContext) -> list[ModelFile]:
        import openvino as ov

        model, source = to_openvino(ctx)
        extra = {"source": source, "openvino": ov.__version__}
        files: list[ModelFile] = []

        def save(m: Any, precision: str, **more: Any) -> list[ModelFile]:
            rel = f"{DIRS[precision]}/model.xml"
            ov.save_model(m, str(ctx.path(rel)), compress_to_fp16=(precision == "fp16"))
            return [ModelFile(format="openvino", precision=precision, path=rel, extra={**extra, **more})]

        if ctx.wants("fp32"):
            files += ctx.attempt(self.name, "fp32", lambda: save(model, "fp32"))
        if ctx.wants("fp16"):
            files += ctx.attempt(self.name, "fp16", lambda: save(model, "fp16"))
        if ctx.wants("int8"):
            files += ctx.attempt(self.name, "int8", lambda: self._int8(ctx, model, save))
        return files

    def _int8(self, ctx: ExportContext, model: Any, save: Any) -> list[ModelFile]:
        import openvino as ov

        from .int8 import quantize_graph

        # nncf works on a copy: the FP32 model stays as it is.
        quantized, extra = quantize_graph(ctx, "openvino", model)
        if extra.get("quantizer") == "nncf.qat":
            _name_ports(quantized, ctx)
            quantized.reshape({quantized.inputs[0]: ov.PartialShape(ctx.input_dims())})
        fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
        if fq == 0:
            raise ExportError("NNCF returned an OpenVINO model without FakeQuantize nodes: nothing was quantized")
        return save(quantized, "int8", fake_quantize_nodes=fq, **extra)
