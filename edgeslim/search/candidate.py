"""A search candidate, typed: which pruning choice, precision, image size, loss weight and float-kept layers, and the
one mapping of it onto a recipe (:meth:`Candidate.to_recipe`).

A candidate is what one Optuna trial proposes. Optuna stores categorical choices as plain values, so the pruning
choice travels through the study as its label (``structured:0.5``, ``structured:0.5:sens``, ``nm:2:4``,
``one_shot:0.75``); :meth:`PruneChoice.parse` is the one place that reads a label back, and :meth:`Candidate.to_dict`
the one place that writes the persisted form (the trials' and the study's user attributes, ``front.json``). That
form and the duplicate key (:attr:`Candidate.key`) are the ones studies were written with before the candidate was
typed, so an older study resumes: its finished candidates are found again and its measured architectures reused.

The method configs come from the registered methods: :func:`prune_config` and :func:`quantize_config` turn a
candidate into :class:`~edgeslim.compress.prune.Structured`, :class:`~edgeslim.compress.quant.PTQ`, ...;
:meth:`Candidate.to_recipe` merges them (and the search's schedule and target) into the base recipe, so the chosen
candidate is an ordinary recipe that ``edgeslim pipeline`` re-runs, with ``target:`` set to the searched target
(the same INT8 scheme).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from typing import Any, Mapping, Protocol

from ..errors import ConfigError
from ..methods import PRUNE_METHODS, MethodConfig
from ..recipe import Recipe, parse_recipe
from ..runtime.runners import DerivedTable
from .config import SearchSection
from .target import SearchTarget

__all__ = ["SENS", "PRECISIONS", "PruneChoice", "Candidate", "prune_config", "quantize_config", "overlay"]

#: the suffix of a structured choice whose ratio is spread over the stages by measured sensitivity
SENS = "sens"
PRECISIONS = ("fp32", "fp16", "int8")
_FIELDS = ("prune", "precision", "image_size", "gamma", "float_layers", "stage_ratios")


class SearchSpace(Protocol):
    """What a candidate's recipe needs of :class:`edgeslim.search.space.SearchSpace` (which imports this module):
    the layers each ``float_layers`` choice keeps in float."""

    float_scope: dict[str, list[str]]


def _g(x: float) -> str:
    return format(x, "g")


@dataclass(frozen=True)
class PruneChoice:
    """One ``prune`` choice of the space: a registered method and its amount.

    ``ratio``: the channel ratio of a channel method, or the sparsity of an unstructured one (None for a method
    without an amount); ``nm``: ``(n, m)`` of an N:M method; ``per_stage``: the ratio is spread over the stages by
    the dense reference's measured sensitivity (the ``:sens`` choices). The ratio is held at the six significant
    digits of its label, which is what the study stores, so a choice equals the parse of its own label.
    """

    method: str
    ratio: float | None = None
    nm: tuple[int, int] | None = None
    per_stage: bool = False

    def __post_init__(self) -> None:
        if not self.method:
            raise ConfigError("a prune choice needs a method name")
        if self.ratio is not None:
            object.__setattr__(self, "ratio", float(_g(float(self.ratio))))
        if self.per_stage and self.ratio is None:
            raise ConfigError(f"prune choice of method '{self.method}': a per-stage choice needs a ratio")
        if self.nm is not None and (self.ratio is not None or self.per_stage):
            raise ConfigError(f"prune choice of method '{self.method}': n:m takes no ratio")

    def _amount(self) -> list[str]:
        if self.ratio is not None:
            return [_g(self.ratio)]
        return [str(self.nm[0]), str(self.nm[1])] if self.nm is not None else []

    @property
    def label(self) -> str:
        """What the study stores: ``structured:0.5``, ``structured:0.5:sens``, ``nm:2:4``, ``one_shot:0.75``."""
        return ":".join([self.method, *self._amount(), *([SENS] if self.per_stage else [])])

    @property
    def short(self) -> str:
        """The report's words: ``ch 0.5``, ``ch 0.5 per-stage``, ``nm:2:4``, ``one_shot:0.75``."""
        if self.method == "structured" and self.ratio is not None:
            text = f"ch {_g(self.ratio)}"
        else:
            text = ":".join([self.method, *self._amount()])
        return text + (" per-stage" if self.per_stage else "")

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, label: str | PruneChoice) -> PruneChoice:
        """The choice a label names (the inverse of :attr:`label`).

        Raises:
            ConfigError: not ``<method>``, ``<method>:<ratio>``, ``<method>:<ratio>:sens`` or ``<method>:<n>:<m>``.
        """
        if isinstance(label, PruneChoice):
            return label
        if not isinstance(label, str):
            raise ConfigError(f"prune choice {label!r}: expected a label such as 'structured:0.5', got a"
                              f" {type(label).__name__}")
        method, *args = label.split(":")
        try:
            if not args:
                return cls(method)
            if len(args) == 1:
                return cls(method, ratio=float(args[0]))
            if len(args) == 2 and args[1] == SENS:
                return cls(method, ratio=float(args[0]), per_stage=True)
            if len(args) == 2:
                return cls(method, nm=(int(args[0]), int(args[1])))
        except ValueError:
            pass
        raise ConfigError(f"prune choice '{label}': expected <method>:<ratio>, <method>:<ratio>:{SENS}, nm:<n>:<m>"
                          " or <method>:<sparsity>")


