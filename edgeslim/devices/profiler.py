"""The profiler: latency, throughput, memory and accuracy of one artifact on each backend.

Conventions follow OpenVINO ``benchmark_app``, ``trtexec`` and ``onnxruntime_perf_test`` (see
``docs/profiling.md``): a warm-up that is not measured, then a measured window of at least N iterations AND at
least T seconds, each call timed with :func:`time.perf_counter_ns`; first-inference and load time reported apart;
percentiles over the per-call latencies; throughput = items / wall time of the window. Every entry records the
conditions it was measured under (model hash, backend and version, precision, batch, shape, threads, CPU).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, EdgeslimError, MissingDependencyError
from .cpu import cpu_info

#: How many per-call latencies an entry keeps for plots (evenly strided over the window, in time order).
MAX_SAMPLES_KEPT = 2000


@dataclass
class ProfileConfig:
    """What to measure and for how long.

    Args:
        warmup: warm-up calls that are not measured (at least this many).
        warmup_seconds: and at least this long (0: count only).
        iterations: the measured window has at least this many calls ...
        seconds: ... and lasts at least this long (0: count only).
        batch_sizes: batch sizes to profile, each an entry of its own.
        throughput: also measure the backend's throughput mode (OpenVINO async requests) where it has one.
        end_to_end: time decode + preprocessing from image bytes + inference per call, besides compute only.
    """

    warmup: int = 10
    warmup_seconds: float = 0.0
    iterations: int = 100
    seconds: float = 2.0
    batch_sizes: tuple[int, ...] = (1,)
    throughput: bool = True
    end_to_end: bool = False

    def __post_init__(self) -> None:
        self.batch_sizes = tuple(self.batch_sizes)
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"ProfileConfig.warmup must be an integer >= 0, got {self.warmup!r}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"ProfileConfig.iterations must be an integer >= 1, got {self.iterations!r}")
        for field_name in ("warmup_seconds", "seconds"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"ProfileConfig.{field_name} must be a number of seconds >= 0, got {value!r}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(
                f"ProfileConfig.batch_sizes must be positive integers such as (1, 8), got {self.batch_sizes!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return d


# -- statistics ---------------------------------------------------------------------------------------------------
def latency_stats(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max / std in milliseconds of per-call times in nanoseconds.

    Percentiles use linear interpolation between the closest ranks (numpy's default), as onnxruntime_perf_test.
    """
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        raise ConfigError("no latency samples to summarise")
    p = np.percentile(a, [50, 90, 95, 99])
    return {
        "min": float(a.min()),
        "mean": float(a.mean()),
        "median": float(p[0]),
        "p90": float(p[1]),
        "p95": float(p[2]),
        "p99": float(p[3]),
        "max": float(a.max()),
        "std": float(a.std()),
        "count": int(a.size),
    }


