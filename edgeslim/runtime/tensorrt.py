"""TensorRT backend: deserialise a ``.plan`` engine and run it with the TensorRT 10+ tensor-name API.

Device memory and the stream come from cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` on older
cuda-python). An engine only runs on the TensorRT version and GPU it was built for, so the backend compares the
versions recorded at export time and refuses a mismatch with the ``trtexec`` command that rebuilds it.

``options.extra`` keys:
    tensorrt_version, gpu, compute_capability: what the engine was built with (filled from the artifact by
        :func:`edgeslim.runtime.load`); checked against this machine unless ``check_build=False``.
    trtexec: the command line that rebuilds the engine, quoted in the mismatch error.
    profile: optimisation profile index (default 0).
    check_build: compare the recorded build environment (default True).
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError, ConfigError, InputError, MissingDependencyError, require
from ..registry import did_you_mean
from .base import BACKENDS, Backend, TensorSpec

_EXTRA_KEYS = ("tensorrt_version", "gpu", "compute_capability", "trtexec", "profile", "check_build")


def import_tensorrt() -> Any:
    """``import tensorrt`` or :class:`MissingDependencyError` naming ``edgeslim[tensorrt]``."""
    return require("tensorrt", extra="tensorrt", purpose="TensorRT engines")


def import_cudart() -> Any:
    """cuda-python's runtime module (new ``cuda.bindings.runtime`` or legacy ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6

        return cudart
    except ImportError as exc:
        raise MissingDependencyError(
            f"'cuda-python' is needed for TensorRT device memory but is not installed ({exc}); "
            "fix: pip install 'edgeslim[tensorrt]'"
        ) from exc


