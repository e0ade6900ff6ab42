"""Artifacts: a directory of model files plus ``manifest.json``.

The manifest is the model's metadata that travels with it (input shape, preprocessing, class names, critical
classes, decision thresholds, source, recipe, metrics, sparsity) and the sha256 of every file. Runtime and server
read it instead of asking. Artifacts are written atomically and verified on load.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._io import atomic_directory, atomic_write_json, sha256_file
from .decision import DecisionRule
from .errors import ArtifactError, IntegrityError

FORMAT_VERSION = 2  # 2: decision_rule (format 1 thresholds only added calls to the argmax)
MANIFEST = "manifest.json"


class Preprocessing(BaseModel):
    """How raw RGB images become the model's input tensor.

    Pipeline: convert to RGB -> resize shorter side to ``resize`` -> centre-crop ``crop`` -> float pixels in
    [0, 255] -> ``(x - mean) / std`` per channel -> NCHW.
    """

    model_config = ConfigDict(extra="forbid")

    resize: int = Field(gt=0)
    crop: int = Field(gt=0)
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"


class TensorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str = "float32"
    shape: list[int]  # -1 marks a dynamic dimension


class ModelFile(BaseModel):
    """One runnable model inside an artifact."""

    model_config = ConfigDict(extra="forbid")

    format: str  # onnx | openvino | torch | tensorrt
    precision: str  # fp32 | fp16 | int8
    path: str  # relative to the artifact directory; for openvino the .xml
    extra: dict[str, Any] = Field(default_factory=dict)


class FieldReference(BaseModel):
    """A model file's val reference for monitoring in the field (``ModelFile.extra["field_reference"]``).

    Written by the export where it calibrates thresholds on val (:mod:`edgeslim.export.reference`); read by the
    server's monitor (:mod:`edgeslim.server.monitor`). Versioned on its own (``version``): a file without it, or with
    a version this edgeslim does not read, loads and serves as before, with drift reported as off.
    """

    model_config = ConfigDict(extra="ignore")

    version: int
    split: str = "val"
    samples: int = Field(ge=0)  # val images the reference was computed on
    critical_scores: dict[str, list[float]] = Field(default_factory=dict)  # class index -> sample of p_c on val
    input_mean: list[float] = Field(default_factory=list)  # sample of per-image input means (field_reference.py)
    input_std: list[float] = Field(default_factory=list)  # sample of per-image input standard deviations
    critical_recall: dict[str, dict[str, int]] = Field(default_factory=dict)  # class index -> {"hits", "positives"}


class Manifest(BaseModel):
    """The content of ``manifest.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    edgeslim_version: str = ""
    source: str = ""
    arch: str = ""
    classes: list[str]
    critical: list[int] = Field(default_factory=list)
    thresholds: dict[str, float] = Field(default_factory=dict)  # class index (str) -> probability threshold
    decision_rule: DecisionRule = "threshold"  # how thresholds decide: edgeslim.decision
    input: TensorInfo
    outputs: list[TensorInfo]
    preprocessing: Preprocessing
    models: list[ModelFile] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    sparsity: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    # what compression did other than asked, in words (e.g. layers channel pruning kept whole)
    notes: list[str] = Field(default_factory=list)
    # the file to deploy on the host that profiled it, with the reason (edgeslim.summary.recommend; written by the
    # pipeline): {"path", "format", "precision", "backend", "latency_ms", "reason", "measured_on", ...}; "path" is
    # None when no file holds the budgets. `edgeslim serve` without --backend serves it
    recommended: dict[str, Any] | None = None
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256

    @model_validator(mode="before")
    @classmethod
    def _format1_rule(cls, data: Any) -> Any:
        # format 1 manifests have no decision_rule: their thresholds were calibrated to add calls to the argmax
        version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else None
        if isinstance(version, int) and version < 2 and "decision_rule" not in data:
            data = {**data, "decision_rule": "argmax_or_threshold"}
        return data

    def thresholds_for(self, model_file: ModelFile | None) -> dict[str, float]:
        """The critical-class thresholds that deploy ``model_file``.

        A reduced-precision file (INT8, FP16) shifts the scores a little, so the export calibrates its own
        thresholds on the val split to the same target FPR / FNR as the manifest's (``extra["thresholds"]``):
        every file is then deployed at the same operating point, not at another file's threshold. Files without
        their own use the manifest's.
        """
        own = model_file.extra.get("thresholds") if model_file is not None else None
        return dict(own) if isinstance(own, dict) else dict(self.thresholds)

    def deployed_as(self, model_file: ModelFile | None) -> "Manifest":
        """This manifest as ``model_file`` is deployed: with the file's own thresholds (:meth:`thresholds_for`),
        so that every decision made from it (runtime, server, profiler) is the file's. ``self`` when they are the
        manifest's."""
        own = self.thresholds_for(model_file)
        return self if own == self.thresholds else self.model_copy(update={"thresholds": own})

    def field_reference(self, model_file: ModelFile | None) -> "tuple[FieldReference | None, str]":
        """``model_file``'s :class:`FieldReference`, or None with the reason it has none usable."""
        from .field_reference import REFERENCE_KEY, REFERENCE_VERSION

        raw = model_file.extra.get(REFERENCE_KEY) if model_file is not None else None
        if raw is None:
            return None, ("no reference: the model file was exported without a val split (re-export it with one:"
                          " a recipe with data.val_fraction > 0)")
        version = raw.get("version") if isinstance(raw, dict) else None
        if version != REFERENCE_VERSION:
            return None, f"reference version {version!r} is not one this edgeslim reads ({REFERENCE_VERSION})"
        try:
            return FieldReference.model_validate(raw), ""
        except ValidationError as exc:  # report it, never refuse to serve the model for it
            return None, f"reference unreadable: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"

    def model(self, format: str, precision: str | None = None) -> ModelFile:
        """The model file of a format (and precision: the most precise one when omitted)."""
        order = {"fp32": 0, "fp16": 1, "int8": 2}
        found = [m for m in self.models if m.format == format and (precision is None or m.precision == precision)]
        if not found:
            have = ", ".join(f"{m.format}/{m.precision}" for m in self.models) or "none"
            want = f"{format}/{precision}" if precision else format
            raise ArtifactError(
                f"artifact '{self.name}' has no {want} model (it has: {have}); "
                f"export it with `edgeslim export ARTIFACT --to {format}`"
            )
        return sorted(found, key=lambda m: order.get(m.precision, 9))[0]


