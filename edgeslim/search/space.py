"""The search space: which recipe changes a candidate may combine on a target, as typed method configs.

A candidate is a small dict of choices (``prune``, ``precision``, ``float_layers``, ``image_size``, ``gamma``); the
``prune`` choice is ``<method>:<argument>`` (``structured:0.5``, ``nm:2:4``, ``one_shot:0.75``). The choices come
from the registered method configs: :func:`build_space` walks :data:`edgeslim.methods.PRUNE_METHODS` and proposes
every method whose result the target runs faster (channel pruning everywhere, 2:4 where TensorRT has sparse
kernels, unstructured sparsity where the kernels skip zeros), listing the others as ruled out with why.
:func:`prune_config` and :func:`quantize_config` turn a candidate into the method configs
(:class:`~edgeslim.compress.prune.Structured`, :class:`~edgeslim.compress.quant.PTQ`, ...), :func:`overlay` into
version-2 recipe sections, and :func:`candidate_recipe` merges that into the base recipe, so the chosen candidate
is an ordinary recipe that ``edgeslim pipeline`` re-runs, with ``target:`` set to the searched target (the same
INT8 scheme).

This module is the one place that knows how a choice maps onto recipe fields.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from ..methods import PRUNE_METHODS, MethodConfig
from ..recipe import Recipe, parse_recipe
from ..runtime.runners import DerivedTable
from .config import SearchSection
from .target import SearchTarget

__all__ = ["Dimension", "SearchSpace", "build_space", "candidate_key", "arch_key", "overlay", "candidate_recipe",
           "prune_config", "quantize_config"]

# float-kept layers of an INT8 candidate: "stem" keeps the first convolution (the layer INT8 most often hurts:
# it sees raw pixels) in float, named by quantize.ignored_scope's '@first_conv', which the quantizer resolves on
# each exported graph (node names differ between a dynamic- and a fixed-batch export of one architecture). The
# classifier is not offered: its node has no alias, and torch.onnx and OpenVINO name it differently.
FLOAT_CHOICES = ("none", "stem")
#: the suffix of a structured choice whose ratio is spread over the stages by measured sensitivity
SENS = "sens"


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


@dataclass
class Dimension:
    """One categorical choice; ``when`` names the condition under which it applies (``precision=int8``)."""

    name: str
    choices: list[Any]
    when: tuple[str, Any] | None = None


@dataclass
class SearchSpace:
    """The dimensions a target allows, and the regions left out before any measurement (with why)."""

    dims: list[Dimension]
    ruled_out: list[str] = field(default_factory=list)
    float_scope: dict[str, list[str]] = field(default_factory=lambda: {"none": []})
    # every registered pruning method -> how the search uses it on this target (proposed, or why not)
    methods: dict[str, str] = field(default_factory=dict)

    def dim(self, name: str) -> Dimension | None:
        return next((d for d in self.dims if d.name == name), None)

    def size(self) -> int:
        n = 1
        for d in self.dims:
            if d.when is None:
                n *= len(d.choices)
        return n

    def corners(self) -> dict[str, dict[str, Any]]:
        """The cheapest and the dense candidate (for the latency range before training)."""
        prune = self.dim("prune").choices  # type: ignore[union-attr]
        prec = self.dim("precision").choices  # type: ignore[union-attr]
        sizes = self.dim("image_size").choices  # type: ignore[union-attr]
        gammas = self.dim("gamma").choices  # type: ignore[union-attr]
        # uniform choices only: the per-stage ones need the dense reference's sensitivity, measured later
        structured = [p for p in prune if p.startswith("structured:") and not p.endswith(":" + SENS)]
        fastest = max(structured, key=lambda p: float(p.split(":")[1])) if structured else prune[0]
        densest = min(structured, key=lambda p: float(p.split(":")[1])) if structured else prune[0]
        base = {"gamma": gammas[0]}
        out = {}
        for label, p, size in (("fastest", fastest, min(sizes)), ("largest", densest, max(sizes))):
            for q in prec:
                c = {"prune": p, "precision": q, "image_size": size, **base}
                if q == "int8":
                    c["float_layers"] = "none"
                out[f"{label}-{q}"] = c
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"dims": [{"name": d.name, "choices": d.choices, "when": list(d.when) if d.when else None}
                         for d in self.dims], "ruled_out": self.ruled_out, "float_scope": self.float_scope,
                "methods": self.methods}


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


def _prune_choices(section: SearchSection, target: SearchTarget) -> tuple[list[str], list[str], dict[str, str]]:
    """The ``prune`` choices of the registered methods the target runs faster; the ruled-out lines; a note per
    registered method."""
    from ..compress.prune import NM, OneShot

    choices: list[str] = []
    ruled: list[str] = []
    notes: dict[str, str] = {}
    unstructured: list[str] = []
    for name in PRUNE_METHODS.names():
        config = PRUNE_METHODS.config_class(name)
        kind = _kind(config)
        if kind == "channels":
            ratios = sorted(set(section.ratios))
            mine = [f"{name}:{r:g}" for r in ratios if r == 0 or "uniform" in section.allocations]
            if "sensitivity" in section.allocations:  # per-stage ratios, once the dense reference is measured
                mine += [f"{name}:{r:g}:{SENS}" for r in ratios if r > 0]
            choices += mine
            notes[name] = (f"proposed: channel ratio {', '.join(c.split(':', 1)[1] for c in mine) or '(search.ratios empty)'}"
                           + (f" (:{SENS} = per-stage ratios from measured sensitivity)" if any(
                               c.endswith(SENS) for c in mine) else ""))
        elif kind == "n:m":
            n, m = NM.model_fields["n"].default, NM.model_fields["m"].default
            if target.sparse_2_4:
                choices.append(f"{name}:{n}:{m}")
                notes[name] = f"proposed: {n}:{m}"
            else:
                why = (f"{target.name} via {target.backend} has no {n}:{m} sparse kernels (TensorRT on Ampere / Orin"
                       " only)")
                ruled.append(f"{n}:{m} sparsity (method {name}): {why}")
                notes[name] = f"not proposed: {why}"
        elif kind == "unstructured":
            unstructured.append(name)
            if not target.sparse_unstructured:
                notes[name] = f"not proposed: {target.backend} on {target.name} runs zeros as dense weights"
            elif issubclass(config, OneShot):
                mine = [f"{name}:{s:g}" for s in sorted(set(section.sparsities))]
                choices += mine
                notes[name] = f"proposed: sparsity {', '.join(c.split(':')[1] for c in mine) or '(none asked)'}"
            else:  # the latency depends on the sparsity only: the one-shot method reaches it with one fine-tune
                notes[name] = "not proposed: one_shot reaches the same sparsities with one fine-tune"
        elif kind == "dense":
            notes[name] = "the dense reference is structured:0 (trained on the pruned candidates' schedule)"
        elif kind == "source":
            notes[name] = "not a search choice: it keeps the zeros of a sparse source checkpoint"
        else:
            notes[name] = "not proposed: the search does not know what its result runs like on a target"
    if unstructured and not target.sparse_unstructured and section.sparsities:
        ruled.append(f"unstructured sparsity (methods {', '.join(unstructured)}): {target.backend} on {target.name}"
                     " runs zeros as dense weights, so it saves no time there")
    return choices, ruled, notes


def build_space(base: Recipe, section: SearchSection, target: SearchTarget) -> SearchSpace:
    """The candidates ``target`` can run: the registered pruning methods it runs faster (at the section's ratios
    and sparsities), the precisions it has kernels for, and the base recipe's sizes and loss weights.

    Raises:
        ConfigError: the space is empty for the target (e.g. only FP16 asked for on a CPU without FP16 kernels).
    """
    prune, ruled, notes = _prune_choices(section, target)
    precisions = [p for p in section.precisions if p in target.precisions]
    for p in section.precisions:
        if p not in target.precisions:
            ruled.append(f"{p.upper()}: {target.name} has no fast {p.upper()} kernels"
                         + (f" (ISA capped at {target.isa})" if target.isa else ""))
    if not precisions:
        raise ConfigError(
            f"the search space is empty for target {target.name}: precisions {section.precisions} asked for, but it"
            f" runs {', '.join(target.precisions)}; add one of those to search.precisions"
        )
    if not prune:
        raise ConfigError(
            f"the search space is empty for target {target.name}: no pruning choice (search.ratios is empty and"
            " the target runs no sparse kernels); give search.ratios, e.g. [0.0, 0.5]"
        )
    sizes = sorted(set(section.image_sizes)) or [base.data.image_size]
    if sizes == [None]:
        raise ConfigError("search.image_sizes is empty and the base recipe sets no data.image_size; give one")
    gammas = sorted(set(section.gammas)) or [base.loss.gamma]
    dims = [Dimension("prune", prune), Dimension("precision", precisions), Dimension("image_size", sizes),
            Dimension("gamma", gammas)]
    scope: dict[str, list[str]] = {"none": []}
    if "int8" in precisions:
        from ..compress.quant import FIRST_CONV

        scope["stem"] = [FIRST_CONV]
        dims.append(Dimension("float_layers", list(scope), when=("precision", "int8")))
    return SearchSpace(dims=dims, ruled_out=ruled, float_scope=scope, methods=notes)


def candidate_key(c: dict[str, Any]) -> str:
    """A stable id of a candidate (its choices, sorted)."""
    return json.dumps(c, sort_keys=True)


def arch_key(c: dict[str, Any]) -> str:
    """A stable id of what the latency depends on (not the loss weight)."""
    return json.dumps({k: v for k, v in c.items() if k != "gamma"}, sort_keys=True)


def prune_config(choice: str, base: Recipe, stage_ratios: dict[str, float] | None = None) -> MethodConfig:
    """The pruning method config of a ``prune`` choice (``structured:0.5`` -> ``Structured(ratio=0.5, ...)``;
    ``structured:0.5:sens`` -> the same with ``stage_ratios``, which the caller gives from the measured sensitivity).

    Options of the base recipe's method are kept where they mean the same: all of them when the choice is the
    base's method (scope, round_to, importance, ...), the layer choice (``exclude``, ``prune_first_conv``,
    ``prune_classifier``) otherwise; other methods' fields do not exist in the config, so none can leak in.

    Raises:
        ConfigError / UnknownNameError: a choice of an unknown method, or one the search cannot express.
    """
    from ..compress.prune import LayerPruneConfig

    name, _, arg = choice.partition(":")
    config = PRUNE_METHODS.config_class(name)
    kind = _kind(config)
    try:
        if kind == "channels":
            ratio, _, alloc = arg.partition(":")
            data: dict[str, Any] = {"ratio": float(ratio)}
            if alloc == SENS:
                if stage_ratios is None:
                    raise ConfigError(f"prune choice '{choice}' needs the per-stage ratios measured on the dense"
                                      " reference (stage_ratios)")
                data["stage_ratios"] = dict(stage_ratios)
            elif alloc:
                raise ValueError(alloc)
        elif kind == "n:m":
            n, m = arg.split(":")
            data = {"n": int(n), "m": int(m)}
        elif kind == "unstructured":
            data = {"sparsity": float(arg)}
        elif kind == "dense":
            data = {}
        else:
            raise ConfigError(f"prune choice '{choice}': the search cannot build method '{name}'")
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"prune choice '{choice}': expected <method>:<ratio>, nm:<n>:<m> or <method>:<sparsity>"
                          ) from None
    own = base.prune
    same = PRUNE_METHODS.canonical(own.method) == PRUNE_METHODS.canonical(name)
    layer_choice = set(LayerPruneConfig.model_fields) - {"method"}
    keep = {k: getattr(own, k) for k in config.model_fields
            if k != "method" and k not in data and k in type(own).model_fields and (same or k in layer_choice)}
    return PRUNE_METHODS.parse({"method": name, **keep, **data})


def quantize_config(c: dict[str, Any], base: Recipe, space: SearchSpace) -> MethodConfig:
    """The quantization method config of a candidate, from the base recipe's (its calibration options kept).

    FP32 / FP16: ``none``. INT8: the base's post-training method (``ptq`` or ``accuracy_aware``, with its own
    options) with the candidate's float-kept layers; a base with ``none`` or ``qat`` gets ``ptq`` (QAT trains
    again after the short fine-tune, which the search does not spend on every candidate).
    """
    from ..quant import no_int8, post_training

    q = base.quantize
    if c["precision"] != "int8":
        return no_int8(q)  # type: ignore[arg-type]
    scope = list(space.float_scope.get(c.get("float_layers", "none"), []))
    return post_training(q, ignored_scope=scope)  # type: ignore[arg-type]


def overlay(c: dict[str, Any], base: Recipe, section: SearchSection, target: SearchTarget,
            space: SearchSpace) -> dict[str, Any]:
    """The version-2 recipe sections a candidate changes, as plain data (``prune`` and ``quantize`` whole)."""
    out: dict[str, Any] = {
        "target": target.name,  # the searched target decides the INT8 scheme of the candidate and of its re-run
        "prune": prune_config(c["prune"], base, c.get("stage_ratios")).model_dump(mode="json"),
        "quantize": quantize_config(c, base, space).model_dump(mode="json"),
        "data": {"image_size": c["image_size"]},
        "loss": {"gamma": c["gamma"]},
        "train": {"final_epochs": section.fine_tune_epochs},
        "export": {"formats": list(_FORMATS.get(target.backend, ["onnx"]))},
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


def candidate_recipe(base: Recipe, c: dict[str, Any], section: SearchSection, target: SearchTarget,
                     space: SearchSpace, *, name: str | None = None) -> Recipe:
    """The whole recipe of a candidate (without the ``search`` section): base + :func:`overlay`."""
    data = base.to_dict()
    data.pop("search", None)
    merged = _merge(data, overlay(c, base, section, target, space))
    if name:
        merged["name"] = name
    return parse_recipe(merged, where=f"(search candidate {candidate_key(c)})")
