"""Versioned YAML recipes, validated by pydantic.

A recipe is data: each section configures one stage and names registry keys (source, dataset, pruning method,
exporters, backends). Unknown keys and unknown names are rejected with the valid ones and the closest match. The
resolved recipe is saved beside every artifact so a run can be repeated.

Version 2 (this one): the ``prune`` section is the chosen method's own config, e.g. ``prune: {method: one_shot,
sparsity: 0.8, scope: global}``; its keys are those of the method's class in :mod:`edgeslim.compress.prune`
(``LotteryTicket``, ``OneShot``, ``Gradual``, ``NM``, ``Structured``, ``SparseTransfer``, ``NoPruning``).
Version-1 recipes (one flat prune section with every method's fields) still load: :func:`upgrade_recipe` converts
them. Parsing a recipe imports no stage and no torch, and neither does checking its names: each stage registers the
check of its own section in :data:`RECIPE_CHECKS`, whose plugins (the stages' modules) are imported on the first
:meth:`Recipe.check_names`.
"""

from __future__ import annotations

import hashlib
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .methods import PRUNE_METHODS, QUANT_METHODS, MethodConfig
from .registry import Registry, did_you_mean
from .search.config import SearchSection

RECIPE_VERSION = 2
DEFAULT_PRUNE_METHOD = "lottery_ticket"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class ModelSection(_Section):
    """Where the pretrained model comes from.

    ``source`` is a registry key of :data:`edgeslim.compress.sources.SOURCES`, optionally with an argument after
    a colon: ``efficientnet_lite0``, ``torchvision:resnet18``, ``timm:mobilenetv3_small_100``, ``file:ckpt.pt``.
    ``arch`` names the architecture a ``file:`` state dict belongs to (``timm:<name>``, ``torchvision:<name>`` or
    ``tiny``).
    """

    source: str = "efficientnet_lite0"
    arch: str | None = None
    pretrained: bool = True


class ElpvOptions(_Section):
    """Options of the ``elpv`` dataset (solar cells, see :mod:`edgeslim.compress.data`), under ``data.elpv``."""

    labels: Literal["binary", "grades"] = Field(
        default="binary", description="binary: functional / defective (p >= 0.5); grades: 0, 1/3, 2/3, 1"
    )
    modules: Literal["all", "mono", "poly"] = Field(default="all", description="keep only this module type")
    domain_shift: Literal["mono->poly", "poly->mono"] | None = Field(
        default=None, description="train (and validate) on one module type, test on the other"
    )
    subset: int | None = Field(
        default=None, gt=0, description="a seeded subset of this many cells, stratified by grade and type"
    )

    @model_validator(mode="after")
    def _shift_or_filter(self) -> "ElpvOptions":
        if self.domain_shift is not None and self.modules != "all":
            raise ValueError(
                f"domain_shift '{self.domain_shift}' already picks the module type of each split; drop"
                f" modules: {self.modules} (or drop domain_shift)"
            )
        return self


class DataSection(_Section):
    """The task's data. ``dataset`` is ``digits``, ``elpv`` or ``imagefolder:<dir>``."""

    dataset: str = "digits"
    image_size: int | None = Field(default=None, gt=0, description="input side; default: the source's")
    critical: list[Union[int, str]] = Field(default_factory=list, description="critical classes, by label or index")
    imbalance: dict[str, float] = Field(
        default_factory=dict, description="class (label or index) -> fraction of its training samples to keep"
    )
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    batch_size: int = Field(default=32, gt=0)
    num_workers: int = Field(default=0, ge=0)
    augment: bool = False
    elpv: ElpvOptions | None = Field(default=None, description="options of the elpv dataset (None: its defaults)")

    @field_validator("imbalance")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        for k, f in v.items():
            if not 0 < f <= 1:
                raise ValueError(f"imbalance[{k}] = {f}: keep-fraction must be in (0, 1]")
        return v

    @model_validator(mode="after")
    def _splits(self) -> "DataSection":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1 to leave training data")
        if self.elpv is not None and self.dataset.split(":", 1)[0].strip() != "elpv":
            raise ValueError(f"data.elpv configures the elpv dataset, but dataset is '{self.dataset}'; remove elpv")
        return self


