"""The artifact writer: :func:`export_artifact` runs the requested exporters (the contract, :mod:`edgeslim.export.
contract`, is re-exported here), validates every file (:mod:`edgeslim.export.gate`) and writes one artifact
atomically; :func:`export_existing` re-exports formats of an existing artifact.

Failures: one failed exporter or precision never takes the others with it (the contract's docstring says how);
``strict=True`` makes it all or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .._io import atomic_write_bytes
from ..artifact import Manifest, ModelFile, TensorInfo, load_manifest, write_artifact
from ..errors import ArtifactError, ConfigError, EdgeslimError, ExportError, ValidationError
from ..quant import QuantizeConfig
from ..recipe import ExportSection, QuantizeSection, ValidateSection
from .contract import EXPORTERS as EXPORTERS
from .contract import INPUT_NAME as INPUT_NAME
from .contract import OUTPUT_NAME as OUTPUT_NAME
from .contract import PRECISIONS as PRECISIONS
from .contract import TORCH_WEIGHTS as TORCH_WEIGHTS
from .contract import ExportContext as ExportContext
from .contract import Exporter as Exporter
from .contract import order_formats as order_formats
from .gate import _calibrate_file_thresholds, _drop_failed, _int8_fallback, _problem_line, _validate
from .reference import _reference_logits as _reference_logits

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


# -- weights and sparsity -----------------------------------------------------------------------------------------


def write_torch_weights(model: Any, path: str | os.PathLike, *, arch: str = "", num_classes: int = 0) -> ModelFile:
    """Write the model's state dict as safetensors (atomically) and describe it as a torch ``ModelFile``.

    Tensors are cloned contiguous so tied or strided parameters serialise; the torch backend rebuilds the
    module from ``Manifest.arch`` and loads these weights. A channel-pruned model also records its layer widths
    (``extra["structure"]``, see :func:`edgeslim.models.structure_spec`) so it can be rebuilt.
    """
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state))
    extra: dict[str, Any] = {"tensors": len(state)}
    if arch and num_classes:
        from ..models import build_model, structure_spec

        try:
            reference = build_model(arch, num_classes)
        except EdgeslimError:  # an arch this edgeslim cannot rebuild: nothing to compare the widths with
            reference = None
        if reference is not None:
            spec = structure_spec(model, reference=reference)
            if spec["modules"]:
                extra["structure"] = spec
    return ModelFile(format="torch", precision="fp32", path=Path(path).name, extra=extra)


def _zeros_summary(layers: dict[str, tuple[int, int]]) -> dict[str, Any]:
    zeros = sum(z for z, _ in layers.values())
    total = sum(t for _, t in layers.values())
    return {
        "zeros": zeros,
        "total": total,
        "ratio": round(zeros / total, 6) if total else 0.0,
        "layers": {k: round(z / t, 6) if t else 0.0 for k, (z, t) in layers.items()},
    }


def torch_weight_sparsity(model: Any) -> dict[str, Any]:
    """Exact zeros in the weights of every Conv and Linear module of a torch model."""
    from torch import nn

    layers: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            w = mod.weight.detach()
            layers[name] = (int((w == 0).sum()), int(w.numel()))
    return _zeros_summary(layers)


def onnx_weight_sparsity(path: str | os.PathLike) -> dict[str, Any]:
    """Exact zeros in the weight initializers of every Conv, ConvTranspose, Gemm and MatMul node of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    layers: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            w = inits.get(node.input[1])
            if w is not None and w.name not in layers:
                arr = numpy_helper.to_array(w)
                layers[w.name] = (int((arr == 0).sum()), int(arr.size))
    return _zeros_summary(layers)


# -- the artifact writer ------------------------------------------------------------------------------------------


def _input_shape(manifest: Manifest) -> tuple[int, int, int]:
    shape = list(manifest.input.shape)
    if len(shape) == 4 and all(d > 0 for d in shape[1:]):
        return int(shape[1]), int(shape[2]), int(shape[3])
    crop = manifest.preprocessing.crop
    return 3, crop, crop


