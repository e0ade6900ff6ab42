"""The models a server serves: loading artifacts, input validation, the batcher and statistics per model."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from ..artifact import MANIFEST, Manifest
from ..errors import ArtifactError, ConfigError, InputError
from ..registry import did_you_mean
from .batcher import BatchRecord, DynamicBatcher, Timing
from .errors import ModelNotFoundError
from .protocol import v2_datatype
from .settings import DEFAULT_BACKEND, MODEL_NAME_RE, RECOMMENDED, ServerSettings

VERSION = "1"  # an artifact is one immutable model version


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += int(ns)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Triton's statistics extension counters for one model version (cumulative since start)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # items (batch rows) inferred
    execution_count: int = 0  # model executions (batches)
    last_inference_ms: int = 0
    batches: dict[int, dict[str, Duration]] = field(default_factory=dict)
    monitor: Any = None  # the model's FieldMonitor: its feedback and drift join the statistics

    def record_success(self, duration_ns: int, t: Timing, items: int) -> None:
        self.success.add(duration_ns)
        self.queue.add(t.queue_ns)
        self.compute_input.add(t.compute_input_ns)
        self.compute_infer.add(t.compute_infer_ns)
        self.compute_output.add(t.compute_output_ns)
        self.inference_count += items
        self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, duration_ns: int) -> None:
        self.fail.add(duration_ns)

    def record_batch(self, rec: BatchRecord) -> None:
        self.execution_count += 1
        b = self.batches.setdefault(
            rec.batch_size, {k: Duration() for k in ("compute_input", "compute_infer", "compute_output")}
        )
        b["compute_input"].add(rec.compute_input_ns)
        b["compute_infer"].add(rec.compute_infer_ns)
        b["compute_output"].add(rec.compute_output_ns)

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        """The ``model_stats`` entry of Triton's statistics extension."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                k: getattr(self, k).to_dict()
                for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
            },
            "batch_stats": [
                {"batch_size": size, **{k: d.to_dict() for k, d in durs.items()}}
                for size, durs in sorted(self.batches.items())
            ],
            **(self.monitor.report() if self.monitor is not None else {}),
        }


def _safe_relpath(rel: str) -> PurePosixPath:
    """An uploaded file's path, refused unless it stays inside the artifact directory."""
    p = PurePosixPath(rel)
    if (not rel or "\\" in rel or "\x00" in rel or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts)
            or len(p.parts) > 8 or len(rel) > 512):
        raise InputError(
            f"uploaded file path {rel[:80]!r} is not a relative path inside the artifact (no '..', no leading '/',"
            " '/' as separator); use the paths of its manifest, e.g. 'openvino/model_int8.xml'"
        )
    return p


def find_artifacts(paths: tuple[Path, ...]) -> list[Path]:
    """Each path that is an artifact, plus every artifact one level below a path that is not."""
    found: list[Path] = []
    for p in paths:
        if (p / MANIFEST).is_file():
            found.append(p)
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if not d.name.startswith(".") and (d / MANIFEST).is_file())
            if not subs:
                raise ConfigError(f"{p} is neither an artifact (no {MANIFEST}) nor a directory of artifacts")
            found.extend(subs)
        else:
            raise ConfigError(f"model path {p} does not exist; pass an artifact directory or a directory of them")
    return found


def _canonical_backend(name: str) -> str:
    from ..runtime import BACKENDS  # importing the package registers every backend

    try:
        return BACKENDS.canonical(name)
    except Exception:  # noqa: BLE001 - runtime.load reports the unknown name with a did-you-mean
        return name


#: onnxruntime session entries the server sets unless the user gives them: idle intra/inter-op threads sleep
#: instead of spinning. Spinning threads keep the cores busy between inferences, exactly when the event loop must
#: parse the next request and the batcher must assemble the next batch; on a 2-core device measured with
#: bench/server.py that cost +12 ms p50 at concurrency 1 and half the batched throughput.
SERVER_ORT_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def backend_options(settings: ServerSettings, backend: str) -> dict[str, Any]:
    """The options a model served on ``backend`` is loaded with: the settings' ones over the server defaults."""
    name = _canonical_backend(backend)
    options = dict(settings.backend_options.get(name, {}))
    if name == "onnxruntime":
        user = options.get("session_config")
        options["session_config"] = {**SERVER_ORT_SESSION_CONFIG, **(dict(user) if isinstance(user, dict) else {})}
    return options


