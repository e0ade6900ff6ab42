"""The search space: which recipe changes a candidate may combine on a target.

The space is a list of categorical dimensions (``prune``, ``precision``, ``image_size``, ``gamma``, and
``float_layers`` under INT8) that Optuna samples; a trial's choices make a
:class:`~edgeslim.search.candidate.Candidate`. The ``prune`` choices are typed
(:class:`~edgeslim.search.candidate.PruneChoice`) and come from the registered method configs: :func:`build_space`
walks :data:`edgeslim.methods.PRUNE_METHODS` and proposes every method whose result the target runs faster (channel
pruning everywhere, 2:4 where TensorRT has sparse kernels, unstructured sparsity where the kernels skip zeros),
listing the others as ruled out with why.

How a candidate maps onto recipe fields lives in :mod:`edgeslim.search.candidate`
(:meth:`~edgeslim.search.candidate.Candidate.to_recipe`); :func:`prune_config`, :func:`quantize_config`,
:func:`overlay`, :func:`candidate_recipe`, :func:`candidate_key` and :func:`arch_key` stay importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from ..methods import PRUNE_METHODS
from ..recipe import Recipe
from .candidate import _FORMATS as _FORMATS  # re-exported: the runner-derived backend -> formats table
from .candidate import SENS, Candidate, PruneChoice, _kind, overlay, prune_config, quantize_config
from .candidate import export_formats as export_formats
from .config import SearchSection
from .target import SearchTarget

__all__ = ["Dimension", "SearchSpace", "build_space", "candidate_key", "arch_key", "overlay", "candidate_recipe",
           "prune_config", "quantize_config", "SENS"]

# float-kept layers of an INT8 candidate: "stem" keeps the first convolution (the layer INT8 most often hurts:
# it sees raw pixels) in float, named by quantize.ignored_scope's '@first_conv', which the quantizer resolves on
# each exported graph (node names differ between a dynamic- and a fixed-batch export of one architecture). The
# classifier is not offered: its node has no alias, and torch.onnx and OpenVINO name it differently.
FLOAT_CHOICES = ("none", "stem")



@dataclass
class Dimension:
    """One categorical choice; ``when`` names the condition under which it applies (``precision=int8``)."""

    name: str
    choices: list[Any]
    when: tuple[str, Any] | None = None

    @property
    def values(self) -> list[Any]:
        """The choices as Optuna stores them (a prune choice as its label)."""
        return [c.label if isinstance(c, PruneChoice) else c for c in self.choices]


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

    def corners(self) -> dict[str, Candidate]:
        """The cheapest and the dense candidate (for the latency range before training)."""
        prune: list[PruneChoice] = self.dim("prune").choices  # type: ignore[union-attr]
        prec = self.dim("precision").choices  # type: ignore[union-attr]
        sizes = self.dim("image_size").choices  # type: ignore[union-attr]
        gammas = self.dim("gamma").choices  # type: ignore[union-attr]
        # uniform choices only: the per-stage ones need the dense reference's sensitivity, measured later
        structured = [p for p in prune if p.method == "structured" and p.ratio is not None and not p.per_stage]
        fastest = max(structured, key=lambda p: p.ratio or 0.0) if structured else prune[0]
        densest = min(structured, key=lambda p: p.ratio or 0.0) if structured else prune[0]
        out = {}
        for label, p, size in (("fastest", fastest, min(sizes)), ("largest", densest, max(sizes))):
            for q in prec:
                out[f"{label}-{q}"] = Candidate(prune=p, precision=q, image_size=size, gamma=gammas[0],
                                                float_layers="none" if q == "int8" else None)
        return out

    def suggest(self, trial: Any) -> Candidate:
        """The candidate an Optuna trial proposes: one categorical choice per dimension that applies."""
        params: dict[str, Any] = {}
        for d in self.dims:
            if d.when is not None and params.get(d.when[0]) != d.when[1]:
                continue
            params[d.name] = trial.suggest_categorical(d.name, d.values)
        return Candidate.from_params(params)

    def dense(self, base: Recipe) -> Candidate:
        """The dense reference: channel ratio 0, so it trains on the pruned candidates' schedule (dense round, then
        the short fine-tune); a candidate only when ``search.ratios`` holds 0, the reference of the top-1 drop
        always. At the base recipe's image size and loss weight where the space has them."""
        sizes = self.dim("image_size").choices  # type: ignore[union-attr]
        size = base.data.image_size if base.data.image_size in sizes else max(sizes)
        gammas = self.dim("gamma").choices  # type: ignore[union-attr]
        g = base.loss.gamma if base.loss.gamma in gammas else gammas[0]
        prec = self.dim("precision").choices  # type: ignore[union-attr]
        return Candidate(prune=PruneChoice("structured", ratio=0.0), precision="fp32" if "fp32" in prec else prec[0],
                         image_size=size, gamma=g)

    def per_stage_ratios(self) -> list[float]:
        """The ratios of the per-stage choices (they need the dense reference's measured sensitivity)."""
        return [p.ratio for p in self.dim("prune").choices  # type: ignore[union-attr]
                if p.per_stage and p.ratio is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"dims": [{"name": d.name, "choices": d.values, "when": list(d.when) if d.when else None}
                         for d in self.dims], "ruled_out": self.ruled_out, "float_scope": self.float_scope,
                "methods": self.methods}


