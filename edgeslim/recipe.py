"""Versioned YAML recipes, validated by pydantic.

A recipe is data: each section configures one stage and names registry keys (source, dataset, pruning method,
exporters, backends). Unknown keys and unknown names are rejected with the valid ones and the closest match. The
resolved recipe is saved beside every artifact so a run can be repeated.
"""

from __future__ import annotations

import hashlib
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .registry import did_you_mean
from .search.config import SearchSection

RECIPE_VERSION = 1


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


class DataSection(_Section):
    """The task's data. ``dataset`` is ``digits`` or ``imagefolder:<dir>``."""

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
        return self


class LossSection(_Section):
    """The training loss; ``class_dependent`` is Entezari & Saukh (2020), see docs/class-dependent-loss.md.

    With ``fpr_budget`` set, ``gamma`` is the ceiling of an adaptive critical weight: after every epoch of a
    boosted round, gamma is multiplied by ``gamma_down`` when the validation critical-class FPR exceeds the
    budget and by ``gamma_up`` when it is at most ``budget_slack * fpr_budget``, bounded to ``[1, gamma]``
    (see :class:`edgeslim.compress.loss.FprBudgetGamma`).
    """

    name: Literal["class_dependent", "cross_entropy"] = "class_dependent"
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
        description="adapt gamma within [1, gamma] to keep the val critical-class FPR within this budget (None: off)",
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
    device: str = "cpu"
    threads: int | None = Field(default=None, gt=0)


class PruneSection(_Section):
    """Pruning. ``method`` is a key of :data:`edgeslim.compress.pruning.PRUNERS`.

    One flat section with method-specific fields (every field has a default, so old recipes stay valid):

    - ``lottery_ticket`` (``lth``, ``imp``): ``rounds``, ``rate``, ``scope``, ``score``, ``rewind``.
    - ``one_shot``: ``sparsity``, ``scope``.
    - ``gradual`` (Zhu & Gupta): ``sparsity`` (final), ``initial_sparsity``, ``start_step``, ``end_step``,
      ``frequency``, ``scope``.
    - ``nm`` (2:4 semi-structured): ``n``, ``m``.
    - ``structured`` (Torch-Pruning channels): ``ratio``, ``scope`` (``layer`` = uniform, ``global``),
      ``round_to``, ``iterative_steps``, ``importance``.
    - ``sparse_transfer``: ``mode`` (``full`` or ``linear_probe``).
    - every method but ``sparse_transfer``: ``prune_first_conv``, ``prune_classifier``; every method: ``exclude``.

    A field given a non-default value that the chosen method does not use is rejected (it would silently do
    nothing; the defaults a resolved recipe writes out are fine),
    except for ``none``: dense fine-tuning ignores every pruning field, so a recipe becomes its dense baseline by
    changing only ``method``. Methods registered by third parties are not checked here.
    """

    method: str = "lottery_ticket"
    rounds: int = Field(default=2, ge=0)
    rate: float = Field(default=0.3, ge=0, lt=1, description="fraction of remaining weights pruned per round")
    scope: Literal["layer", "global"] = "layer"
    score: Literal["magnitude", "magnitude_increase"] = "magnitude"
    rewind: Union[Literal["init"], int] = Field(default="init", description="'init' or an epoch k (late rewinding)")
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="target (final) fraction of pruned weights")
    initial_sparsity: float = Field(default=0.0, ge=0, lt=1, description="gradual: s_i at start_step")
    start_step: int = Field(default=0, ge=0, description="gradual: optimizer step t0 where pruning starts")
    end_step: int | None = Field(
        default=None, gt=0, description="gradual: step where s_f is reached (default: 3/4 of the pruned training)"
    )
    frequency: int = Field(default=10, gt=0, description="gradual: prune every this many optimizer steps")
    n: int = Field(default=2, ge=1, description="nm: at most n non-zeros in every group of m")
    m: int = Field(default=4, ge=2, description="nm: group size along the input dimension")
    ratio: float = Field(default=0.3, ge=0, lt=1, description="structured: fraction of channels removed")
    round_to: int | None = Field(default=8, ge=1, description="structured: kept channels a multiple of this")
    iterative_steps: int = Field(default=1, ge=1, description="structured: reach the ratio in this many steps")
    importance: Literal["l2", "l1", "bn_scale"] = Field(
        default="l2", description="structured: channel score (group L2 / L1 norm, or BatchNorm scale)"
    )
    mode: Literal["full", "linear_probe"] = Field(
        default="full", description="sparse_transfer: train everything, or only the new head"
    )
    prune_first_conv: bool = False
    prune_classifier: bool = False
    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names left dense")

    @model_validator(mode="after")
    def _method_fields(self) -> "PruneSection":
        method = _PRUNE_ALIASES.get(self.method, self.method)
        if self.n >= self.m:
            raise ValueError(
                f"n = {self.n}, m = {self.m}: N:M sparsity keeps at most n of every m weights, so n must be < m"
                " (2:4 is n: 2, m: 4)"
            )
        if self.initial_sparsity > self.sparsity:
            raise ValueError(
                f"initial_sparsity {self.initial_sparsity} > sparsity {self.sparsity}: gradual pruning only adds zeros"
            )
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(f"end_step {self.end_step} must be > start_step {self.start_step}")
        used = _PRUNE_FIELDS.get(method)
        if used is None or method == "none":
            return self
        allowed = used | _PRUNE_COMMON | (set() if method == "sparse_transfer" else _PRUNE_LAYER_CHOICE)
        # a resolved recipe (to_dict) writes every field: unused ones at their default are not a mistake
        stray = sorted(
            f for f in self.model_fields_set
            if f not in allowed and getattr(self, f) != PruneSection.model_fields[f].get_default(call_default_factory=True)
        )
        if stray:
            raise ValueError(
                f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to method '{self.method}'"
                f" (it uses: {', '.join(sorted(allowed - {'method'}))}); remove {'it' if len(stray) == 1 else 'them'}"
            )
        return self