def recommended_choice(path: Path, backend: str, precision: str | None) -> tuple[str, str | None]:
    """``(backend, precision)`` to load an artifact with: as given, except for backend ``"recommended"`` (the
    default of ``edgeslim serve``): the backend (and, unless given, the precision) of the file the artifact's
    manifest recommends for deployment (``Manifest.recommended``, written by the pipeline), else onnxruntime."""
    if backend != RECOMMENDED:
        return backend, precision
    from ..artifact import load_manifest

    manifest = load_manifest(path, verify=False)
    rec = manifest.recommended or {}
    if rec.get("path") and rec.get("backend") and any(m.path == rec["path"] for m in manifest.models):
        import logging

        logging.getLogger("edgeslim.server").info(
            "%s: serving its recommended file %s on %s (%s)", path, rec["path"], rec["backend"], rec.get("reason", ""))
        return str(rec["backend"]), precision or rec.get("precision")
    return DEFAULT_BACKEND, precision


def _open(path: Path, settings: ServerSettings, backend: str, *, precision: str | None = None,
          verify: bool | None = None) -> tuple[Manifest, Any, Any]:
    """Load an artifact through the runtime: its manifest (as the file is deployed), a
    :class:`~edgeslim.runtime.base.Backend` and the manifest's entry of the loaded file."""
    from .. import runtime

    backend, precision = recommended_choice(path, backend, precision or settings.precision)
    predictor = runtime.load(
        path,
        backend=backend,
        precision=precision or settings.precision,
        device=settings.device,
        threads=settings.threads,
        verify=settings.verify if verify is None else verify,
        **backend_options(settings, backend),
    )
    return predictor.manifest, predictor.backend, predictor.model_file


