"""The one Backend contract every runtime implements, and the backend registry.

A backend wraps one model file. Public :meth:`Backend.infer` checks input names, shapes and dtypes against the
model's metadata and only then calls the backend's small ``_infer`` hook, so every backend rejects bad input the
same way. Backends are context managers and register by name in :data:`BACKENDS`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import BackendError, ConfigError, InputError
from ..registry import Registry


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of a model input or output; -1 marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class BackendOptions:
    """Options common to every backend; backend-specific knobs go in ``extra``.

    Args:
        device: backend device string ("cpu", "cuda:0", "GPU", "AUTO", ...).
        threads: intra-op threads (None: the backend's default).
        extra: backend-specific options, e.g. ``{"providers": ["CPUExecutionProvider"]}`` for onnxruntime or
            ``{"hint": "THROUGHPUT", "streams": 2}`` for openvino.
    """

    device: str = "cpu"
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """Runs one model file. Subclasses implement :meth:`_load`, :meth:`_infer` and set ``name``."""

    name: ClassVar[str] = ""
    #: model formats this backend can load (values of ``ModelFile.format``)
    formats: ClassVar[tuple[str, ...]] = ()
    #: the runtime library it needs (import name; ``None``: nothing optional) and the extra that installs it
    library: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None

    @classmethod
    def require_library(cls) -> None:
        """Raise :class:`~edgeslim.errors.MissingDependencyError` (naming the fix) when :attr:`library` is missing."""
        if cls.library:
            from ..errors import require

            require(cls.library, cls.extra, purpose=f"the {cls.name} backend")

    def __init__(self, path: str | Path, options: BackendOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or BackendOptions()
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self._load()

    # -- hooks -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Load ``self.path`` and fill ``self.inputs`` / ``self.outputs``."""

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated ``feeds``; return every output by name as numpy arrays."""

    def version(self) -> str:
        """Version of the underlying runtime library."""
        return ""

    def close(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing to release
        """Release the model; idempotent."""

    # -- public ----------------------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Validate ``feeds`` against :attr:`inputs`, then run the model.

        A bare array is accepted when the model has exactly one input.

        Raises:
            InputError: a missing or unknown input name, wrong rank, a fixed dimension that differs, or a dtype
                that differs from the model's.
        """
        return self._infer(self.check_feeds(feeds))

    def layer_times(self, feeds: Mapping[str, np.ndarray] | np.ndarray, runs: int = 20) -> list[dict[str, Any]]:
        """Each layer's time from the runtime's own profiler over ``runs`` inferences of ``feeds``.

        OpenVINO's ``PERF_COUNT`` counters, ONNX Runtime's profiler (``SessionOptions.enable_profiling``) and
        TensorRT's ``IProfiler`` time the layers inside the runtime, on a profiling copy of the loaded model (same
        options), so the loaded model never carries the profiler's overhead. The layers' sum is below the
        end-to-end latency of a call: it leaves out the call's own overhead and the gaps between kernels.

        Returns:
            One row per layer that ran: ``name``, ``type`` (the op type: ``Convolution``, ``Conv``, ...; ``""``
            where the runtime does not say), ``exec`` (the kernel or provider that ran it) and ``ms``, the median
            of the layer's times over the runs (one run descheduled on a loaded host does not inflate a layer).

        Raises:
            BackendError: the backend has no per-layer profiler (e.g. torch), or the run failed.
            InputError: ``feeds`` do not match the model (checked as :meth:`infer` checks them).
        """
        if not isinstance(runs, int) or runs < 1:
            raise ConfigError(f"runs must be a positive integer, got {runs!r}")
        return self._layer_times(self.check_feeds(feeds), runs)

    def _layer_times(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """Hook of :meth:`layer_times`; a backend with a per-layer profiler overrides it."""
        raise BackendError(
            f"per-layer times are not supported by the {self.name} backend ({self.path.name}); profile the"
            " artifact's onnx file on onnxruntime, its openvino file on openvino or its tensorrt engine on tensorrt"
        )

    def last_latency_ms(self) -> float | None:
        """The last :meth:`infer` call's compute time on the runtime's own clock, or ``None`` without one.

        OpenVINO times each request itself (``InferRequest.latency``, what ``benchmark_app`` reports); the
        profiler reports it beside the wall time of the call, which adds edgeslim's input check and copies and the
        Python/C++ crossing.
        """
        return None

    def check_feeds(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """The validation :meth:`infer` performs, exposed for callers that batch before running."""
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                raise InputError(
                    f"model has {len(self.inputs)} inputs ({', '.join(i.name for i in self.inputs)}); pass a dict"
                )
            feeds = {self.inputs[0].name: feeds}
        expected = {i.name: i for i in self.inputs}
        unknown = sorted(set(feeds) - set(expected))
        missing = sorted(set(expected) - set(feeds))
        if unknown or missing:
            raise InputError(
                f"input names do not match the model: unknown {unknown}, missing {missing}; expected {sorted(expected)}"
            )
        out = {}
        for name, spec in expected.items():
            arr = feeds[name]
            if not isinstance(arr, np.ndarray):
                raise InputError(f"input '{name}' must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != np.dtype(spec.dtype):
                raise InputError(f"input '{name}' has dtype {arr.dtype}; the model expects {spec.dtype}")
            if arr.ndim != len(spec.shape) or any(d != -1 and d != a for d, a in zip(spec.shape, arr.shape)):
                raise InputError(
                    f"input '{name}' has shape {list(arr.shape)}; the model expects {list(spec.shape)} (-1 = any)"
                )
            out[name] = np.ascontiguousarray(arr)
        return out

    def metadata(self) -> dict[str, Any]:
        """Backend name and version, model path, inputs and outputs."""
        return {
            "backend": self.name,
            "version": self.version(),
            "path": str(self.path),
            "device": self.options.device,
            "threads": self.options.threads,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, device={self.options.device!r})"


def median_layer_rows(times: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of :meth:`Backend.layer_times` from ``{name: {"name", "type", "exec", "ms": [per-run ms]}}``: each
    layer's median over its runs, in the order the runtime reported the layers."""
    return [{**row, "ms": float(np.median(row["ms"])) if len(row["ms"]) else 0.0} for row in times.values()]


BACKENDS: Registry[type[Backend]] = Registry("runtime backend")
