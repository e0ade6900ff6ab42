"""The exporter contract: :class:`ExportContext`, :class:`Exporter`, the :data:`EXPORTERS` registry and the
run order of the formats (the artifact writer, :mod:`edgeslim.export.base`, runs them).

An exporter is a subclass of :class:`Exporter` registered by name::

    @EXPORTERS.register("myformat")
    class MyExporter(Exporter):
        name = "myformat"
        precisions = ("fp32", "int8")   # what it can write; other requested precisions are recorded as skipped
        after = ("onnx",)               # exporters whose files it prefers to start from (run first if requested)

        def export(self, ctx: ExportContext) -> list[ModelFile]:
            ...

``export(ctx)`` writes files below ``ctx.directory`` (the artifact's temporary directory; paths in the returned
:class:`~edgeslim.artifact.ModelFile` are relative to it) and returns what it wrote. The context carries the
eval-mode CPU torch model, the input shape ``(C, H, W)``, the number of classes, opset, dynamic batch, the
requested precisions (``ctx.wants("int8")``), the calibration batches (float32 NCHW, preprocessed, from the
training split), the quantization method's config (:mod:`edgeslim.quant`), and ``ctx.written``: the model files earlier
exporters produced (``ctx.find("onnx", "fp32")``), so OpenVINO or TensorRT can start from the ONNX.

Failures: an exception escaping ``export`` fails that exporter only; :func:`export_artifact` records it, removes
the files it left behind and carries on with the others. An exporter that writes several precisions wraps each in
``ctx.attempt(self.name, precision, fn)`` so that, say, a failed INT8 keeps the FP32 file. At the end
``strict=True`` raises one :class:`~edgeslim.errors.ExportError` listing every failure (and no artifact is
written); ``strict=False`` writes what succeeded and records the failures in ``manifest.validation["errors"]`` (and
precisions an exporter does not write in ``manifest.validation["export_skipped"]``).
Every exporter must keep the graph's input name ``input`` (NCHW float32) and output name ``logits``.
"""

from __future__ import annotations

import abc
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import numpy as np

from ..artifact import Manifest, ModelFile
from ..errors import ConfigError, EdgeslimError
from ..quant import QuantizeConfig
from ..recipe import RECIPE_CHECKS, QuantizeSection, Recipe
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..hardware import Int8Scheme

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TORCH_WEIGHTS = "model.safetensors"


