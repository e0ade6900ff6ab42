"""The one Backend contract every runtime implements, and the backend registry.

A backend wraps one model file. Public :meth:`Backend.infer` checks input names, shapes and dtypes against the
model's metadata and only then calls the backend's small ``_infer`` hook, so every backend rejects bad input the
same way. Backends are context managers and register by name in :data:`BACKENDS`.

A backend is a *runner*: its class declares everything the rest of edgeslim needs to know about it, so no other
module keeps a table keyed by backend or format (:mod:`edgeslim.runtime.runners` derives them):

* ``name`` and ``formats`` (the model formats it runs, its own format first), ``suffix`` (its file's suffix);
* ``library`` / ``extra`` (the optional dependency and the pip extra that installs it);
* ``classify_layer`` (the latency model's kind of one :meth:`Backend.layer_times` row);
* ``triton_platform`` / ``triton_backend`` / ``triton_kind`` (how Triton serves its format, if it does);
* ``accepts`` (in-memory models it runs without a file: :meth:`Backend.from_model`).

Runners register in their own module (``@BACKENDS.register("name")``). Third-party runners are found through the
``edgeslim.runners`` entry-point group (:data:`ENTRY_POINT_GROUP`): the registry loads the group lazily, on the
first lookup or listing, so ``import edgeslim.runtime`` imports no plugin; a plugin that fails to load is left out
with a :class:`RunnerPluginWarning` naming it, and asking for it by name raises a :class:`BackendError` that says why.
"""

from __future__ import annotations

import abc
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import BackendError, ConfigError, InputError, UnknownNameError
from ..registry import Registry

#: the entry-point group third-party runners register in (``name = "package.module:RunnerClass"`` or a module)
ENTRY_POINT_GROUP = "edgeslim.runners"


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
    #: suffix of the file it runs (``.onnx``, ``.xml``, ...): Triton's model file is ``model`` + this suffix
    suffix: ClassVar[str] = ""
    #: whether its CPU kernels obey oneDNN's ``ONEDNN_MAX_CPU_ISA``, the cap that emulates an older x86 host kind
    #: (OpenVINO's CPU plugin and PyTorch do; ONNX Runtime's own MLAS kernels pick by CPUID and do not)
    honours_isa_cap: ClassVar[bool] = True
    #: how Triton serves this runner's format: its ``platform`` (None where the backend alone names it), its
    #: ``backend`` (None: Triton does not serve the format) and the default instance kind (``KIND_AUTO``, ...)
    triton_platform: ClassVar[str | None] = None
    triton_backend: ClassVar[str | None] = None
    triton_kind: ClassVar[str] = "KIND_AUTO"
    #: options (``BackendOptions.extra``) that put it in its throughput mode for the profiler (several requests in
    #: flight, streams); empty: its latency setting is its throughput setting
    throughput_options: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def classify_layer(cls, row: Mapping[str, Any]) -> str:
        """The latency model's kind (``conv``, ``dw``, ``pw``, ``fc`` or ``other``) of one :meth:`layer_times` row.

        Each runner reads its own profiler's names: kernel names, op types or fused layer names.
        """
        return "other"

    @classmethod
    def accepts(cls, model: object) -> bool:
        """Whether this runner runs the in-memory ``model`` (see :meth:`from_model`); tested without importing
        the runtime library (by the object's type and module)."""
        return False

    @classmethod
    def from_model(cls, model: object, options: BackendOptions | None = None, *, name: str = "<in-memory model>"
                   ) -> "Backend":
        """A runner on an in-memory model (an ``onnx.ModelProto``, an ``openvino.Model``, or a session the runtime
        already compiled) instead of a file; ``name`` stands for the path in messages and metadata.

        Raises:
            BackendError: this runner does not run such an object (:meth:`accepts`).
        """
        if not cls.accepts(model):
            raise BackendError(f"the {cls.name} backend does not run a {type(model).__module__}."
                               f"{type(model).__qualname__} in memory; save it to a file and load that")
        return cls(name, options, model=model)

    @classmethod
    def require_library(cls) -> None:
        """Raise :class:`~edgeslim.errors.MissingDependencyError` (naming the fix) when :attr:`library` is missing."""
        if cls.library:
            from ..errors import require

            require(cls.library, cls.extra, purpose=f"the {cls.name} backend")

    def __init__(self, path: str | Path, options: BackendOptions | None = None, *, model: object = None) -> None:
        self.path = Path(path)
        self.options = options or BackendOptions()
        #: the in-memory model of :meth:`from_model` (None: the runner loads :attr:`path`)
        self.in_memory: Any = model
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

    @classmethod
    def has_layer_times(cls) -> bool:
        """Whether :meth:`layer_times` reads a per-layer profiler (the runner overrides ``_layer_times``)."""
        return cls._layer_times is not Backend._layer_times

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


