"""The INT8 package: one verb, handlers found by (method, format), and a method spec every stage reads instead of
the method's name."""

from __future__ import annotations

import ast
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.errors import UnknownNameError
from edgeslim.hardware import int8_scheme
from edgeslim.quant import (
    HANDLERS,
    PTQ,
    QAT,
    QUANT_METHODS,
    AccuracyControlledPTQ,
    NoQuantization,
    handler_for,
    no_int8,
    post_training,
    quantize,
)
from edgeslim.testing import TinyNet

PACKAGE = Path(__file__).resolve().parents[2] / "edgeslim"


@pytest.fixture(scope="module")
def fp32_onnx():
    import onnx

    torch.manual_seed(0)
    model = TinyNet().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    return onnx.load_from_string(buf.getvalue())


def _batches(n=16, batch=8):
    x = np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)
    return [x[i : i + batch] for i in range(0, n, batch)]


def test_handlers_are_registered_by_method_and_format():
    for method in ("ptq", "accuracy_aware", "qat"):
        for fmt in ("onnx", "openvino"):
            assert f"{method}:{fmt}" in HANDLERS
    assert handler_for("post_training", "onnx") is handler_for("ptq", "onnx")  # an alias finds its method's handler
    with pytest.raises(UnknownNameError, match=r"'ptq:tensorrt'.*Known: .*ptq:onnx"):
        handler_for("ptq", "tensorrt")


def test_the_verb_takes_the_targets_scheme_and_matches_the_nncf_call(fp32_onnx):
    from edgeslim.quant.ptq import ptq_onnx

    cal = _batches()
    cfg = PTQ(calibration_size=12)
    q, extra = quantize(fp32_onnx, cfg, scheme="x86-avx2", calibration=cal)
    assert extra["quantizer"] == "nncf.ptq" and extra["int8_scheme"]["target"] == "x86-avx2"
    assert extra["calibration_samples"] == 12 and extra["preset"] == "performance"
    # the verb adds dispatch, not numerics: the same graph as the NNCF call it dispatches to
    direct = ptq_onnx(fp32_onnx, cal, cfg, scheme=int8_scheme("x86-avx2", "onnx"))
    assert q.SerializeToString() == direct.SerializeToString()
    # TensorRT's scheme turns the activations signed (zero point 0): the scheme is an input of the verb
    trt, extra = quantize(fp32_onnx, {"method": "ptq", "calibration_size": 12}, scheme=int8_scheme("jetson-agx-orin", "onnx"),
                          format="onnx", calibration=cal)
    assert extra["int8_scheme"]["signed_activations"]
    from onnx import numpy_helper

    zero_points = {i.name: numpy_helper.to_array(i) for i in trt.graph.initializer}
    acts = [n.input[2] for n in trt.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert acts and all(zero_points[z].dtype == np.int8 for z in acts if z in zero_points)


def test_no_quantization_makes_no_int8_file(fp32_onnx):
    from edgeslim.errors import ConfigError

    with pytest.raises(ConfigError, match="quantize.method is 'none'"):
        quantize(fp32_onnx, NoQuantization(), calibration=_batches())


def test_each_method_declares_what_the_stages_ask_of_it():
    assert not NoQuantization.makes_int8 and PTQ.makes_int8 and QAT.makes_int8
    assert PTQ.calibrates_graph and not QAT.calibrates_graph
    assert QAT.needs_training and not PTQ.needs_training and not AccuracyControlledPTQ.needs_training
    assert QAT().training_note() == "quantization-aware training: 1 epoch(s)"
    # the training hook is compress's (named, since the INT8 package sits below compress), the probe this package's
    from edgeslim.compress.qat import quantize_aware_train
    from edgeslim.quant.config import resolve_hook
    from edgeslim.quant.qat import check_qat_traceable

    assert resolve_hook(QAT.training_hook) is quantize_aware_train
    assert resolve_hook(QAT.training_check) is check_qat_traceable
    # an INT8 file that misses the budget is re-quantized with accuracy control, keeping the calibration options
    fb = PTQ(calibration_size=17, ignored_scope=["head"]).fallback()
    assert isinstance(fb, AccuracyControlledPTQ)
    assert (fb.calibration_size, fb.ignored_scope, fb.max_extra_critical_fn) == (17, ["head"], 0)
    assert isinstance(QAT().fallback(), AccuracyControlledPTQ)
    assert AccuracyControlledPTQ(max_drop=0.03).fallback() is None  # it already came from accuracy control
    # what a run that does not train again quantizes with (the search's candidates)
    assert isinstance(post_training(QAT(calibration_size=9), ignored_scope=["x"]), PTQ)
    kept = post_training(AccuracyControlledPTQ(max_drop=0.02), ignored_scope=["x"])
    assert isinstance(kept, AccuracyControlledPTQ) and kept.max_drop == 0.02 and kept.ignored_scope == ["x"]
    assert isinstance(no_int8(PTQ(ignored_scope=["x"])), NoQuantization)
    assert set(QUANT_METHODS.names()) >= {"none", "ptq", "accuracy_aware", "qat"}


def _compares_a_method_name(path: Path) -> list[str]:
    names = set(QUANT_METHODS.names())
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        reads_method = any(isinstance(n, ast.Attribute) and n.attr == "method" for p in parts for n in ast.walk(p))
        names_one = any(isinstance(n, ast.Constant) and n.value in names for p in parts for n in ast.walk(p))
        if reads_method and names_one:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return bad


def test_the_composer_and_export_never_branch_on_a_quantization_method_name():
    files = [PACKAGE / "pipeline.py", PACKAGE / "search" / "space.py", *sorted((PACKAGE / "export").glob("*.py"))]
    bad = [line for f in files for line in _compares_a_method_name(f)]
    assert not bad, "branches on a quantization method's name (ask the method's spec instead): " + ", ".join(bad)
    # the check can fail
    assert _compares_a_method_name(PACKAGE / "quant" / "ptq.py")  # its NNCF call refuses 'none' by name