def _kept_samples(samples_ns: Sequence[int]) -> list[float]:
    step = max(1, -(-len(samples_ns) // MAX_SAMPLES_KEPT))
    return [round(s / 1e6, 6) for s in list(samples_ns)[::step]]


# -- memory -------------------------------------------------------------------------------------------------------
def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ru_maxrss_mb() -> float:
    # Linux reports kilobytes, macOS bytes.
    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return raw / (1024 * 1024) if sys.platform == "darwin" else raw / 1024


class _MemoryWindow:
    """Peak resident memory over a window.

    On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the peak (VmHWM) to the current RSS, so the peak
    read at the end is the peak *of the window*, not of the whole process. Where that is not allowed the peak is
    the process-lifetime one, and the entry says so (``peak_scope``).
    """

    def __enter__(self) -> "_MemoryWindow":
        self.lifetime_peak_before_mb = _ru_maxrss_mb()
        self.rss_before_kb = _proc_status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.scope = "measured window"
        except OSError:
            self.scope = "process lifetime"
        return self

    def __exit__(self, *exc: object) -> None:
        self.hwm_kb = _proc_status_kb("VmHWM")
        self.rss_after_kb = _proc_status_kb("VmRSS")

    def result(self) -> dict[str, Any]:
        mb = lambda kb: None if kb is None else round(kb / 1024, 2)  # noqa: E731
        peak = mb(self.hwm_kb) if self.hwm_kb is not None else round(_ru_maxrss_mb(), 2)
        before = mb(self.rss_before_kb)
        return {
            "peak_rss_mb": peak,
            "peak_scope": self.scope,
            "rss_before_mb": before,
            "rss_after_mb": mb(self.rss_after_kb),
            "peak_delta_mb": None if peak is None or before is None else round(peak - before, 2),
            "process_peak_rss_mb": round(max(self.lifetime_peak_before_mb, peak or 0.0), 2),
        }


# -- one loaded backend -------------------------------------------------------------------------------------------
def _resolve_shape(backend: Any, batch: int, input_shape: Sequence[int] | None) -> tuple[str, tuple[int, ...], str]:
    if len(backend.inputs) != 1:
        raise ConfigError(
            f"the profiler feeds models with one input; {backend.path.name} has {len(backend.inputs)}"
            f" ({', '.join(i.name for i in backend.inputs)})"
        )
    spec = backend.inputs[0]
    if input_shape is not None:
        shape = [int(d) for d in input_shape]
        if len(shape) != len(spec.shape):
            raise ConfigError(f"input_shape {list(input_shape)} has rank {len(shape)}; the model expects {list(spec.shape)}")
        shape[0] = batch
    else:
        shape = list(spec.shape)
        if shape and shape[0] == -1:
            shape[0] = batch
        if any(d < 0 for d in shape[1:]):
            raise ConfigError(
                f"{backend.path.name} input '{spec.name}' has dynamic dimensions {list(spec.shape)};"
                " pass input_shape=(N, C, H, W)"
            )
    if shape[0] != batch:
        raise ConfigError(
            f"{backend.path.name} has a fixed batch of {shape[0]}; it cannot be profiled at batch {batch}."
            f" Export with a dynamic batch or use batch_sizes=({shape[0]},)"
        )
    return spec.name, tuple(shape), spec.dtype


def _timed_loop(call: Callable[[], Any], min_iters: int, min_seconds: float) -> tuple[list[int], int]:
    """Run ``call`` until both minimums are met; per-call ns and the window's wall ns."""
    samples: list[int] = []
    budget = int(min_seconds * 1e9)
    clock = time.perf_counter_ns
    start = clock()
    while True:
        t0 = clock()
        call()
        t1 = clock()
        samples.append(t1 - t0)
        if len(samples) >= min_iters and t1 - start >= budget:
            return samples, t1 - start


def profile_backend(
    backend: Any,
    *,
    batch: int,
    cfg: ProfileConfig,
    input_shape: Sequence[int] | None = None,
    images: Sequence[Any] | None = None,
    preprocessing: Any = None,
    load_seconds: float | None = None,
    power: Any = None,
) -> dict[str, Any]:
    """Measure one loaded backend at one batch size.

    Args:
        backend: a loaded :class:`edgeslim.runtime.base.Backend`.
        batch: items per call.
        cfg: warm-up and window lengths.
        input_shape: full input shape (batch dimension is overridden by ``batch``); needed only when the model's
            non-batch dimensions are dynamic.
        images: encoded images (bytes or paths) for end-to-end timing; used when ``cfg.end_to_end``.
        preprocessing: the artifact's :class:`~edgeslim.artifact.Preprocessing`, needed with ``images``.
        load_seconds: how long the caller took to load ``backend``; reported as is.
        power: an optional power reader with ``start()`` / ``stop() -> dict`` wrapped around the window
            (see :mod:`edgeslim.devices.power`).

    Returns:
        A dict with ``batch``, ``input_shape``, ``load_s``, ``first_inference_ms``, ``warmup`` and ``measured``
        (iterations and seconds), ``latency_ms`` (compute only: min / mean / median / p90 / p95 / p99 / max),
        ``throughput`` (items/s), ``memory`` (peak RSS), ``samples_ms`` (per-call latencies, thinned to at most
        :data:`MAX_SAMPLES_KEPT`), and with end-to-end timing ``end_to_end_ms`` and ``preprocess_ms``.

    Raises:
        ConfigError: a batch or shape the model cannot take, or end-to-end timing without images.
        BackendError: the backend failed to run.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    name, shape, dtype = _resolve_shape(backend, batch, input_shape)
    # Fixed seed: the same input every run, so runs are comparable (some kernels are data-dependent, e.g. ReLU
    # sparsity).
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    feeds = {name: x}
    out: dict[str, Any] = {"batch": batch, "input_shape": list(shape), "load_s": load_seconds}

    t0 = time.perf_counter_ns()
    backend.infer(feeds)
    out["first_inference_ms"] = (time.perf_counter_ns() - t0) / 1e6

    # Warm-up: count and time, whichever is longer; not measured.
    warm = {"iterations": 0, "seconds": 0.0}
    if cfg.warmup > 0 or cfg.warmup_seconds > 0:
        ws, wall = _timed_loop(lambda: backend.infer(feeds), max(1, cfg.warmup), cfg.warmup_seconds)
        warm = {"iterations": len(ws), "seconds": wall / 1e9}
    out["warmup"] = warm

    own_clock = getattr(backend, "last_latency_ms", None)
    runtime_ms: list[float] = []

    def call() -> None:
        backend.infer(feeds)
        if own_clock is not None and (v := own_clock()) is not None:
            runtime_ms.append(v)

    with _MemoryWindow() as mem:
        if power is not None:
            power.start()
        samples, wall = _timed_loop(call, cfg.iterations, cfg.seconds)
        power_result = power.stop() if power is not None else None
    n = len(samples)
    out["measured"] = {"iterations": n, "seconds": wall / 1e9}
    out["latency_ms"] = latency_stats(samples)
    if len(runtime_ms) == n:  # the runtime timed every call itself (OpenVINO): its figure, apart from the wall time
        out["runtime_latency_ms"] = latency_stats(np.asarray(runtime_ms) * 1e6)
    out["throughput"] = {"mode": "sync", "items_per_s": batch * n / (wall / 1e9), "requests": 1}
    out["memory"] = mem.result()
    out["samples_ms"] = _kept_samples(samples)
    if power is not None:
        out["power"] = _per_inference(power_result, items=batch * n)

    if cfg.end_to_end:
        out.update(_end_to_end(backend, name, batch, cfg, images, preprocessing))
    return out


#: Options that put a backend in its throughput mode (several requests in flight, streams).
THROUGHPUT_OPTIONS: dict[str, dict[str, Any]] = {"openvino": {"hint": "THROUGHPUT"}}


def async_throughput(
    cls: type,
    path: str | os.PathLike,
    *,
    batch: int,
    cfg: ProfileConfig,
    threads: int | None = None,
    backend_name: str = "",
    requests: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Throughput in the backend's asynchronous mode, measured as ``benchmark_app -api async`` measures it.

    Loads its own instance of the model with the throughput options (OpenVINO: ``hint=THROUGHPUT``, the plugin's
    optimal number of requests), runs one first inference, the warm-up (``cfg.warmup`` requests and
    ``cfg.warmup_seconds``), then keeps every request busy until at least ``cfg.iterations`` inferences and
    ``cfg.seconds`` have passed. Throughput = items / wall time of the window (including the wait for the last
    requests); latency = per-request latency (OpenVINO's own ``InferRequest.latency``): benchmark_app's
    definitions. Runs in this process: the loop uses no Python callback (see
    :meth:`edgeslim.runtime.openvino.OpenVINOBackend.run_async_window`).

    Args:
        cls: a backend class with ``run_async_window`` (preferred) or ``infer_async_many(batches, jobs=)``.
        path: the model file.
        batch: items per request.
        cfg: warm-up and window lengths.
        threads: intra-op threads.
        backend_name: registry name of ``cls``; key into :data:`THROUGHPUT_OPTIONS`.
        requests: requests in flight (default: the backend's optimal number).
        options: further backend options over :data:`THROUGHPUT_OPTIONS` (e.g. ``{"streams": 2}``).
    """
    from ..runtime.base import BackendOptions

    name = backend_name or getattr(cls, "name", "")
    extra = {**THROUGHPUT_OPTIONS.get(name, {}), **(options or {})}
    t0 = time.perf_counter()
    b = cls(path, BackendOptions(threads=threads, extra=dict(extra)))
    load_s = time.perf_counter() - t0
    with b:
        input_name, shape, dtype = _resolve_shape(b, batch, None)
        feeds = {input_name: np.random.default_rng(0).standard_normal(shape).astype(dtype)}
        if hasattr(b, "run_async_window"):
            r = b.run_async_window(feeds, min_iterations=cfg.iterations, min_seconds=cfg.seconds,
                                   warmup=cfg.warmup, warmup_seconds=cfg.warmup_seconds, jobs=requests)
            nreq, done, wall = r["requests"], r["inferences"], r["seconds"]
            extras = {
                "latency_ms": latency_stats(np.asarray(r["latencies_ms"]) * 1e6),
                "first_inference_ms": r["first_inference_ms"],
                "warmup": r["warmup"],
            }
        else:
            nreq, done, wall = _chunked_async_window(b, feeds, cfg, requests)
            extras = {}
        if hasattr(b, "compiled_properties"):
            extras["properties"] = b.compiled_properties()
    return {
        "mode": "async",
        "options": extra,
        "requests": nreq,
        "inferences": done,
        "seconds": wall,
        "items_per_s": batch * done / wall,
        "load_s": load_s,
        **extras,
    }


def _chunked_async_window(b: Any, feeds: dict[str, np.ndarray], cfg: ProfileConfig,
                          requests: int | None) -> tuple[int, int, float]:
    """A backend with only ``infer_async_many``: chunks long enough that refilling the queue between chunks is a
    small part of the time."""
    nreq = int(requests or getattr(b, "optimal_requests", 1) or 1)
    chunk = [feeds] * max(8 * nreq, 32)
    if cfg.warmup > 0 or cfg.warmup_seconds > 0:
        _timed_loop(lambda: b.infer_async_many(chunk[: max(cfg.warmup, nreq)], jobs=nreq), 1, cfg.warmup_seconds)
    done = 0
    clock = time.perf_counter_ns
    start = clock()
    while True:
        b.infer_async_many(chunk, jobs=nreq)
        done += len(chunk)
        wall = clock() - start
        if done >= cfg.iterations and wall >= cfg.seconds * 1e9:
            return nreq, done, wall / 1e9


def _per_inference(power: dict[str, Any] | None, *, items: int) -> dict[str, Any]:
    if not power or not power.get("available"):
        return power or {"available": False, "reason": "no power reader result"}
    power = dict(power)
    if power.get("energy_j") is not None and items:
        power["j_per_inference"] = power["energy_j"] / items
    return power


def _end_to_end(
    backend: Any, name: str, batch: int, cfg: ProfileConfig, images: Sequence[Any] | None, preprocessing: Any
) -> dict[str, Any]:
    from ..preprocess import preprocess

    if not images:
        raise ConfigError("end-to-end profiling needs images (encoded bytes or paths); pass images=[...] or data=DIR")
    if preprocessing is None:
        raise ConfigError("end-to-end profiling needs the artifact's preprocessing (manifest.preprocessing)")
    # Encoded bytes in memory: the disk is not what is measured, decode is.
    blobs = [Path(i).read_bytes() if isinstance(i, (str, os.PathLike)) else i for i in images]
    cursor = [0]
    pre_ns: list[int] = []
    compute_ns: list[int] = []

    def call() -> None:
        i = cursor[0]
        chunk = [blobs[(i + k) % len(blobs)] for k in range(batch)]
        cursor[0] = (i + batch) % len(blobs)
        t0 = time.perf_counter_ns()
        x = preprocess(chunk, preprocessing)
        t1 = time.perf_counter_ns()
        backend.infer({name: x})
        pre_ns.append(t1 - t0)
        compute_ns.append(time.perf_counter_ns() - t1)

    if cfg.warmup:
        _timed_loop(call, cfg.warmup, 0.0)
        pre_ns.clear()
        compute_ns.clear()
    samples, wall = _timed_loop(call, cfg.iterations, cfg.seconds)
    return {
        "end_to_end_ms": latency_stats(samples),
        "end_to_end_measured": {"iterations": len(samples), "seconds": wall / 1e9},
        "end_to_end_throughput": {"items_per_s": batch * len(samples) / (wall / 1e9)},
        "preprocess_ms": latency_stats(pre_ns),
        "compute_in_end_to_end_ms": latency_stats(compute_ns),
    }


# -- artifacts ----------------------------------------------------------------------------------------------------
def backend_class(name: str) -> type:
    """The registered backend class for ``name``, once its runtime library is known to be installed.

    The backend declares its library, its extra and its formats (:class:`~edgeslim.runtime.base.Backend`); this
    asks it rather than keeping its own table.

    Raises:
        UnknownNameError: no such backend (with the closest known name).
        MissingDependencyError: the backend's runtime library is not installed (names the extra).
    """
    cls = _registered(name)
    cls.require_library()
    return cls


def _registered(name: str) -> Any:
    importlib.import_module("edgeslim.runtime")  # registers every backend; none imports its library yet
    from ..runtime.base import BACKENDS

    return BACKENDS.get(name)


def _progress_printer(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return lambda msg: None


def profile_artifact(
    artifact_dir: str | os.PathLike,
    *,
    backends: Iterable[str] = ("onnxruntime", "openvino"),
    precisions: Iterable[str] | None = None,
    cfg: ProfileConfig | None = None,
    threads: int | None = None,
    progress: bool | Callable[[str], None] = True,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    images: Sequence[Any] | None = None,
    device_state: dict[str, Any] | None = None,
    power: Any = None,
    layers: bool = False,
) -> list[dict[str, Any]]:
    """Profile every model file of an artifact on every requested backend and batch size.

    ONNX files run on onnxruntime, OpenVINO IRs on openvino (each backend runs the formats it declares).
    A model that fails to load or run, or a backend whose library is missing, gives an entry with
    ``status`` ``"failed"`` / ``"skipped"`` and the error message; the other entries are kept.

    Args:
        artifact_dir: an artifact directory (``manifest.json`` + model files); integrity is verified.
        backends: backend names from :data:`edgeslim.runtime.BACKENDS`.
        precisions: keep only these precisions (default: all the artifact has).
        cfg: warm-up and window lengths, batch sizes.
        threads: intra-op threads for every backend (None: the backend's default).
        progress: print one line per entry to stderr, or a callable receiving those lines.
        data: ``(inputs float32 NCHW, labels int)`` labelled samples: adds accuracy, per-class recall and the
            critical classes' FN / FNR / AUC, with deltas against the FP32 entry on the same samples.
        images: encoded images for end-to-end timing (with ``cfg.end_to_end``).
        device_state: the target's state to record (e.g. from :func:`edgeslim.devices.detect`); default: CPU.
        power: a power reader (``start()`` / ``stop()``) wrapped around each measured window.
        layers: also read the runner's per-layer times (:func:`edgeslim.devices.layers.layer_profile`) into each
            entry's ``layer_profile``, after its latency window (the profiling copy never slows the measured one).

    Returns:
        One entry per (model file, backend, batch), each with ``status``, ``conditions`` and the
        :func:`profile_backend` measurements.

    Raises:
        ArtifactError: missing or tampered artifact.
        UnknownNameError: an unknown backend name (with did-you-mean).
        ConfigError: no model file in the artifact matches the backends / precisions asked for.
        DataError: ``data`` does not match the model's input or classes.
    """
    from ..artifact import load_manifest
    from ..runtime.base import BackendOptions

    cfg = cfg or ProfileConfig()
    say = _progress_printer(progress)
    artifact_dir = Path(artifact_dir)
    manifest = load_manifest(artifact_dir)
    backends = list(backends)
    if not backends:
        raise ConfigError("backends is empty; name at least one, e.g. backends=('onnxruntime',)")

    # Resolve names first so a typo fails before minutes of measuring.
    resolved: dict[str, type | EdgeslimError] = {}
    formats: dict[str, tuple[str, ...]] = {}
    for b in backends:
        formats[b] = tuple(_registered(b).formats)  # also for one not installed: the report says why it is missing
        try:
            resolved[b] = backend_class(b)
        except MissingDependencyError as exc:
            resolved[b] = exc
    if data is not None:
        _check_data(data, manifest)

    wanted_prec = None if precisions is None else {p.lower() for p in precisions}
    if wanted_prec is not None:
        have = {m.precision for m in manifest.models}
        if not wanted_prec & have:
            raise ConfigError(
                f"artifact '{manifest.name}' has no model in precision {sorted(wanted_prec)}; it has {sorted(have)}"
            )

    plan: list[tuple[Any, str, type | EdgeslimError]] = []
    for m in manifest.models:
        if wanted_prec is not None and m.precision.lower() not in wanted_prec:
            continue
        for b, cls in resolved.items():
            if m.format in formats[b]:
                plan.append((m, b, cls))
    if not plan:
        have = ", ".join(f"{m.format}/{m.precision}" for m in manifest.models) or "none"
        from ..runtime.runners import default_runner_names

        runs_on = ", ".join(f"{fmt} runs on {name}" for fmt, name in default_runner_names().items())
        raise ConfigError(
            f"no model in artifact '{manifest.name}' (it has: {have}) runs on backends {backends}; {runs_on}"
        )

    cpu = cpu_info()
    device = device_state or {"kind": "cpu", "cpu": cpu["model"]}
    entries: list[dict[str, Any]] = []
    total = len(plan) * len(cfg.batch_sizes)
    step = 0
    for m, b, cls in plan:
        base = {
            "artifact": manifest.name,
            "model": {
                "path": m.path,
                "format": m.format,
                "precision": m.precision,
                "sha256": manifest.files.get(m.path) or _sha_of_dir_model(manifest, m.path),
            },
            "backend": {"name": b, "version": None},
        }
        if m.precision == "int8" and m.extra.get("int8_scheme"):
            from ..hardware import scheme_mismatch

            scheme = m.extra["int8_scheme"]
            base["model"]["made_for"] = scheme.get("target")
            foreign = scheme_mismatch(scheme)
            if foreign:
                base["model"]["foreign_target"] = foreign
        if isinstance(cls, EdgeslimError):
            for batch in cfg.batch_sizes:
                step += 1
                say(f"[{step}/{total}] {m.path} on {b} batch {batch}: skipped ({cls})")
                entries.append({**base, "status": "skipped", "error": str(cls), "batch": batch})
            continue
        options = BackendOptions(threads=threads)
        try:
            t0 = time.perf_counter()
            backend = cls(artifact_dir / m.path, options)
            load_s = time.perf_counter() - t0
        except EdgeslimError as exc:
            for batch in cfg.batch_sizes:
                step += 1
                say(f"[{step}/{total}] {m.path} on {b} batch {batch}: failed to load ({exc})")
                entries.append({**base, "status": "failed", "error": str(exc), "batch": batch})
            continue
        with backend:
            base["backend"]["version"] = backend.version()
            accuracy = None
            if data is not None:
                try:
                    # scored as deployed: at this file's own thresholds where it has them
                    accuracy = _accuracy(backend, data, manifest.deployed_as(m))
                except EdgeslimError as exc:
                    accuracy = {"error": str(exc)}
            for batch in cfg.batch_sizes:
                step += 1
                say(f"[{step}/{total}] {m.path} ({m.precision}) on {b} batch {batch} ...")
                conditions = {
                    "threads": threads,
                    "device": device,
                    "cpu": cpu,
                    "config": cfg.to_dict(),
                    "python": platform.python_version(),
                }
                try:
                    result = profile_backend(
                        backend,
                        batch=batch,
                        cfg=cfg,
                        images=images,
                        preprocessing=manifest.preprocessing,
                        load_seconds=load_s,
                        power=power,
                    )
                except EdgeslimError as exc:
                    say(f"[{step}/{total}] {m.path} on {b} batch {batch}: failed ({exc})")
                    entries.append({**base, "status": "failed", "error": str(exc), "batch": batch, "conditions": conditions})
                    continue
                if cfg.throughput and (hasattr(cls, "run_async_window") or hasattr(cls, "infer_async_many")):
                    try:
                        result["throughput_mode"] = async_throughput(
                            cls, artifact_dir / m.path, batch=batch, cfg=cfg, threads=threads, backend_name=b
                        )
                    except EdgeslimError as exc:
                        result["throughput_mode"] = {"mode": "async", "error": str(exc)}
                entry = {**base, "status": "ok", "conditions": conditions, **result}
                if layers:
                    from .layers import layer_profile

                    entry["layer_profile"] = layer_profile(backend, result["input_shape"], backend.inputs[0].dtype,
                                                           end_to_end_ms=result["latency_ms"]["median"])
                if accuracy is not None:
                    entry["accuracy"] = accuracy
                lat = result["latency_ms"]
                say(
                    f"[{step}/{total}] {m.path} ({m.precision}) on {b} batch {batch}: median {lat['median']:.3f} ms,"
                    f" p90 {lat['p90']:.3f} ms, {result['throughput']['items_per_s']:.1f} items/s"
                )
                entries.append(entry)
    if data is not None:
        add_accuracy_deltas(entries)
    return entries


def runner_for(fmt: str, prefer: Sequence[str] = ()) -> tuple[str | None, type | EdgeslimError]:
    """The backend that runs model files of format ``fmt``: the first of ``prefer`` that declares it, else the
    first registered one. ``(name, class)``, the class replaced by the reason when its library is missing, and
    ``(None, error)`` when no backend runs the format."""
    importlib.import_module("edgeslim.runtime")
    from ..runtime.base import BACKENDS

    names = [BACKENDS.canonical(b) for b in prefer if fmt in _registered(b).formats]
    names += [b for b in BACKENDS.names() if b not in names and fmt in BACKENDS.get(b).formats]
    if not names:
        return None, ConfigError(f"no runtime backend runs format '{fmt}'")
    try:
        return names[0], backend_class(names[0])
    except MissingDependencyError as exc:
        return names[0], exc


def score_artifact(
    artifact_dir: str | os.PathLike,
    splits: "dict[str, tuple[np.ndarray, np.ndarray]]",
    *,
    backends: Sequence[str] = (),
    threads: int | None = None,
    skip_formats: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Accuracy of every model file of an artifact on each labelled split, each file measured by the runtime that
    runs it (never by another file or by the training framework), at the file's own deployed thresholds under the
    manifest's decision rule, on the same preprocessed samples for every file.

    Args:
        artifact_dir: the artifact.
        splits: split name -> ``(inputs float32 NCHW, labels)``, e.g. ``{"val": ..., "test": ...}``.
        backends: preferred backends (e.g. the profile's): a file runs on the first of them that takes its format,
            else on the registered backend of its format, whether or not it is timed.
        threads: intra-op threads.
        skip_formats: formats not scored (e.g. ``("torch",)``).

    Returns:
        ``{model path: {"format", "precision", "measured_by": backend or None, "splits": {name: accuracy dict},
        "error": why it was not measured (only when it was not)}}``.
    """
    from ..artifact import load_manifest
    from ..runtime.base import BackendOptions

    artifact_dir = Path(artifact_dir)
    manifest = load_manifest(artifact_dir)
    for data in splits.values():
        _check_data(data, manifest)
    out: dict[str, dict[str, Any]] = {}
    for m in manifest.models:
        if m.format in skip_formats:
            continue
        row: dict[str, Any] = {"format": m.format, "precision": m.precision, "measured_by": None, "splits": {}}
        out[m.path] = row
        name, cls = runner_for(m.format, backends)
        if isinstance(cls, EdgeslimError):
            row["error"] = str(cls)
            continue
        try:
            with cls(artifact_dir / m.path, BackendOptions(threads=threads)) as backend:
                deployed = manifest.deployed_as(m)
                for split, data in splits.items():
                    row["splits"][split] = _accuracy(backend, data, deployed)
            row["measured_by"] = name
        except EdgeslimError as exc:
            row["splits"] = {}
            row["error"] = f"{name}: {exc}"
    return out


def _sha_of_dir_model(manifest: Any, path: str) -> str | None:
    # An OpenVINO model is listed by its .xml; its weights are the .bin beside it. Record both hashes.
    if path.endswith(".xml"):
        xml = manifest.files.get(path)
        bin_ = manifest.files.get(path[:-4] + ".bin")
        return xml if bin_ is None else f"{xml}+{bin_}"
    return None


# -- accuracy -----------------------------------------------------------------------------------------------------
def _check_data(data: Any, manifest: Any) -> None:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise DataError("data must be a pair (inputs float32 NCHW array, labels int array)")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim != 4 or x.dtype != np.float32:
        raise DataError(f"data inputs must be float32 NCHW; got dtype {x.dtype}, shape {list(x.shape)}")
    want = manifest.input.shape[1:]
    if any(w != -1 and w != a for w, a in zip(want, x.shape[1:])):
        raise DataError(
            f"data inputs have shape {list(x.shape)} but model '{manifest.name}' takes {manifest.input.shape}"
            " (-1 = any); preprocess with the artifact's preprocessing"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"labels must be one integer per input: {x.shape[0]} inputs, labels of shape {list(y.shape)}")
    if y.size == 0:
        raise DataError("data is empty: no labelled samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integer class indices, got dtype {y.dtype}")
    n = len(manifest.classes)
    bad = sorted({int(v) for v in y if v < 0 or v >= n})
    if bad:
        raise DataError(
            f"labels {bad[:10]} are outside the model's {n} classes ({', '.join(manifest.classes[:5])}"
            f"{', ...' if n > 5 else ''}); the dataset's classes do not match the model"
        )


def _accuracy(backend: Any, data: tuple[np.ndarray, np.ndarray], manifest: Any) -> dict[str, Any]:
    from ..scoring import score

    x, y = np.asarray(data[0], dtype=np.float32), np.asarray(data[1])
    spec = backend.inputs[0]
    fixed = spec.shape[0] if spec.shape and spec.shape[0] != -1 else None
    chunk = fixed or 32
    logits = []
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk]
        pad = 0
        if fixed and len(part) < fixed:  # a fixed-batch model: pad the last chunk, drop the padding after
            pad = fixed - len(part)
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        out = backend.infer({spec.name: np.ascontiguousarray(part)})
        o = out.get("logits", next(iter(out.values())))
        logits.append(o[: len(o) - pad] if pad else o)
    z = np.concatenate(logits)
    if z.ndim != 2 or z.shape[1] != len(manifest.classes):
        raise DataError(f"model output has shape {list(z.shape)}; expected (N, {len(manifest.classes)}) logits")
    # deployed decisions: the manifest's critical-class thresholds under its rule, as in the runtime and the server
    metrics = score(z, y, manifest)
    d = metrics.to_dict()
    d["samples"] = int(len(y))
    return d


def add_accuracy_deltas(entries: list[dict[str, Any]]) -> None:
    """Add ``accuracy_delta`` to every entry with accuracy: its difference to the FP32 reference entry.

    The reference is another FP32 run on the same backend, else another FP32 run, else the entry itself (same
    samples). Deltas are
    ``this - reference`` for top-1 accuracy, per-class recall and the critical classes' FN / FNR / AUC.
    """
    with_acc = [e for e in entries if isinstance(e.get("accuracy"), dict) and "accuracy" in e["accuracy"]]
    fp32 = [r for r in with_acc if r["model"]["precision"] == "fp32"]
    for e in with_acc:
        same = lambda r, e=e: (r["model"]["path"], r["backend"]["name"]) == (e["model"]["path"], e["backend"]["name"])  # noqa: E731
        # Prefer a different FP32 run on the same backend, then any other FP32 run (an FP32 model on a second
        # backend is compared with the first, which shows cross-backend drift), then itself.
        ref = (
            next((r for r in fp32 if r["backend"]["name"] == e["backend"]["name"] and not same(r)), None)
            or next((r for r in fp32 if not same(r)), None)
            or next((r for r in fp32 if same(r)), None)
        )
        if ref is None:
            e["accuracy_delta"] = {"reference": None, "reason": "no fp32 model in the artifact to compare against"}
            continue
        e["accuracy_delta"] = accuracy_delta(e["accuracy"], ref["accuracy"])
        e["accuracy_delta"]["reference"] = f"{ref['model']['path']} on {ref['backend']['name']}"


def accuracy_delta(acc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """``acc - ref`` for accuracy, per-class recall and critical FN / FNR / AUC (both from ``to_dict()``)."""
    out: dict[str, Any] = {"accuracy": _sub(acc.get("accuracy"), ref.get("accuracy"))}
    pa, pr = _per_class(acc), _per_class(ref)
    out["per_class_recall"] = {k: _sub(pa.get(k), pr.get(k)) for k in pa}
    ca, cr = acc.get("critical_stats") or {}, ref.get("critical_stats") or {}
    out["critical"] = {
        str(k): {f: _sub(v.get(f), (cr.get(k) or {}).get(f)) for f in ("fn", "fnr", "fpr", "auc")} for k, v in ca.items()
    }
    return out


def _per_class(acc: dict[str, Any]) -> dict[str, Any]:
    pc = acc.get("per_class") or {}
    if isinstance(pc, list):
        return {str(i): v for i, v in enumerate(pc)}
    return {str(k): (v.get("recall") if isinstance(v, dict) else v) for k, v in pc.items()}


def _sub(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) - float(b)
    return None