class LossSection(_Section):
    """The training loss; ``class_dependent`` is Entezari & Saukh (2020), see docs/class-dependent-loss.md.

    With ``fpr_budget`` set, the budget governs every term that favours the critical classes, in every training
    from round 1 on: after each epoch whose validation critical-class FPR exceeds the budget, the first of gamma
    (down to 1), lambda (down to 0) and the critical classes' class-balancing up-weight (down to none) still above
    its floor is multiplied by ``gamma_down``; at most ``budget_slack * fpr_budget``, the last one below its
    ceiling is multiplied by ``gamma_up``. Over budget with all three at their floors, a warning says the loss
    cannot hold it and the run records that (see :class:`edgeslim.compress.loss.FprBudgetGamma`).
    """

    name: Literal["class_dependent", "cross_entropy"] = "class_dependent"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="cross_entropy: label smoothing")
    balance: bool = Field(
        default=False, description="cross_entropy: weight each class by its inverse training frequency"
    )
    beta: float = Field(default=0.999, ge=0, lt=1, description="effective-number beta for class balancing")
    gamma: float = Field(default=5.0, ge=1, description="critical-class weight boost")
    rank_weight: float = Field(default=5.0, ge=0, alias="lambda", description="weight of the AUC ranking term")
    margin: float = Field(default=1.0, gt=0)
    rank_warmup_epochs: int = Field(
        default=1, ge=0, description="epochs at the start of every training (round) without the ranking term"
    )
    gamma_schedule: Literal["paper", "constant"] = Field(
        default="paper", description="paper: gamma = 1 in round 1, then gamma; constant: gamma throughout"
    )
    fpr_budget: float | None = Field(
        default=None, gt=0, lt=1,
        description="govern gamma, lambda and the critical balance to keep the val critical FPR within this (None: off)",
    )
    gamma_down: float = Field(default=0.5, gt=0, lt=1, description="gamma factor after an epoch over the budget")
    gamma_up: float = Field(default=1.5, gt=1, description="gamma factor after an epoch well under the budget")
    budget_slack: float = Field(
        default=0.5, ge=0, lt=1, description="'well under' = val FPR <= budget_slack * fpr_budget"
    )


class TrainSection(_Section):
    epochs: int = Field(default=3, ge=0, description="epochs per training round")
    final_epochs: int | None = Field(default=None, ge=0, description="epochs of the final round (default: epochs)")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=5.0, gt=0, description="max gradient norm (None: no clipping)")
    select: Literal["last", "critical_recall", "critical_auc", "accuracy"] = Field(
        default="critical_recall", description="checkpoint kept from the final round, judged on the val split"
    )
    select_max_fpr: float = Field(
        default=0.05, ge=0, le=1,
        description="critical_recall selection only counts epochs whose val critical-class FPR is within this budget",
    )
    schedule: Literal["constant", "cosine", "onecycle"] = Field(
        default="constant",
        description="learning rate over each training: constant; cosine decay to 0; onecycle (linear warm-up over"
        " warmup_epochs, then cosine decay)",
    )
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warm-up from lr/25 (cosine and onecycle)")
    freeze: str | None = Field(
        default=None,
        description="freeze every layer up to and including this one (e.g. blocks.4: the stem and stages 0-4 of"
        " EfficientNet), BatchNorm statistics included; only the rest trains",
    )
    cache: bool = Field(
        default=True,
        description="with freeze: compute the frozen layers' outputs once (all 8 symmetries when the data augments"
        " that way) and train only the rest on them; needs a model that runs its layers in order",
    )
    device: str = "cpu"
    threads: int | None = Field(default=None, gt=0)


def QuantizeSection(**data: Any) -> MethodConfig:  # noqa: N802 - the section's name, kept for callers of version 1
    """The ``quantize`` section: the chosen INT8 method's config (:mod:`edgeslim.quant`), e.g.
    ``QuantizeSection(method="qat", qat_epochs=2)`` is ``QAT(qat_epochs=2)``; without ``method``, ``PTQ``.

    - ``ptq`` (:class:`~edgeslim.quant.PTQ`): NNCF post-training quantization of the exported FP32 graph,
      calibrated on ``calibration_size`` training samples, in the target's INT8 scheme.
    - ``qat`` (:class:`~edgeslim.quant.QAT`): quantization-aware training for ``qat_epochs``.
    - ``accuracy_aware`` (:class:`~edgeslim.quant.AccuracyControlledPTQ`): PTQ with layers kept in float
      until ``max_drop`` and ``max_extra_critical_fn`` hold on val.
    - ``none``: no INT8.

    A flat section with every method's fields (recipes written before the methods were typed) is accepted: fields
    the method does not have are dropped at their old defaults and refused otherwise.
    """
    return QUANT_METHODS.parse(data, default="ptq")


