"""The ONNX exporter: FP32 parity with PyTorch, dynamic/static batch, INT8 Q/DQ, zeros kept, TorchScript fallback."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeslim.errors import ExportError, InputError
from edgeslim.export import EXPORTERS
from edgeslim.export.base import onnx_weight_sparsity, torch_weight_sparsity
from edgeslim.export.onnx import count_qdq
from edgeslim.recipe import QuantizeSection
from edgeslim.runtime import BACKENDS, BackendOptions
from export_testlib import context

torch.set_num_threads(1)


def _ort(path):
    return BACKENDS.get("onnxruntime")(path, BackendOptions(threads=1))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """FP32 + INT8 ONNX of the trained TinyNet, dynamic batch."""
    d = tmp_path_factory.mktemp("onnx")
    ctx = context(trained.model, d, precisions=("fp32", "int8"), calibration=trained.calibration(),
                  quantize=QuantizeSection(calibration_size=64))
    files = EXPORTERS.get("onnx")().export(ctx)
    return d, {f.precision: f for f in files}, ctx


def test_fp32_matches_pytorch_at_batch_1_and_5(trained, exported):
    d, files, _ = exported
    f = files["fp32"]
    assert f.path == "model.onnx" and f.extra["exporter"] == "dynamo"
    with _ort(d / f.path) as b:
        assert [(t.name, t.shape) for t in b.inputs] == [("input", (-1, 3, 16, 16))]
        assert [(t.name, t.shape) for t in b.outputs] == [("logits", (-1, 10))]
        for n in (1, 5):
            x = trained.test_x[:n]
            got = b.infer(x)["logits"]
            assert got.shape == (n, 10)
            assert np.abs(got - trained.reference(x)).max() < 1e-4


def test_fp32_is_one_self_contained_file(exported):
    d, files, _ = exported
    model = onnx.load(str(d / files["fp32"].path), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert sorted(p.name for p in d.iterdir()) == ["model.onnx", "model_int8.onnx"]
    onnx.checker.check_model(model)


def test_int8_has_qdq_nodes_runs_and_agrees(trained, exported):
    d, files, _ = exported
    f = files["int8"]
    assert f.path == "model_int8.onnx" and f.extra["calibration_samples"] == 64
    model = onnx.load(str(d / f.path))
    assert count_qdq(model) == f.extra["qdq_nodes"] > 0
    with _ort(d / f.path) as b:
        got = b.infer(trained.test_x)["logits"]
    ref = trained.reference(trained.test_x)
    agreement = (got.argmax(1) == ref.argmax(1)).mean()
    assert agreement >= 0.85  # TinyNet INT8 agrees 0.90-0.94 (small margins); see test_validate.py
    assert np.abs(got - ref).max() > 1e-6  # it is really quantized, not the FP32 graph again


def test_static_batch_fixes_the_batch_dimension(trained, tmp_path):
    ctx = context(trained.model, tmp_path, dynamic_batch=False)
    (f,) = EXPORTERS.get("onnx")().export(ctx)
    with _ort(tmp_path / f.path) as b:
        assert b.inputs[0].shape == (1, 3, 16, 16)
        x = trained.test_x[:1]
        assert np.abs(b.infer(x)["logits"] - trained.reference(x)).max() < 1e-4
        with pytest.raises(InputError, match="shape"):
            b.infer(trained.test_x[:2])


def test_pruned_zeros_stay_exactly_zero(trained, tmp_path):
    import copy

    model = copy.deepcopy(trained.model)
    with torch.no_grad():
        model.blocks[3].weight[::2] = 0  # half the pointwise filters
        model.blocks[6].weight[:, :5] = 0  # some input channels of the 3x3 conv
        model.classifier.weight[3] = 0
    before = torch_weight_sparsity(model)
    assert before["zeros"] > 0
    (f,) = EXPORTERS.get("onnx")().export(context(model, tmp_path))
    after = onnx_weight_sparsity(tmp_path / f.path)
    # BatchNorm is folded into the conv weights (a per-channel scale), which keeps every zero at zero.
    assert after["zeros"] == before["zeros"] and after["total"] == before["total"]
    assert after["layers"]["blocks.3.weight"] == before["layers"]["blocks.3"] == 0.5


class _DataDependent(torch.nn.Module):
    """A branch on a tensor value: torch.export cannot trace it, the TorchScript tracer records one path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if y.sum() > -1e9:
            y = y * 2
        return self.fc(y)


def test_falls_back_to_torchscript_and_says_so(tmp_path):
    model = _DataDependent().eval()
    (f,) = EXPORTERS.get("onnx")().export(context(model, tmp_path))
    assert f.extra["exporter"] == "torchscript"
    assert "dynamo export failed" in f.extra["notes"][0] and "data-dependent" in f.extra["notes"][0]
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with _ort(tmp_path / f.path) as b, torch.inference_mode():
        assert np.abs(b.infer(x)["logits"] - model(torch.from_numpy(x)).numpy()).max() < 1e-4


def test_int8_failure_keeps_fp32_and_is_recorded(trained, tmp_path):
    ctx = context(trained.model, tmp_path, precisions=("fp32", "int8"), calibration=trained.calibration(16),
                  quantize=QuantizeSection(ignored_scope=["no_such_layer"]))
    files = EXPORTERS.get("onnx")().export(ctx)
    assert [f.precision for f in files] == ["fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    (err,) = ctx.errors
    assert err["exporter"] == "onnx" and err["precision"] == "int8" and "no_such_layer" in err["error"]


def test_a_model_with_two_outputs_is_refused(tmp_path):
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 10)

        def forward(self, x):
            y = self.fc(x.mean((2, 3)))
            return y, y.softmax(1)

    with pytest.raises(ExportError, match="one output 'logits'"):
        EXPORTERS.get("onnx")().export(context(TwoHeads().eval(), tmp_path))
