"""The profiler: latency, throughput, memory and accuracy of one artifact on each backend.

Conventions follow OpenVINO ``benchmark_app``, ``trtexec`` and ``onnxruntime_perf_test`` (see
``docs/profiling.md``): a warm-up that is not measured, then a measured window of at least N iterations AND at
least T seconds, each call timed with :func:`time.perf_counter_ns`; first-inference and load time reported apart;
percentiles over the per-call latencies; throughput = items / wall time of the window. Every entry records the
conditions it was measured under (model hash, backend and version, precision, batch, shape, threads, CPU).

The measurement loop of one loaded backend lives in :mod:`edgeslim.devices.measure`, accuracy and its deltas in
:mod:`edgeslim.devices.accuracy`; this module runs them over an artifact's files and backends. Their public names
are importable from here as before.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, EdgeslimError, MissingDependencyError
from .accuracy import _accuracy, _check_data
from .accuracy import accuracy_delta as accuracy_delta
from .accuracy import add_accuracy_deltas
from .cpu import cpu_info
from .measure import MAX_SAMPLES_KEPT as MAX_SAMPLES_KEPT
from .measure import THROUGHPUT_OPTIONS as THROUGHPUT_OPTIONS
from .measure import ProfileConfig
from .measure import _kept_samples as _kept_samples
from .measure import _timed_loop as _timed_loop
from .measure import async_throughput, profile_backend
from .measure import latency_stats as latency_stats

__all__ = ["MAX_SAMPLES_KEPT", "THROUGHPUT_OPTIONS", "ProfileConfig", "accuracy_delta", "add_accuracy_deltas",
           "async_throughput", "backend_class", "latency_stats", "profile_artifact", "profile_backend",
           "runner_for", "score_artifact"]


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
                if os.environ.get("ONEDNN_MAX_CPU_ISA") and device.get("kind") == "cpu":
                    # an emulated older host kind: say whether this runner's timing is that kind's at all
                    conditions["isa_cap"] = {"ONEDNN_MAX_CPU_ISA": os.environ["ONEDNN_MAX_CPU_ISA"],
                                             "held": bool(cls.honours_isa_cap)}
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
    format's own runner (:func:`edgeslim.runtime.runner_for_format`). ``(name, class)``, the class replaced by the
    reason when its library is missing, and ``(None, error)`` when no backend runs the format."""
    importlib.import_module("edgeslim.runtime")
    from ..runtime.base import BACKENDS
    from ..runtime.runners import runner_for_format

    names = [BACKENDS.canonical(b) for b in prefer if fmt in _registered(b).formats]
    try:
        names.append(runner_for_format(fmt).name)
    except ConfigError:
        pass
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