def _check_request(formats: Sequence[str], precisions: Sequence[str], calibration: Any,
                   quantize_cfg: QuantizeConfig) -> tuple[list[str], tuple[str, ...]]:
    if isinstance(formats, str) or isinstance(precisions, str):
        raise ConfigError("formats and precisions must be sequences such as ('onnx',), not a single string")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ConfigError(f"unknown precision(s) {bad or '(none)'}; choose from {', '.join(PRECISIONS)}")
    if "int8" in precisions:
        if not quantize_cfg.makes_int8:  # NoQuantization
            raise ConfigError("int8 was requested but quantize.method is 'none'; set it to 'ptq' or drop int8")
        if calibration is None:
            raise ConfigError(
                "int8 needs calibration batches: pass calibration=[float32 NCHW arrays from the training split]"
                " (see edgeslim.compress.quantize.calibration_batches), or precisions=('fp32',)"
            )
    return order_formats(formats), tuple(dict.fromkeys(precisions))


def _run_exporters(ctx: ExportContext, names: list[str]) -> None:
    for name in names:
        cls = EXPORTERS.get(name)
        asked = ctx.precisions
        if "int8" in asked and ctx.int8_formats is not None and name not in ctx.int8_formats:
            # the recipe says INT8 buys nothing in this format on its target (e.g. ONNX Runtime INT8 slower than
            # FP32 on x86 CPUs): no calibration, no validation, no fallback minutes spent on it
            ctx.skip(name, "int8", f"export.int8_formats is {ctx.int8_formats}")
            ctx.precisions = tuple(p for p in asked if p != "int8")
        for p in ctx.precisions:
            if p not in cls.precisions:
                ctx.skip(name, p, f"the {name} exporter writes {', '.join(cls.precisions)} only")
        try:
            ctx.written.extend(ctx.attempt(name, "*", lambda cls=cls: cls().export(ctx)))
        finally:
            ctx.precisions = asked


def export_artifact(
    model: "torch.nn.Module",
    out_dir: str | os.PathLike,
    manifest: Manifest,
    *,
    formats: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32", "int8"),
    calibration: Iterable[np.ndarray] | None = None,
    validation: tuple[np.ndarray, np.ndarray | None] | None = None,
    export_cfg: ExportSection | None = None,
    quantize_cfg: QuantizeConfig | None = None,
    validate_cfg: ValidateSection | None = None,
    strict: bool = False,
    target: str = "auto",
    qat_model: Any = None,
    val_split: tuple[np.ndarray, np.ndarray] | None = None,
    reference_logits: dict[str, np.ndarray] | None = None,
) -> Manifest:
    """Export ``model`` to every requested format and precision and write one validated artifact, atomically.

    The torch weights (``model.safetensors``) are always written. Files are written into a temporary directory
    that replaces ``out_dir`` only when everything is hashed and the manifest written, so an interrupted or
    failed export never leaves a directory that loads.

    Args:
        model: the trained (possibly pruned) classifier; it is exported in eval mode on the CPU.
        out_dir: the artifact directory (replaced if it exists).
        manifest: metadata to carry (name, arch, classes, critical, preprocessing, ...). ``input``, ``outputs``,
            ``models``, ``sparsity`` and ``validation`` are filled in here; the input shape is taken from
            ``manifest.input.shape`` when it names C, H, W, else from ``preprocessing.crop``.
        formats: exporter names (see ``EXPORTERS.names()``); default ``export_cfg.formats`` (onnx, openvino).
            An empty list writes only the torch weights.
        precisions: any of ``fp32``, ``fp16``, ``int8``; each exporter writes those it supports.
        calibration: preprocessed float32 NCHW batches from the training split, needed for ``int8``.
        validation: ``(inputs, labels)`` of the test split (preprocessed float32 NCHW, int labels or None): every
            exported file is compared with the PyTorch logits on them (see :func:`validate_exports`). With
            ``val_split`` too, FP16 / INT8 files are judged on val (leaving one out, or the accuracy-control
            fallback, is decided there) and their test figures are only reported.
        export_cfg: opset, dynamic batch and formats.
        quantize_cfg: calibration size, preset, ignored scope.
        validate_cfg: tolerances.
        strict: all or nothing: raise when an exporter fails or validation finds a mismatch (nothing is
            written). By default a failed format or precision never takes the others with it: the artifact holds
            the files that passed, and ``manifest.validation["failed"]`` lists each one left out with its reason
            (``manifest.validation["partial"]`` is then true). A target this machine cannot build for (TensorRT
            without the package or a GPU) is never fatal: it is recorded in ``manifest.validation["errors"]`` with
            ``"unavailable": True`` and the rest is written.
        target: the device target the INT8 files are made for: ``auto`` (this host) or a name from
            ``edgeslim devices``; it decides each file's INT8 scheme (:func:`edgeslim.hardware.int8_scheme`),
            recorded in the file's ``extra["int8_scheme"]``.
        qat_model: the QAT-trained model, for ``quantize.method: qat``.
        val_split: ``(inputs, labels)`` of the val split: the validation judges FP16 / INT8 files on it, and
            accuracy control judges layers on it, both for ``quantize.method: accuracy_aware`` and when an INT8
            file misses the validate budget (the fallback keeps the most harmful layers in float, see
            ``manifest.validation["int8_fallback"]``).
        reference_logits: the model's logits the caller already has, ``{"test": ..., "val": ...}`` on the
            ``validation`` and ``val_split`` inputs (the pipeline scored and calibrated with them): every file is
            compared with these instead of a torch pass over the split again. One of the wrong shape is computed.

    Returns:
        The written manifest (with file hashes).

    Raises:
        ConfigError: unknown format or precision; int8 without calibration.
        ExportError: (strict) an exporter failed; the message lists every failure.
        ValidationError: (strict) an export disagrees with PyTorch beyond tolerance; lists every mismatch.
    """
    return _export(model, out_dir, manifest, formats=formats, precisions=precisions, calibration=calibration,
                   validation=validation, export_cfg=export_cfg, quantize_cfg=quantize_cfg,
                   validate_cfg=validate_cfg, strict=strict, existing=None, target=target, qat_model=qat_model,
                   val_split=val_split, reference_logits=reference_logits)