class DistillSection(_Section):
    """Knowledge distillation from the dense model: ``loss = task + weight * T^2 * KL(teacher_T || student_T)``.

    ``task`` is the recipe's loss (class-dependent or cross-entropy). The teacher is the dense model as the dense
    round left it (round 1 of ``lottery_ticket``; the ``dense`` round of ``one_shot``, ``gradual``, ``nm`` and
    ``structured``), frozen in eval mode, run on the student's batch. It applies to every training after that
    round: the pruned fine-tuning (``train.final_epochs``), the later lottery rounds and QAT. With method ``none``
    (or ``lottery_ticket`` with ``rounds: 0``) the only training is the teacher's own, so only QAT distils.
    Refused before training when no training would have a teacher: ``train.epochs: 0`` (no dense round),
    ``sparse_transfer`` (the sparse source with a new head is no teacher of the task), or ``none`` without QAT.
    ``weight = 0`` turns it off (no teacher forward pass at all).
    """

    weight: float = Field(default=0.0, ge=0, description="weight of the KD term (0: off)")
    temperature: float = Field(default=4.0, gt=0, description="softmax temperature of teacher and student")


class ExportSection(_Section):
    formats: list[str] = Field(default_factory=lambda: ["onnx", "openvino"])
    int8_formats: list[str] | None = Field(
        default=None,
        description="the formats that get an INT8 file when quantize makes one (default: every format); leave out a"
        " format whose INT8 is no faster than its FP32 on the target (ONNX Runtime on x86 CPUs)",
    )
    opset: int = Field(default=18, ge=13)
    dynamic_batch: bool = True
    strict: bool = Field(
        default=False,
        description="all or nothing: a failed format or precision fails the export and nothing is written (default:"
        " the artifact keeps what passed and lists what was left out, and the CLI exits with code 3)",
    )

    @model_validator(mode="after")
    def _int8_formats(self) -> "ExportSection":
        for f in self.int8_formats or []:
            if f not in self.formats:
                raise ValueError(f"int8_formats names '{f}', which is not in formats {self.formats}.{did_you_mean(f, self.formats)}")
        return self


class ValidateSection(_Section):
    """Tolerances of the check every export runs against the PyTorch reference."""

    fp32_atol: float = Field(default=1e-3, gt=0, description="max |logit diff| for FP32 exports")
    fp32_min_agreement: float = Field(default=0.999, ge=0, le=1)
    fp16_min_agreement: float = Field(default=0.99, ge=0, le=1)
    int8_min_agreement: float = Field(default=0.95, ge=0, le=1)
    max_extra_critical_fn: int | None = Field(
        default=None, ge=0,
        description="a fixed count of extra critical FN (FP16/INT8 vs PyTorch) allowed on the deciding split (val when"
        " given); overrides the relative rule below. Unset (the default): a file fails only when its extra critical FN"
        " exceed max(1, floor(max_extra_critical_fnr x the split's critical samples)) and a one-sided exact McNemar test"
        " on the discordant critical samples says it misses more often than PyTorch at critical_fn_alpha"
        " (docs/int8-targets.md)",
    )
    max_extra_critical_fnr: float = Field(
        default=0.025, ge=0, le=1,
        description="extra critical FN allowed as a fraction of the deciding split's critical samples (at least 1)",
    )
    critical_fn_alpha: float | None = Field(
        default=0.2, gt=0, lt=1,
        description="over that budget a file still passes unless McNemar's one-sided exact test rejects 'misses no"
        " more often than PyTorch' at this level (0.2: the gate favours catching a real loss over the 5 % convention;"
        " it allows 2-4 extra misses on splits of 20-100 critical samples); null: the budget alone decides",
    )