@dataclass(frozen=True)
class Candidate:
    """One point of the search space.

    ``gamma`` is None for an architecture alone (latency does not depend on the loss weight); ``float_layers``
    (``none`` / ``stem``) is set on INT8 candidates the sampler proposed; ``stage_ratios`` are the per-stage ratios
    of a per-stage choice, once allocated from the measured sensitivity (a tuple of ``(stage, ratio)`` pairs, so the
    candidate stays hashable; :attr:`stage_ratio_map` gives the mapping).
    """

    prune: PruneChoice
    precision: str
    image_size: int | None
    gamma: float | None = None
    float_layers: str | None = None
    stage_ratios: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"candidate {self.prune.label}: precision '{self.precision}' is not one of"
                              f" {', '.join(PRECISIONS)}")
        if self.float_layers is not None and self.precision != "int8":
            raise ConfigError(f"candidate {self.prune.label} {self.precision}: float_layers '{self.float_layers}'"
                              " only applies to int8")
        if self.stage_ratios is not None and not self.prune.per_stage:
            raise ConfigError(f"candidate {self.prune.label}: stage_ratios need a per-stage choice"
                              f" (<method>:<ratio>:{SENS})")

    # -- the persisted form -----------------------------------------------------------------------------------
    @classmethod
    def from_params(cls, params: Candidate | Mapping[str, Any]) -> Candidate:
        """A candidate from a trial's parameters or its persisted dict (:meth:`to_dict`; studies written before the
        candidate was typed hold the same form).

        Raises:
            ConfigError: a missing or unknown field, a bad prune label, a precision the search does not know.
        """
        if isinstance(params, Candidate):
            return params
        missing = [k for k in ("prune", "precision", "image_size") if k not in params]
        unknown = sorted(set(params) - set(_FIELDS))
        if missing or unknown:
            raise ConfigError(f"search candidate {dict(params)}: "
                              + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                          + ([f"unknown {', '.join(unknown)}"] if unknown else []))
                              + f" (fields: {', '.join(_FIELDS)})")
        stages = params.get("stage_ratios")
        size, gamma = params["image_size"], params.get("gamma")
        return cls(prune=PruneChoice.parse(params["prune"]), precision=params["precision"],
                   image_size=None if size is None else int(size), gamma=None if gamma is None else float(gamma),
                   float_layers=params.get("float_layers"),
                   stage_ratios=None if stages is None else tuple((str(k), float(v)) for k, v in dict(stages).items()))

    @classmethod
    def from_trial(cls, trial: Any) -> Candidate:
        """The candidate of an Optuna trial: its recorded candidate (with the per-stage ratios it was given), else
        its parameters."""
        return cls.from_params(trial.user_attrs.get("candidate") or trial.params)

    def to_dict(self) -> dict[str, Any]:
        """The persisted form: plain JSON values, the prune choice as its label, unset fields left out."""
        out: dict[str, Any] = {"prune": self.prune.label, "precision": self.precision, "image_size": self.image_size}
        if self.gamma is not None:
            out["gamma"] = self.gamma
        if self.float_layers is not None:
            out["float_layers"] = self.float_layers
        if self.stage_ratios is not None:
            out["stage_ratios"] = dict(self.stage_ratios)
        return out

    @property
    def key(self) -> str:
        """A stable id of the candidate (duplicates in a study; its folder under ``candidates/``)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def arch(self) -> Candidate:
        """The architecture alone: what the latency depends on (not the loss weight)."""
        return replace(self, gamma=None)

    @property
    def arch_key(self) -> str:
        return self.arch().key

    @property
    def stage_ratio_map(self) -> dict[str, float] | None:
        return None if self.stage_ratios is None else dict(self.stage_ratios)

    def with_stage_ratios(self, ratios: Mapping[str, float]) -> Candidate:
        return replace(self, stage_ratios=tuple((str(k), float(v)) for k, v in ratios.items()))

    @property
    def label(self) -> str:
        """The report's name of the candidate: ``ch 0.5 per-stage int8 float stem 16px gamma 2``."""
        parts = [self.prune.short, self.precision]
        if self.float_layers not in (None, "none"):
            parts.append(f"float {self.float_layers}")
        parts.append(f"{self.image_size}px")
        if self.gamma is not None:
            parts.append(f"gamma {self.gamma:g}")
        return " ".join(parts)

    # -- the recipe -------------------------------------------------------------------------------------------
    def to_recipe(self, base: Recipe, section: SearchSection, target: SearchTarget, space: SearchSpace, *,
                  name: str | None = None) -> Recipe:
        """The whole recipe of the candidate (without the ``search`` section): ``base`` with :func:`overlay`.

        Raises:
            ConfigError: the candidate cannot be expressed (a per-stage choice without its ratios, a method the
                search cannot build) or the merged recipe does not parse.
        """
        if self.gamma is None:
            raise ConfigError(f"candidate {self.label}: an architecture alone (no gamma) has no recipe")
        data = base.to_dict()
        data.pop("search", None)
        merged = _merge(data, overlay(self, base, section, target, space))
        if name:
            merged["name"] = name
        return parse_recipe(merged, where=f"(search candidate {self.key})")


