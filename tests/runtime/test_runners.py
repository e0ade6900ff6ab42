"""What the runners declare, read back as the tables other stages used to copy, and runners on in-memory models."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim import runtime
from edgeslim.errors import BackendError, ConfigError, UnknownNameError
from edgeslim.runtime import BACKENDS, BackendOptions


def test_the_format_tables_come_from_the_runners():
    from edgeslim.export.triton import TARGETS
    from edgeslim.export.validate import DEFAULT_BACKENDS
    from edgeslim.search.space import _FORMATS, export_formats

    # the tables each stage kept before, now answered by the runners
    assert {f: DEFAULT_BACKENDS[f] for f in ("onnx", "openvino", "tensorrt")} == {
        "onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
    assert {b: runtime.file_format(b) for b in ("openvino", "onnxruntime", "tensorrt", "torch")} == {
        "openvino": "openvino", "onnxruntime": "onnx", "tensorrt": "tensorrt", "torch": "torch"}
    assert dict(_FORMATS) == {"openvino": ["onnx", "openvino"], "onnxruntime": ["onnx"],
                              "tensorrt": ["onnx", "tensorrt"], "torch": []}
    assert export_formats("ov") == ["onnx", "openvino"]  # aliases resolve
    assert {f: (t.platform, t.backend, t.filename, t.kind) for f, t in TARGETS.items()} == {
        "onnx": ("onnxruntime_onnx", "onnxruntime", "model.onnx", "KIND_AUTO"),
        "openvino": (None, "openvino", "model.xml", "KIND_CPU"),
        "tensorrt": ("tensorrt_plan", "tensorrt", "model.plan", "KIND_GPU"),
    }
    from edgeslim.devices.profiler import THROUGHPUT_OPTIONS

    assert dict(THROUGHPUT_OPTIONS) == {"openvino": {"hint": "THROUGHPUT"}}
    assert runtime.runner_for_format("onnx") is BACKENDS.get("onnxruntime")
    with pytest.raises(ConfigError, match="no runtime backend runs model format 'onx'.*Did you mean 'onnx'"):
        runtime.runner_for_format("onx")
    with pytest.raises(UnknownNameError, match="Did you mean 'openvino'"):
        runtime.formats_of("openvin")


def test_each_runner_classifies_its_own_layer_rows():
    ov, ort, trt = (BACKENDS.get(n) for n in ("openvino", "onnxruntime", "tensorrt"))
    assert ov.classify_layer({"exec": "brgconv_avx512_dw_f32", "type": "Convolution"}) == "dw"
    assert ov.classify_layer({"exec": "jit_avx512_1x1_f32", "type": "Convolution"}) == "pw"
    assert ov.classify_layer({"exec": "brgemm_avx512", "type": "FullyConnected"}) == "fc"
    assert ort.classify_layer({"type": "QLinearConv", "name": "c"}) == "conv"
    assert ort.classify_layer({"type": "Gemm", "name": "g"}) == "fc"
    assert trt.classify_layer({"name": "/features.0/Conv + /features.0/Relu"}) == "conv"
    assert BACKENDS.get("torch").classify_layer({"name": "x", "type": "Conv"}) == "other"
    assert ov.has_layer_times() and ort.has_layer_times() and not BACKENDS.get("torch").has_layer_times()


@pytest.fixture(scope="module")
def onnx_proto(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, 8, 8), buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(buf.getvalue())
    return onnx.load_from_string(buf.getvalue()), path


def test_onnx_in_memory_runs_as_the_file_does(onnx_proto):
    pytest.importorskip("onnxruntime")
    proto, path = onnx_proto
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with BACKENDS.get("onnxruntime")(path) as from_file:
        want = from_file.infer(x)["logits"]
    runner = runtime.from_model(proto, BackendOptions(device="cpu"), onnxruntime={"log_severity_level": 3})
    assert type(runner) is BACKENDS.get("onnxruntime") and runner.providers == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(runner.infer(x)["logits"], want)
    assert runner.layer_times(x, runs=2)  # the profiling copy is made from the in-memory model too
    # a session compiled elsewhere (what NNCF hands its validation function) runs as it is
    adopted = runtime.from_model(runner._session)
    np.testing.assert_array_equal(adopted.infer(x)["logits"], want)
    with pytest.raises(BackendError, match="compiled elsewhere"):
        adopted.layer_times(x, runs=1)


def test_openvino_in_memory_runs_as_the_file_does(onnx_proto):
    ov = pytest.importorskip("openvino")
    _, path = onnx_proto
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with BACKENDS.get("openvino")(path) as from_file:
        want = from_file.infer(x)["logits"]
    model = ov.Core().read_model(str(path))
    runner = runtime.from_model(model)
    assert type(runner) is BACKENDS.get("openvino")
    np.testing.assert_array_equal(runner.infer(x)["logits"], want)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    adopted = runtime.from_model(compiled)
    np.testing.assert_allclose(adopted.infer(x)["logits"], want, rtol=1e-5, atol=1e-5)
    runner.close()
    adopted.close()


def test_an_object_no_runner_runs_is_refused():
    with pytest.raises(BackendError, match="no runtime backend runs a builtins.dict in memory"):
        runtime.from_model({"weights": 1})
    with pytest.raises(BackendError, match="does not run a builtins.str in memory"):
        BACKENDS.get("openvino").from_model("model.xml")