def _export(model: Any, out_dir: Any, manifest: Manifest, *, formats: Sequence[str] | None,
            precisions: Sequence[str], calibration: Any, validation: Any, export_cfg: ExportSection | None,
            quantize_cfg: QuantizeConfig | None, validate_cfg: ValidateSection | None, strict: bool,
            existing: Path | None, target: str = "auto", qat_model: Any = None,
            val_split: tuple[np.ndarray, np.ndarray] | None = None,
            reference_logits: dict[str, np.ndarray] | None = None) -> Manifest:
    import torch

    export_cfg = export_cfg or ExportSection()
    quantize_cfg = quantize_cfg or QuantizeSection()
    validate_cfg = validate_cfg or ValidateSection()
    if formats is None:
        formats = export_cfg.formats
    names, precisions = _check_request(formats, precisions, calibration, quantize_cfg)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"export_artifact needs a torch.nn.Module, got {type(model).__name__}")
    model = model.eval().cpu()
    input_shape = _input_shape(manifest)
    num_classes = len(manifest.classes)

    # Fail fast on a model/manifest mismatch before any exporter runs.
    with torch.inference_mode():
        probe = model(torch.zeros(1, *input_shape))
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[1] != num_classes:
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ConfigError(
            f"the model returns {shape} for input [1, {', '.join(map(str, input_shape))}] but the manifest lists"
            f" {num_classes} classes; it must return logits of shape [N, {num_classes}]"
        )
    if validation is not None:
        inputs, labels = validation
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != input_shape or len(inputs) == 0:
            raise ConfigError(
                f"validation inputs have shape {list(inputs.shape)}; expected [N>0, {', '.join(map(str, input_shape))}]"
            )
        if labels is not None:
            labels = np.asarray(labels).astype(np.int64)
            if labels.shape != (len(inputs),):
                raise ConfigError(f"validation labels have shape {list(labels.shape)}; expected [{len(inputs)}]")
    cal = None if calibration is None else [np.asarray(b, dtype=np.float32) for b in calibration]

    batch = -1 if export_cfg.dynamic_batch else 1
    manifest = manifest.model_copy(deep=True)
    manifest.input = TensorInfo(name=INPUT_NAME, dtype="float32", shape=[batch, *input_shape])
    manifest.outputs = [TensorInfo(name=OUTPUT_NAME, dtype="float32", shape=[batch, num_classes])]

    def known(split: str, x: np.ndarray) -> np.ndarray:
        given = (reference_logits or {}).get(split)
        if given is not None and np.shape(given) == (len(x), num_classes):
            return np.asarray(given, dtype=np.float32)
        return _reference_logits(model, np.asarray(x, dtype=np.float32))

    def writer(tmp: Path) -> Manifest:
        ctx = ExportContext(
            manifest=manifest,
            model=model, directory=tmp, input_shape=input_shape, num_classes=num_classes, opset=export_cfg.opset,
            dynamic_batch=export_cfg.dynamic_batch, precisions=precisions, calibration=cal, quantize=quantize_cfg,
            target=target, qat_model=qat_model, val_split=val_split,
            int8_formats=None if export_cfg.int8_formats is None else tuple(export_cfg.int8_formats),
        )
        kept: list[ModelFile] = []
        if existing is not None:
            kept = _copy_existing(existing, tmp, names, precisions)
            ctx.written.extend(kept)
        if not any(m.format == "torch" for m in kept):
            ctx.written.extend(ctx.attempt("torch", "fp32", lambda: [write_torch_weights(
                model, tmp / TORCH_WEIGHTS, arch=manifest.arch, num_classes=num_classes)]))
        _run_exporters(ctx, names)

        m = manifest.model_copy(deep=True)
        m.models = list(ctx.written)
        sparsity = dict(m.sparsity)
        sparsity["torch"] = torch_weight_sparsity(model)
        onnx_fp32 = ctx.find("onnx", "fp32")
        if onnx_fp32 is not None:
            sparsity["onnx"] = onnx_weight_sparsity(tmp / onnx_fp32.path)
        m.sparsity = sparsity

        # the torch model's val logits, computed once (or given): the field reference and the validation both
        # compare with them (a torch pass over val is the export's costliest step after the ONNX trace at 192 px)
        val_torch = None if val_split is None else known("val", val_split[0])
        if val_split is not None:  # the files just written; those copied from an existing artifact keep theirs
            written = [f for f in m.models if not any(f is k for k in kept)]
            _calibrate_file_thresholds(tmp, m, written, val_split)
            from .reference import store_field_references  # the val reference the server's monitor tests against

            store_field_references(tmp, m, written, model, val_split, torch_logits=val_torch)
        report: dict[str, Any] = {}
        if validation is not None:
            reference = known("test", inputs)
            # FP16 / INT8 files are judged on val when there is one (what ships is decided there); test is reported
            val = None if val_split is None or labels is None or val_torch is None else (
                val_split[0], val_split[1], val_torch)
            report = _validate(tmp, m, reference, inputs, labels, validate_cfg, val=val)
            report = _check_sparsity(report, sparsity)
            _int8_fallback(ctx, m, report, reference, inputs, labels, validate_cfg, val=val)
        report["errors"] = ctx.errors
        report["export_skipped"] = ctx.skipped

        # A target this machine cannot build for (no TensorRT, no GPU) is recorded, never fatal: the rest of the
        # export completes and the artifact carries the script to build it on the device.
        fatal = [e for e in ctx.errors if not e.get("unavailable")]
        if strict and fatal:
            lines = [f"{e['exporter']}/{e['precision']}: {e['error']}" for e in fatal]
            if report.get("problems"):
                lines += [_problem_line(p) for p in report["problems"]]
            raise ExportError(
                f"export of '{manifest.name}' failed, nothing was written to {out_dir}: " + "; ".join(lines)
                + ". Fix the cause, or pass strict=False to keep the formats that succeeded."
            )
        if strict and report.get("problems"):
            raise ValidationError(
                f"export of '{manifest.name}' failed validation against PyTorch, nothing was written to {out_dir}: "
                + "; ".join(_problem_line(p) for p in report["problems"])
                + ". Loosen the tolerances in the recipe's validate section only if the difference is expected."
            )
        if not strict:
            _drop_failed(tmp, m, report)
        report["failed"] = report.get("failed", []) + [
            {"file": None, "format": e["exporter"], "precision": e["precision"], "reason": e["error"]} for e in fatal
        ]
        report["partial"] = bool(report["failed"])
        m.validation = report
        if not m.models:
            raise ExportError(f"export of '{manifest.name}' produced no model file: " + json.dumps(ctx.errors))
        return m

    return write_artifact(out_dir, manifest, writer)


