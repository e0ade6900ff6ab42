"""The measurement of one loaded backend: latency, throughput and memory over a timed window.

Conventions follow OpenVINO ``benchmark_app``, ``trtexec`` and ``onnxruntime_perf_test`` (see
``docs/profiling.md``): a warm-up that is not measured, then a measured window of at least N iterations AND at
least T seconds, each call timed with :func:`time.perf_counter_ns`; first-inference and load time reported apart;
percentiles over the per-call latencies; throughput = items / wall time of the window. The throughput mode runs the
options the runner declares for it (``Backend.throughput_options``). :mod:`edgeslim.devices.profiler` runs this on
every file of an artifact and records the conditions.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..runtime.runners import DerivedTable

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


def paired_latency(backends: Sequence[Any], *, batch: int = 1, rounds: int = 10, calls: int = 20,
                   warmup: int = 10, turn_warmup: int = 5) -> list[dict[str, Any]]:
    """Batch-``batch`` latency of several loaded backends measured side by side: ``rounds`` rounds in which each
    backend in turn makes ``turn_warmup`` untimed calls, then ``calls`` timed calls, so every one sees the same state
    of the host.

    A 2-core VM drifts by a quarter between windows minutes apart; one window after another compares that drift, not
    the files. Interleaved windows cancel it in the ratios (``benchmark_app`` and ``trtexec`` time one model per
    run, hence a helper of our own). The first calls after a switch are slow while caches and the runtime's threads
    warm again (OpenVINO on the VNNI host: 5.4, 4.5, 4.2, 3.9 ms, then 3.6 ms steady, for the FP32 ELPV model), and a
    large model pays more than a small one: timed, they would land in the p90 and favour the small model; a device
    runs one model continuously, so they are not timed. Each backend gets its own fixed-seed input, as
    :func:`profile_backend` feeds.

    Returns:
        Per backend, in order: ``latency_ms`` (:func:`latency_stats` over its ``rounds * calls`` calls) and
        ``ratio`` (the first backend's median over this one's: the speed-up against the first).

    Raises:
        ConfigError: no backends, or rounds / calls / warmup out of range.
    """
    if not backends:
        raise ConfigError("paired_latency needs at least one backend")
    for name, v, low in (("rounds", rounds, 1), ("calls", calls, 1), ("warmup", warmup, 0), ("turn_warmup", turn_warmup, 0)):
        if not isinstance(v, int) or v < low:
            raise ConfigError(f"paired_latency {name} must be an integer >= {low}, got {v!r}")
    feeds = []
    for b in backends:
        name, shape, dtype = _resolve_shape(b, batch, None)
        feeds.append({name: np.random.default_rng(0).standard_normal(shape).astype(dtype)})
    for b, f in zip(backends, feeds):
        for _ in range(max(1, warmup)):
            b.infer(f)
    samples: list[list[int]] = [[] for _ in backends]
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for b, f, out in zip(backends, feeds, samples):
            for _ in range(turn_warmup):
                b.infer(f)
            for _ in range(calls):
                t0 = clock()
                b.infer(f)
                out.append(clock() - t0)
    stats = [latency_stats(s) for s in samples]
    return [{"latency_ms": st, "ratio": stats[0]["median"] / st["median"]} for st in stats]


def _throughput_options() -> dict[str, dict[str, Any]]:
    from ..runtime import runners

    return {cls.name: dict(cls.throughput_options) for cls in runners() if cls.throughput_options}


#: Options that put a backend in its throughput mode (several requests in flight, streams): what each runner
#: declares as ``throughput_options`` (OpenVINO: ``hint=THROUGHPUT``)
THROUGHPUT_OPTIONS: Mapping[str, dict[str, Any]] = DerivedTable(_throughput_options, "runtime backend -> throughput options")


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
        backend_name: registry name of ``cls`` (for a class that does not declare ``throughput_options``: its key
            into :data:`THROUGHPUT_OPTIONS`).
        requests: requests in flight (default: the backend's optimal number).
        options: further backend options over the runner's ``throughput_options`` (e.g. ``{"streams": 2}``).
    """
    from ..runtime.base import BackendOptions

    name = backend_name or getattr(cls, "name", "")
    declared = getattr(cls, "throughput_options", None)
    extra = {**(dict(declared) if declared is not None else THROUGHPUT_OPTIONS.get(name, {})), **(options or {})}
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
