"""N:M (2:4) semi-structured sparsity: TensorRT's group layout, masks kept through fine-tuning and export, and
the ONNX checker on a really exported model and on hand-built Gemm/MatMul graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeslim.compress.prune.nm import check_nm_onnx, nm_mask, nm_violations
from edgeslim.compress.api import compress
from edgeslim.errors import ConfigError
from edgeslim.export.base import export_artifact
from edgeslim.testing import TinyNet

from _digits import digits as _digits, manifest, recipe, sample_inputs

torch.set_num_threads(1)


def _trt_ok(w: torch.Tensor, n=2, m=4) -> bool:
    """TensorRT developer guide's own statement of the rule for a [K, C, R, S] conv weight."""
    k_, c_, r_, s_ = w.shape
    return all(int((w[k, c * m:(c + 1) * m, r, s] != 0).sum()) <= n
               for k in range(k_) for c in range(c_ // m) for r in range(r_) for s in range(s_))


def test_conv_groups_run_along_input_channels_per_output_channel_and_kernel_position():
    torch.manual_seed(0)
    w = torch.randn(6, 8, 3, 3)
    mask = nm_mask(w)
    assert _trt_ok(w * mask) and not _trt_ok(w)
    assert mask.sum().item() == w.numel() // 2
    # the kept two are the largest magnitudes of their group
    grp = w[2, 4:8, 1, 2].abs()
    assert set(mask[2, 4:8, 1, 2].nonzero().flatten().tolist()) == set(grp.argsort(descending=True)[:2].tolist())
    # grouping the flattened C*R*S row instead would break TensorRT's rule
    flat = w.reshape(6, -1)
    wrong = torch.zeros_like(flat, dtype=torch.bool)
    wrong.view(-1, 4).scatter_(1, flat.abs().view(-1, 4).argsort(1, descending=True)[:, :2], True)
    assert not _trt_ok(w * wrong.view_as(w))
    lin = torch.randn(3, 12)
    assert nm_violations(lin * nm_mask(lin, 1, 4)) == (0, 9) and nm_violations(lin)[0] == 9
    with pytest.raises(ConfigError, match="multiple of 4"):
        nm_mask(torch.randn(4, 6))
    with pytest.raises(ConfigError, match="n < m"):
        nm_mask(lin, 4, 4)
    with pytest.raises(ConfigError, match="n must be < m"):
        recipe({"method": "nm", "n": 4, "m": 4})


def _gemm_model(path, b: np.ndarray, trans_b: int, matmul: np.ndarray):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [helper.make_node("Gemm", ["x", "B"], ["h"], name="gemm", transB=trans_b),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="matmul")]
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(b, "B"), numpy_helper.from_array(matmul, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_checker_respects_gemm_transb_and_matmul_layout(tmp_path):
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_normal((8, 8)).astype(np.float32))  # torch layout [out, in]
    sparse = (w * nm_mask(w)).numpy()
    _gemm_model(tmp_path / "t1.onnx", sparse, 1, sparse.T.copy())  # transB=1: B is [out, in]; MatMul W is [in, out]
    rep = check_nm_onnx(tmp_path / "t1.onnx")
    assert rep["ok"] and rep["sparse"] == ["B", "W"] and [r["axis"] for r in rep["layers"]] == [1, 0]
    _gemm_model(tmp_path / "t0.onnx", sparse.T.copy(), 0, sparse)  # transB=0: B is [in, out]; W in torch layout
    rep = check_nm_onnx(tmp_path / "t0.onnx", required=["B", "W"])
    assert rep["sparse"] == ["B"] and rep["dense"] == ["W"] and not rep["ok"]
    assert rep["layers"][1]["violations"] > 0


@pytest.fixture(scope="module")
def data():
    return _digits()


@pytest.fixture(scope="module")
def nm_result(data, tmp_path_factory):
    torch.manual_seed(0)
    return compress(TinyNet(num_classes=10), data, recipe({"method": "nm"}, epochs=1, final_epochs=1),
                    run_dir=tmp_path_factory.mktemp("nm"), progress=False)


def test_nm_fine_tunes_keeps_the_pattern_and_exports_it(data, nm_result, tmp_path):
    res = nm_result
    assert res.info["layers"] == ["blocks.3", "blocks.6"]
    assert [s["name"] for s in res.info["skipped"]] == ["blocks.0"] and "depthwise" in res.info["skipped"][0]["reason"]
    for name in res.info["layers"]:
        w = res.model.get_submodule(name).weight.detach()
        assert nm_violations(w)[0] == 0 and _trt_ok(w) and (w != 0).sum().item() == w.numel() // 2
    assert res.metrics.accuracy > 0.3

    x, y = sample_inputs(data)
    m = export_artifact(res.model, tmp_path / "art", manifest(data), formats=["onnx"], precisions=("fp32",),
                        validation=(x, y))
    rep = check_nm_onnx(tmp_path / "art" / m.model("onnx", "fp32").path)
    shapes = {tuple(r["shape"]): r for r in rep["layers"]}
    assert shapes[(32, 16, 1, 1)]["sparse"] and shapes[(32, 32, 3, 3)]["sparse"]  # blocks.3, blocks.6
    assert len(rep["sparse"]) == 2 and len(rep["dense"]) == 1  # the dense classifier [10, 32]
    assert sorted(tuple(s["shape"]) for s in rep["skipped"]) == [(16, 1, 3, 3), (16, 3, 3, 3)]
    assert check_nm_onnx(tmp_path / "art" / m.model("onnx", "fp32").path, required=rep["sparse"])["ok"]


def test_the_int8_qdq_onnx_tensorrt_builds_from_keeps_the_pattern(data, nm_result, tmp_path):
    from edgeslim.compress.quantize import calibration_batches
    from edgeslim.recipe import QuantizeSection

    # no accuracy validation here (a 2-epoch TinyNet loses top-1 agreement in INT8): the pattern is the point
    m = export_artifact(nm_result.model, tmp_path / "art", manifest(data), formats=["onnx"],
                        precisions=("fp32", "int8"),
                        calibration=calibration_batches(data.loader("train", batch_size=32), 64),
                        quantize_cfg=QuantizeSection(calibration_size=64))
    rep = check_nm_onnx(tmp_path / "art" / m.model("onnx", "int8").path)
    # weights reached through DequantizeLinear are checked on their int8 initializers
    assert sorted(tuple(r["shape"]) for r in rep["layers"] if r["sparse"]) == [(32, 16, 1, 1), (32, 32, 3, 3)]
    assert rep["ok"] and len(rep["dense"]) == 1


def test_nm_without_any_eligible_layer_is_an_error_before_training(data, tmp_path):
    class Odd(TinyNet):  # every masked layer has an input width that is not a multiple of 4
        def __init__(self):
            super().__init__(num_classes=10, width=5)  # inputs 1 (depthwise), 5, 10

    with pytest.raises(ConfigError, match="no prunable layer can take 2:4"):
        compress(Odd(), data, recipe({"method": "nm"}), run_dir=tmp_path, progress=False)
    assert not (tmp_path / "compress" / "dense").exists()