def _check_sparsity(report: dict[str, Any], sparsity: dict[str, Any]) -> dict[str, Any]:
    # Pruned weights must stay exactly zero through export (BN folding scales them, which keeps 0 at 0).
    onnx_s, torch_s = sparsity.get("onnx"), sparsity.get("torch")
    if onnx_s is not None and torch_s is not None and onnx_s["zeros"] < torch_s["zeros"]:
        report.setdefault("problems", []).append(
            {"file": "model.onnx", "metric": "zero_weights", "value": onnx_s["zeros"], "limit": f">= {torch_s['zeros']}"}
        )
        report["passed"] = False
    return report


def _copy_existing(src: Path, dst: Path, names: list[str], precisions: tuple[str, ...]) -> list[ModelFile]:
    """Copy an existing artifact's files, except the model files about to be re-exported; return the kept models."""
    old = load_manifest(src)
    kept, dropped = [], set()
    for mf in old.models:
        if mf.format in names and mf.precision in precisions:
            dropped.add(mf.path)
            if mf.format == "openvino":
                dropped.add(Path(mf.path).with_suffix(".bin").as_posix())
        else:
            kept.append(mf)
    for rel in old.files:
        if rel not in dropped:
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, target)
    return kept


def export_existing(
    artifact_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    formats: Sequence[str] = ("onnx", "openvino"),
    precisions: Sequence[str] = ("fp32",),
    calibration: Iterable[np.ndarray] | None = None,
    validation: tuple[np.ndarray, np.ndarray | None] | None = None,
    export_cfg: ExportSection | None = None,
    quantize_cfg: QuantizeConfig | None = None,
    validate_cfg: ValidateSection | None = None,
    strict: bool = False,
    target: str | None = None,
    val_split: tuple[np.ndarray, np.ndarray] | None = None,
    data_from_recipe: bool = False,
) -> Manifest:
    """Add formats to an existing artifact, re-exporting from its ``model.safetensors``.

    With ``data_from_recipe``, the calibration and validation data not given are re-created from the recipe
    recorded in the manifest (calibration: its training split; validation: its test split; ``val_split``, for the
    accuracy-control fallback of an INT8 file that misses the budget: its val split); an artifact without a
    recorded recipe is then checked for parity with PyTorch only. ``target`` defaults to the recorded recipe's.

    The model is rebuilt with ``edgeslim.models.rebuild_model(manifest.arch, len(manifest.classes), structure)``;
    model files of other formats/precisions are carried over. Export, quantize and validate settings not given
    are taken from the recipe recorded in the artifact's manifest (else the defaults). ``out_dir`` defaults to
    ``artifact_dir`` (replaced atomically).

    Raises:
        ArtifactError: the artifact has no torch weights or no ``arch`` to rebuild the model from.
    """
    from safetensors.torch import load_file

    src = Path(artifact_dir)
    old = load_manifest(src)
    weights = next((m for m in old.models if m.format == "torch"), None)
    if weights is None or not old.arch:
        raise ArtifactError(
            f"artifact {src} cannot be re-exported: it needs torch weights and Manifest.arch"
            f" (has weights: {weights is not None}, arch: {old.arch!r}); export it again from the trained model"
        )
    from ..models import rebuild_model

    int8 = "int8" in precisions
    if data_from_recipe and (validation is None or (int8 and (calibration is None or val_split is None))):
        from ..compress.data import calibration_arrays, recorded_data, split_arrays

        found = recorded_data(old)
        if found is not None:
            data, recipe = found
            if calibration is None and int8:
                calibration = calibration_arrays(data, recipe.quantize.calibration_size)
            if validation is None:
                validation = split_arrays(data, "test")
            if val_split is None and recipe.data.val_fraction > 0:
                # the accuracy-control fallback of a failed INT8, and every new file's field reference
                val_split = split_arrays(data, "val")
    # Tolerances, opset and quantisation settings default to those of the recipe the artifact was made with, so a
    # re-export is judged as the original export was.
    recorded = old.recipe or {}
    try:
        export_cfg = export_cfg or ExportSection(**recorded.get("export", {}))
        quantize_cfg = quantize_cfg or QuantizeSection(**recorded.get("quantize", {}))
        validate_cfg = validate_cfg or ValidateSection(**recorded.get("validate", {}))
    except Exception as exc:  # pydantic ValidationError: a recipe from another edgeslim version
        raise ArtifactError(
            f"artifact {src} records a recipe whose export/quantize/validate sections this edgeslim cannot read"
            f" ({exc}); pass export_cfg=, quantize_cfg= and validate_cfg= explicitly"
        ) from exc
    model = rebuild_model(old.arch, len(old.classes), weights.extra.get("structure"))
    model.load_state_dict(load_file(str(src / weights.path)))
    # the files are new: a recommendation measured on the old ones (edgeslim.summary) no longer applies
    manifest = old.model_copy(update={"models": [], "files": {}, "recommended": None})
    return _export(
        model, out_dir or src, manifest, formats=formats, precisions=precisions, calibration=calibration,
        validation=validation, export_cfg=export_cfg, quantize_cfg=quantize_cfg, validate_cfg=validate_cfg,
        strict=strict, existing=src, target=target or recorded.get("target", "auto"), val_split=val_split,
    )