class ServedModel:
    """One loaded model: manifest, backend, batcher, statistics and the request checks that need the model."""

    def __init__(self, manifest: Manifest, backend: Any, settings: ServerSettings, path: Path,
                 name: str | None = None, model_file: Any = None) -> None:
        self.name = name or manifest.name
        self.version = VERSION
        self.manifest = manifest
        self.backend = backend
        self.path = path
        self.settings = settings
        self.stats = ModelStats()
        self.monitor = None
        # feedback and drift (edgeslim.server.monitor), in its statistics
        if settings.model_field_monitoring.get(self.name, settings.field_monitoring):
            from .monitor import FieldMonitor

            self.monitor = FieldMonitor(
                manifest, model_file, input_name=backend.inputs[0].name, output_name=backend.outputs[0].name,
                pending=settings.feedback_pending, window=settings.feedback_window,
                drift_window=settings.drift_window, drift_every=settings.drift_every, alpha=settings.monitor_alpha)
            self.stats.monitor = self.monitor
        self.ready = False
        self.uploaded = False  # its files came in a load request (removed when it is unloaded)
        # Batching needs a dynamic leading axis on every input; otherwise each request runs alone.
        self.batchable = all(i.shape and i.shape[0] == -1 for i in backend.inputs)
        self.max_batch = settings.max_batch if self.batchable else 0
        self.output_names = [o.name for o in backend.outputs]
        # Per input: the spec, its numpy dtype and its v2 datatype, resolved once instead of on every request.
        self._specs = {s.name: (s, np.dtype(s.dtype), v2_datatype(s.dtype)) for s in backend.inputs}
        self.batcher = DynamicBatcher(
            backend.infer,
            max_batch=max(self.max_batch, 1),
            delay_s=settings.batch_delay_ms / 1000.0,
            preferred=settings.preferred_batch_sizes,
            queue_size=settings.queue_size,
            enabled=settings.dynamic_batching and self.batchable,
            on_batch=self.stats.record_batch,
            name=self.name,
            cpus=settings.inference_cpus,
            # CUDA/TensorRT state belongs to the thread that set it up: GPU backends always run in their thread
            inline=settings.inline_when_idle and backend.name != "tensorrt" and backend.options.device == "cpu",
        )

    @property
    def platform(self) -> str:
        """What KServe v2 metadata reports as ``platform`` (Triton's platform, else its backend name)."""
        return self.triton_platform or self.triton_backend

    @property
    def triton_platform(self) -> str:
        """Triton's ``platform`` for the model file; empty where Triton names only a backend (OpenVINO).

        The runner's own ``triton_platform`` (what the Triton exporter writes), except for the torch runner: Triton
        cannot serve its state dict, so the runner declares none, but the metadata still names the framework as
        Triton names PyTorch models."""
        runner = type(self.backend)
        if runner.triton_platform or runner.triton_backend:
            return runner.triton_platform or ""
        return {"torch": "pytorch_libtorch"}.get(self.backend.name, "")

    @property
    def triton_backend(self) -> str:
        """Triton's ``backend`` name for the model file (as in the ``config.pbtxt`` the triton exporter writes; for
        the torch runner, which declares none, Triton's name of the PyTorch backend)."""
        return type(self.backend).triton_backend or {"torch": "pytorch"}.get(self.backend.name, self.backend.name)

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata (``-1`` marks a variable dimension)."""

        def t(spec: Any) -> dict[str, Any]:
            return {"name": spec.name, "datatype": v2_datatype(spec.dtype), "shape": list(spec.shape)}

        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t(s) for s in self.backend.inputs],
            "outputs": [t(s) for s in self.backend.outputs],
        }

    def config(self) -> dict[str, Any]:
        """Triton-style model configuration. With ``max_batch_size > 0`` dims exclude the batch axis."""

        def t(spec: Any) -> dict[str, Any]:
            dims = list(spec.shape[1:] if self.max_batch > 0 else spec.shape)
            return {"name": spec.name, "data_type": "TYPE_" + v2_datatype(spec.dtype).replace("BYTES", "STRING"), "dims": dims}

        cfg: dict[str, Any] = {
            "name": self.name,
            # As Triton reports it: OpenVINO models have an empty platform and are named by their backend alone.
            "platform": self.triton_platform,
            "backend": self.triton_backend,
            "version_policy": {"specific": {"versions": [int(self.version)]}},
            "max_batch_size": self.max_batch,
            "input": [t(s) for s in self.backend.inputs],
            "output": [t(s) for s in self.backend.outputs],
            "instance_group": [{"count": 1, "kind": "KIND_GPU" if "cuda" in self.settings.device.lower() else "KIND_CPU"}],
            "parameters": {
                "classes": {"string_value": ",".join(self.manifest.classes)},
                "critical": {"string_value": ",".join(str(i) for i in self.manifest.critical)},
            },
        }
        if self.batcher.enabled:
            cfg["dynamic_batching"] = {
                "preferred_batch_size": list(self.batcher.preferred),
                "max_queue_delay_microseconds": int(self.settings.batch_delay_ms * 1000),
                "default_queue_policy": {
                    "max_queue_size": self.settings.queue_size,
                    "default_timeout_microseconds": int(self.settings.request_timeout_s * 1e6),
                },
            }
        return cfg

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate request tensors against the model: names, datatypes, shapes, batch size, NaN/Inf policy.

        Raises:
            InputError: with a message naming the input and what it should be.
        """
        specs = self._specs
        if inputs.keys() != specs.keys():
            unknown = sorted(set(inputs) - set(specs))
            missing = sorted(set(specs) - set(inputs))
            hint = did_you_mean(unknown[0], list(specs)) if unknown else ""
            raise InputError(
                f"model '{self.name}' expects inputs {sorted(specs)}; unknown {unknown}, missing {missing}.{hint}"
            )
        batch = None
        for name, arr in inputs.items():
            spec, dtype, want = specs[name]
            if arr.dtype != dtype and (got := v2_datatype(arr.dtype)) != want:
                raise InputError(f"input '{name}' has datatype {got}; model '{self.name}' expects {want}")
            if arr.ndim != len(spec.shape) or any(d != -1 and d != a for d, a in zip(spec.shape, arr.shape)):
                raise InputError(
                    f"input '{name}' has shape {list(arr.shape)}; model '{self.name}' expects {list(spec.shape)}"
                    " (-1 = any size)"
                )
            if self.batchable:
                n = arr.shape[0]
                if n < 1:
                    raise InputError(f"input '{name}' has batch size 0; send at least one item")
                if n > self.max_batch:
                    raise InputError(
                        f"input '{name}' has batch size {n}, more than the model's max_batch_size {self.max_batch};"
                        " split the request"
                    )
                if batch is not None and n != batch:
                    raise InputError(f"inputs disagree on the batch size ({batch} vs {n} for '{name}')")
                batch = n
            if self.settings.nonfinite == "reject" and arr.dtype.kind == "f" and arr.size:
                if not np.isfinite(arr).all():
                    bad = int(arr.size - np.isfinite(arr).sum())
                    raise InputError(
                        f"input '{name}' contains {bad} NaN/Inf value(s); the server rejects non-finite inputs"
                        " (fix the preprocessing, or start the server with nonfinite='allow')"
                    )
        return self.backend.check_feeds(inputs)

    def items(self, feeds: dict[str, np.ndarray]) -> int:
        first = next(iter(feeds.values()))
        return int(first.shape[0]) if self.batchable and first.ndim else 1


