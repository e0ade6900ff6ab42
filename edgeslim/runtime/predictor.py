"""The user-facing runtime: :func:`load` an artifact, then :meth:`Predictor.predict` on images.

The predictor reads everything it needs from the artifact's manifest (preprocessing, class names, critical classes
and their decision thresholds), so an application never re-states how the model was trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ..artifact import Manifest, ModelFile, load_manifest
from ..decision import fired_classes
from ..decision import predict as _decide
from ..errors import ArtifactError, ConfigError, InputError
from ..preprocess import ImageLike, preprocess
from ..scoring import softmax as softmax  # float32, as served; server, export and pipeline import it from here
from .base import BACKENDS, Backend, BackendOptions

DEFAULT_BATCH_SIZE = 8


@dataclass
class Prediction:
    """The result for one image.

    Attributes:
        label: the predicted class index (a fired critical class wins over the argmax).
        name: the predicted class name.
        score: probability of ``label``.
        probabilities: softmax over the logits, float32, one per class.
        top_k: ``(index, name, probability)`` of the most probable classes, best first.
        critical: indices of the critical classes that fired (probability >= their threshold; without a threshold,
            being the argmax), most probable first.
    """

    label: int
    name: str
    score: float
    probabilities: np.ndarray
    top_k: list[tuple[int, str, float]]
    critical: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (probabilities as a list)."""
        return {
            "label": self.label,
            "name": self.name,
            "score": self.score,
            "top_k": [{"index": i, "name": n, "probability": p} for i, n, p in self.top_k],
            "critical": self.critical,
            "probabilities": self.probabilities.tolist(),
        }


def decide(
    probs: np.ndarray, critical: Sequence[int], thresholds: dict[str, float], rule: str = "threshold"
) -> tuple[int, list[int]]:
    """The decision rule for one probability vector: ``(label, fired critical classes)``.

    ``rule`` is the artifact's ``Manifest.decision_rule`` (see :mod:`edgeslim.decision`). Under ``"threshold"``
    a thresholded critical class is called iff its probability reaches the threshold, so a low threshold trades
    false positives for fewer false negatives and a high one the reverse; a critical class without a threshold
    fires when it is the decision.
    """
    label = int(_decide(probs[None, :], thresholds, rule)[0])
    return label, fired_classes(probs, label, critical, thresholds)


