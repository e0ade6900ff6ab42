"""Triton exporter: a Triton Inference Server model repository inside the artifact (``triton/``).

The repository holds one Triton model per precision the artifact has, each made from a model file another
exporter wrote and validated (nothing is converted again)::

    triton/<name>/config.pbtxt           the most precise model, under the artifact's own name
    triton/<name>/labels.txt             class names, one per line (Triton's classification extension)
    triton/<name>/1/model.onnx           ONNX Runtime backend  (platform onnxruntime_onnx)
    triton/<name>_int8/1/model.onnx      the Q/DQ INT8 ONNX
    triton/<name>_fp16/1/model.xml+.bin  OpenVINO backend      (backend openvino)
    triton/<name>_xx/1/model.plan        TensorRT backend      (platform tensorrt_plan), when preferred

``tritonserver --model-repository=<artifact>/triton`` serves it. The model that ``edgeslim serve`` loads by
default (the most precise one) has the same name, inputs, outputs, labels and batching in both servers, so a
KServe v2 client (``tritonclient.http``) moves from one to the other by changing the URL only.

Which file backs a precision follows :attr:`TritonSettings.formats` (ONNX first by default: an ONNX runs in any
Triton build, while a TensorRT plan only runs with the TensorRT version and GPU model that built it). Model files
are hard-linked into the repository when the file system allows it (copied otherwise), so the repository costs
no extra disk space in the artifact. The exporter needs the artifact's manifest (name, classes) on the export
context; :func:`write_triton_repository` (re)writes the repository of a finished artifact, e.g. after
:func:`~edgeslim.export.tensorrt.build_artifact_engines` built engines on the device.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import atomic_directory, atomic_write_text
from ..artifact import Manifest, ModelFile, TensorInfo, finalize, load_manifest
from ..errors import ConfigError, ExportError
from ..registry import did_you_mean
from ..runtime.runners import DerivedTable, triton_runners
from .base import EXPORTERS, PRECISIONS, ExportContext, Exporter

REPOSITORY = "triton"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
VERSION = "1"  # an artifact is one immutable model version, as in `edgeslim serve`

#: the names Triton and `edgeslim serve` both accept for a model (a directory name in the repository)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: numpy dtype name -> Triton data type
_DATA_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}


@dataclass(frozen=True)
class _Target:
    platform: str | None  # Triton's platform (None: the backend alone names it, as for OpenVINO)
    backend: str
    filename: str  # Triton's default model file name for the backend
    kind: str  # default instance kind


def _targets() -> dict[str, _Target]:
    return {fmt: _Target(cls.triton_platform, str(cls.triton_backend), f"model{cls.suffix}", cls.triton_kind)
            for fmt, cls in triton_runners().items()}


#: artifact model format -> how Triton runs it, from the runner of each format (its ``triton_platform``,
#: ``triton_backend``, ``triton_kind`` and ``suffix``: ``model.onnx``, ``model.xml``, ``model.plan``)
TARGETS: Mapping[str, _Target] = DerivedTable(_targets, "model format -> Triton target")
_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}


@dataclass(frozen=True)
class TritonSettings:
    """What goes into the repository and how Triton batches it.

    The batching defaults are those of ``edgeslim serve`` (:class:`~edgeslim.server.ServerSettings`: ``max_batch``
    8, ``batch_delay_ms`` 2, no preferred sizes), so a model behaves the same in both servers.

    Args:
        max_batch_size: Triton's ``max_batch_size`` for dynamic-batch models (0 turns batching off). Models with a
            static batch get 0 and their full shape. A TensorRT plan is capped at its profile's max batch.
        dynamic_batching: write a ``dynamic_batching`` block (only when ``max_batch_size > 0``).
        preferred_batch_sizes: batch sizes Triton runs at once without waiting for the queue delay.
        max_queue_delay_microseconds: how long the oldest request may wait for others to join its batch.
        instance_count: model instances per device.
        instance_kind: ``cpu``, ``gpu`` or ``auto``; None picks per backend (ONNX auto, TensorRT gpu). OpenVINO
            models always get ``cpu``: Triton's OpenVINO backend runs on the CPU only.
        formats: model formats in order of preference for each precision (``onnx``, ``openvino``, ``tensorrt``).
        precisions: precisions to include (None: every precision the artifact has a model for).
        labels: write ``labels.txt`` and point the class output's ``label_filename`` at it.
    """

    max_batch_size: int = 8
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 2000
    instance_count: int = 1
    instance_kind: str | None = None
    formats: tuple[str, ...] = ("onnx", "openvino", "tensorrt")
    precisions: tuple[str, ...] | None = None
    labels: bool = True

    def __post_init__(self) -> None:
        def count(name: str, value: Any, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"TritonSettings.{name} must be an integer >= {low}, got {value!r}")

        count("max_batch_size", self.max_batch_size, 0)
        count("max_queue_delay_microseconds", self.max_queue_delay_microseconds, 0)
        count("instance_count", self.instance_count, 1)
        if isinstance(self.formats, str) or isinstance(self.precisions, str):
            raise ConfigError("TritonSettings.formats and .precisions are sequences such as ('onnx',), not strings")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))
        object.__setattr__(self, "formats", tuple(self.formats))
        for size in self.preferred_batch_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= self.max_batch_size:
                raise ConfigError(
                    f"TritonSettings.preferred_batch_sizes has {size!r}; each must be an integer in"
                    f" 1..max_batch_size ({self.max_batch_size})"
                )
        if not self.formats:
            raise ConfigError(f"TritonSettings.formats is empty; use some of {', '.join(TARGETS)}")
        for f in self.formats:
            if f not in TARGETS:
                raise ConfigError(
                    f"TritonSettings.formats has '{f}', which Triton cannot serve from an artifact.{did_you_mean(f, TARGETS)}"
                    f" Known: {', '.join(TARGETS)}"
                )
        if self.precisions is not None:
            object.__setattr__(self, "precisions", tuple(self.precisions))
            bad = [p for p in self.precisions if p not in PRECISIONS]
            if bad or not self.precisions:
                raise ConfigError(
                    f"TritonSettings.precisions has {bad or '(none)'}; choose from {', '.join(PRECISIONS)} or None for all"
                )
        if self.instance_kind is not None and self.instance_kind not in _KINDS:
            raise ConfigError(
                f"TritonSettings.instance_kind is {self.instance_kind!r}.{did_you_mean(str(self.instance_kind), _KINDS)}"
                f" Use {', '.join(_KINDS)} or None (per backend)"
            )


@dataclass(frozen=True)
class TritonModel:
    """One model of the written repository.

    Attributes:
        name: the Triton model name (its directory under ``triton/``).
        precision: fp32 | fp16 | int8.
        format: the artifact model format it was made from (onnx | openvino | tensorrt).
        source: the artifact's model file it serves (relative path).
        config: the configuration, as the JSON form of Triton's ``ModelConfig`` (what ``/v2/models/{m}/config``
            returns).
    """

    name: str
    precision: str
    format: str
    source: str
    config: dict[str, Any] = field(default_factory=dict)


# -- configuration -------------------------------------------------------------------------------------------------


def _data_type(dtype: str) -> str:
    try:
        return _DATA_TYPES[dtype]
    except KeyError:
        raise ExportError(f"tensor dtype '{dtype}' has no Triton data type; known: {', '.join(_DATA_TYPES)}") from None


def _max_batch(manifest: Manifest, model: ModelFile, settings: TritonSettings) -> int:
    if not manifest.input.shape or manifest.input.shape[0] != -1:
        return 0  # a static batch: Triton must not add a batch dimension of its own
    mbs = settings.max_batch_size
    profile = (model.extra or {}).get("profile") if model.format == "tensorrt" else None
    if isinstance(profile, Mapping) and profile.get("max"):
        # Triton refuses a plan whose optimisation profile cannot run max_batch_size.
        mbs = min(mbs, int(profile["max"][0]))
    return mbs


def triton_config(manifest: Manifest, model: ModelFile, settings: TritonSettings | None = None, *,
                  name: str | None = None) -> dict[str, Any]:
    """The Triton model configuration of one artifact model file, in the JSON form of ``ModelConfig``.

    Args:
        manifest: the artifact's manifest (input/output tensors, classes, critical classes).
        model: the model file to serve (onnx, openvino or tensorrt).
        settings: batching, instances and labels (default :class:`TritonSettings`).
        name: the Triton model name (default ``manifest.name``).

    Returns:
        A dict with ``name``, ``platform`` (not for OpenVINO), ``backend``, ``max_batch_size``, ``input``,
        ``output`` (dims without the batch axis when ``max_batch_size > 0``), ``instance_group``,
        ``dynamic_batching`` (when batching) and ``parameters`` (classes, critical, precision, source file; for
        OpenVINO with batching also ``ENABLE_BATCH_PADDING``);
        :func:`format_pbtxt` writes it as ``config.pbtxt``.

    Raises:
        ExportError: a model format Triton cannot serve, or a tensor dtype without a Triton type.
    """
    settings = settings or TritonSettings()
    target = TARGETS.get(model.format)
    if target is None:
        raise ExportError(
            f"{model.path}: Triton cannot serve the '{model.format}' format from an artifact; it serves"
            f" {', '.join(TARGETS)}"
        )
    mbs = _max_batch(manifest, model, settings)

    def tensor(t: TensorInfo, labels: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": t.name, "data_type": _data_type(t.dtype),
                               "dims": [int(d) for d in (t.shape[1:] if mbs > 0 else t.shape)]}
        if labels:
            out["label_filename"] = LABELS_FILE
        return out

    n_classes = len(manifest.classes)
    cfg: dict[str, Any] = {"name": name or manifest.name}
    if target.platform:
        cfg["platform"] = target.platform
    cfg["backend"] = target.backend
    cfg["max_batch_size"] = mbs
    cfg["input"] = [tensor(manifest.input, False)]
    # Only the class-score output gets the labels: its last axis has one entry per class.
    cfg["output"] = [tensor(o, settings.labels and bool(o.shape) and o.shape[-1] == n_classes)
                     for o in manifest.outputs]
    kind = _KINDS[settings.instance_kind] if settings.instance_kind else target.kind
    if model.format == "openvino":
        kind = "KIND_CPU"  # Triton's OpenVINO backend refuses any other instance kind
    cfg["instance_group"] = [{"count": settings.instance_count, "kind": kind}]
    if mbs > 0 and settings.dynamic_batching:
        cfg["dynamic_batching"] = {
            "preferred_batch_size": [s for s in settings.preferred_batch_sizes if s <= mbs],
            "max_queue_delay_microseconds": settings.max_queue_delay_microseconds,
        }
    # The metadata that travels with the model (the same keys `edgeslim serve` reports in its config).
    cfg["parameters"] = {
        "classes": {"string_value": ",".join(manifest.classes)},
        "critical": {"string_value": ",".join(str(i) for i in manifest.critical)},
        "precision": {"string_value": model.precision},
        "source": {"string_value": model.path},
    }
    if model.format == "openvino" and mbs > 0:
        # The OpenVINO backend fixes the IR's batch at max_batch_size and rejects smaller batches unless it may pad
        # them (the ONNX Runtime and TensorRT backends take any batch up to the maximum).
        cfg["parameters"]["ENABLE_BATCH_PADDING"] = {"string_value": "YES"}
    return cfg


_ENUM_FIELDS = {"data_type", "kind"}  # written bare (TYPE_FP32), not quoted
_MAP_FIELDS = {"parameters"}  # map<string, ModelParameter>: one `parameters { key value }` entry per item


def _quote(text: str) -> str:
    # Text-format string escapes; other characters (UTF-8 included) stand as they are.
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if key in _ENUM_FIELDS else _quote(value)
    raise ExportError(f"cannot write {key} = {value!r} ({type(value).__name__}) in a Triton config")


def _lines(obj: Mapping[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    out: list[str] = []
    for key, value in obj.items():
        if value is None:
            continue
        if key in _MAP_FIELDS and isinstance(value, Mapping):
            for k, v in value.items():
                out += [f"{pad}{key} {{", f"{pad}  key: {_quote(str(k))}", f"{pad}  value {{",
                        *_lines(v, depth + 2), f"{pad}  }}", f"{pad}}}"]
        elif isinstance(value, Mapping):
            out += [f"{pad}{key} {{", *_lines(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            if not value:
                continue  # an empty repeated field is the same as an absent one
            if all(isinstance(v, Mapping) for v in value):
                out.append(f"{pad}{key} [")
                for i, v in enumerate(value):
                    out += [f"{pad}  {{", *_lines(v, depth + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
                out.append(f"{pad}]")
            else:
                out.append(f"{pad}{key}: [ {', '.join(_scalar(key, v) for v in value)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(key, value)}")
    return out


def format_pbtxt(config: Mapping[str, Any]) -> str:
    """Write a configuration from :func:`triton_config` in protobuf text format (``config.pbtxt``)."""
    return "\n".join(_lines(config, 0)) + "\n"


# -- the repository --------------------------------------------------------------------------------------------------


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (same bytes, no extra space), or copy it where links are not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _source_files(directory: Path, model: ModelFile) -> list[tuple[Path, str]]:
    """(file in the artifact, name in the version directory) for one model file."""
    target = TARGETS[model.format]
    src = directory / model.path
    if not src.is_file():
        raise ExportError(f"{src} is listed as the {model.format}/{model.precision} model but does not exist")
    files = [(src, target.filename)]
    if model.format == "openvino":
        weights = src.with_suffix(".bin")
        if not weights.is_file():
            raise ExportError(f"{weights} (the weights of {model.path}) does not exist; re-export openvino")
        files.append((weights, Path(target.filename).with_suffix(".bin").name))
    return files


def choose_models(models: Sequence[ModelFile], settings: TritonSettings | None = None) -> dict[str, ModelFile]:
    """Precision -> the model file Triton will serve for it, following ``settings.formats`` (most precise first)."""
    settings = settings or TritonSettings()
    chosen: dict[str, ModelFile] = {}
    for precision in PRECISIONS:
        if settings.precisions is not None and precision not in settings.precisions:
            continue
        for fmt in settings.formats:
            found = next((m for m in models if m.format == fmt and m.precision == precision), None)
            if found is not None:
                chosen[precision] = found
                break
    return chosen


def write_repository(directory: str | os.PathLike, manifest: Manifest, models: Sequence[ModelFile],
                     settings: TritonSettings | None = None) -> list[TritonModel]:
    """Write ``directory/triton/`` from the artifact's model files (replacing an earlier ``triton/``).

    The most precise model is named ``manifest.name`` (what ``edgeslim serve`` loads by default); the others
    ``<name>_<precision>``.

    Args:
        directory: the artifact directory (or the temporary one being written); model paths are relative to it.
        manifest: name, classes, critical classes, input and output tensors.
        models: the artifact's model files (formats Triton cannot serve, such as torch, are ignored).
        settings: what to include and how Triton batches it.

    Returns:
        The models written, most precise first.

    Raises:
        ExportError: no model Triton can serve, a name Triton cannot use, a class name with a line break, or a
            missing model file.
    """
    settings = settings or TritonSettings()
    directory = Path(directory)
    if not _NAME_RE.match(manifest.name):
        raise ExportError(
            f"model name {manifest.name!r} cannot name a Triton model directory; use letters, digits, '_', '.', '-'"
            " (at most 128, starting with a letter or digit) in the manifest's name"
        )
    bad = [c for c in manifest.classes if "\n" in c or "\r" in c]
    if settings.labels and bad:
        raise ExportError(f"class names {bad!r} contain line breaks; labels.txt holds one class name per line")
    chosen = choose_models(models, settings)
    if not chosen:
        have = ", ".join(f"{m.format}/{m.precision}" for m in models) or "none"
        want = ", ".join(settings.formats)
        which = f" in precisions {', '.join(settings.precisions)}" if settings.precisions else ""
        raise ExportError(
            f"no model Triton can serve{which}: it needs one of {want} (the artifact has: {have});"
            f" export with --to onnx,triton (or openvino/tensorrt)"
        )
    root = directory / REPOSITORY
    if root.exists():
        shutil.rmtree(root)  # an earlier repository may name models or files this one no longer has

    written: list[TritonModel] = []
    for i, (precision, mf) in enumerate(chosen.items()):
        name = manifest.name if i == 0 else f"{manifest.name}_{precision}"
        cfg = triton_config(manifest, mf, settings, name=name)
        model_dir = root / name
        for src, dst_name in _source_files(directory, mf):
            _place(src, model_dir / VERSION / dst_name)
        atomic_write_text(model_dir / CONFIG_FILE, format_pbtxt(cfg))
        if settings.labels:
            atomic_write_text(model_dir / LABELS_FILE, "".join(f"{c}\n" for c in manifest.classes))
        written.append(TritonModel(name=name, precision=precision, format=mf.format, source=mf.path, config=cfg))
    return written


def _context_manifest(ctx: ExportContext) -> Manifest:
    manifest = getattr(ctx, "manifest", None)
    if not isinstance(manifest, Manifest):
        raise ExportError(
            "the triton exporter needs the artifact's manifest (name, classes) on the export context"
            " (ExportContext.manifest); use edgeslim.export.triton.write_triton_repository(ARTIFACT) on the"
            " exported artifact instead"
        )
    # The tensors as this export writes them (the manifest's may still be the caller's draft).
    return manifest.model_copy(update={
        "input": TensorInfo(name=ctx.input_name, dtype="float32", shape=ctx.input_dims()),
        "outputs": [TensorInfo(name=ctx.output_name, dtype="float32", shape=[ctx.batch, ctx.num_classes])],
    })


@EXPORTERS.register("triton")
class TritonExporter(Exporter):
    """A Triton model repository (``triton/``) from the model files the other exporters wrote.

    It runs after ``onnx``, ``openvino`` and ``tensorrt`` (when they are requested) and serves every precision
    the artifact has a model for; requested precisions without one are recorded as skipped. It lists no model
    file in the manifest (the repository serves files that are already listed and validated); its files are
    hashed with the rest of the artifact.

    Args:
        settings: batching, instances, format preference and labels (default :class:`TritonSettings`).
    """

    name = "triton"
    precisions = PRECISIONS
    after = ("onnx", "openvino", "tensorrt")

    def __init__(self, settings: TritonSettings | None = None) -> None:
        self.settings = settings or TritonSettings()

    def export(self, ctx: ExportContext) -> list[ModelFile]:
        manifest = _context_manifest(ctx)
        models = write_repository(ctx.directory, manifest, ctx.written, self.settings)
        served = {m.precision for m in models}
        for p in ctx.precisions:
            if p not in served:
                ctx.skip(self.name, p, f"no {'/'.join(self.settings.formats)} model in {p} to put in the repository")
        return []


def write_triton_repository(artifact: str | os.PathLike, *, settings: TritonSettings | None = None) -> list[TritonModel]:
    """Write (or rewrite) the Triton repository of a finished artifact, atomically, and re-hash the artifact.

    Use it after :func:`~edgeslim.export.tensorrt.build_artifact_engines` (with ``formats=("tensorrt", ...)``)
    or to change the batching; needs neither PyTorch nor the model libraries.

    Args:
        artifact: the artifact directory.
        settings: what to include and how Triton batches it.

    Returns:
        The models written, most precise first.

    Raises:
        ArtifactError / IntegrityError: not an artifact, or modified files.
        ExportError: no model Triton can serve (see :func:`write_repository`).
    """
    directory = Path(artifact)
    manifest = load_manifest(directory)
    with atomic_directory(directory) as tmp:
        # Copy, not link: the new directory must not share inodes the old one could still change.
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        (tmp / "manifest.json").unlink(missing_ok=True)
        models = write_repository(tmp, manifest, manifest.models, settings)
        finalize(tmp, manifest.model_copy(update={"files": {}}))
    return models
