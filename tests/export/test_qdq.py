"""fold_qdq_weights: INT8 weight initializers and BN folded into Q/DQ convs compute what the raw graph computes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeslim.export.qdq import fold_qdq_weights


def _graph(w: np.ndarray, gamma: np.ndarray, *, bias: bool, s_w: np.ndarray | None = None) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv(Q/DQ per-channel weight) -> BatchNormalization -> Relu, as NNCF's QAT export has it."""
    rng = np.random.default_rng(0)
    cout = w.shape[0]
    if s_w is None:
        s_w = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
    init = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.float32(0.05), "s_x"), numpy_helper.from_array(np.int8(0), "zp_x"),
        numpy_helper.from_array(s_w, "s_w"), numpy_helper.from_array(np.zeros(cout, np.int8), "zp_w"),
        numpy_helper.from_array(gamma.astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, cout).astype(np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s_x", "zp_x"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"]),
        helper.make_node("QuantizeLinear", ["W", "s_w", "zp_w"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "s_w", "zp_w"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"] + (["b"] if bias else []), ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["logits"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, cout, 8, 8])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_bn_folds_into_an_int8_weight_with_negative_gammas_and_computes_the_same():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    gamma = np.array([1.5, -0.7, 0.3, -2.0, 1.0, 0.9])
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    for bias in (False, True):
        raw = _graph(w, gamma, bias=bias)
        folded, counts = fold_qdq_weights(copy.deepcopy(raw))
        onnx.checker.check_model(folded)
        assert counts == {"weights": 1, "batchnorms": 1}
        ops = [n.op_type for n in folded.graph.node]
        assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") == 1  # the activation's only
        inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
        assert "W" not in inits  # the float weight is gone, an INT8 one took its place
        conv = next(n for n in folded.graph.node if n.op_type == "Conv")
        dq = next(n for n in folded.graph.node if conv.input[1] in n.output)
        q = inits[dq.input[0]]
        assert q.dtype == np.int8 and q.shape == w.shape and (inits[dq.input[1]] > 0).all()
        np.testing.assert_allclose(_run(folded, x), _run(raw, x), rtol=1e-5, atol=1e-5)


def test_a_sign_flip_that_would_overflow_keeps_the_batchnorm():
    w = np.random.default_rng(2).standard_normal((2, 3, 3, 3)).astype(np.float32)
    s_w = (np.abs(w).reshape(2, -1).max(1) / 127).astype(np.float32)
    w[1, 0, 0, 0] = -np.abs(w[1]).max() * 1.01  # quantizes to -128 (saturated), in the channel with gamma < 0
    raw = _graph(w, np.array([1.0, -1.0]), bias=False, s_w=s_w)
    folded, counts = fold_qdq_weights(copy.deepcopy(raw))
    assert counts == {"weights": 1, "batchnorms": 0}
    assert "BatchNormalization" in [n.op_type for n in folded.graph.node]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(raw, x), rtol=1e-5, atol=1e-5)


def test_a_conv_bias_computed_at_run_time_keeps_the_batchnorm_and_still_gets_an_int8_weight():
    w = np.random.default_rng(4).standard_normal((4, 3, 3, 3)).astype(np.float32)
    raw = _graph(w, np.array([1.0, -0.5, 2.0, 0.7]), bias=True)
    conv = next(n for n in raw.graph.node if n.op_type == "Conv")
    raw.graph.node.insert(0, helper.make_node("Abs", ["b"], ["b_runtime"]))  # not a constant the fold can read
    conv.input[2] = "b_runtime"
    folded, counts = fold_qdq_weights(copy.deepcopy(raw))
    assert counts == {"weights": 1, "batchnorms": 0}
    assert "BatchNormalization" in [n.op_type for n in folded.graph.node]
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(raw, x), rtol=1e-5, atol=1e-5)