# which PruneSection fields each built-in method reads (the rest must stay unset); see PruneSection
_PRUNE_COMMON = {"method", "exclude"}
_PRUNE_LAYER_CHOICE = {"prune_first_conv", "prune_classifier"}
_PRUNE_FIELDS: dict[str, set[str]] = {
    "lottery_ticket": {"rounds", "rate", "scope", "score", "rewind"},
    "one_shot": {"sparsity", "scope"},
    "gradual": {"sparsity", "initial_sparsity", "start_step", "end_step", "frequency", "scope"},
    "nm": {"n", "m"},
    "structured": {"ratio", "scope", "round_to", "iterative_steps", "importance"},
    "sparse_transfer": {"mode"},
    "none": set(),
}
_PRUNE_ALIASES = {
    "lth": "lottery_ticket", "imp": "lottery_ticket", "dense": "none", "oneshot": "one_shot", "gmp": "gradual",
    "semi_structured": "nm", "channel": "structured", "transfer": "sparse_transfer",
}


QUANTIZE_METHODS = ("none", "ptq", "qat", "accuracy_aware")


class QuantizeSection(_Section):
    """INT8 quantization with NNCF (see :mod:`edgeslim.compress.quantize` and :mod:`edgeslim.compress.qat`).

    - ``ptq``: post-training quantization of the exported FP32 graph, calibrated on ``calibration_size`` training
      samples; ``preset``, ``ignored_scope``, ``fast_bias_correction`` and ``model_type`` go to ``nncf.quantize``.
    - ``qat``: quantization-aware training: fake-quant is inserted into the torch model (calibrated like PTQ) and the
      model is fine-tuned ``qat_epochs`` with the recipe's loss (masks kept: pruned weights stay zero), then
      exported to an ONNX with QuantizeLinear/DequantizeLinear pairs and an INT8 OpenVINO IR.
    - ``accuracy_aware``: PTQ, then layers are reverted to FP32 (NNCF's accuracy control, most harmful first) until
      the val top-1 drop is at most ``max_drop`` and the val critical FN at most FP32's + ``max_extra_critical_fn``.
    """

    method: str = "ptq"
    calibration_size: int = Field(default=300, gt=0, description="training samples NNCF calibrates on")
    preset: Literal["performance", "mixed"] = "performance"
    ignored_scope: list[str] = Field(default_factory=list, description="node names (regex) left in FP32")
    fast_bias_correction: bool = Field(default=True, description="NNCF's fast bias correction (False: the full one)")
    model_type: Literal["cnn", "transformer"] = Field(
        default="cnn", description="transformer: NNCF's transformer scheme"
    )
    qat_epochs: int = Field(default=1, ge=0, description="qat: fine-tuning epochs with fake-quant")
    qat_lr: float | None = Field(default=None, gt=0, description="qat: learning rate (default: train.lr / 10)")
    max_drop: float = Field(default=0.01, ge=0, lt=1, description="accuracy_aware: max absolute val top-1 drop")
    max_extra_critical_fn: int = Field(
        default=0, ge=0, description="accuracy_aware: val critical FN allowed above the FP32 model's"
    )

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in QUANTIZE_METHODS:
            raise ValueError(
                f"unknown quantize method '{v}'.{did_you_mean(v, QUANTIZE_METHODS)}"
                f" Valid: {', '.join(QUANTIZE_METHODS)}"
            )
        return v


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
    opset: int = Field(default=18, ge=13)
    dynamic_batch: bool = True