@contextlib.contextmanager
def pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Run the block with the calling thread pinned to ``cpus`` (Linux), then restore its affinity."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise ConfigError(
            f"cannot pin inference to CPUs {list(cpus)} ({exc}); this process may use {sorted(before)}"
        ) from exc
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class ModelRepository:
    """Every served model by name."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self.loaded = False
        self.closing = False
        self.unloaded: dict[str, str] = {}  # name -> why, for the index (Triton lists unloaded models UNAVAILABLE)
        self._upload_root: Path | None = None
        self._own_root = False
        self.control = asyncio.Lock()  # one load / unload at a time

    def load(self) -> None:
        """Load every artifact named by the settings (once: by :func:`~edgeslim.server.app.serve` before uvicorn
        starts, or in the app's lifespan)."""
        with pinned(self.settings.inference_cpus):  # runtime threads created while loading inherit the CPUs
            self._load()
        self.loaded = True

    def release(self) -> None:
        """Release the backends loaded so far (after a failed load; no batcher has started)."""
        for m in self.models.values():
            m.backend.close()
        self.models.clear()

    def _artifacts(self) -> list[tuple[str, Path]]:
        """``(manifest name, path)`` of every artifact in the server's model paths."""
        from ..artifact import load_manifest

        return [(load_manifest(path, verify=False).name, path) for path in find_artifacts(self.settings.models)]

    def _load(self) -> None:
        for name, path in self._artifacts():
            if not MODEL_NAME_RE.match(name):
                raise ConfigError(
                    f"artifact {path} has model name {name!r}; served names must match {MODEL_NAME_RE.pattern}"
                    " (letters, digits, '_', '.', '-'); rename it in manifest.json and re-finalize"
                )
            if name in self.models:
                raise ConfigError(f"two artifacts are named '{name}' ({self.models[name].path} and {path}); rename one")
            backend = self.settings.model_backends.get(name, self.settings.backend)
            manifest, be, mf = _open(path, self.settings, backend)
            self.models[name] = ServedModel(manifest, be, self.settings, path, model_file=mf)
        for option in ("model_backends", "model_field_monitoring"):
            unknown = sorted(set(getattr(self.settings, option)) - set(self.models))
            if unknown:
                raise ConfigError(f"{option} names models that are not served: {unknown}; served: {sorted(self.models)}."
                                  f"{did_you_mean(unknown[0], list(self.models))}")

    def start(self) -> None:
        for m in self.models.values():
            m.batcher.start()
            m.ready = True

    async def close(self) -> None:
        """Finish queued requests, then release every backend (and remove the uploads of a temporary root)."""
        self.closing = True
        for m in self.models.values():
            m.ready = False
        for m in self.models.values():
            await m.batcher.close()
            m.backend.close()
        if self._own_root and self._upload_root is not None:
            shutil.rmtree(self._upload_root, ignore_errors=True)

    # -- model control (Triton's explicit mode) ----------------------------------------------------------------
    def _root(self) -> Path:
        if self._upload_root is None:
            if self.settings.upload_dir is not None:
                self.settings.upload_dir.mkdir(parents=True, exist_ok=True)
                self._upload_root = self.settings.upload_dir
            else:
                self._upload_root = Path(tempfile.mkdtemp(prefix="edgeslim-uploads-"))
                self._own_root = True
        return self._upload_root

    def _write_upload(self, name: str, files: dict[str, bytes]) -> Path:
        """Write an uploaded artifact into a fresh directory of the upload root; every path checked first."""
        if MANIFEST not in files:
            raise InputError(
                f"the upload of model '{name}' has no '{MANIFEST}': send every file of the artifact, each as a"
                f" 'file:<path relative to the artifact>' parameter ('file:{MANIFEST}' included)"
            )
        paths = {rel: _safe_relpath(rel) for rel in files}
        stage = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._root()))
        try:
            for rel, data in files.items():
                dest = stage.joinpath(*paths[rel].parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return stage

    def _find(self, name: str) -> Path:
        """The artifact among the server's model paths whose manifest is named ``name``."""
        names: dict[str, Path] = {}
        for found, path in self._artifacts():
            names.setdefault(found, path)
        if name not in names:
            known = sorted(set(names) | set(self.models))
            raise ModelNotFoundError(
                f"no artifact named '{name}' in this server's model paths to load.{did_you_mean(name, known)}"
                f" Known: {', '.join(known) or 'none'}; or upload it: send its files as 'file:<path>' parameters"
            )
        return names[name]

    def prepare_model(self, name: str, files: dict[str, bytes] | None, *, backend: str | None = None,
                      precision: str | None = None) -> ServedModel:
        """Open model ``name`` for :meth:`swap_in`: uploaded ``files`` (checked against their manifest's sha256), or
        the artifact of that name in the server's model paths. Blocking (I/O and compilation): run in a thread.

        Raises:
            InputError: an upload without a manifest, or with a file path outside the artifact.
            ModelNotFoundError: no files and no artifact of that name.
            ArtifactError: a file that fails its sha256 check (and every other reason the runtime refuses it).
        """
        path = self._write_upload(name, files) if files else self._find(name)
        try:
            chosen = backend or self.settings.model_backends.get(name, self.settings.backend)
            with pinned(self.settings.inference_cpus):
                # uploads are always checked against their manifest: the bytes came over the network
                manifest, be, mf = _open(path, self.settings, chosen, precision=precision,
                                         verify=True if files else None)
        except BaseException as exc:
            if files:
                shutil.rmtree(path, ignore_errors=True)
                if isinstance(exc, ArtifactError):  # the client sent it: a 400, not the server's own artifact (500)
                    raise InputError(f"the upload of model '{name}' was refused: {exc}") from None
            raise
        # served under the name it was loaded as (an upload's manifest may name it otherwise)
        model = ServedModel(manifest, be, self.settings, path, name=name, model_file=mf)
        model.uploaded = bool(files)
        return model

    async def swap_in(self, model: ServedModel) -> None:
        """Serve ``model`` (ready at once); the model it replaces finishes its queued requests, then is released."""
        model.batcher.start()
        old = self.models.get(model.name)
        self.models[model.name] = model
        self.unloaded.pop(model.name, None)
        model.ready = True
        if old is not None:
            await self._release(old)

    async def unload_model(self, name: str) -> None:
        """Stop serving ``name``: queued requests finish first; an uploaded artifact's files are removed.

        Raises:
            ModelNotFoundError: no model of that name is served (did-you-mean).
        """
        model = self.get(name)
        del self.models[name]
        self.unloaded[name] = "unloaded"
        await self._release(model)

    async def _release(self, model: ServedModel) -> None:
        model.ready = False
        await model.batcher.close()
        model.backend.close()
        if model.uploaded:
            shutil.rmtree(model.path, ignore_errors=True)

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every served model by name, ``READY`` or ``UNAVAILABLE`` with the reason."""
        why = "shutting down" if self.closing else "loading"
        rows = {name: {"name": name, "version": m.version, "state": "READY" if m.ready else "UNAVAILABLE",
                       "reason": "" if m.ready else why} for name, m in self.models.items()}
        for name, reason in self.unloaded.items():
            rows.setdefault(name, {"name": name, "version": VERSION, "state": "UNAVAILABLE", "reason": reason})
        return [rows[k] for k in sorted(rows)]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model called ``name`` (and ``version``), or :class:`ModelNotFoundError` with a did-you-mean."""
        if not MODEL_NAME_RE.match(name):
            raise ModelNotFoundError(
                f"invalid model name {name[:80]!r}: names are letters, digits, '_', '.', '-' (at most 128)"
            )
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(
                f"unknown model '{name}'.{did_you_mean(name, list(self.models))} Served: {', '.join(sorted(self.models))}"
            )
        if version not in (None, "", model.version):
            raise ModelNotFoundError(f"model '{name}' has no version '{version[:20]}'; served versions: {model.version}")
        return model