def _kind(config: type[MethodConfig]) -> str | None:
    """What a pruning method's result is, from its config class (a subclass registered by a plugin counts too):
    ``channels`` (a narrower dense model), ``n:m``, ``unstructured``, ``dense``, ``source`` (the zeros of a sparse
    source checkpoint), or None (the search does not know what it runs like)."""
    from ..compress.prune import NM, Gradual, LotteryTicket, NoPruning, OneShot, SparseTransfer, Structured

    for klass, kind in ((Structured, "channels"), (NM, "n:m"), (OneShot, "unstructured"), (Gradual, "unstructured"),
                        (LotteryTicket, "unstructured"), (NoPruning, "dense"), (SparseTransfer, "source")):
        if issubclass(config, klass):
            return kind
    return None


def prune_config(choice: PruneChoice | str, base: Recipe, stage_ratios: Mapping[str, float] | None = None
                 ) -> MethodConfig:
    """The pruning method config of a ``prune`` choice (``structured:0.5`` -> ``Structured(ratio=0.5, ...)``;
    ``structured:0.5:sens`` -> the same with ``stage_ratios``, which the caller gives from the measured sensitivity).

    Options of the base recipe's method are kept where they mean the same: all of them when the choice is the
    base's method (scope, round_to, importance, ...), the layer choice (``exclude``, ``prune_first_conv``,
    ``prune_classifier``) otherwise; other methods' fields do not exist in the config, so none can leak in.

    Raises:
        ConfigError / UnknownNameError: a choice of an unknown method, or one the search cannot express.
    """
    from ..compress.prune import LayerPruneConfig

    choice = PruneChoice.parse(choice)
    config = PRUNE_METHODS.config_class(choice.method)
    kind = _kind(config)
    shape = ConfigError(f"prune choice '{choice.label}': expected <method>:<ratio>, nm:<n>:<m> or"
                        " <method>:<sparsity>")
    data: dict[str, Any]
    if kind == "channels":
        if choice.ratio is None:
            raise shape
        data = {"ratio": choice.ratio}
        if choice.ratio == 0 and "frozen_ratio" in config.model_fields:
            # the dense reference every candidate is judged against prunes nothing, not even the frozen layers'
            # refit the base's method carries (with it, the "dense" reference missed 41 val cells, dense 33)
            data["frozen_ratio"] = 0.0
        if choice.per_stage:
            if stage_ratios is None:
                raise ConfigError(f"prune choice '{choice.label}' needs the per-stage ratios measured on the dense"
                                  " reference (stage_ratios)")
            data["stage_ratios"] = dict(stage_ratios)
    elif choice.per_stage:
        raise shape
    elif kind == "n:m":
        if choice.nm is None:
            raise shape
        data = {"n": choice.nm[0], "m": choice.nm[1]}
    elif kind == "unstructured":
        if choice.ratio is None:
            raise shape
        data = {"sparsity": choice.ratio}
    elif kind == "dense":
        data = {}
    else:
        raise ConfigError(f"prune choice '{choice.label}': the search cannot build method '{choice.method}'")
    own = base.prune
    same = PRUNE_METHODS.canonical(own.method) == PRUNE_METHODS.canonical(choice.method)
    layer_choice = set(LayerPruneConfig.model_fields) - {"method"}
    keep = {k: getattr(own, k) for k in config.model_fields
            if k != "method" and k not in data and k in type(own).model_fields and (same or k in layer_choice)}
    return PRUNE_METHODS.parse({"method": choice.method, **keep, **data})