def _hash_tree(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def finalize(directory: str | os.PathLike, manifest: Manifest) -> Manifest:
    """Hash every file under ``directory`` into the manifest and write ``manifest.json`` (atomically)."""
    directory = Path(directory)
    for m in manifest.models:
        if not (directory / m.path).is_file():
            raise ArtifactError(f"manifest lists {m.path} but {directory / m.path} does not exist")
    from ._version import __version__

    manifest = manifest.model_copy(update={"files": _hash_tree(directory), "edgeslim_version": __version__})
    atomic_write_json(directory / MANIFEST, manifest.model_dump(mode="json"))
    return manifest


def write_artifact(directory: str | os.PathLike, manifest: Manifest, writer) -> Manifest:
    """Create an artifact atomically.

    ``writer(tmp_dir) -> Manifest | None`` writes the model files into a temporary directory and may return an
    updated manifest; the directory is hashed, the manifest written, and only then renamed to ``directory``.
    """
    with atomic_directory(directory) as tmp:
        result = writer(tmp)
        manifest = finalize(tmp, result if result is not None else manifest)
    return manifest


def load_manifest(directory: str | os.PathLike, *, verify: bool = True) -> Manifest:
    """Read an artifact's manifest and (by default) check every file against its sha256.

    Raises:
        ArtifactError: the directory or manifest is missing or unreadable, or of a newer format.
        IntegrityError: a file is missing, modified, or not listed in the manifest.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {directory} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an edgeslim artifact: no {MANIFEST} (was the export interrupted?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable: {exc}") from exc
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version!r}; this edgeslim reads up to {FORMAT_VERSION}: upgrade edgeslim"
        )
    try:
        manifest = Manifest.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        raise ArtifactError(f"{path} is not a valid manifest: {exc}") from exc
    if verify:
        verify_files(directory, manifest)
    return manifest


def verify_files(directory: str | os.PathLike, manifest: Manifest) -> None:
    """Raise :class:`IntegrityError` listing every missing, modified or unlisted file."""
    directory = Path(directory)
    problems = []
    for rel, digest in manifest.files.items():
        p = directory / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (modified after export)")
    for rel in _hash_tree(directory):
        if rel not in manifest.files:
            problems.append(f"{rel}: not listed in the manifest")
    if problems:
        raise IntegrityError(
            f"artifact {directory} failed its integrity check: " + "; ".join(problems)
            + ". Re-export it, or restore the original files."
        )