@dataclass
class ExportContext:
    """Everything an exporter needs, and the record of what the export did so far.

    Attributes:
        model: the eval-mode CPU ``torch.nn.Module``.
        directory: the artifact's temporary directory; write files below it.
        input_shape: ``(C, H, W)`` of one input sample.
        num_classes: width of the ``logits`` output.
        opset: ONNX opset to export with.
        dynamic_batch: export a dynamic batch axis (else batch 1).
        precisions: the requested precisions (``fp32``, ``fp16``, ``int8``).
        calibration: preprocessed float32 NCHW batches for INT8 PTQ (None: INT8 not possible).
        quantize: calibration size, preset and ignored scope for PTQ.
        target: the device target the INT8 files are made for (``auto``: this host); it decides each file's INT8
            scheme (:meth:`int8_scheme`).
        qat_model: the QAT-trained model (``quantize.method: qat``), from
            :func:`edgeslim.compress.qat.quantize_aware_train`.
        val_split: ``(inputs, labels)`` of the val split (never the test split): what accuracy control judges
            layers on, for ``quantize.method: accuracy_aware`` and the fallback of an INT8 file that fails
            validation.
        written: model files written so far, by every exporter, in order.
        errors: failures recorded by :meth:`attempt` (``{"exporter", "precision", "error"}``).
        skipped: precisions an exporter does not support or did not write, with the reason.
    """

    model: Any
    directory: Path
    input_shape: tuple[int, int, int]
    num_classes: int
    opset: int = 18
    dynamic_batch: bool = True
    precisions: tuple[str, ...] = ("fp32",)
    calibration: list[np.ndarray] | None = None
    quantize: QuantizeConfig = field(default_factory=QuantizeSection)
    target: str = "auto"
    qat_model: Any = None
    val_split: tuple[np.ndarray, np.ndarray] | None = None
    written: list[ModelFile] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    manifest: Manifest | None = None  # the artifact's metadata (name, classes), for exporters that need it
    int8_formats: tuple[str, ...] | None = None  # formats that get an INT8 file (None: every format that can)

    def wants(self, precision: str) -> bool:
        """Whether ``precision`` was requested."""
        return precision in self.precisions

    def int8_scheme(self, fmt: str) -> "Int8Scheme":
        """The INT8 scheme of a ``fmt`` file made for :attr:`target` (see :func:`edgeslim.hardware.int8_scheme`)."""
        from ..hardware import int8_scheme

        return int8_scheme(self.target, fmt)

    @property
    def batch(self) -> int:
        """The exported batch dimension: -1 when dynamic, else 1."""
        return -1 if self.dynamic_batch else 1

    def input_dims(self) -> list[int]:
        """``[batch, C, H, W]`` with -1 for a dynamic batch."""
        return [self.batch, *self.input_shape]

    def example_input(self, batch: int | None = None) -> "torch.Tensor":
        """A deterministic random input; batch 2 by default when dynamic (torch.export specialises a batch of 1)."""
        import torch

        n = batch if batch is not None else (2 if self.dynamic_batch else 1)
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, *self.input_shape, generator=g)

    def find(self, format: str, precision: str = "fp32") -> ModelFile | None:
        """A model file already written by an earlier exporter, or None."""
        return next((m for m in self.written if m.format == format and m.precision == precision), None)

    def path(self, relative: str) -> Path:
        """Absolute path of a file in the artifact; creates its folder."""
        p = self.directory / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def attempt(self, exporter: str, precision: str, fn: Callable[[], list[ModelFile]]) -> list[ModelFile]:
        """Run one unit of export work; on failure record it, delete the files it created, and return ``[]``.

        The returned files are not added to :attr:`written`; the exporter returns them from ``export``.
        """
        before = _files_under(self.directory)
        try:
            files = list(fn())
        except Exception as exc:  # an exporter failing must not stop the others
            for p in _files_under(self.directory) - before:
                p.unlink(missing_ok=True)
            self.errors.append({"exporter": exporter, "precision": precision, "error": _describe(exc)})
            return []
        return files

    def skip(self, exporter: str, precision: str, reason: str) -> None:
        """Record that ``exporter`` did not write ``precision`` and why."""
        self.skipped.append({"exporter": exporter, "precision": precision, "reason": reason})


class Exporter(abc.ABC):
    """One target format. Subclasses set ``name``, ``precisions`` (and ``after``) and implement :meth:`export`."""

    name: ClassVar[str] = ""
    #: precisions this exporter can write
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    #: exporters whose output this one starts from when available; they run first when both are requested
    after: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def export(self, ctx: ExportContext) -> list[ModelFile]:
        """Write this format's files for the requested precisions and return them (see the module docstring)."""


EXPORTERS: Registry[type[Exporter]] = Registry("exporter")


@RECIPE_CHECKS.register("export")
def _check_export_section(recipe: Recipe) -> None:
    """The recipe's export formats (:data:`edgeslim.recipe.RECIPE_CHECKS`; the package registers every exporter)."""
    for f in recipe.export.formats:
        EXPORTERS.canonical(f)


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, EdgeslimError):
        # A library error: keep its type and where it came from, the message alone is often cryptic.
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        text = f"{type(exc).__name__}{where}: {text}"
    return text


def order_formats(formats: Iterable[str]) -> list[str]:
    """Canonical exporter names in run order: each after the exporters it starts from (when requested)."""
    names: list[str] = []
    for f in formats:
        c = EXPORTERS.canonical(f)
        if c not in names:
            names.append(c)
    ordered: list[str] = []

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in ordered:
            return
        if n in stack:
            raise ConfigError(f"exporters {' -> '.join((*stack, n))} depend on each other in a cycle")
        for dep in EXPORTERS.get(n).after:
            if dep in names:
                visit(dep, (*stack, n))
        ordered.append(n)

    for n in names:
        visit(n, ())
    return ordered
