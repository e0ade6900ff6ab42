"""Quantization methods: one pydantic config per method, and the method's spec as class attributes.

A recipe's ``quantize:`` section is the chosen method's config, discriminated by ``method``::

    quantize: {method: ptq, calibration_size: 300}
    quantize: {method: accuracy_aware, max_drop: 0.01, max_extra_critical_fn: 0}
    quantize: {method: qat, qat_epochs: 1, qat_lr: 0.001}

What the rest of the package needs to know about a method is declared on its config class, never found out by
comparing its name: whether it makes INT8 files at all (:attr:`QuantizeConfig.makes_int8`), whether it calibrates
the exported graph (:attr:`~QuantizeConfig.calibrates_graph`), whether it trains the model before export and with
what (:attr:`~QuantizeConfig.needs_training`, :attr:`~QuantizeConfig.training_hook`), and what an INT8 file that
misses the validation budget is re-quantized with (:meth:`~QuantizeConfig.fallback`). The handlers that make the
INT8 files are registered by (method, format) in :mod:`edgeslim.quant.handlers`.

This module is light (pydantic only), so parsing a recipe stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, cast

from pydantic import Field

from ..errors import ConfigError, ExportError
from ..methods import QUANT_METHODS, MethodConfig

__all__ = ["FIRST_CONV", "AccuracyControlledPTQ", "Int8Job", "NoQuantization", "PTQ", "QAT", "QUANT_METHODS",
           "QuantizeConfig", "no_int8", "parse_quantize", "post_training", "upgrade_flat", "with_method"]


#: ``ignored_scope`` alias for the model's first convolution (the stem: it sees raw pixels, the layer INT8 hurts
#: most), resolved on the graph being quantized (:func:`edgeslim.quant.ptq.first_conv_name`). Node names
#: differ between exports of one architecture (a dynamic or a fixed batch axis, ONNX or OpenVINO), so a name taken
#: from one export misses in another.
FIRST_CONV = "@first_conv"


class QuantizeConfig(MethodConfig):
    """What every INT8 method shares: NNCF's calibration options (see :mod:`edgeslim.quant.ptq`), and the spec
    every stage reads instead of the method's name."""

    #: the method makes INT8 files (NoQuantization does not: ``int8`` is then not a valid export precision)
    makes_int8: ClassVar[bool] = True
    #: the method calibrates the exported FP32 graph (post-training), so each file records the calibration options
    calibrates_graph: ClassVar[bool] = True
    #: the method trains the compressed model before export: the composer runs :attr:`training_check` before any
    #: training and :attr:`training_hook` after compression, and passes the trained model to export (``qat_model``)
    needs_training: ClassVar[bool] = False
    #: ``"module:function"``: ``f(model, input_shape, cfg)`` raising before any training when the method cannot run
    training_check: ClassVar[str | None] = None
    #: ``"module:function"``: ``f(model, data, recipe, *, run_dir, calibration, masks, teacher, resume, progress,
    #: target)`` returning ``.model`` (for export), ``.fp32_model``, ``.history``, ``.info``. Named, not imported:
    #: the training runs in the stage above this package (compress), which it must not import
    training_hook: ClassVar[str | None] = None

    calibration_size: int = Field(default=300, gt=0, description="training samples NNCF calibrates on")
    preset: Literal["performance", "mixed"] = "performance"
    ignored_scope: list[str] = Field(default_factory=list, description="node names (regex) left in FP32;"
                                     " '@first_conv' is the graph's first convolution")
    fast_bias_correction: bool = Field(default=True, description="NNCF's fast bias correction (False: the full one)")
    model_type: Literal["cnn", "transformer"] = Field(default="cnn", description="transformer: NNCF's transformer scheme")

    def training_note(self) -> str:
        """What the training of a :attr:`needs_training` method does, for the run's log."""
        return f"{self.method} training"

    def fallback(self) -> "QuantizeConfig | None":
        """The config an INT8 file of this method that misses the validation budget is re-quantized with: accuracy
        control on the val split with no extra critical FN (and this config's ``max_drop``, if it has one); None
        when the file already came from accuracy control."""
        keep = {k: getattr(self, k) for k in ("max_drop",) if k in type(self).model_fields}
        return with_method(self, "accuracy_aware", max_extra_critical_fn=0, **keep)


QUANT_METHODS.set_hooks(base=QuantizeConfig)  # every quantization method's config is one


