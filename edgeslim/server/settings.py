"""``ServerSettings``: everything ``edgeslim serve`` can be told, validated on construction."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from ..errors import ConfigError

#: Model names the server accepts, at load time and in URLs (no path separators, no "..").
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_NONFINITE = ("reject", "allow")
_MODEL_CONTROL = ("none", "explicit")
#: Bind addresses only this machine reaches.
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: backend name meaning "the file each artifact's manifest recommends" (Manifest.recommended), else DEFAULT_BACKEND
RECOMMENDED = "recommended"
DEFAULT_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class ServerSettings:
    """How to serve one or several artifacts.

    Args:
        models: artifact directories, or directories whose sub-directories are artifacts (each holds a
            ``manifest.json``). Every model is served under its manifest ``name``.
        backend: runtime backend for every model (``openvino``, ``onnxruntime``, ``tensorrt``, ``torch``), or
            ``recommended`` (the default): the backend of the file each artifact's manifest recommends for this
            target (written by ``edgeslim pipeline``), else onnxruntime.
        model_backends: per-model override, ``{model name: backend}``.
        backend_options: backend-specific options per backend name, passed to :func:`edgeslim.runtime.load`,
            e.g. ``{"onnxruntime": {"session_config": {"session.intra_op.allow_spinning": "0"}},
            "openvino": {"hint": "THROUGHPUT", "streams": 2}}``. Build it from ``KEY=VALUE`` strings with
            :func:`parse_backend_options`. For onnxruntime the server turns thread spinning off unless these
            options set ``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning`` themselves
            (spinning threads compete with the request path for the cores).
        precision: model precision to load (``fp32``/``fp16``/``int8``); None picks the most precise one.
        device: backend device string (``cpu``, ``cuda:0``, ``GPU``, ...).
        threads: intra-op threads per model (None: the backend's default).
        inference_cpus: CPU indices the models' inference runs on (Linux): each model's inference thread and the
            runtime threads created while loading are pinned there, while the HTTP event loop keeps the process's
            other CPUs, e.g. the little cores of a big.LITTLE board, or cores left free of inference. None: no pinning.
        host: bind address. The default only accepts connections from this machine.
        port: TCP port.
        max_batch: largest batch (in items, summed over requests) one execution may run; also the largest batch
            a single request may send. Triton's ``max_batch_size``.
        dynamic_batching: combine queued requests into one execution (Triton's ``dynamic_batching``). When off,
            every request runs alone.
        batch_delay_ms: how long the oldest queued request may wait for others to join its batch
            (Triton's ``max_queue_delay_microseconds``, in milliseconds). 0 runs whatever is queued at once.
        preferred_batch_sizes: batch sizes that run at once without waiting for the delay.
        queue_size: requests that may wait per model; when full, new requests get 503 with ``Retry-After``.
        request_timeout_s: longest a request may wait for its answer (queue + compute), else 504. A smaller
            ``parameters.timeout`` (microseconds) in the request wins.
        token: if set, every route except ``/v2/health/*`` requires ``Authorization: Bearer <token>``.
        max_body_bytes: largest request body accepted, before and after ``Content-Encoding`` decompression.
        nonfinite: ``"reject"`` answers 400 to NaN/Inf in floating-point inputs; ``"allow"`` passes them on.
        graceful_timeout_s: on shutdown, how long to wait for in-flight requests before closing connections.
        verify: check every artifact file against the sha256 in its manifest at load time.
        log_level: uvicorn log level.
        shared_memory: enable the system shared-memory extension (:mod:`edgeslim.server.sharedmem`): clients on
            this machine pass tensors through /dev/shm instead of the body. Off by default: a registered region
            lets clients make the server read and write that segment with its own permissions.
        inline_when_idle: a request that finds the server otherwise empty (no other request in flight, nothing
            queued or executing) runs at once in the event loop's thread, skipping the hand-off to the inference
            thread and back (:mod:`edgeslim.server.batcher`). CPU backends without a batching delay
            (``dynamic_batching`` off or ``batch_delay_ms`` 0) only; off when ``inference_cpus`` pins inference.
        busy_poll_us: once no request is in flight, keep the event loop polling its sockets for this many
            microseconds before it sleeps (:class:`~edgeslim.server.app.BusyPoller`). A client that sends its next
            request within that time has it read at once, by a CPU that never went idle: no wake-up from an idle
            state, caches not handed to other work (on the bench VM an idle CPU made the next request and its
            model run 0.3-0.5 ms slower). The cost is one core busy for that long after each burst of traffic,
            which is why it is 0 (off) by default: edge devices are often on battery or thermally limited. The
            same trade as Linux's ``net.core.busy_poll``, ONNX Runtime's thread spinning or TensorRT's
            ``--useSpinWait``.
        model_control: ``"none"`` (default) serves the artifacts given at start, as Triton's
            ``--model-control-mode=none``; ``"explicit"`` also accepts ``POST /v2/repository/models/{m}/load`` and
            ``.../unload`` (Triton's explicit mode): reload an artifact from ``models`` by name, or upload one in
            the request (Triton's ``"file:<path>"`` parameters, which ``tritonclient``'s ``load_model(files=...)``
            sends), so a search on a laptop can measure candidates on this device. Off a loopback address it needs
            a ``token``: an upload makes the device parse files a client sent.
        upload_dir: where uploaded artifacts are written (None: a temporary directory removed at shutdown).
        max_upload_bytes: largest load request body (the files are base64 in JSON, 4/3 of their size).
        grpc_port: also serve the protocol over gRPC (``inference.GRPCInferenceService``,
            :mod:`edgeslim.server.grpc_service`) on this port of ``host``, in the same process with the same models,
            batcher, limits and token; 0 (the default here) serves REST only. ``edgeslim serve`` uses 8001, Triton's
            gRPC port.
        field_monitoring: keep feedback counts and drift tests per model (:mod:`edgeslim.server.monitor`): every
            answer carries an id, ``POST /v2/models/{m}/feedback`` takes its true class. Costs an id on the
            answer's path; the rest (tens of microseconds) runs after the answer has left.
        model_field_monitoring: per-model override of ``field_monitoring``, ``{model name: on}`` (e.g. off for a
            model whose ground truth never comes back).
        feedback_pending: answered requests kept awaiting feedback per model (the oldest are dropped first).
        feedback_window: judged items the live counts cover per model (a sliding window).
        drift_window: recent items each drift test compares with the model file's val reference.
        drift_every: items between two drift tests (default: ``drift_window``, disjoint windows).
        monitor_alpha: level of the recall and drift tests, before their Bonferroni corrections.
    """

    models: tuple[Path, ...]
    backend: str = RECOMMENDED
    model_backends: dict[str, str] = field(default_factory=dict)
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    precision: str | None = None
    device: str = "cpu"
    threads: int | None = None
    inference_cpus: tuple[int, ...] | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    dynamic_batching: bool = True
    batch_delay_ms: float = 2.0
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_size: int = 64
    request_timeout_s: float = 30.0
    token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 64 * 1024 * 1024
    nonfinite: Literal["reject", "allow"] = "reject"
    graceful_timeout_s: float = 30.0
    verify: bool = True
    log_level: str = "info"
    shared_memory: bool = False
    inline_when_idle: bool = True
    busy_poll_us: int = 0
    model_control: Literal["none", "explicit"] = "none"
    upload_dir: Path | None = None
    max_upload_bytes: int = 512 * 1024 * 1024
    grpc_port: int = 0
    field_monitoring: bool = True
    model_field_monitoring: dict[str, bool] = field(default_factory=dict)
    feedback_pending: int = 10_000
    feedback_window: int = 1_000
    drift_window: int = 200
    drift_every: int | None = None
    monitor_alpha: float = 0.01

    def __post_init__(self) -> None:
        models = (self.models,) if isinstance(self.models, (str, os.PathLike)) else tuple(self.models)
        if self.model_control not in _MODEL_CONTROL:
            raise ConfigError(
                f"ServerSettings.model_control must be one of {_MODEL_CONTROL}, got {self.model_control!r}"
            )
        if not models and self.model_control == "none":
            raise ConfigError(
                "ServerSettings.models is empty; pass at least one artifact directory, or start with"
                " model_control='explicit' (--model-control explicit) to load models over the API"
            )
        if self.model_control == "explicit" and self.token is None and self.host not in LOOPBACK:
            raise ConfigError(
                f"model control on {self.host} needs a token: an upload makes this device parse files a client sent;"
                " give --token (or EDGESLIM_TOKEN), or bind 127.0.0.1"
            )
        if self.upload_dir is not None:
            object.__setattr__(self, "upload_dir", Path(self.upload_dir))
        object.__setattr__(self, "models", tuple(Path(m) for m in models))
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))
        object.__setattr__(self, "model_backends", dict(self.model_backends))
        if not isinstance(self.model_field_monitoring, dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in self.model_field_monitoring.items()
        ):
            raise ConfigError(
                "ServerSettings.model_field_monitoring must map a model name to True or False, e.g. {'cells': False};"
                f" got {self.model_field_monitoring!r}"
            )
        object.__setattr__(self, "model_field_monitoring", dict(self.model_field_monitoring))
        if not isinstance(self.backend_options, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in self.backend_options.items()
        ):
            raise ConfigError(
                "ServerSettings.backend_options must map a backend name to a dict of its options, e.g."
                " {'openvino': {'hint': 'THROUGHPUT'}}"
            )
        object.__setattr__(self, "backend_options", {k: dict(v) for k, v in self.backend_options.items()})

        def positive(name: str, value: object, *, zero_ok: bool = False, kind: type = int) -> None:
            ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
            if not ok or value < 0 or (value == 0 and not zero_ok):
                bound = ">= 0" if zero_ok else "> 0"
                raise ConfigError(f"ServerSettings.{name} must be a number {bound}, got {value!r}")

        positive("port", self.port, zero_ok=True)
        if self.port > 65535:
            raise ConfigError(f"ServerSettings.port must be <= 65535, got {self.port}")
        positive("grpc_port", self.grpc_port, zero_ok=True)
        if self.grpc_port > 65535 or (self.grpc_port and self.grpc_port == self.port):
            raise ConfigError(
                f"ServerSettings.grpc_port must be <= 65535 and differ from the REST port ({self.port}), got"
                f" {self.grpc_port}; 0 turns gRPC off"
            )
        positive("max_batch", self.max_batch)
        positive("queue_size", self.queue_size)
        positive("max_body_bytes", self.max_body_bytes)
        positive("max_upload_bytes", self.max_upload_bytes)
        positive("batch_delay_ms", self.batch_delay_ms, zero_ok=True, kind=float)
        positive("request_timeout_s", self.request_timeout_s, kind=float)
        positive("graceful_timeout_s", self.graceful_timeout_s, zero_ok=True, kind=float)
        positive("busy_poll_us", self.busy_poll_us, zero_ok=True)
        positive("feedback_pending", self.feedback_pending)
        positive("feedback_window", self.feedback_window)
        positive("drift_window", self.drift_window)
        if self.drift_window < 2:
            raise ConfigError(f"ServerSettings.drift_window must be >= 2 items (a distribution), got {self.drift_window}")
        if self.drift_every is not None:
            positive("drift_every", self.drift_every)
        if not (isinstance(self.monitor_alpha, float) and 0 < self.monitor_alpha < 1):
            raise ConfigError(f"ServerSettings.monitor_alpha must be a level in (0, 1), e.g. 0.01; got {self.monitor_alpha!r}")
        if self.threads is not None:
            positive("threads", self.threads)
        if self.inference_cpus is not None:
            cpus = tuple(sorted(set(self.inference_cpus)))
            count = os.cpu_count() or 1
            if not cpus or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < count for c in cpus):
                raise ConfigError(
                    f"ServerSettings.inference_cpus must be CPU indices in 0..{count - 1}, got {self.inference_cpus!r}"
                )
            if not hasattr(os, "sched_setaffinity"):
                raise ConfigError("ServerSettings.inference_cpus needs Linux (os.sched_setaffinity); leave it None here")
            object.__setattr__(self, "inference_cpus", cpus)
        for size in self.preferred_batch_sizes:
            if not isinstance(size, int) or not 1 <= size <= self.max_batch:
                raise ConfigError(
                    f"preferred batch size {size!r} must be an integer in 1..max_batch ({self.max_batch})"
                )
        if self.nonfinite not in _NONFINITE:
            raise ConfigError(f"ServerSettings.nonfinite must be one of {_NONFINITE}, got {self.nonfinite!r}")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 8):
            raise ConfigError("ServerSettings.token must be a string of at least 8 characters (or None for no auth)")
        if not self.backend:
            from ..runtime import BACKENDS  # the registered runners (plugins included); no runtime library loads

            raise ConfigError(f"ServerSettings.backend is empty; use one of {', '.join([RECOMMENDED, *BACKENDS.names()])}")


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_backend_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Backend options from ``KEY=VALUE`` strings, as ``edgeslim serve --backend-option`` takes them.

    Values become int, float or bool when they read as one, else stay strings. ``KEY:SUBKEY=VALUE`` sets one entry
    of a dict-valued option (the sub-key may contain dots), e.g. ``session_config:session.intra_op.allow_spinning=0``
    for onnxruntime or ``config:CPU_DENORMALS_OPTIMIZATION=YES`` for openvino; ``hint=THROUGHPUT``, ``streams=2``.

    Raises:
        ConfigError: an entry without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"backend option {pair!r} is not KEY=VALUE; e.g. hint=THROUGHPUT or"
                " session_config:session.intra_op.allow_spinning=0"
            )
        outer, colon, inner = key.partition(":")
        if colon:
            if not outer or not inner:
                raise ConfigError(f"backend option {pair!r}: write OPTION:ENTRY=VALUE with both names non-empty")
            target = out.setdefault(outer, {})
            if not isinstance(target, dict):
                raise ConfigError(f"backend option '{outer}' is given both as a value and as {outer}:ENTRY=...")
            # Entries of dict-valued options are library config strings: keep the text as written.
            target[inner] = value
        else:
            if isinstance(out.get(key), dict):
                raise ConfigError(f"backend option '{key}' is given both as a value and as {key}:ENTRY=...")
            out[key] = _scalar(value)
    return out