class RunnerPluginWarning(UserWarning):
    """A runner plugin (an ``edgeslim.runners`` entry point) failed to load and is left out."""


class RunnerRegistry(Registry[type[Backend]]):
    """The runner registry: the runners registered in their modules plus the entry points of ``group``.

    The group is read on the first lookup or listing (not at import), and read again when a name is not found
    (a plugin installed since), so ``runtime.load(..., backend="plugin")`` finds a runner installed at any time.
    """

    def __init__(self, kind: str, group: str) -> None:
        super().__init__(kind)
        self.group = group
        self._seen: set[str] = set()  # entry points tried (loaded, or broken)
        self.broken: dict[str, str] = {}  # entry-point name -> why it is left out
        self._scanned = False
        self._lock = threading.RLock()

    def load_plugins(self, *, rescan: bool = False) -> None:
        """Load the entry points of :attr:`group` not tried yet (once, unless ``rescan``)."""
        if self._scanned and not rescan:
            return
        with self._lock:
            if self._scanned and not rescan:
                return
            self._scanned = True  # set first: a plugin that looks a runner up while it loads does not recurse
            from importlib.metadata import entry_points

            for ep in entry_points(group=self.group):
                if ep.name in self._seen:
                    continue
                self._seen.add(ep.name)
                self._load_entry_point(ep)

    def _load_entry_point(self, ep: Any) -> None:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"
        where = f"entry point '{ep.name} = {ep.value}' of {dist} (group {self.group})"
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - any error of a third-party import leaves that plugin out only
            self._broken(ep.name, f"the {where} failed to import: {type(exc).__name__}: {exc}")
            return
        if isinstance(obj, type) and issubclass(obj, Backend):
            name = obj.name or ep.name
            if name not in self._entries and name not in self._aliases:
                self.register(name, obj)
            elif self._entries.get(name) is not obj:
                self._broken(ep.name, f"the {where} names runner '{name}', which is registered already by"
                                      f" {self._entries.get(name, obj).__module__}")
        elif ep.name not in self:  # a module: importing it must have registered a runner under the entry's name
            self._broken(ep.name, f"the {where} loaded {obj!r}, which is neither a Backend subclass nor a module"
                                  f" that registers a runner named '{ep.name}'")

    def _broken(self, name: str, why: str) -> None:
        self.broken[name] = why
        warnings.warn(f"runtime backend plugin '{name}' is left out: {why}", RunnerPluginWarning, stacklevel=4)

    def canonical(self, name: str) -> str:
        self.load_plugins()
        try:
            return super().canonical(name)
        except UnknownNameError:
            self.load_plugins(rescan=True)  # installed since the first scan?
            if name in self.broken:
                raise BackendError(f"runtime backend '{name}' is a plugin that failed to load: {self.broken[name]}."
                                   " Fix or reinstall that package") from None
            return super().canonical(name)

    def names(self) -> list[str]:
        self.load_plugins()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return super().__contains__(name)

    def __len__(self) -> int:
        self.load_plugins()
        return super().__len__()


BACKENDS: RunnerRegistry = RunnerRegistry("runtime backend", ENTRY_POINT_GROUP)