def quantize_config(c: Candidate | Mapping[str, Any], base: Recipe, space: SearchSpace) -> MethodConfig:
    """The quantization method config of a candidate, from the base recipe's (its calibration options kept).

    FP32 / FP16: ``none``. INT8: the base's post-training method (``ptq`` or ``accuracy_aware``, with its own
    options) with the candidate's float-kept layers; a base with ``none`` or ``qat`` gets ``ptq`` (QAT trains
    again after the short fine-tune, which the search does not spend on every candidate).
    """
    from ..quant import no_int8, post_training

    c = Candidate.from_params(c)
    q = base.quantize
    if c.precision != "int8":
        return no_int8(q)  # type: ignore[arg-type]
    scope = list(space.float_scope.get(c.float_layers or "none", []))
    return post_training(q, ignored_scope=scope)  # type: ignore[arg-type]


def export_formats(backend: str) -> list[str]:
    """The export formats the pipeline writes for runtime backend ``backend``: the exporter of the file it runs
    (``runtime.file_format``) after the exporters that one starts from (openvino: onnx, openvino); none when no
    exporter writes that file (torch runs the artifact's weights)."""
    from ..export import EXPORTERS
    from ..runtime import file_format

    out: list[str] = []

    def add(fmt: str) -> None:
        if fmt in EXPORTERS and EXPORTERS.canonical(fmt) not in out:
            for dep in EXPORTERS.get(fmt).after:
                add(dep)
            out.append(EXPORTERS.canonical(fmt))

    add(file_format(backend))
    return out


def _backend_formats() -> dict[str, list[str]]:
    from ..runtime import BACKENDS

    return {b: export_formats(b) for b in BACKENDS.names()}


# export formats each backend runs, derived from the registered runners and exporters
_FORMATS: Mapping[str, list[str]] = DerivedTable(_backend_formats, "runtime backend -> export formats")


def _export_formats(backend: str) -> list[str]:
    """The export formats for ``backend`` (onnx for a backend no runner is registered for: the recipe's own name
    check reports it)."""
    return list(_FORMATS.get(backend, ["onnx"]))


def overlay(c: Candidate | Mapping[str, Any], base: Recipe, section: SearchSection, target: SearchTarget,
            space: SearchSpace) -> dict[str, Any]:
    """The version-2 recipe sections a candidate changes, as plain data (``prune`` and ``quantize`` whole)."""
    c = Candidate.from_params(c)
    out: dict[str, Any] = {
        "target": target.name,  # the searched target decides the INT8 scheme of the candidate and of its re-run
        "prune": prune_config(c.prune, base, c.stage_ratio_map).model_dump(mode="json"),
        "quantize": quantize_config(c, base, space).model_dump(mode="json"),
        "data": {"image_size": c.image_size},
        "loss": {"gamma": c.gamma},
        "train": {"final_epochs": section.fine_tune_epochs},
        "export": {"formats": _export_formats(target.backend)},
        "profile": {"backends": [target.backend], "batch_sizes": [1]},
    }
    if section.max_critical_fnr is not None or section.max_extra_critical_fnr is not None:
        out["decision"] = {"target_fpr": section.at_fpr, "target_fnr": None}
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("prune", "quantize"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)  # a method config is replaced whole: another method's fields must not leak in
    return out
