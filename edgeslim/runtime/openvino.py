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
    requests: number of infer requests for :meth:`OpenVINOBackend.infer_async_many`
        (default: the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``).
"""

from __future__ import annotations

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

    def _load(self) -> None:
        ov = require("openvino", purpose="the openvino backend")
        extra = dict(self.options.extra)
        for key in extra:
            if key not in _EXTRA_KEYS:
                raise ConfigError(
                    f"openvino backend: unknown option '{key}'.{did_you_mean(key, _EXTRA_KEYS)}"
                    f" Known: {', '.join(_EXTRA_KEYS)}"
                )
        if not self.path.is_file():
            raise BackendError(
                f"OpenVINO model {self.path} does not exist; check the path, or re-export the artifact with"
                " `edgeslim export ARTIFACT --to openvino`"
            )
        if self.path.suffix == ".xml" and not self.path.with_suffix(".bin").is_file():
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
            model = core.read_model(str(self.path))
        except Exception as exc:  # openvino raises RuntimeError subclasses with the frontend's message
            from .onnxruntime import explain_load_error

            raise BackendError(explain_load_error(self.path, "OpenVINO", exc)) from exc
        try:
            self._compiled = core.compile_model(model, self.device, config)
            self._request = self._compiled.create_infer_request()
        except Exception as exc:
            raise BackendError(f"OpenVINO could not compile {self.path} for {self.device} with {config}: {exc}") from exc
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

    def _feed_by_port(self, feeds: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        return {i: feeds[spec.name] for i, spec in enumerate(self.inputs)}

    def _collect(self, results: Any) -> dict[str, np.ndarray]:
        # Copy: the request's output tensors are reused by the next inference.
        return {spec.name: np.array(results[port], copy=True) for spec, port in zip(self.outputs, self._out_ports)}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_open()
        try:
            with self._lock:
                return self._collect(self._request.infer(self._feed_by_port(feeds)))
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

    def _wait_async(self) -> None:
        # Leave no request running: a request must be idle before it, or its compiled model, is released.
        for request in self._async_requests:
            try:
                request.wait()
            except Exception:  # noqa: BLE001 - a failed request is idle too; the caller reports the first error
                pass

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
