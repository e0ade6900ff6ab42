"""ONNX Runtime backend: one ``InferenceSession`` with execution providers chosen by name.

``options.extra`` keys:
    providers: list of provider names (``"CPUExecutionProvider"``, short ``"cpu"``, ``"cuda"``, ``"tensorrt"``,
        ``"openvino"``) or ``(name, provider_options)`` pairs. Default: chosen from ``options.device``.
    graph_optimization: ``"disable"`` | ``"basic"`` | ``"extended"`` | ``"all"`` (default ``"all"``).
    inter_op_threads: threads across independent nodes (default: onnxruntime's).
    session_config: dict of ``SessionOptions.add_session_config_entry`` entries.
    log_severity_level: ``SessionOptions.log_severity_level`` (0 verbose .. 4 fatal; default: onnxruntime's).

:meth:`OnnxRuntimeBackend.from_model` runs an ``onnx.ModelProto`` in memory, or adopts an ``InferenceSession``
(what NNCF's accuracy control hands its validation function).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError, ConfigError, require
from ..registry import did_you_mean
from .base import BACKENDS, Backend, TensorSpec

# ONNX type strings as onnxruntime reports them -> numpy dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

_SHORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_EXTRA_KEYS = ("providers", "graph_optimization", "inter_op_threads", "session_config", "log_severity_level")


def ort_dtype(type_str: str) -> str:
    """numpy dtype name of an onnxruntime type string such as ``"tensor(float)"``."""
    try:
        return _ORT_DTYPES[type_str]
    except KeyError:
        raise BackendError(f"onnxruntime tensor type {type_str!r} is not supported by edgeslim") from None


def _dims(shape: list[Any]) -> tuple[int, ...]:
    # onnxruntime reports symbolic dims as strings ("batch") and unknown ones as None.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def default_providers(device: str) -> list[Any]:
    """Providers for a device string: ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``openvino``."""
    kind, _, index = device.lower().partition(":")
    if index and not index.isdigit():
        raise ConfigError(f"device '{device}': the part after ':' must be a device index such as 'cuda:0'")
    dev = {"device_id": int(index)} if index else {}
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind in ("cuda", "gpu"):
        return [("CUDAExecutionProvider", dev), "CPUExecutionProvider"]
    if kind == "tensorrt":
        return [("TensorrtExecutionProvider", dev), ("CUDAExecutionProvider", dev), "CPUExecutionProvider"]
    if kind == "openvino":
        return ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(
        f"onnxruntime backend: unknown device '{device}'.{did_you_mean(kind, ['cpu', 'cuda', 'tensorrt', 'openvino'])}"
        " Use cpu, cuda[:N], tensorrt[:N] or openvino, or pass providers=[...]"
    )


_UNSUPPORTED_OP = re.compile(
    r"No Op registered for (\S+)|Could not find an implementation for (\S+?)\(|No conversion rule found for operations: (.+)"
)
_CORRUPT = ("INVALID_PROTOBUF", "Protobuf parsing failed", "can't be parsed", "ParseFromIstream")


def explain_load_error(path: Any, library: str, exc: BaseException) -> str:
    """One message for a model file a runtime refused: what is wrong with it and what to do.

    Recognises an operator the runtime cannot run and an unreadable (truncated or corrupt) file; otherwise passes
    the library's own message on. Used by the onnxruntime and openvino backends.
    """
    text = str(exc)
    match = _UNSUPPORTED_OP.search(text)
    if match:
        op = next(g for g in match.groups() if g).strip().rstrip(",")
        return (
            f"{path} uses operator {op} that {library} cannot run. Re-export the model with an opset the runtime"
            " supports (export.opset in the recipe, e.g. 17), replace the layer that produces it, or load the"
            f" artifact with another backend. ({library}: {text.strip().splitlines()[-1][:300]})"
        )
    if any(marker in text for marker in _CORRUPT):
        return (
            f"{path} is not a readable model file (truncated or corrupt). Re-export it (edgeslim export), or, if it"
            " belongs to an artifact, load the artifact with verify=True to check every file against its manifest"
        )
    return f"{library} could not load {path}: {text}"


def _check_extra(extra: dict[str, Any], allowed: tuple[str, ...], backend: str) -> None:
    for key in extra:
        if key not in allowed:
            raise ConfigError(
                f"{backend} backend: unknown option '{key}'.{did_you_mean(key, allowed)} Known: {', '.join(allowed)}"
            )


@BACKENDS.register("onnxruntime", aliases=("ort",))
class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` file in an onnxruntime ``InferenceSession``."""

    name = "onnxruntime"
    formats = ("onnx",)
    library = "onnxruntime"
    extra = "serve"
    suffix = ".onnx"
    honours_isa_cap = False  # MLAS dispatches on CPUID: ONEDNN_MAX_CPU_ISA leaves it at the host's full ISA
    triton_platform = "onnxruntime_onnx"
    triton_backend = "onnxruntime"
    triton_kind = "KIND_AUTO"  # on a GPU when the Triton host has one, else on the CPU (ONNX Runtime runs on both)

    @classmethod
    def classify_layer(cls, row: Mapping[str, Any]) -> str:
        """By the node's op type: ORT's profiler events do not tell a depthwise convolution from a dense one, so
        every convolution is ``conv`` (the latency model fits one conv coefficient)."""
        op = str(row.get("type", ""))
        if op in ("Conv", "FusedConv", "QLinearConv"):
            return "conv"
        if op in ("Gemm", "MatMul", "FusedGemm", "QLinearMatMul"):
            return "fc"
        return "other"

    @classmethod
    def accepts(cls, model: object) -> bool:
        """An ``onnx.ModelProto`` or an ``onnxruntime.InferenceSession``."""
        kind, module = type(model).__name__, type(model).__module__
        return (kind == "ModelProto" and module.startswith("onnx")) or (
            kind == "InferenceSession" and module.startswith("onnxruntime"))

    def _load(self) -> None:
        ort = require("onnxruntime", extra="serve", purpose="the onnxruntime backend")
        extra = dict(self.options.extra)
        _check_extra(extra, _EXTRA_KEYS, self.name)
        self._source: Any = str(self.path)  # what a session loads: the file, or the in-memory model's bytes
        if type(self.in_memory).__name__ == "InferenceSession":
            self._session = self.in_memory  # a session compiled elsewhere (NNCF), run as it is
            self._provider_list = list(self._session.get_providers())
            self._source = None
        else:
            if self.in_memory is not None:
                self._source = self.in_memory.SerializeToString()
            elif not self.path.is_file():
                raise BackendError(
                    f"ONNX model {self.path} does not exist; check the path, or re-export the artifact with"
                    " `edgeslim export ARTIFACT --to onnx`"
                )
            providers = self._providers(ort, extra.get("providers"))
            so = self._session_options(ort, extra)
            self._provider_list = providers  # the profiling session of layer_times runs on the same providers
            try:
                self._session = ort.InferenceSession(self._source, sess_options=so, providers=providers)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
                raise BackendError(explain_load_error(self.path, "onnxruntime", exc)) from exc
        self.inputs = [TensorSpec(i.name, ort_dtype(i.type), _dims(i.shape)) for i in self._session.get_inputs()]
        self.outputs = [TensorSpec(o.name, ort_dtype(o.type), _dims(o.shape)) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def _session_options(self, ort: Any, extra: dict[str, Any]) -> Any:
        """The ``SessionOptions`` of :attr:`options` (the loaded session's and its profiling copy's)."""
        so = ort.SessionOptions()
        if self.options.threads is not None:
            if not isinstance(self.options.threads, int) or self.options.threads < 1:
                raise ConfigError(f"threads must be a positive integer, got {self.options.threads!r}")
            so.intra_op_num_threads = self.options.threads
        if extra.get("inter_op_threads") is not None:
            so.inter_op_num_threads = int(extra["inter_op_threads"])
        level = str(extra.get("graph_optimization", "all")).lower()
        if level not in _OPT_LEVELS:
            raise ConfigError(
                f"graph_optimization '{level}' is unknown.{did_you_mean(level, list(_OPT_LEVELS))}"
                f" Use one of {', '.join(_OPT_LEVELS)}"
            )
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        for key, value in dict(extra.get("session_config") or {}).items():
            so.add_session_config_entry(str(key), str(value))
        if extra.get("log_severity_level") is not None:
            so.log_severity_level = int(extra["log_severity_level"])
        return so

    def _providers(self, ort: Any, requested: Any) -> list[Any]:
        providers = default_providers(self.options.device) if requested is None else list(requested)
        if not providers:
            raise ConfigError("providers=[] is empty; pass at least one execution provider, e.g. ['cpu']")
        available = ort.get_available_providers()
        out = []
        for p in providers:
            name, opts = (p[0], p[1]) if isinstance(p, (tuple, list)) else (p, None)
            name = _SHORT_PROVIDERS.get(str(name).lower(), name)
            if name not in available:
                raise BackendError(
                    f"onnxruntime execution provider '{name}' is not available in this installation."
                    f" Available: {', '.join(available)}. Install the matching"
                    " onnxruntime build (e.g. onnxruntime-gpu for CUDA/TensorRT, onnxruntime-openvino) or pick"
                    " another device"
                )
            out.append((name, opts) if opts else name)
        return out

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in priority order."""
        return list(self._session.get_providers())

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise BackendError(f"{self!r} is closed")
        try:
            results = self._session.run(self._output_names, feeds)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {exc}") from exc
        return dict(zip(self._output_names, results))

    def _layer_times(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """ONNX Runtime's profiler: a second session of the same file with the same options and
        ``enable_profiling``, run ``runs`` times; each node's ``*_kernel_time`` events from the profile's JSON."""
        import json
        import tempfile
        from pathlib import Path

        import onnxruntime as ort

        from .base import median_layer_rows

        if self._session is None:
            raise BackendError(f"{self!r} is closed")
        if self._source is None:
            raise BackendError(f"{self!r} runs a session compiled elsewhere: per-layer times need the model itself")
        # a session of its own: the loaded one never carries the profiler (nor its overhead)
        so = self._session_options(ort, dict(self.options.extra))
        with tempfile.TemporaryDirectory(prefix="edgeslim-ort-profile-") as tmp:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            try:
                sess = ort.InferenceSession(self._source, sess_options=so, providers=self._provider_list)
                for _ in range(runs):
                    sess.run(self._output_names, feeds)
                events = json.loads(Path(sess.end_profiling()).read_text())
            except Exception as exc:
                raise BackendError(f"onnxruntime failed to profile {self.path.name}: {exc}") from exc
        acc: dict[str, dict[str, Any]] = {}
        for e in events:
            if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
                continue
            node = e["name"][: -len("_kernel_time")]
            args = e.get("args") or {}
            op = str(args.get("op_name", ""))
            row = acc.setdefault(node, {"name": node, "type": op, "exec": str(args.get("provider", op)), "ms": []})
            row["ms"].append(e["dur"] / 1e3)  # the events are in microseconds
        return median_layer_rows(acc)

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["providers"] = self.providers if self._session is not None else []
        return meta

    def close(self) -> None:
        self._session = None
