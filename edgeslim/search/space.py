"""The search space: which recipe changes a candidate may combine on a target, as overlays on a base recipe.

A candidate is a small dict of choices (``prune``, ``precision``, ``float_layers``, ``image_size``, ``gamma``).
:func:`overlay` turns it into a plain-dict overlay of recipe sections, and :func:`candidate_recipe` merges that
into the base recipe, so the chosen candidate is an ordinary recipe that ``edgeslim pipeline`` re-runs.

This module is the one place that knows how a choice maps onto recipe fields. It writes version-1 recipe
sections (``prune.method`` + flat fields, ``quantize.method``); when the methods become typed configs (recipe
version 2, one pydantic model per method discriminated by ``method``), only :func:`overlay` and
:func:`build_space` change.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..recipe import Recipe, parse_recipe
from .config import SearchSection
from .target import SearchTarget

__all__ = ["Dimension", "SearchSpace", "build_space", "candidate_key", "arch_key", "overlay", "candidate_recipe"]

# float-kept layers of an INT8 candidate: "stem" keeps the first convolution (the layer INT8 most often hurts:
# it sees raw pixels) in float. The node name comes from the exported graph (see stem_node); the classifier is
# not offered because torch.onnx and OpenVINO name it differently, and NNCF's ignored scope must match both.
FLOAT_CHOICES = ("none", "stem")
# export formats each backend runs
_FORMATS = {"openvino": ["onnx", "openvino"], "onnxruntime": ["onnx"], "tensorrt": ["onnx", "tensorrt"],
            "torch": []}


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
        structured = [p for p in prune if p.startswith("structured:")]
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
                         for d in self.dims], "ruled_out": self.ruled_out, "float_scope": self.float_scope}


def stem_node(base: Recipe, num_classes: int = 10) -> str | None:
    """The exported name of the first convolution (``node_Conv_911`` for EfficientNet-Lite0), or None.

    Channel pruning keeps the graph's topology, so the name is the same for every candidate of one architecture.
    """
    import contextlib
    import io
    import warnings

    import torch

    from ..compress.sources import load_pretrained, replace_head

    src = load_pretrained(base.model.source, arch=base.model.arch, pretrained=False)
    model = replace_head(src.model, num_classes).eval()
    size = base.data.image_size or src.preprocessing.crop
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(1, 3, size, size),), dynamo=True, external_data=False,
                                    verbose=False)
    return next((n.name for n in program.model_proto.graph.node if n.op_type == "Conv"), None)


def build_space(base: Recipe, section: SearchSection, target: SearchTarget, *,
                stem: str | None = None) -> SearchSpace:
    """The candidates ``target`` can run, from the section's choices and the base recipe.

    Raises:
        ConfigError: the space is empty for the target (e.g. only FP16 asked for on a CPU without FP16 kernels).
    """
    ruled: list[str] = []
    prune = [f"structured:{r:g}" for r in sorted(set(section.ratios))]
    if target.sparse_2_4:
        prune.append("nm:2:4")
    else:
        ruled.append(f"2:4 sparsity: {target.name} via {target.backend} has no 2:4 sparse kernels (TensorRT on"
                     " Ampere / Orin only)")
    if target.sparse_unstructured:
        prune += [f"one_shot:{s:g}" for s in sorted(set(section.sparsities))]
    elif section.sparsities:
        ruled.append(f"unstructured sparsity: {target.backend} on {target.name} runs zeros as dense weights, so it"
                     " saves no time there")
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
        if stem is not None:
            scope["stem"] = [stem]
        dims.append(Dimension("float_layers", list(scope), when=("precision", "int8")))
    return SearchSpace(dims=dims, ruled_out=ruled, float_scope=scope)


def candidate_key(c: dict[str, Any]) -> str:
    """A stable id of a candidate (its choices, sorted)."""
    return json.dumps(c, sort_keys=True)


def arch_key(c: dict[str, Any]) -> str:
    """A stable id of what the latency depends on (not the loss weight)."""
    return json.dumps({k: v for k, v in c.items() if k != "gamma"}, sort_keys=True)


def _prune_overlay(choice: str, base: Recipe) -> dict[str, Any]:
    kind, _, arg = choice.partition(":")
    if kind == "structured":
        keep = base.prune if base.prune.method in ("structured", "channel") else None
        out: dict[str, Any] = {"method": "structured", "ratio": float(arg)}
        if keep is not None:
            out.update(scope=keep.scope, round_to=keep.round_to, importance=keep.importance,
                       iterative_steps=keep.iterative_steps, prune_first_conv=keep.prune_first_conv,
                       exclude=list(keep.exclude))
        return out
    if kind == "nm":
        n, m = (int(v) for v in arg.split(":"))
        return {"method": "nm", "n": n, "m": m}
    if kind == "one_shot":
        return {"method": "one_shot", "sparsity": float(arg)}
    raise ConfigError(f"unknown prune choice '{choice}'")


def overlay(c: dict[str, Any], base: Recipe, section: SearchSection, target: SearchTarget,
            space: SearchSpace) -> dict[str, Any]:
    """The recipe sections a candidate changes, as plain data."""
    q = base.quantize.model_dump(mode="json")
    if c["precision"] == "int8":
        q.update(method="ptq" if base.quantize.method in ("none", "qat") else base.quantize.method,
                 ignored_scope=list(space.float_scope.get(c.get("float_layers", "none"), [])))
    else:
        q.update(method="none", ignored_scope=[])
    out: dict[str, Any] = {
        "prune": _prune_overlay(c["prune"], base),
        "quantize": q,
        "data": {"image_size": c["image_size"]},
        "loss": {"gamma": c["gamma"]},
        "train": {"final_epochs": section.fine_tune_epochs},
        "export": {"formats": list(_FORMATS.get(target.backend, ["onnx"]))},
        "profile": {"backends": [target.backend], "batch_sizes": [1]},
    }
    if section.max_critical_fnr is not None:
        out["decision"] = {"target_fpr": section.at_fpr, "target_fnr": None}
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "prune":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)  # prune is replaced whole: another method's fields must not leak in
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