class ValidateSection(_Section):
    """Tolerances of the check every export runs against the PyTorch reference."""

    fp32_atol: float = Field(default=1e-3, gt=0, description="max |logit diff| for FP32 exports")
    fp32_min_agreement: float = Field(default=0.999, ge=0, le=1)
    fp16_min_agreement: float = Field(default=0.99, ge=0, le=1)
    int8_min_agreement: float = Field(default=0.95, ge=0, le=1)
    max_extra_critical_fn: int = Field(default=1, ge=0, description="extra critical FN allowed vs PyTorch (FP16/INT8)")


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
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    loss: LossSection = Field(default_factory=LossSection)
    train: TrainSection = Field(default_factory=TrainSection)
    prune: PruneSection = Field(default_factory=PruneSection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    export: ExportSection = Field(default_factory=ExportSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    decision: DecisionSection = Field(default_factory=DecisionSection)
    profile: ProfileSection = Field(default_factory=ProfileSection)
    search: Optional[SearchSection] = Field(default=None, description="budgets of `edgeslim search` (see edgeslim.search)")

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"recipe version {v} is not supported; this edgeslim reads version {RECIPE_VERSION}")
        return v

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
        """Check every registry name the recipe uses (imports the stages, so it is not done at parse time)."""
        from .compress.data import DATASETS
        from .compress.pruning import PRUNERS
        from .compress.sources import SOURCES
        from .export import EXPORTERS
        from .runtime import BACKENDS

        SOURCES.canonical(self.model.source.split(":", 1)[0])
        DATASETS.canonical(self.data.dataset.split(":", 1)[0])
        PRUNERS.canonical(self.prune.method)
        for f in self.export.formats:
            EXPORTERS.canonical(f)
        for b in self.profile.backends:
            BACKENDS.canonical(b)


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


def _format_errors(exc: ValidationError, where: str) -> ConfigError:
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
    return ConfigError(f"invalid recipe {where}: " + "; ".join(lines))


def parse_recipe(data: dict[str, Any] | None, *, where: str = "(inline)", check_names: bool = False) -> Recipe:
    """Validate plain data as a :class:`Recipe`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid recipe {where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, where) from None
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
    return parse_recipe(data, where=where, check_names=check_names)