class DecisionSection(_Section):
    """Deployment decision thresholds for the critical classes, calibrated on the validation split and stored in
    the manifest (the runtime and the server apply them). Give at most one target; none keeps argmax."""

    target_fnr: float | None = Field(default=None, ge=0, le=1, description="calibrate to this val critical FNR")
    target_fpr: float | None = Field(default=None, ge=0, le=1, description="or to this val critical FPR")

    @model_validator(mode="after")
    def _one(self) -> "DecisionSection":
        if self.target_fnr is not None and self.target_fpr is not None:
            raise ValueError("give target_fnr or target_fpr, not both")
        return self


class ProfileSection(_Section):
    backends: list[str] = Field(default_factory=lambda: ["onnxruntime", "openvino"])
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=100, gt=0, description="at least this many measured iterations")
    seconds: float = Field(default=2.0, ge=0, description="and at least this long")
    threads: int | None = Field(default=None, gt=0)


class Recipe(_Section):
    """A whole compress -> export -> profile job."""

    version: int = RECIPE_VERSION
    name: str = "edgeslim-run"
    seed: int = 0
    target: str = Field(
        default="auto",
        description="the device the compression is for: 'auto' (this host) or a name from `edgeslim devices`; it"
        " decides the INT8 scheme of every quantized file (edgeslim.hardware.int8_scheme)",
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    loss: LossSection = Field(default_factory=LossSection)
    train: TrainSection = Field(default_factory=TrainSection)
    prune: SerializeAsAny[MethodConfig] = Field(
        default_factory=lambda: PRUNE_METHODS.parse({}, default=DEFAULT_PRUNE_METHOD),
        description="the pruning method's config (edgeslim.compress.prune), chosen by its 'method'",
    )
    quantize: SerializeAsAny[MethodConfig] = Field(
        default_factory=QuantizeSection,
        description="the INT8 method's config (edgeslim.quant), chosen by its 'method'",
    )
    distill: DistillSection = Field(default_factory=DistillSection)
    export: ExportSection = Field(default_factory=ExportSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    decision: DecisionSection = Field(default_factory=DecisionSection)
    profile: ProfileSection = Field(default_factory=ProfileSection)
    search: Optional[SearchSection] = Field(default=None, description="budgets of `edgeslim search` (see edgeslim.search)")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        from .hardware import check_target_name

        return check_target_name(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(
                f"recipe version {v} is not supported; this edgeslim reads version {RECIPE_VERSION} (and converts"
                " version 1 when loading: use parse_recipe / load_recipe)"
            )
        return v

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize(cls, v: Any) -> MethodConfig:
        return QUANT_METHODS.parse(v, default="ptq")

    @field_validator("prune", mode="before")
    @classmethod
    def _prune(cls, v: Any) -> MethodConfig:
        # Python callers: Recipe(prune=OneShot(...)) or a dict; parse_recipe parses it first, with readable errors
        return PRUNE_METHODS.parse(v, default=DEFAULT_PRUNE_METHOD)

    def compress_options(self) -> dict[str, Any]:
        """The keywords of :func:`edgeslim.compress.api.compress` this recipe asks for (the composer's view)."""
        return {
            "prune": self.prune, "train": self.train, "loss": self.loss, "distill": self.distill, "seed": self.seed,
            "batch_size": self.data.batch_size, "qat": bool(getattr(self.quantize, "needs_training", False)),
            "run_key": {"model": self.model.model_dump(mode="json"), "data": self.data.model_dump(mode="json")},
        }

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (every default filled in)."""
        d = self.model_dump(mode="json", by_alias=True)
        if d.get("search") is None:  # optional: a recipe without a search section resolves (and hashes) as before
            d.pop("search", None)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the resolved recipe (stable across key order)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def check_names(self) -> None:
        """Check every registry name the recipe uses: each section's check, registered by the stage that owns the
        names in :data:`RECIPE_CHECKS` (imports the stages, so it is not done at parse time)."""
        for section in CHECKED_SECTIONS:
            if section in RECIPE_CHECKS:
                RECIPE_CHECKS.get(section)(self)


#: ``check(recipe)`` per recipe section: raises UnknownNameError (did-you-mean) or ConfigError for a name the stage
#: owning the section does not have. A stage registers the check of its section beside its registry; the modules
#: below are imported on the first lookup, so the recipe module imports no stage
RECIPE_CHECKS: Registry[Callable[["Recipe"], None]] = Registry("recipe check", plugins=(
    "edgeslim.compress.recipe_checks",  # model: the pretrained source; data: the dataset and its class names
    "edgeslim.export",  # export: the formats
    "edgeslim.runtime.recipe_checks",  # profile: the backends
))
#: the order the sections are checked in (the first bad name is reported)
CHECKED_SECTIONS = ("model", "data", "prune", "export", "profile")


def _check_prune(recipe: Recipe) -> None:
    PRUNE_METHODS.canonical(recipe.prune.method)


RECIPE_CHECKS.register("prune", _check_prune)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names (and aliases) of the section at ``loc`` in a recipe."""
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        ann = field.annotation if field is not None else None
        if ann is not None and not isinstance(ann, type):  # Optional[Section]
            ann = next((a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if ann is None or not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    names = []
    for name, f in model.model_fields.items():
        names.append(f.alias or name)
    return names


def _error_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            lines.append(
                f"unknown key '{dotted}'.{did_you_mean(str(loc[-1]), known)} Valid keys here: {', '.join(known)}"
            )
        else:
            lines.append(f"{dotted}: {err['msg']}")
    return lines


# -- version 1 -> 2 ---------------------------------------------------------------------------------------------------
# Version 1 had one flat prune section with the fields of every method. Its fields and defaults are frozen here:
# a v1 field the chosen method does not use was accepted at its default (a resolved v1 recipe writes every field)
# and refused at any other value (it would silently do nothing), except under method none, which ignored them all.
_V1_PRUNE_DEFAULTS: dict[str, Any] = {
    "rounds": 2, "rate": 0.3, "scope": "layer", "score": "magnitude", "rewind": "init", "sparsity": 0.5,
    "initial_sparsity": 0.0, "start_step": 0, "end_step": None, "frequency": 10, "n": 2, "m": 4, "ratio": 0.3,
    "round_to": 8, "iterative_steps": 1, "importance": "l2", "mode": "full", "prune_first_conv": False,
    "prune_classifier": False, "exclude": [],
}


def upgrade_prune_v1(section: Any) -> Any:
    """A version-1 (flat) prune section as the version-2 config data of its method.

    The fields the method's config has are kept; other v1 fields are dropped at their v1 default and refused at
    any other value; keys that were never v1 fields are kept, so validation names them with a did-you-mean.

    Raises:
        ConfigError: a v1 field the method does not use has a non-default value.
    """
    if not isinstance(section, dict):
        return section  # validation says what is wrong with it
    method = section.get("method", DEFAULT_PRUNE_METHOD)
    if not isinstance(method, str) or method not in PRUNE_METHODS:
        return dict(section)  # validation names the method and the closest match
    name = PRUNE_METHODS.canonical(method)
    config = PRUNE_METHODS.config_class(name)
    out: dict[str, Any] = {}
    stray = []
    for key, value in section.items():
        if key == "method" or key in config.model_fields or key not in _V1_PRUNE_DEFAULTS:
            out[key] = value
        elif name != "none" and value != _V1_PRUNE_DEFAULTS[key]:
            stray.append(key)
    if stray:
        uses = ", ".join(sorted(config.option_names()))
        raise ConfigError(
            f"prune: {', '.join(sorted(stray))} {'does' if len(stray) == 1 else 'do'} not apply to method '{method}'"
            f" (it uses: {uses or 'nothing'}); remove {'it' if len(stray) == 1 else 'them'}"
        )
    return out


def upgrade_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """Convert version-1 recipe data (also: no ``version`` key) to version 2; other versions are returned as given.

    Version 2 changed only the prune section: it is the chosen method's own config (:func:`upgrade_prune_v1`).
    """
    if data.get("version", 1) != 1:
        return data
    out = {**data, "version": 2}
    if data.get("prune") is not None:
        out["prune"] = upgrade_prune_v1(data["prune"])
    return out


def parse_recipe(data: dict[str, Any] | None, *, where: str = "(inline)", check_names: bool = False) -> Recipe:
    """Validate plain data as a :class:`Recipe` (version-1 data is converted to version 2 first).

    Raises:
        ConfigError: every invalid key or value, each with what is valid there.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid recipe {where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        data = upgrade_recipe(data)
    except ConfigError as exc:
        raise ConfigError(f"invalid recipe {where}: {exc}") from None
    lines: list[str] = []
    prune: MethodConfig | None = None
    error: type[ConfigError] = ConfigError
    try:
        prune = PRUNE_METHODS.parse(data.get("prune"), default=DEFAULT_PRUNE_METHOD)
    except ConfigError as exc:
        lines.append(str(exc))
        error = type(exc)  # UnknownNameError for an unknown method
    quantize: MethodConfig | None = None
    try:
        quantize = QUANT_METHODS.parse(data.get("quantize"), default="ptq")
    except ConfigError as exc:
        lines.append(str(exc))
        error = type(exc) if error is ConfigError else error
    rest = {k: v for k, v in data.items() if k not in ("prune", "quantize")}
    if quantize is not None:
        rest["quantize"] = quantize
    try:
        recipe = Recipe.model_validate(rest if prune is None else {**rest, "prune": prune})
    except ValidationError as exc:
        lines.extend(_error_lines(exc))
    if lines:
        raise error(f"invalid recipe {where}: " + "; ".join(lines))
    if check_names:
        try:
            recipe.check_names()
        except ConfigError as exc:
            raise ConfigError(f"invalid recipe {where}: {exc}") from None
    return recipe


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in ``edgeslim/recipes``."""
    return sorted(p.name[:-5] for p in resources.files("edgeslim.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(path_or_name: str | Path | None = None, *, check_names: bool = True) -> Recipe:
    """Load a recipe from a YAML file, or a built-in recipe by name (``None``: the embedded default).

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, a value is invalid, or a name is not
            registered; the message lists what is valid.
    """
    if path_or_name is None:
        path_or_name = "default"
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text, where = path.read_text(), str(path)
    else:
        name = str(path_or_name)
        names = builtin_recipes()
        if name not in names:
            raise ConfigError(
                f"'{name}' is neither a recipe file nor a built-in recipe.{did_you_mean(name, names)}"
                f" Built-in: {', '.join(names)}"
            )
        text, where = resources.files("edgeslim.recipes").joinpath(f"{name}.yaml").read_text(), f"built-in '{name}'"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {where} is not valid YAML: {exc}") from None
    if not data and isinstance(data, (dict, type(None))) and where != "built-in 'default'":
        raise ConfigError(_empty_recipe_message(where))
    return parse_recipe(data, where=where, check_names=check_names)


def _digest_of(recipe: Recipe) -> str:
    p = recipe.prune.method
    epochs = recipe.train.epochs if recipe.train.final_epochs is None else (
        f"{recipe.train.epochs} + {recipe.train.final_epochs}")
    return (f"data {recipe.data.dataset}, model {recipe.model.source}, prune {p}, quantize {recipe.quantize.method},"
            f" loss {recipe.loss.name}, {epochs} epochs")


def _empty_recipe_message(where: str) -> str:
    """Why an empty recipe file is refused: it would start a long run on the schema's defaults, which are not the
    built-in ``default`` recipe's, without a word."""
    builtin = load_recipe("default", check_names=False)
    return (
        f"recipe {where} is empty: it would run on the schema's defaults ({_digest_of(Recipe())}), not on the"
        f" built-in 'default' recipe ({_digest_of(builtin)}). Run `edgeslim pipeline default` for the default job,"
        f" or write a recipe from it with `edgeslim recipes default > {where}` and edit that"
    )


def recipe_warnings(recipe: Recipe) -> list[str]:
    """What a recipe does that its author may not expect, said before a long run (and in the run's summary)."""
    out = []
    t = recipe.train
    if getattr(type(recipe.prune), "trains_once", False) and t.final_epochs == 0:
        if t.epochs:
            out.append(
                f"prune method '{recipe.prune.method}' trains once, for train.final_epochs (0), not train.epochs"
                f" ({t.epochs}): it trains nothing and ships the source with an untrained head; remove final_epochs"
                f" (it defaults to epochs) or set it > 0"
            )
        else:
            out.append(f"prune method '{recipe.prune.method}' trains for 0 epochs (train.final_epochs and train.epochs"
                       " are 0): it trains nothing and ships the source with an untrained head")
    return out
