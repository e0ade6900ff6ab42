"""QAT INT8 with NNCF: pruned weights stay zero, Q/DQ ONNX that onnxruntime runs, INT8 IR, resume, clear errors."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeslim.compress.qat import check_qat_traceable, quantize_aware_train
from edgeslim.compress.quantize import calibration_batches
from edgeslim.compress.api import compress
from edgeslim.errors import ConfigError, ExportError, TrainingError
from edgeslim.export.base import export_artifact
from edgeslim.recipe import QuantizeSection, ValidateSection
from edgeslim.testing import TinyNet

from _digits import CRITICAL, digits, manifest, recipe, sample_inputs

torch.set_num_threads(1)


def _qat_recipe(**quantize):
    r = recipe({"method": "one_shot", "sparsity": 0.5}, epochs=1, final_epochs=1)
    r.quantize = QuantizeSection(method="qat", calibration_size=64, **quantize)
    return r


@pytest.fixture(scope="module")
def pruned_and_qat(tmp_path_factory):
    """TinyNet one-shot pruned to 50% on 16x16 digits, then one epoch of QAT (shared by the export tests)."""
    data = digits()
    r = _qat_recipe(qat_epochs=1)
    torch.manual_seed(0)
    res = compress(TinyNet(10), data, r, run_dir=tmp_path_factory.mktemp("c"), progress=False)
    cal = calibration_batches(data.loader("train", batch_size=32, shuffle=True, seed=1), 64)
    q = quantize_aware_train(res.model, data, r, run_dir=tmp_path_factory.mktemp("q"), calibration=cal,
                             masks=res.masks, progress=False)
    return data, r, res, q, cal


def _zeros(model):
    return {n: int((m.weight == 0).sum()) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                              torch.nn.Linear))}


def test_qat_keeps_pruned_weights_exactly_zero_and_trains(pruned_and_qat):
    data, r, res, q, _ = pruned_and_qat
    before = _zeros(res.model)
    assert sum(before.values()) > 0
    after = _zeros(q.fp32_model)
    assert all(after[n] >= before[n] for n in before)  # every pruned weight is still exactly zero
    for name, mask in res.masks.state_dict().items():
        w = dict(q.fp32_model.named_modules())[name].weight
        assert torch.all(w[~mask.bool()] == 0)
    assert q.info["quantizers"] > 0 and q.best_epoch == 1
    assert [h["tag"] for h in q.history] == ["qat"]
    # a real fine-tuning ran: the float weights moved and the fake-quant model is a working classifier
    assert any(not torch.equal(a, b) for a, b in zip(res.model.state_dict().values(),
                                                     q.fp32_model.state_dict().values()))
    assert q.val_metrics.accuracy > 0.5


def test_qat_exports_qdq_onnx_for_onnxruntime_and_int8_openvino(pruned_and_qat, tmp_path):
    import onnxruntime as ort
    import openvino as ov

    data, r, res, q, cal = pruned_and_qat
    x, y = sample_inputs(data, 128)
    m = export_artifact(q.fp32_model, tmp_path / "art", manifest(data, "qat"), formats=["onnx", "openvino"],
                        precisions=("fp32", "int8"), calibration=cal, validation=(x, y), quantize_cfg=r.quantize,
                        validate_cfg=ValidateSection(int8_min_agreement=0.9), qat_model=q.model, strict=True)
    onnx_int8 = m.model("onnx", "int8")
    ov_int8 = m.model("openvino", "int8")
    assert onnx_int8.extra["quantizer"] == ov_int8.extra["quantizer"] == "nncf.qat"
    proto = onnx.load(str(tmp_path / "art" / onnx_int8.path))
    ops = [n.op_type for n in proto.graph.node]
    # one Q/DQ pair per activation quantizer; weights only have their DequantizeLinear (INT8 initializers)
    assert ops.count("QuantizeLinear") > 0
    assert ops.count("DequantizeLinear") == ops.count("QuantizeLinear") + onnx_int8.extra["folded_weight_quantizers"]
    assert "FakeQuantize" not in ops  # only standard ops: the form onnxruntime and TensorRT accept
    # weights are INT8 initializers behind DequantizeLinear (no run-time QuantizeLinear of a float weight) and the
    # BatchNorms are folded into the convs: what onnxruntime's QLinearConv fusion and TensorRT need
    inits = {t.name: t for t in proto.graph.initializer}
    assert "BatchNormalization" not in ops
    assert onnx_int8.extra["folded_batchnorms"] == 4 and onnx_int8.extra["folded_weight_quantizers"] == 5
    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            dq = next(d for d in proto.graph.node if n.input[1] in d.output)
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert not (n.op_type == "QuantizeLinear" and n.input[0] in inits)

    # the INT8 ONNX runs in onnxruntime CPU and computes what the trained fake-quant model computes
    sess = ort.InferenceSession(str(tmp_path / "art" / onnx_int8.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = q.model.eval()(torch.from_numpy(x)).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98
    assert (out.argmax(1) == y).mean() > 0.5

    # pruned weights are zero in the Q/DQ graph's weight initializers too (what TensorRT builds from)
    zeros_onnx = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in proto.graph.initializer if t.dims and
                     len(t.dims) in (2, 4))
    assert zeros_onnx >= sum(_zeros(res.model).values())

    core = ov.Core()
    ir = core.read_model(str(tmp_path / "art" / ov_int8.path))
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops()) > 0
    ov_out = core.compile_model(ir, "CPU")(x)[0]
    assert (ov_out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert m.validation["passed"]


def test_qat_export_without_a_trained_model_says_how_to_get_one(pruned_and_qat, tmp_path):
    data, r, res, q, cal = pruned_and_qat
    m = export_artifact(copy.deepcopy(res.model), tmp_path / "a", manifest(data), formats=["onnx"],
                        precisions=("fp32", "int8"), calibration=cal, quantize_cfg=r.quantize, strict=False)
    assert [f.precision for f in m.models if f.format == "onnx"] == ["fp32"]
    assert "quantize_aware_train" in m.validation["errors"][0]["error"]
    with pytest.raises(ExportError, match="no QAT-trained model"):
        export_artifact(copy.deepcopy(res.model), tmp_path / "b", manifest(data), formats=["onnx"],
                        precisions=("fp32", "int8"), calibration=cal, quantize_cfg=r.quantize, strict=True)


@pytest.mark.slow
def test_qat_resumes_to_the_uninterrupted_weights(tmp_path):
    data = digits()
    torch.manual_seed(0)
    base = TinyNet(10).eval()
    cal = calibration_batches(data.loader("train", batch_size=32, shuffle=True, seed=1), 32)
    two = _qat_recipe(qat_epochs=2)
    two.train.select = "last"
    full = quantize_aware_train(base, data, two, run_dir=tmp_path / "full", calibration=cal, progress=False)
    one = two.model_copy(deep=True)
    one.quantize.qat_epochs = 1
    quantize_aware_train(base, data, one, run_dir=tmp_path / "cut", calibration=cal, progress=False)  # "killed"
    resumed = quantize_aware_train(base, data, two, run_dir=tmp_path / "cut", calibration=cal, resume=True,
                                   progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_untraceable_models_fail_before_training_with_the_reason():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x, mask):
            return self.conv(x * mask).mean((2, 3))

    class DictOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return {"logits": self.conv(x).mean((2, 3))}

    with pytest.raises(TrainingError, match="NNCF cannot prepare TwoInputs.*missing a required argument"):
        check_qat_traceable(TwoInputs(), (1, 3, 16, 16))
    with pytest.raises(TrainingError, match="returns dict"):
        check_qat_traceable(DictOut(), (1, 3, 16, 16))
    check_qat_traceable(TinyNet(10).eval(), (1, 3, 16, 16))  # a plain classifier passes


def test_bad_quantize_options_are_config_errors_naming_the_valid_ones():
    from edgeslim.recipe import parse_recipe

    with pytest.raises(ConfigError, match="unknown quantization method 'qta'. Did you mean 'qat'.*accuracy_aware"):
        parse_recipe({"quantize": {"method": "qta"}})
    with pytest.raises(ConfigError, match="quantize.qat_epochs"):
        parse_recipe({"quantize": {"method": "qat", "qat_epochs": -1}})
    with pytest.raises(ConfigError, match="unknown key 'quantize.calib_size'.*calibration_size"):
        parse_recipe({"quantize": {"calib_size": 10}})


def test_distillation_needs_a_teacher():
    data = digits()
    r = _qat_recipe()
    r.distill.weight = 1.0
    with pytest.raises(ConfigError, match="teacher"):
        quantize_aware_train(TinyNet(10), data, r, run_dir="/nonexistent-not-used", calibration=[
            np.zeros((1, 3, 16, 16), np.float32)], progress=False)
    assert CRITICAL in data.critical


@pytest.mark.slow
def test_pipeline_chains_structured_pruning_into_qat_with_distillation(tmp_path):
    from edgeslim.pipeline import run_pipeline
    from edgeslim.recipe import parse_recipe

    r = parse_recipe({
        "seed": 0, "model": {"source": "tiny"}, "data": {"image_size": 16, "critical": [CRITICAL],
                                                         "imbalance": {str(CRITICAL): 0.25}},
        "loss": {"gamma": 2.0, "lambda": 1.0},
        "train": {"epochs": 1, "final_epochs": 1, "optimizer": "adamw", "lr": 0.003, "threads": 1},
        "prune": {"method": "structured", "ratio": 0.5},
        "quantize": {"method": "qat", "calibration_size": 64, "qat_epochs": 1},
        "distill": {"weight": 0.5}, "export": {"formats": ["onnx", "openvino"]},
        "validate": {"int8_min_agreement": 0.85},
    })
    res = run_pipeline(r, tmp_path / "out", progress=False, stages=("compress", "export"))
    m = res.manifests["compressed"]
    assert {(f.format, f.precision) for f in m.models} >= {("onnx", "int8"), ("openvino", "int8")}
    assert all(f.extra["quantizer"] == "nncf.qat" for f in m.models if f.precision == "int8")
    assert m.validation["passed"], m.validation
    # the narrower structure is what was quantized: the Q/DQ graph's last conv has the pruned width
    proto = onnx.load(str(tmp_path / "out" / "compressed" / m.model("onnx", "int8").path))
    widths = {t.dims[0] for t in proto.graph.initializer if len(t.dims) == 4}
    assert max(widths) == 16  # 32 channels of TinyNet's widest conv, halved
    assert res.metrics["compressed"]["params"] < res.metrics["dense"]["params"]