def _prune_choices(section: SearchSection, target: SearchTarget
                   ) -> tuple[list[PruneChoice], list[str], dict[str, str]]:
    """The ``prune`` choices of the registered methods the target runs faster; the ruled-out lines; a note per
    registered method."""
    from ..compress.prune import NM, OneShot

    choices: list[PruneChoice] = []
    ruled: list[str] = []
    notes: dict[str, str] = {}
    unstructured: list[str] = []
    for name in PRUNE_METHODS.names():
        config = PRUNE_METHODS.config_class(name)
        kind = _kind(config)
        if kind == "channels":
            ratios = sorted(set(section.ratios))
            mine = [PruneChoice(name, ratio=r) for r in ratios if r == 0 or "uniform" in section.allocations]
            if "sensitivity" in section.allocations:  # per-stage ratios, once the dense reference is measured
                mine += [PruneChoice(name, ratio=r, per_stage=True) for r in ratios if r > 0]
            choices += mine
            said = [f"{c.ratio:g}" + (f":{SENS}" if c.per_stage else "") for c in mine]
            notes[name] = (f"proposed: channel ratio {', '.join(said) or '(search.ratios empty)'}"
                           + (f" (:{SENS} = per-stage ratios from measured sensitivity)" if any(
                               c.per_stage for c in mine) else ""))
        elif kind == "n:m":
            n, m = NM.model_fields["n"].default, NM.model_fields["m"].default
            if target.sparse_2_4:
                choices.append(PruneChoice(name, nm=(n, m)))
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
                sparse = [PruneChoice(name, ratio=s) for s in sorted(set(section.sparsities))]
                choices += sparse
                notes[name] = f"proposed: sparsity {', '.join(f'{c.ratio:g}' for c in sparse) or '(none asked)'}"
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




def candidate_key(c: Candidate | Mapping[str, Any]) -> str:
    """A stable id of a candidate (:attr:`Candidate.key`)."""
    return Candidate.from_params(c).key


def arch_key(c: Candidate | Mapping[str, Any]) -> str:
    """A stable id of what the latency depends on, not the loss weight (:attr:`Candidate.arch_key`)."""
    return Candidate.from_params(c).arch_key


def candidate_recipe(base: Recipe, c: Candidate | Mapping[str, Any], section: SearchSection, target: SearchTarget,
                     space: SearchSpace, *, name: str | None = None) -> Recipe:
    """The whole recipe of a candidate (:meth:`Candidate.to_recipe`)."""
    return Candidate.from_params(c).to_recipe(base, section, target, space, name=name)
