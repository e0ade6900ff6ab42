"""OpenVINO backend: ``Core().compile_model`` on CPU / GPU / NPU / AUTO, sync and async-queue inference.

``options.extra`` keys:
    hint: performance hint ``"LATENCY"`` (default) | ``"THROUGHPUT"`` | ``"CUMULATIVE_THROUGHPUT"``.
    streams: ``NUM_STREAMS`` (an int or ``"AUTO"``).
    cache_dir: OpenVINO model cache directory (speeds up the second compile on GPU/NPU).
    config: further ``compile_model`` properties passed through unchanged.
    inference_precision: ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``, ``"f16"``, or ``"default"`` for the
        plugin's choice). Default ``"f32"`` on CPU (and AUTO/MULTI/HETERO): on CPUs with AMX or AVX512-BF16 the
        plugin otherwise runs FP32 models in bfloat16, which moves logits by ~1e-3 and shifts probabilities that
        the manifest's critical-class thresholds were calibrated on. Pass ``"bf16"`` for speed.
    requests: number of infer requests for :meth:`OpenVINOBackend.infer_async_many` and
        :meth:`OpenVINOBackend.run_async_window` (default: the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``).

:meth:`OpenVINOBackend.from_model` compiles an ``openvino.Model`` held in memory (with the options above), or adopts a
``CompiledModel`` as it was compiled (what NNCF's accuracy control hands its validation function).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import BackendError, ConfigError, require
from ..registry import did_you_mean
from .base import BACKENDS, Backend, TensorSpec

_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_EXTRA_KEYS = ("hint", "streams", "cache_dir", "config", "requests", "inference_precision")
# Virtual devices that take a device list after ':' and are resolved by OpenVINO itself.
_VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")


def ov_device(device: str, available: list[str]) -> str:
    """Map an edgeslim device string to an OpenVINO one and check it exists.

    ``cpu`` -> ``CPU``, ``gpu.1`` -> ``GPU.1``; ``AUTO``, ``AUTO:GPU,CPU``, ``MULTI:...`` and ``HETERO:...`` are
    passed through after checking the devices they list.

    Raises:
        BackendError: the device (or one listed after a virtual device) is not in ``available``.
    """
    dev = device.strip().upper()
    kind, _, listed = dev.partition(":")
    if kind in _VIRTUAL:
        wanted = [d for d in listed.split(",") if d] if listed else []
    else:
        wanted = [dev]
    families = {a.split(".")[0] for a in available}
    for d in wanted:
        if d not in available and d not in families:
            raise BackendError(
                f"OpenVINO device '{d}' is not available."
                f" Available: {', '.join(available) or 'none'} (or AUTO). Install the device's driver or pick another"
            )
    return dev


def _dims(partial_shape: Any) -> tuple[int, ...]:
    return tuple(-1 if d.is_dynamic else d.get_length() for d in partial_shape)


def _port_name(port: Any, fallback: str) -> str:
    # Models converted straight from PyTorch can have unnamed outputs; give them a stable positional name.
    names = port.get_names()
    return port.get_any_name() if names else fallback


@BACKENDS.register("openvino", aliases=("ov",))
class OpenVINOBackend(Backend):
    """Runs an OpenVINO IR (``.xml`` + ``.bin``) or any model file ``Core.read_model`` accepts."""

    name = "openvino"
    formats = ("openvino",)
    library = "openvino"
    extra = "serve"
    suffix = ".xml"
    triton_platform = None  # Triton names OpenVINO by its backend alone
    triton_backend = "openvino"
    triton_kind = "KIND_CPU"  # Triton's OpenVINO backend runs on the CPU only
    throughput_options = {"hint": "THROUGHPUT"}  # the plugin's streams and optimal number of requests

    @classmethod
    def classify_layer(cls, row: Mapping[str, Any]) -> str:
        """By the layer's type and its kernel name (oneDNN: ``brgconv_avx2_dw_f32``, ``jit_sse42_1x1``)."""
        e, t = str(row.get("exec", "")).lower(), str(row.get("type", "")).lower()
        if "groupconv" in t or "_dw" in e:
            return "dw"
        if "conv" in t:
            return "pw" if "1x1" in e else "conv"
        if t in ("fullyconnected", "matmul", "gemm"):
            return "fc"
        return "other"

    @classmethod
    def accepts(cls, model: object) -> bool:
        """An ``openvino.Model`` or an ``openvino.CompiledModel``."""
        return type(model).__name__ in ("Model", "CompiledModel") and type(model).__module__.startswith("openvino")

    def _load(self) -> None:
        if type(self.in_memory).__name__ == "CompiledModel":
            self._adopt(self.in_memory)
            return
        ov = require("openvino", extra="serve", purpose="the openvino backend")
        extra = dict(self.options.extra)
        for key in extra:
            if key not in _EXTRA_KEYS:
                raise ConfigError(
                    f"openvino backend: unknown option '{key}'.{did_you_mean(key, _EXTRA_KEYS)}"
                    f" Known: {', '.join(_EXTRA_KEYS)}"
                )
        if self.in_memory is None and not self.path.is_file():
            raise BackendError(
                f"OpenVINO model {self.path} does not exist; check the path, or re-export the artifact with"
                " `edgeslim export ARTIFACT --to openvino`"
            )
        if self.in_memory is None and self.path.suffix == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise BackendError(
                f"OpenVINO IR {self.path} has no weights file {self.path.with_suffix('.bin').name} beside it; copy"
                " the .bin with the .xml, or re-export with `edgeslim export ARTIFACT --to openvino`"
            )

        core = ov.Core()
        self.device = ov_device(self.options.device, list(core.available_devices))
        config: dict[str, Any] = {}
        hint = str(extra.get("hint", "LATENCY")).upper()
        if hint not in _HINTS:
            raise ConfigError(f"openvino hint '{hint}' is unknown.{did_you_mean(hint, _HINTS)} Use one of {', '.join(_HINTS)}")
        config["PERFORMANCE_HINT"] = hint
        if extra.get("streams") is not None:
            config["NUM_STREAMS"] = str(extra["streams"]).upper()
        if self.options.threads is not None:
            if not isinstance(self.options.threads, int) or self.options.threads < 1:
                raise ConfigError(f"threads must be a positive integer, got {self.options.threads!r}")
            # INFERENCE_NUM_THREADS is a CPU plugin property that GPU/NPU plugins reject: it applies to CPU and
            # to the virtual devices (which pass it on to their CPU) and is ignored for an explicit GPU/NPU.
            if self.device.partition(".")[0].partition(":")[0] in ("CPU", *_VIRTUAL):
                config["INFERENCE_NUM_THREADS"] = self.options.threads
        precision = extra.get("inference_precision")
        if precision is None and self.device.partition(".")[0].partition(":")[0] in ("CPU", *_VIRTUAL):
            precision = "f32"
        if precision is not None and str(precision).lower() != "default":
            config["INFERENCE_PRECISION_HINT"] = str(precision).lower()
        config.update(dict(extra.get("config") or {}))
        if extra.get("cache_dir"):
            core.set_property({"CACHE_DIR": str(extra["cache_dir"])})
        self._requested_jobs = extra.get("requests")

        try:
            model = self.in_memory if self.in_memory is not None else core.read_model(str(self.path))
        except Exception as exc:  # openvino raises RuntimeError subclasses with the frontend's message
            from .onnxruntime import explain_load_error

            raise BackendError(explain_load_error(self.path, "OpenVINO", exc)) from exc
        self._core, self._model, self._config = core, model, config  # for the profiling copy of layer_times
        try:
            self._compiled = core.compile_model(model, self.device, config)
            self._request = self._compiled.create_infer_request()
        except Exception as exc:
            raise BackendError(f"OpenVINO could not compile {self.path} for {self.device} with {config}: {exc}") from exc
        self._ports()

    def _adopt(self, compiled: Any) -> None:
        """Run a model compiled elsewhere as it is (its device and properties; no per-layer profiling copy)."""
        self._core, self._model, self._config = None, None, {}
        self._requested_jobs = dict(self.options.extra).get("requests")
        try:
            self.device = ",".join(str(d) for d in compiled.get_property("EXECUTION_DEVICES"))
        except Exception:  # noqa: BLE001 - a plugin that cannot say where it runs
            self.device = self.options.device.upper()
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._ports()

    def _ports(self) -> None:
        # One InferRequest is not re-entrant; the server may call infer from several threads.
        self._lock = threading.Lock()
        self._async_lock = threading.Lock()
        self._async_requests: list[Any] = []
        self._in_ports = list(self._compiled.inputs)
        self._out_ports = list(self._compiled.outputs)
        self.inputs = [
            TensorSpec(_port_name(p, f"input_{i}"), str(p.get_element_type().to_dtype()), _dims(p.get_partial_shape()))
            for i, p in enumerate(self._in_ports)
        ]
        self.outputs = [
            TensorSpec(_port_name(p, f"output_{i}"), str(p.get_element_type().to_dtype()), _dims(p.get_partial_shape()))
            for i, p in enumerate(self._out_ports)
        ]

    @property
    def optimal_requests(self) -> int:
        """``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` of the compiled model (1 under the LATENCY hint on CPU)."""
        self._check_open()
        return int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def _check_open(self) -> None:
        if self._compiled is None:
            raise BackendError(f"{self!r} is closed")

    def last_latency_ms(self) -> float | None:
        """OpenVINO's own latency of the last synchronous :meth:`infer` (``InferRequest.latency``, ms)."""
        return float(self._request.latency) if self._compiled is not None else None

    def _feed_by_port(self, feeds: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        return {i: feeds[spec.name] for i, spec in enumerate(self.inputs)}

    def _collect(self, results: Any) -> dict[str, np.ndarray]:
        # Copy: the request's output tensors are reused by the next inference.
        return {spec.name: np.array(results[port], copy=True) for spec, port in zip(self.outputs, self._out_ports)}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_open()
        try:
            with self._lock:
                # share_inputs: OpenVINO reads the (checked, contiguous) arrays in place instead of copying them
                # into its tensors; safe in a synchronous call, and 0.25 ms less per call on a 224x224 input
                return self._collect(self._request.infer(self._feed_by_port(feeds), share_inputs=True))
        except Exception as exc:
            raise BackendError(f"OpenVINO failed to run {self.path.name}: {exc}") from exc

    def infer_async_many(
        self, batches: Iterable[Mapping[str, np.ndarray] | np.ndarray], *, jobs: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Run many inputs on several infer requests at once and return the outputs in input order.

        This is the throughput path (compile with ``hint="THROUGHPUT"``): as many as ``jobs`` requests are in
        flight (default: the ``requests`` option, else :attr:`optimal_requests`). The requests are created once and
        reused by later calls; they are driven round-robin from the calling thread (start, then wait for the
        oldest and read its outputs before giving it the next input), so no Python code runs on OpenVINO's threads.

        Why not ``AsyncInferQueue`` with a Python callback: with OpenVINO 2026.4 a THROUGHPUT model driven that way
        aborts the process at exit ("terminate called ... Resource deadlock avoided") or hangs, even with a no-op
        callback; the same model driven without Python callbacks does not.

        Raises:
            InputError: any input fails the same checks as :meth:`infer` (checked before anything runs).
            BackendError: the model is closed, or OpenVINO failed (every request is idle again when it is raised).
        """
        self._check_open()
        feeds = [self._feed_by_port(self.check_feeds(b)) for b in batches]
        if not feeds:
            return []
        n = int(jobs or self._requested_jobs or self.optimal_requests)
        if n < 1:
            raise ConfigError(f"jobs must be >= 1, got {n}")
        n = min(n, len(feeds))
        results: list[dict[str, np.ndarray] | None] = [None] * len(feeds)
        with self._async_lock:
            self._check_open()
            try:
                while len(self._async_requests) < n:
                    self._async_requests.append(self._compiled.create_infer_request())
                requests = self._async_requests[:n]
                for i, feed in enumerate(feeds):
                    request = requests[i % n]
                    if i >= n:  # the request still holds input i - n: finish it before reusing the request
                        request.wait()
                        results[i - n] = self._collect(request.results)
                    request.start_async(feed)
                for i in range(max(len(feeds) - n, 0), len(feeds)):
                    request = requests[i % n]
                    request.wait()
                    results[i] = self._collect(request.results)
            except Exception as exc:
                self._wait_async()
                raise BackendError(f"OpenVINO async inference of {self.path.name} failed: {exc}") from exc
        return results  # type: ignore[return-value]

    def run_async_window(
        self,
        feeds: Mapping[str, np.ndarray] | np.ndarray,
        *,
        min_iterations: int,
        min_seconds: float,
        warmup: int = 0,
        warmup_seconds: float = 0.0,
        jobs: int | None = None,
    ) -> dict[str, Any]:
        """Keep ``jobs`` infer requests busy on one input for a measured window: the throughput measurement.

        This is the loop of ``benchmark_app -api async`` in its default inference-only mode
        (``openvino/tools/benchmark/benchmark.py``), so both report the same figures: every request gets the input
        once; one first inference runs apart; then (after an optional warm-up of ``warmup`` requests and
        ``warmup_seconds``) the window starts whichever request is idle (``AsyncInferQueue.get_idle_request_id`` +
        ``start_async``) until at least ``min_iterations`` requests and ``min_seconds`` have passed, rounded up to
        a multiple of the number of requests, then waits for all of them. The window's wall time includes that
        final wait; each request's latency is OpenVINO's own ``InferRequest.latency``.

        ``AsyncInferQueue`` without a Python callback is safe here: its built-in callbacks never take the GIL,
        unlike the user-callback path that aborted at exit (see :meth:`infer_async_many`).

        Returns:
            ``requests``, ``inferences`` (requests completed in the window), ``seconds`` (its wall time),
            ``latencies_ms`` (per request), ``first_inference_ms`` and ``warmup`` (``iterations``, ``seconds``).

        Raises:
            InputError: ``feeds`` fail the checks of :meth:`infer`.
            BackendError: the model is closed, or OpenVINO failed.
        """
        import time

        ov = require("openvino", extra="serve", purpose="the openvino backend")
        self._check_open()
        feed = self._feed_by_port(self.check_feeds(feeds))
        n = int(jobs or self._requested_jobs or self.optimal_requests)
        if n < 1:
            raise ConfigError(f"jobs must be >= 1, got {n}")
        clock = time.perf_counter

        def window(queue: Any, min_iters: int, seconds: float, latencies: list[float] | None) -> tuple[int, float]:
            started, in_flight = 0, set()
            start = clock()
            while started < min_iters or clock() - start < seconds or started % n:
                idle = queue.get_idle_request_id()
                if idle in in_flight and latencies is not None:
                    latencies.append(queue[idle].latency)
                in_flight.add(idle)
                queue.start_async()
                started += 1
            queue.wait_all()
            wall = clock() - start
            if latencies is not None:
                latencies.extend(queue[i].latency for i in in_flight)
            return started, wall

        with self._async_lock:
            self._check_open()
            queue = ov.AsyncInferQueue(self._compiled, n)
            try:
                for i in range(len(queue)):
                    for port, arr in feed.items():
                        queue[i].set_input_tensor(port, ov.Tensor(arr))  # a copy per request, set once
                first = queue.get_idle_request_id()
                queue.start_async()
                queue.wait_all()
                first_ms = queue[first].latency
                warm_iters, warm_s = 0, 0.0
                if warmup > 0 or warmup_seconds > 0:
                    warm_iters, warm_s = window(queue, warmup, warmup_seconds, None)
                latencies: list[float] = []
                done, wall = window(queue, max(1, min_iterations), min_seconds, latencies)
            except Exception as exc:
                raise BackendError(f"OpenVINO async inference of {self.path.name} failed: {exc}") from exc
            finally:
                # Every request idle before the queue (and later the compiled model) is released.
                with contextlib.suppress(Exception):
                    queue.wait_all()
                del queue
        return {
            "requests": n,
            "inferences": done,
            "seconds": wall,
            "latencies_ms": latencies,
            "first_inference_ms": first_ms,
            "warmup": {"iterations": warm_iters, "seconds": warm_s},
        }

    def compiled_properties(self) -> dict[str, str]:
        """Every property of the compiled model as the string ``benchmark_app`` prints for it (its step 8).

        Streams, threads, inference precision, pinning: the settings a measurement ran with, comparable key by key
        with another tool's run of the same IR.
        """
        self._check_open()
        keys = [k for k in self._compiled.get_property("SUPPORTED_PROPERTIES") if k != "SUPPORTED_PROPERTIES"]
        out = {}
        for key in keys:
            try:
                out[key] = str(self._compiled.get_property(key))
            except Exception:  # noqa: BLE001 - a property a plugin lists but cannot report is left out
                continue
        return out

    def _wait_async(self) -> None:
        # Leave no request running: a request must be idle before it, or its compiled model, is released.
        for request in self._async_requests:
            try:
                request.wait()
            except Exception:  # noqa: BLE001 - a failed request is idle too; the caller reports the first error
                pass

    def _layer_times(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """OpenVINO's per-layer counters: the same model compiled again with the same properties and
        ``PERF_COUNT``, 3 warm-up runs, then ``get_profiling_info()`` after each of ``runs`` inferences. Layers
        that did not run (0 ms: constants, reorders folded away) are left out."""
        from .base import median_layer_rows

        self._check_open()
        if self._model is None:
            raise BackendError(f"{self!r} runs a model compiled elsewhere: per-layer times need the model itself")
        try:
            # a compiled model of its own: the loaded one never carries the counters (nor their overhead)
            request = self._core.compile_model(
                self._model, self.device, {**self._config, "PERF_COUNT": True}
            ).create_infer_request()
            by_port = self._feed_by_port(feeds)
            for _ in range(3):
                request.infer(by_port)
            acc: dict[str, dict[str, Any]] = {}
            for _ in range(runs):
                request.infer(by_port)
                for p in request.get_profiling_info():
                    row = acc.setdefault(p.node_name, {"name": p.node_name, "type": p.node_type,
                                                       "exec": p.exec_type, "ms": []})
                    row["ms"].append(p.real_time.total_seconds() * 1e3)
        except Exception as exc:
            raise BackendError(f"OpenVINO failed to profile {self.path.name} on {self.device}: {exc}") from exc
        return [r for r in median_layer_rows(acc) if r["ms"] > 0]

    def version(self) -> str:
        import openvino

        return openvino.__version__

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["ov_device"] = getattr(self, "device", None)
        return meta

    def close(self) -> None:
        # Release in dependency order: idle requests first, then the compiled model they belong to.
        if getattr(self, "_compiled", None) is None:
            return
        with self._async_lock, self._lock:
            self._wait_async()
            self._async_requests = []
            self._request = None
            self._compiled = None
            self._model = None
