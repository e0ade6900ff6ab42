"""Bad model files (issue 4): an unsupported operator, a truncated file, a missing file or IR weights. Each is one
BackendError that names the file and says what to do, from every CPU backend that reads the format."""

from __future__ import annotations

import shutil

import pytest

from edgeslim.errors import BackendError, EdgeslimError
from edgeslim.runtime import BACKENDS

ONNX_BACKENDS = ["onnxruntime", "openvino"]  # OpenVINO reads .onnx files too


@pytest.fixture(scope="module")
def unsupported_op(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FancyOp", ["input"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path_factory.mktemp("bad") / "fancy.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_unsupported_operator_is_named_with_the_file_and_the_fix(backend, unsupported_op):
    with pytest.raises(BackendError) as info:
        BACKENDS.get(backend)(unsupported_op)
    msg = str(info.value)
    assert str(unsupported_op) in msg and "FancyOp" in msg
    assert "Re-export" in msg and "another backend" in msg


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_truncated_onnx_says_corrupt_and_how_to_check(backend, tiny_models, tmp_path):
    data = tiny_models.onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError) as info:
        BACKENDS.get(backend)(cut)
    msg = str(info.value)
    assert str(cut) in msg and "truncated or corrupt" in msg and "verify=True" in msg


@pytest.mark.parametrize("backend,suffix,target", [("onnxruntime", ".onnx", "onnx"), ("openvino", ".xml", "openvino")])
def test_missing_file_names_it_and_the_export_command(backend, suffix, target, tmp_path):
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(BackendError) as info:
        BACKENDS.get(backend)(path)
    msg = str(info.value)
    assert str(path) in msg and "does not exist" in msg and f"--to {target}" in msg


def test_ir_without_its_weights_names_the_bin(tiny_models, tmp_path):
    xml = tmp_path / "model.xml"
    shutil.copy(tiny_models.openvino, xml)
    with pytest.raises(BackendError, match=r"model\.xml has no weights file model\.bin beside it"):
        BACKENDS.get("openvino")(xml)


def test_every_error_is_an_edgeslim_error(unsupported_op):
    # the CLI turns EdgeslimError into one red line; a raw onnxruntime exception would be a traceback
    with pytest.raises(EdgeslimError):
        BACKENDS.get("onnxruntime")(unsupported_op)
