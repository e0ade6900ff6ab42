"""Every registered backend passes the conformance suite; backend-specific behaviour below it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from backend_conformance import NUM_CLASSES, BackendConformance

from edgeslim.errors import BackendError, ConfigError, MissingDependencyError
from edgeslim.runtime import BACKENDS, BackendOptions


class TestOnnxRuntime(BackendConformance):
    backend_name = "onnxruntime"

    @pytest.fixture
    def model_path(self, tiny_models):
        return tiny_models.onnx


class TestOnnxRuntimeStaticBatch(BackendConformance):
    backend_name = "onnxruntime"
    dynamic_batch = False

    @pytest.fixture
    def model_path(self, tiny_models):
        return tiny_models.onnx_static


class TestOpenVINO(BackendConformance):
    backend_name = "openvino"

    @pytest.fixture
    def model_path(self, tiny_models):
        return tiny_models.openvino


class TestTorch(BackendConformance):
    backend_name = "torch"
    atol = 0.0  # same code, same weights: bit-identical
    layer_profiler = False  # torch.profiler is not read: layer_times says so

    @pytest.fixture
    def model_path(self, tiny_models):
        return tiny_models.safetensors

    @pytest.fixture
    def options(self):
        return BackendOptions(
            threads=1, extra={"arch": "tiny", "num_classes": NUM_CLASSES, "input_shape": [-1, 3, 16, 16]}
        )


@pytest.mark.tensorrt
class TestTensorRT(BackendConformance):
    backend_name = "tensorrt"
    atol = 1e-3  # TF32 / kernel selection on the GPU

    @pytest.fixture
    def model_path(self, tiny_models, tmp_path):
        from edgeslim.export.tensorrt import EngineSettings, build_engine

        plan = tmp_path / "model.plan"
        build_engine(tiny_models.onnx, plan, EngineSettings(min_batch=1, opt_batch=4, max_batch=8))
        return plan

    @pytest.fixture
    def options(self):
        return BackendOptions(device="cuda", threads=1)

    def test_batch_outside_profile_is_refused(self, runner):
        from edgeslim.errors import InputError

        assert runner.batch_range() == (1, 8)
        with pytest.raises(InputError, match="optimisation profile"):
            runner.infer(np.zeros((9, 3, 16, 16), np.float32))


def test_every_registered_backend_has_a_conformance_test():
    tested = {cls.backend_name for cls in _all_subclasses(BackendConformance)}
    untested = sorted(set(BACKENDS.names()) - tested)
    assert not untested, f"backends without a BackendConformance subclass: {untested}"


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


# -- onnxruntime ----------------------------------------------------------------------------------------------
def test_onnxruntime_unavailable_provider_lists_available(tiny_models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendError) as info:
        BACKENDS.get("onnxruntime")(tiny_models.onnx, BackendOptions(device="cuda"))
    msg = str(info.value)
    assert "CUDAExecutionProvider" in msg
    assert all(p in msg for p in ort.get_available_providers())


def test_onnxruntime_providers_by_short_name_and_session_options(tiny_models):
    opts = BackendOptions(threads=1, extra={"providers": ["cpu"], "graph_optimization": "basic"})
    with BACKENDS.get("onnxruntime")(tiny_models.onnx, opts) as b:
        assert b.providers == ["CPUExecutionProvider"]
        assert b._session.get_session_options().intra_op_num_threads == 1
        assert b.metadata()["providers"] == ["CPUExecutionProvider"]


def test_onnxruntime_bad_graph_optimization_suggests(tiny_models):
    with pytest.raises(ConfigError, match="Did you mean 'extended'"):
        BACKENDS.get("onnxruntime")(tiny_models.onnx, BackendOptions(extra={"graph_optimization": "extnded"}))


def test_onnxruntime_corrupt_model(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(BackendError, match=r"model\.onnx is not a readable model file \(truncated or corrupt\)"):
        BACKENDS.get("onnxruntime")(bad)


# -- openvino -------------------------------------------------------------------------------------------------
def test_openvino_unknown_device_lists_available(tiny_models):
    import openvino as ov

    available = ov.Core().available_devices
    if "NPU" in available:
        pytest.skip("this machine has an NPU")
    with pytest.raises(BackendError, match="'NPU' is not available") as info:
        BACKENDS.get("openvino")(tiny_models.openvino, BackendOptions(device="npu"))
    assert all(d in str(info.value) for d in available)


def test_openvino_auto_device_runs(tiny_models, batch):
    with BACKENDS.get("openvino")(tiny_models.openvino, BackendOptions(device="AUTO", threads=1)) as b:
        np.testing.assert_allclose(b.infer(batch)["logits"], tiny_models.reference(batch), atol=1e-4)


def test_openvino_throughput_async_queue_keeps_order(tiny_models, batch):
    opts = BackendOptions(threads=2, extra={"hint": "throughput", "streams": 2})
    with BACKENDS.get("openvino")(tiny_models.openvino, opts) as b:
        assert b.optimal_requests >= 2  # two streams -> at least two requests in flight
        outs = b.infer_async_many([batch[i : i + 1] for i in range(len(batch))])
        got = np.concatenate([o["logits"] for o in outs])
    np.testing.assert_allclose(got, tiny_models.reference(batch), atol=1e-4)


def test_openvino_async_validates_every_input_first(tiny_models, batch):
    from edgeslim.errors import InputError

    with BACKENDS.get("openvino")(tiny_models.openvino, BackendOptions(threads=1)) as b:
        with pytest.raises(InputError, match="float64"):
            b.infer_async_many([batch[:1], batch[:1].astype(np.float64)])
        assert b.infer_async_many([]) == []


def test_openvino_bad_hint_suggests(tiny_models):
    with pytest.raises(ConfigError, match="Did you mean 'LATENCY'"):
        BACKENDS.get("openvino")(tiny_models.openvino, BackendOptions(extra={"hint": "latncy"}))


# -- torch ----------------------------------------------------------------------------------------------------
def test_torch_needs_arch_and_classes(tiny_models):
    with pytest.raises(ConfigError, match="arch and num_classes"):
        BACKENDS.get("torch")(tiny_models.safetensors, BackendOptions())


def test_torch_weights_of_another_head_are_refused(tiny_models):
    opts = BackendOptions(extra={"arch": "tiny", "num_classes": NUM_CLASSES + 1})
    with pytest.raises(BackendError, match="does not fit architecture 'tiny' with 5 classes"):
        BACKENDS.get("torch")(tiny_models.safetensors, opts)


def test_torch_cuda_without_gpu_is_clear(tiny_models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    opts = BackendOptions(device="cuda", extra={"arch": "tiny", "num_classes": NUM_CLASSES})
    with pytest.raises(BackendError, match="torch.cuda.is_available"):
        BACKENDS.get("torch")(tiny_models.safetensors, opts)


# -- tensorrt without the package -----------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_missing_package_names_the_extra(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(MissingDependencyError, match=r"edgeslim\[tensorrt\]"):
        BACKENDS.get("tensorrt")(plan, BackendOptions(device="cuda"))


def test_tensorrt_refuses_engine_of_another_build():
    from edgeslim.runtime.tensorrt import check_build

    recorded = {
        "tensorrt_version": "10.3.0",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "trtexec": "trtexec --onnx=model.onnx --saveEngine=tensorrt/model.plan",
    }
    with pytest.raises(BackendError) as info:
        check_build(recorded, tensorrt_version="10.7.0", gpu="NVIDIA A100", compute_capability="8.0", path="m.plan")
    msg = str(info.value)
    assert "TensorRT 10.3.0" in msg and "10.7.0" in msg
    assert "compute capability 8.7" in msg and "'Orin'" in msg
    assert msg.endswith("rebuild it on this device with: trtexec --onnx=model.onnx --saveEngine=tensorrt/model.plan")
    # the same build passes
    check_build(recorded, tensorrt_version="10.3.0", gpu="Orin", compute_capability="8.7", path="m.plan")


def test_tensorrt_no_gpu_type_error_becomes_a_clear_backend_error():
    """TensorRT's bindings raise TypeError from trt.Runtime when CUDA cannot initialise; users get a BackendError."""
    from edgeslim.runtime.tensorrt import trt_runtime_objects

    class NoGpuTensorRT:  # the one behaviour of the real module that matters here
        class Runtime:
            def __init__(self, logger):
                raise TypeError("pybind11::init(): factory function returned nullptr")

    with pytest.raises(BackendError, match="no usable CUDA GPU .* use backend='onnxruntime'/'openvino'"):
        trt_runtime_objects(NoGpuTensorRT, object(), "load m.plan")


def test_importing_the_runtime_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, edgeslim.runtime as r; r.BACKENDS.names();"
        "heavy = [m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