def resolve_hook(ref: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` hook of a method spec names (imported on first use)."""
    module, _, name = ref.partition(":")
    return cast(Callable[..., Any], getattr(importlib.import_module(module), name))


class NoQuantization(QuantizeConfig):
    """No INT8 files (``int8`` is then not a valid export precision)."""

    method: Literal["none"] = "none"
    makes_int8: ClassVar[bool] = False


class PTQ(QuantizeConfig):
    """NNCF post-training quantization of the exported FP32 graph, calibrated on ``calibration_size`` training
    samples, in the target's INT8 scheme."""

    method: Literal["ptq"] = "ptq"


class AccuracyControlledPTQ(QuantizeConfig):
    """PTQ with the most harmful layers kept in float (NNCF's accuracy control, on the val split) until the val
    top-1 drop is at most ``max_drop`` and the val critical FN, counted at the calibrated thresholds, at most
    FP32's + ``max_extra_critical_fn``."""

    method: Literal["accuracy_aware"] = "accuracy_aware"
    max_drop: float = Field(default=0.01, ge=0, lt=1, description="max absolute val top-1 drop")
    max_extra_critical_fn: int = Field(default=0, ge=0, description="val critical FN allowed above the FP32 model's")

    def fallback(self) -> "QuantizeConfig | None":
        return None  # the file already came from accuracy control


class QAT(QuantizeConfig):
    """Quantization-aware training: fake-quant inserted into the torch model (calibrated like PTQ) and fine-tuned
    ``qat_epochs`` with the recipe's loss (masks kept), exported as Q/DQ ONNX and an INT8 OpenVINO IR."""

    method: Literal["qat"] = "qat"
    qat_epochs: int = Field(default=1, ge=0, description="fine-tuning epochs with fake-quant")
    qat_lr: float | None = Field(default=None, gt=0, description="learning rate (default: train.lr / 10)")
    calibrates_graph: ClassVar[bool] = False  # the fake-quantizers were calibrated and trained on the torch model
    needs_training: ClassVar[bool] = True
    training_check: ClassVar[str | None] = "edgeslim.quant.qat:check_qat_traceable"
    training_hook: ClassVar[str | None] = "edgeslim.compress.qat:quantize_aware_train"

    def training_note(self) -> str:
        return f"quantization-aware training: {self.qat_epochs} epoch(s)"


@dataclass
class Int8Job:
    """What a quantization method needs beyond the FP32 graph (built by the exporter from its context).

    Attributes:
        calibration: preprocessed float32 NCHW batches from the training split.
        scheme: the target's INT8 scheme for this file (:func:`edgeslim.hardware.int8_scheme`).
        val_split: ``(inputs, labels)`` of the val split (accuracy control), or None.
        critical: critical class indices.
        thresholds: the artifact's calibrated decision thresholds (critical FN are counted as deployed).
        rule: the artifact's decision rule.
        calibrate: how the export gives a reduced-precision file its own thresholds, ``f(val probabilities, val
            labels) -> {class: threshold}`` (on val, to the recipe's decision target), or None where files keep the
            artifact's thresholds; accuracy control counts critical misses at them, as the export then judges.
        qat_model: the QAT-trained torch model, or None.
        example_input: ``f(batch or None) -> torch.Tensor``, for exporting the QAT model.
        opset, dynamic_batch, input_name, output_name: the export's graph contract.
    """

    calibration: list[Any] | None
    scheme: Any
    val_split: tuple[Any, Any] | None = None
    critical: list[int] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    rule: str = "threshold"
    calibrate: Callable[[Any, Any], dict[int, float]] | None = None
    qat_model: Any = None
    example_input: Callable[..., Any] | None = None
    opset: int = 18
    dynamic_batch: bool = True
    input_name: str = "input"
    output_name: str = "logits"

    def calibration_or_raise(self, fmt: str) -> list[Any]:
        if not self.calibration:
            raise ExportError(f"INT8 {fmt} needs calibration batches from the training split; none were given")
        return self.calibration


# the flat quantize section of recipes written before the methods were typed: every method's fields, at these defaults
_FLAT_DEFAULTS: dict[str, Any] = {"qat_epochs": 1, "qat_lr": None, "max_drop": 0.01, "max_extra_critical_fn": 0}


def upgrade_flat(section: Any) -> Any:
    """A flat quantize section (every method's fields, as recipes before typed methods wrote them) as the data
    of its method's config: a field the method does not have is dropped at its old default and refused at any
    other value (it would silently do nothing)."""
    if not isinstance(section, dict):
        return section
    method = section.get("method", "ptq")
    if not isinstance(method, str) or method not in QUANT_METHODS:
        return dict(section)
    config = QUANT_METHODS.config_class(QUANT_METHODS.canonical(method))
    out, stray = {}, []
    for key, value in section.items():
        if key == "method" or key in config.model_fields or key not in _FLAT_DEFAULTS:
            out[key] = value
        elif value != _FLAT_DEFAULTS[key]:
            stray.append(key)
    if stray:
        raise ConfigError(
            f"quantize: {', '.join(sorted(stray))} {'does' if len(stray) == 1 else 'do'} not apply to method"
            f" '{method}' (it uses: {', '.join(config.option_names()) or 'nothing'}); remove"
            f" {'it' if len(stray) == 1 else 'them'}"
        )
    return out


def with_method(cfg: QuantizeConfig, method: str, **options: Any) -> QuantizeConfig:
    """``cfg``'s shared calibration options under another method (e.g. the accuracy-control fallback of a PTQ)."""
    common = {k: getattr(cfg, k) for k in QuantizeConfig.model_fields if k != "method"}
    return parse_quantize({**common, **options, "method": method})


# the registry parses a quantize section by itself (the recipe imports no stage): a flat section is upgraded first
QUANT_METHODS.set_hooks(upgrade=upgrade_flat)


def parse_quantize(data: Any) -> QuantizeConfig:
    """A quantize section (typed, flat or a config) as its method's config (default method: ``ptq``)."""
    return cast(QuantizeConfig, QUANT_METHODS.parse(data, default="ptq"))  # the registry's base (set_hooks)


def no_int8(cfg: QuantizeConfig) -> QuantizeConfig:
    """``cfg``'s calibration options under no quantization (an FP32 / FP16 run), without float-kept layers."""
    return with_method(cfg, "none", ignored_scope=[])


def post_training(cfg: QuantizeConfig, **options: Any) -> QuantizeConfig:
    """``cfg`` with ``options`` when it quantizes the exported graph without training; else (no quantization, or a
    method that trains) PTQ with ``cfg``'s calibration options: what a run that does not train again quantizes
    with (the search's candidates)."""
    if cfg.makes_int8 and not cfg.needs_training:
        return parse_quantize({**cfg.model_dump(mode="json"), **options})
    return with_method(cfg, "ptq", **options)