def cuda_check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising :class:`BackendError` on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = getattr(err, "value", err)
    if code != 0:
        raise BackendError(f"CUDA error during {what}: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def gpu_identity(device: int = 0) -> dict[str, str]:
    """Name and compute capability of a CUDA device, as recorded in an engine's ``ModelFile.extra``."""
    cudart = import_cudart()
    props = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 ").strip(), "compute_capability": f"{props.major}.{props.minor}"}


def trt_runtime_objects(trt: Any, logger: Any, what: str) -> Any:
    """``trt.Runtime(logger)``, turning TensorRT's no-GPU TypeError into a clear :class:`BackendError`."""
    try:
        runtime = trt.Runtime(logger)
    except TypeError as exc:
        # Without a usable GPU TensorRT logs "CUDA initialization failure" and the constructor returns
        # nullptr, which pybind11 surfaces as a TypeError.
        raise BackendError(
            f"TensorRT cannot {what}: no usable CUDA GPU (CUDA initialisation failed: {exc}). "
            "Run on a machine with an NVIDIA GPU and driver, or use backend='onnxruntime'/'openvino'"
        ) from exc
    if runtime is None:
        raise BackendError(f"TensorRT cannot {what}: trt.Runtime could not be created (no usable CUDA GPU?)")
    return runtime


def check_build(
    recorded: dict[str, Any], *, tensorrt_version: str, gpu: str | None, compute_capability: str | None, path: Any
) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU.

    Raises:
        BackendError: naming both sides of each mismatch and the ``trtexec`` command to rebuild on this device.
    """
    problems = []
    want = recorded.get("tensorrt_version")
    if want and str(want) != tensorrt_version:
        problems.append(f"built with TensorRT {want}, this machine has {tensorrt_version}")
    want_cc = recorded.get("compute_capability")
    if want_cc and compute_capability and str(want_cc) != compute_capability:
        problems.append(f"built for compute capability {want_cc}, this GPU is {compute_capability}")
    want_gpu = recorded.get("gpu")
    if want_gpu and gpu and str(want_gpu) != gpu:
        problems.append(f"built on GPU '{want_gpu}', this GPU is '{gpu}'")
    if problems:
        cmd = recorded.get("trtexec") or "trtexec --onnx=<artifact>/model.onnx --saveEngine=<artifact>/tensorrt/model.plan"
        raise BackendError(
            f"TensorRT engine {path} cannot run here: " + "; ".join(problems)
            + f". Engines are tied to one TensorRT version and GPU: rebuild it on this device with: {cmd}"
        )


@BACKENDS.register("tensorrt", aliases=("trt",))
class TensorRTBackend(Backend):
    """Runs a serialised TensorRT engine (``.plan``) on an NVIDIA GPU."""

    name = "tensorrt"
    formats = ("tensorrt",)
    library = "tensorrt"
    extra = "tensorrt"
    suffix = ".plan"
    triton_platform = "tensorrt_plan"
    triton_backend = "tensorrt"
    triton_kind = "KIND_GPU"

    @classmethod
    def classify_layer(cls, row: Mapping[str, Any]) -> str:
        """By the engine layer's name: fused layers carry their ONNX node names (``/features.0/Conv +
        /features.0/Relu``), which tell a convolution or a matmul, not a depthwise one."""
        n = str(row.get("name", "")).lower()
        if "conv" in n:
            return "conv"
        if any(k in n for k in ("gemm", "matmul", "fully", "linear")):
            return "fc"
        return "other"

    @classmethod
    def artifact_options(cls, manifest: Any, model_file: Any) -> dict[str, Any]:
        """The build environment the exporter recorded, so a mismatched engine is refused."""
        return {k: model_file.extra[k] for k in ("tensorrt_version", "gpu", "compute_capability", "trtexec")
                if k in model_file.extra}

    def _load(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        # One execution context, stream and buffer set: calls from several threads (the server) take turns.
        self._lock = threading.Lock()
        extra = dict(self.options.extra)
        for key in extra:
            if key not in _EXTRA_KEYS:
                raise ConfigError(
                    f"tensorrt backend: unknown option '{key}'.{did_you_mean(key, _EXTRA_KEYS)} Known: {', '.join(_EXTRA_KEYS)}"
                )
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        if not self.path.is_file():
            raise BackendError(f"TensorRT engine {self.path} does not exist")

        kind, _, index = self.options.device.lower().partition(":")
        if kind not in ("cuda", "gpu"):
            raise ConfigError(f"the tensorrt backend runs on an NVIDIA GPU: use device='cuda' or 'cuda:N', not '{self.options.device}'")
        self._device_index = int(index) if index.isdigit() else 0

        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt_runtime_objects(trt, logger, f"load {self.path}")
        cuda_check(cudart.cudaSetDevice(self._device_index), f"cudaSetDevice({self._device_index})")
        if extra.get("check_build", True):
            ident = gpu_identity(self._device_index)
            check_build(extra, tensorrt_version=trt.__version__, gpu=ident["gpu"],
                        compute_capability=ident["compute_capability"], path=self.path)

        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            cmd = extra.get("trtexec", "")
            raise BackendError(
                f"TensorRT {trt.__version__} could not deserialise {self.path} (built by another TensorRT version or"
                f" for another GPU, or corrupt; see the TensorRT log above). Rebuild it on this device"
                + (f" with: {cmd}" if cmd else " with trtexec from the artifact's model.onnx")
            )
        self._engine = engine
        self._runtime = runtime  # the runtime must outlive the engine
        self._context = engine.create_execution_context()
        self._profile = int(extra.get("profile", 0))
        if not 0 <= self._profile < engine.num_optimization_profiles:
            raise ConfigError(f"profile {self._profile} out of range: the engine has {engine.num_optimization_profiles}")
        self._stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        if self._profile:
            self._context.set_optimization_profile_async(self._profile, self._stream)

        self._ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, shape)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
                if -1 in shape:
                    lo, _opt, hi = engine.get_tensor_profile_shape(name, self._profile)
                    self._ranges[name] = (tuple(lo), tuple(hi))
            else:
                self.outputs.append(spec)

    def batch_range(self, name: str | None = None) -> tuple[int, int] | None:
        """(min, max) batch of the optimisation profile for an input; None for a static input."""
        name = name or self.inputs[0].name
        if name not in self._ranges:
            return None
        lo, hi = self._ranges[name]
        return lo[0], hi[0]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                cuda_check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = cuda_check(self._cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes}) for '{name}'")
            self._buffers[name] = (int(ptr), nbytes)
        return int(self._buffers[name][0])

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._infer_locked(feeds)

    def _infer_locked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise BackendError(f"{self!r} is closed")
        cudart, ctx = self._cudart, self._context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in feeds.items():
            if name in self._ranges:
                lo, hi = self._ranges[name]
                if any(not (a <= s <= b) for a, s, b in zip(lo, arr.shape, hi)):
                    raise InputError(
                        f"input '{name}' has shape {list(arr.shape)}, outside the engine's optimisation profile "
                        f"[min {list(lo)}, max {list(hi)}]; split the batch or rebuild the engine with a larger "
                        "--maxShapes"
                    )
                ctx.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            cuda_check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream), f"copy of '{name}' to GPU")
            ctx.set_tensor_address(name, ptr)
        host: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            out = np.empty(shape, dtype=spec.dtype)
            host[spec.name] = out
            ctx.set_tensor_address(spec.name, self._buffer(spec.name, out.nbytes))
        if not ctx.execute_async_v3(self._stream):
            raise BackendError(f"TensorRT execute_async_v3 failed for {self.path.name} (see the TensorRT log)")
        for spec in self.outputs:
            out = host[spec.name]
            cuda_check(
                cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[spec.name][0], out.nbytes, d2h, self._stream),
                f"copy of '{spec.name}' from GPU",
            )
        cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host

    def _layer_times(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """TensorRT's ``IProfiler``, called once per layer after each ``execute_async_v3`` of ``runs`` inferences
        (it slows the run a little, so end-to-end latency is measured without it). Names are the engine's layer
        names (the ONNX node names of fused layers); an engine built with profiling verbosity NONE reports layer
        indices. The op type comes from the engine inspector where the engine was built with DETAILED verbosity."""
        from .base import median_layer_rows

        trt = self._trt

        class _Collect(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.times: dict[str, list[float]] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.times.setdefault(layer_name, []).append(float(ms))

        prof = _Collect()
        with self._lock:
            self._infer_locked(feeds)  # warm-up without the profiler
            # a context of its own: the serving context never carries the profiler (nor its overhead)
            main, ctx = self._context, self._engine.create_execution_context()
            if self._profile:
                ctx.set_optimization_profile_async(self._profile, self._stream)
            ctx.profiler = prof
            self._context = ctx
            try:
                for _ in range(runs):
                    self._infer_locked(feeds)
            finally:
                self._context = main
                del ctx
        types = self._layer_types()
        return median_layer_rows({name: {"name": name, "type": types.get(name, ""), "exec": "tensorrt", "ms": ms}
                                  for name, ms in prof.times.items()})

    def _layer_types(self) -> dict[str, str]:
        """Engine layer name -> ``LayerType`` from the engine inspector; empty unless the engine was built with
        ``ProfilingVerbosity.DETAILED`` (the default verbosity lists names only)."""
        import json

        try:
            info = json.loads(self._engine.create_engine_inspector().get_engine_information(
                self._trt.LayerInformationFormat.JSON))
        except Exception:  # noqa: BLE001 - an engine or TensorRT without an inspector: the rows keep their names
            return {}
        return {str(layer.get("Name")): str(layer.get("LayerType", ""))
                for layer in info.get("Layers", []) if isinstance(layer, dict)}

    def version(self) -> str:
        try:
            import tensorrt

            return tensorrt.__version__
        except ImportError:
            return ""

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        for ptr, _ in getattr(self, "_buffers", {}).values():
            if cudart is not None and ptr:
                cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None and cudart is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._stream = None
        self._context = None
        self._engine = None