class Predictor:
    """A loaded artifact: preprocessing + backend + the manifest's decision rule.

    Build one with :func:`load`. Use it as a context manager or call :meth:`close`.

    Attributes:
        manifest: the artifact's :class:`~edgeslim.artifact.Manifest`, with the loaded file's own critical-class
            thresholds where it has them (:meth:`~edgeslim.artifact.Manifest.deployed_as`).
        backend: the running :class:`~edgeslim.runtime.base.Backend`.
        model_file: the manifest entry being run.
        directory: the artifact directory.
    """

    def __init__(self, directory: Path, manifest: Manifest, model_file: ModelFile, backend: Backend) -> None:
        self.directory = directory
        # a reduced-precision file carries its own calibrated thresholds, which the decisions, the server and the
        # reports then use
        self.manifest = manifest.deployed_as(model_file)
        self.model_file = model_file
        self.backend = backend
        self._input = backend.inputs[0].name
        names = [o.name for o in backend.outputs]
        want = manifest.outputs[0].name if manifest.outputs else names[0]
        self._output = want if want in names else names[0]
        dim0 = backend.inputs[0].shape[0] if backend.inputs[0].shape else -1
        # A static batch dimension fixes the chunk size; the last chunk is padded.
        self._static_batch = dim0 if dim0 > 0 else None
        self._batch_size = self._static_batch or DEFAULT_BATCH_SIZE

    # -- metadata -----------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def critical(self) -> list[int]:
        return list(self.manifest.critical)

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest.thresholds)

    @property
    def batch_size(self) -> int:
        """Images per backend call; fixed to the model's batch dimension when it is static."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {value!r}")
        if self._static_batch is not None and value != self._static_batch:
            raise ConfigError(
                f"the {self.model_file.format} model has a static batch of {self._static_batch}; batch_size cannot be "
                f"{value}. Re-export with a dynamic batch to change it"
            )
        self._batch_size = value

    def metadata(self) -> dict[str, Any]:
        """Artifact name, model file, precision and the backend's metadata."""
        return {
            "artifact": self.manifest.name,
            "format": self.model_file.format,
            "precision": self.model_file.precision,
            "batch_size": self.batch_size,
            **self.backend.metadata(),
        }

    # -- inference ----------------------------------------------------------------------------------------
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed NCHW float32 batch of any size (run in chunks of :attr:`batch_size`).

        Raises:
            InputError: not a 4-D float32 array, or a shape the model does not accept.
        """
        if not isinstance(tensor, np.ndarray) or tensor.ndim != 4:
            got = f"shape {list(tensor.shape)}" if isinstance(tensor, np.ndarray) else type(tensor).__name__
            raise InputError(f"infer() takes a preprocessed NCHW float32 batch; got {got}. Use predict() for images")
        n = tensor.shape[0]
        if n == 0:
            raise InputError("infer() got an empty batch")
        outs = []
        for start in range(0, n, self._batch_size):
            outs.append(self._run_chunk(tensor[start : start + self._batch_size]))
        return np.concatenate(outs)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        k = chunk.shape[0]
        if self._static_batch is not None and k < self._static_batch:
            pad = np.zeros((self._static_batch - k, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        return self.backend.infer({self._input: chunk})[self._output][:k]

    def predict(
        self, images: ImageLike | Iterable[ImageLike], *, top_k: int = 5
    ) -> Prediction | list[Prediction]:
        """Classify one image or a list of images.

        Args:
            images: a path, encoded bytes (PNG/JPEG/...), a PIL image or an HxWx3 uint8 array; or a list of them
                (an NxHxWx3 uint8 array counts as a list).
            top_k: how many classes to report in :attr:`Prediction.top_k` (capped at the number of classes).

        Returns:
            One :class:`Prediction` for a single image, a list for a list.

        Raises:
            InputError: an unreadable image, an empty list, or a bad ``top_k``.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        single = isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3)
        ) or isinstance(images, Image.Image)
        items: list[Any] = [images] if single else list(images)  # type: ignore[arg-type]
        if not items:
            raise InputError("predict() got no images")
        results: list[Prediction] = []
        pre = self.manifest.preprocessing
        for start in range(0, len(items), self._batch_size):
            batch = preprocess(items[start : start + self._batch_size], pre)
            probs = softmax(self._run_chunk(batch))
            results.extend(self._prediction(p, top_k) for p in probs)
        return results[0] if single else results

    def _prediction(self, probs: np.ndarray, top_k: int) -> Prediction:
        classes = self.manifest.classes
        label, fired = decide(probs, self.manifest.critical, self.manifest.thresholds, self.manifest.decision_rule)
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        return Prediction(
            label=label,
            name=classes[label] if label < len(classes) else str(label),
            score=float(probs[label]),
            probabilities=probs,
            top_k=[(int(i), classes[i] if i < len(classes) else str(i), float(probs[i])) for i in order],
            critical=fired,
        )

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend; idempotent."""
        self.backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Predictor({self.manifest.name!r}, backend={self.backend.name!r}, "
            f"{self.model_file.format}/{self.model_file.precision}, device={self.backend.options.device!r})"
        )


_WARNED: set[str] = set()


def warn_if_foreign_int8(path: Path, model_file: ModelFile) -> str | None:
    """Warn, once per file and process, when an INT8 file runs on a host it was not made for; returns the reason.

    The file's ``extra["int8_scheme"]`` names the target it was quantized for (:func:`edgeslim.hardware.int8_scheme`);
    8-bit weights made for a VNNI CPU, say, can saturate on an AVX2-only host and lose accuracy there.
    """
    import warnings

    from ..hardware import Int8TargetWarning, scheme_mismatch

    if model_file.precision != "int8":
        return None
    reason = scheme_mismatch(model_file.extra.get("int8_scheme"))
    key = str(Path(path).resolve())
    if reason is not None and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{model_file.path}: {reason}", Int8TargetWarning, stacklevel=3)
    return reason


def select_model(manifest: Manifest, backend_cls: type[Backend], precision: str | None) -> ModelFile:
    """The manifest entry a backend can run, in the requested precision (the most precise when None).

    Raises:
        ArtifactError: the artifact has no model in a format the backend reads (or not in that precision);
            the message lists what the artifact has.
    """
    if precision is not None and precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision '{precision}' is unknown; use fp32, fp16 or int8 (or None for the most precise)")
    first_error: ArtifactError | None = None
    for fmt in backend_cls.formats:
        try:
            return manifest.model(fmt, precision)
        except ArtifactError as exc:
            first_error = first_error or exc
    have = ", ".join(f"{m.format}/{m.precision}" for m in manifest.models) or "none"
    want = "/".join(backend_cls.formats) + (f" {precision}" if precision else "")
    raise ArtifactError(
        f"artifact '{manifest.name}' has no {want} model for backend '{backend_cls.name}' (it has: {have}); "
        f"pick another backend/precision or export it with `edgeslim export ARTIFACT --to {backend_cls.formats[0]}`"
    ) from first_error


def load(
    artifact: str | os.PathLike,
    *,
    backend: str = "onnxruntime",
    precision: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    verify: bool = True,
    **backend_options: Any,
) -> Predictor:
    """Load an artifact directory for inference.

    Args:
        artifact: the artifact directory (holding ``manifest.json``).
        backend: runtime backend name (``onnxruntime``, ``openvino``, ``torch``, ``tensorrt``; see
            ``edgeslim.runtime.BACKENDS``).
        precision: ``fp32`` | ``fp16`` | ``int8``; None picks the most precise model the backend can run.
        device: backend device (``cpu``, ``cuda:0``, ``GPU``, ``AUTO``, ...).
        threads: intra-op threads (None: the backend's default).
        verify: check every file against the sha256 in the manifest first.
        **backend_options: backend-specific options (e.g. ``providers=[...]`` for onnxruntime, ``hint="THROUGHPUT"``
            for openvino).

    Returns:
        A :class:`Predictor`.

    Raises:
        UnknownNameError: unknown backend (with the closest name).
        ArtifactError: not an artifact, or no model the backend can run in that precision.
        IntegrityError: a file was modified or is missing.
        MissingDependencyError: the backend's library is not installed (names the extra).
        BackendError: the backend could not load the model on that device.
    """
    backend_cls = BACKENDS.get(backend)
    directory = Path(artifact)
    manifest = load_manifest(directory, verify=verify)
    model_file = select_model(manifest, backend_cls, precision)
    warn_if_foreign_int8(directory / model_file.path, model_file)
    hook = getattr(backend_cls, "artifact_options", None)
    extra = dict(hook(manifest, model_file)) if hook is not None else {}
    extra.update(backend_options)
    options = BackendOptions(device=device, threads=threads, extra=extra)
    runner = backend_cls(directory / model_file.path, options)
    try:
        if not runner.inputs:
            raise ArtifactError(f"{model_file.path} has no inputs")
        return Predictor(directory, manifest, model_file, runner)
    except BaseException:
        runner.close()
        raise
