"""Pruning masks: :class:`MaskSet` and which layers are prunable.

:class:`MaskSet` holds one boolean mask per prunable weight (Conv / Linear). Pruned weights are kept exactly zero
while training by zeroing their gradients and re-applying the mask after every optimizer step; the model keeps
plain ``nn.Parameter`` weights (no ``torch.nn.utils.prune`` re-parametrisation), so export sees ordinary tensors.

:func:`skipped_layers` is the one place that decides which prunable layers a method leaves alone (the first
convolution, the classifier, ``exclude`` globs); every method and :meth:`MaskSet.for_model` ask it.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ...errors import ConfigError, TrainingError
from ...models import classifier_name, prunable_layers


def skipped_layers(
    model: nn.Module,
    *,
    first_conv: bool = True,
    classifier: bool = True,
    exclude: Iterable[str] = (),
    layers: list[tuple[str, nn.Module]] | None = None,
) -> set[str]:
    """Names of the prunable layers a method must leave alone.

    Args:
        model: the network.
        first_conv: skip the first convolution (in registration order).
        classifier: skip the classifier (:func:`edgeslim.models.classifier_name`).
        exclude: ``fnmatch`` globs of module names to skip too (e.g. ``"blocks.0.*"``).
        layers: ``prunable_layers(model)`` when the caller has it already.

    Raises:
        ConfigError: an ``exclude`` pattern matches no prunable layer (a typo would silently prune it).
    """
    layers = prunable_layers(model) if layers is None else layers
    skip: set[str] = set()
    if first_conv:
        first = next((n for n, m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
        if first is not None:
            skip.add(first)
    if classifier:
        head = classifier_name(model, layers)
        if head is not None:
            skip.add(head)
    names = [n for n, _ in layers]
    for pattern in exclude:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(
                f"prune.exclude pattern '{pattern}' matches no prunable layer; layers are: {', '.join(names)}"
            )
        skip.update(hits)
    return skip

class MaskSet:
    """Boolean masks (``True`` = kept) for the weights of prunable layers, keyed by module name.

    Build one with :meth:`for_model`. Biases and BatchNorm are never masked; the first convolution and the
    classifier are left out unless asked for, as are modules matching ``exclude`` globs.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks: dict[str, torch.Tensor] = {k: v.detach().to("cpu", torch.bool).clone() for k, v in masks.items()}
        self._handles: list[Any] = []

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        *,
        prune_first_conv: bool = False,
        prune_classifier: bool = False,
        exclude: Iterable[str] = (),
    ) -> "MaskSet":
        """All-ones masks for the prunable weights of ``model``.

        Args:
            model: the network.
            prune_first_conv: also mask the first convolution (in registration order).
            prune_classifier: also mask the classifier (``model.get_classifier()`` or the last Conv/Linear).
            exclude: ``fnmatch`` globs of module names to leave dense (e.g. ``"blocks.0.*"``).

        Raises:
            ConfigError: an ``exclude`` pattern matches no prunable layer (a typo would silently prune it).
        """
        layers = prunable_layers(model)
        if not layers:
            raise ConfigError(f"{type(model).__name__} has no Conv/Linear layer to prune")
        skip = skipped_layers(model, first_conv=not prune_first_conv, classifier=not prune_classifier,
                              exclude=exclude, layers=layers)
        masks = {n: torch.ones_like(m.weight, dtype=torch.bool, device="cpu") for n, m in layers if n not in skip}
        if not masks:
            raise ConfigError(
                "every prunable layer is excluded (first conv, classifier, exclude patterns): nothing to prune"
            )
        return cls(masks)

    def copy(self) -> "MaskSet":
        """An independent copy (not attached to any model)."""
        return MaskSet(self.masks)

    @property
    def names(self) -> list[str]:
        """Names of the masked modules."""
        return list(self.masks)

    # -- applying -------------------------------------------------------------------------------------------
    def _weights(self, model: nn.Module) -> Iterable[tuple[str, torch.Tensor, torch.Tensor]]:
        for name, mask in self.masks.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise TrainingError(
                    f"masked layer '{name}' is not in {type(model).__name__}: the masks belong to another model"
                ) from None
            w = getattr(module, "weight", None)
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(mask.shape):
                shape = None if w is None else tuple(w.shape)
                raise TrainingError(
                    f"mask for '{name}' has shape {tuple(mask.shape)} but the layer's weight is {shape}:"
                    " the masks belong to another model"
                )
            yield name, w, mask

    def apply(self, model: nn.Module) -> None:
        """Set every pruned weight of ``model`` to exactly 0.0 (in place)."""
        with torch.no_grad():
            for _, w, mask in self._weights(model):
                w.masked_fill_(~mask.to(w.device), 0.0)

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Keep pruned weights exactly zero while ``model`` trains.

        Applies the masks now, zeroes the gradients of pruned entries (so momentum and Adam moments stay zero
        there) and, when ``optimizer`` is given, re-applies the masks after each of its steps (which also undoes
        any weight-decay or numerical drift). Without an optimizer, call :meth:`apply` after each step yourself.
        Undo with :meth:`detach`. The masks may be changed (:meth:`prune`, :meth:`prune_to`) while attached.
        """
        self.detach()
        self.apply(model)
        for name, w, _ in self._weights(model):
            if not w.requires_grad:  # a frozen layer (linear probing) gets no gradient; the step hook still applies
                continue
            # the hook looks the mask up when it fires, so pruning more while attached (gradual pruning) is covered
            self._handles.append(
                w.register_hook(lambda g, name=name: g.masked_fill(~self.masks[name].to(g.device), 0.0))
            )
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply(model)))

    def detach(self) -> None:
        """Remove the hooks installed by :meth:`attach` (the weights stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- pruning --------------------------------------------------------------------------------------------
    def prune(
        self,
        model: nn.Module,
        rate: float,
        *,
        scope: str = "layer",
        score: str = "magnitude",
        reference_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Prune ``rate`` of the remaining weights with the lowest score, then apply the masks to ``model``.

        Args:
            model: the trained model whose weights are scored.
            rate: fraction of the still-unpruned weights to remove, in ``[0, 1)``.
            scope: ``"layer"`` prunes ``rate`` of each layer (the paper; at least one weight per layer survives);
                ``"global"`` ranks all masked weights together.
            score: ``"magnitude"`` = ``|w|``; ``"magnitude_increase"`` = ``|w| - |w_0|`` (Entezari & Saukh).
            reference_state: a state dict holding ``w_0`` (``"<layer>.weight"`` keys), for ``magnitude_increase``.

        Ties are broken by position (a stable sort), so pruning is deterministic.
        """
        if not 0 <= rate < 1:
            raise ConfigError(f"prune rate {rate}: must be in [0, 1) (the fraction of remaining weights to remove)")
        if scope not in ("layer", "global"):
            raise ConfigError(f"prune scope '{scope}': use 'layer' or 'global'")
        if score not in ("magnitude", "magnitude_increase"):
            raise ConfigError(f"prune score '{score}': use 'magnitude' or 'magnitude_increase'")
        scores = self._scores(model, score, reference_state)
        if rate == 0:
            return
        if scope == "layer":
            for name, mask in self.masks.items():
                alive = mask.flatten().nonzero().squeeze(1)
                k = min(int(round(rate * alive.numel())), max(alive.numel() - 1, 0))
                if k <= 0:
                    continue
                order = torch.argsort(scores[name].flatten()[alive], stable=True)
                flat = mask.flatten().clone()
                flat[alive[order[:k]]] = False
                self.masks[name] = flat.view_as(mask)
        else:
            alive_idx = {n: m.flatten().nonzero().squeeze(1) for n, m in self.masks.items()}
            self._drop_lowest(scores, alive_idx, int(round(rate * sum(i.numel() for i in alive_idx.values()))))
        self.apply(model)

    def _drop_lowest(self, scores: Mapping[str, torch.Tensor], alive_idx: Mapping[str, torch.Tensor], k: int) -> None:
        """Prune the ``k`` lowest-scoring alive weights ranked across all masked layers (stable on ties)."""
        if k <= 0:
            return
        all_scores = torch.cat([scores[n].flatten()[alive_idx[n]] for n in self.masks])
        doomed = torch.zeros(all_scores.numel(), dtype=torch.bool)
        doomed[torch.argsort(all_scores, stable=True)[:k]] = True
        start = 0
        for n, mask in self.masks.items():
            idx = alive_idx[n]
            d = doomed[start : start + idx.numel()]
            start += idx.numel()
            flat = mask.flatten().clone()
            flat[idx[d]] = False
            self.masks[n] = flat.view_as(mask)

    def _scores(
        self, model: nn.Module, score: str, reference_state: Mapping[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        if score not in ("magnitude", "magnitude_increase"):
            raise ConfigError(f"prune score '{score}': use 'magnitude' or 'magnitude_increase'")
        if score == "magnitude_increase" and reference_state is None:
            raise ConfigError("score 'magnitude_increase' needs reference_state (the state dict of w_0)")
        scores: dict[str, torch.Tensor] = {}
        for name, w, _ in self._weights(model):
            s = w.detach().float().abs().cpu()
            if score == "magnitude_increase":
                key = f"{name}.weight"
                ref = reference_state.get(key) if reference_state is not None else None
                if ref is None or tuple(ref.shape) != tuple(w.shape):
                    raise TrainingError(f"reference_state has no weight '{key}' of shape {tuple(w.shape)}")
                s = s - ref.detach().float().abs().cpu()
            scores[name] = s
        return scores

    def prune_to(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        scope: str = "layer",
        score: str = "magnitude",
        reference_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Prune the lowest-scoring surviving weights until ``sparsity`` of the masked weights are zero.

        Unlike :meth:`prune` (a fraction of what is left), the target is absolute: one-shot pruning and every step
        of a gradual schedule. Already-pruned weights stay pruned (masks only shrink); a target at or below the
        current sparsity changes nothing.

        Args:
            model: the model whose weights are scored; the masks are applied to it.
            sparsity: target fraction of zeros, in ``[0, 1)``; per layer (``scope="layer"``, at least one weight
                per layer survives) or over all masked weights together (``"global"``).
            scope: ``"layer"`` or ``"global"``.
            score: ``"magnitude"`` or ``"magnitude_increase"`` (needs ``reference_state``).
            reference_state: state dict holding ``w_0`` for ``magnitude_increase``.
        """
        if not 0 <= sparsity < 1:
            raise ConfigError(f"sparsity {sparsity}: must be in [0, 1) (the fraction of weights set to zero)")
        if scope not in ("layer", "global"):
            raise ConfigError(f"prune scope '{scope}': use 'layer' or 'global'")
        scores = self._scores(model, score, reference_state)
        if scope == "layer":
            for name, mask in self.masks.items():
                flat = mask.flatten().clone()
                alive = flat.nonzero().squeeze(1)
                k = min(int(round(sparsity * flat.numel())) - (flat.numel() - alive.numel()), alive.numel() - 1)
                if k <= 0:
                    continue
                order = torch.argsort(scores[name].flatten()[alive], stable=True)
                flat[alive[order[:k]]] = False
                self.masks[name] = flat.view_as(mask)
        else:
            total = sum(m.numel() for m in self.masks.values())
            alive_idx = {n: m.flatten().nonzero().squeeze(1) for n, m in self.masks.items()}
            n_alive = sum(i.numel() for i in alive_idx.values())
            self._drop_lowest(scores, alive_idx, int(round(sparsity * total)) - (total - n_alive))
        self.apply(model)

    # -- reporting ------------------------------------------------------------------------------------------
    def sparsity(self) -> float:
        """Fraction of masked-out entries over all masked (prunable) weights."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0

    def table(self, model: nn.Module) -> list[dict[str, Any]]:
        """Per Conv/Linear layer of ``model``: name, shape, params, zeros (counted in the weights), sparsity and
        whether it is masked; then a ``total`` row over all of them."""
        rows: list[dict[str, Any]] = []
        for name, m in prunable_layers(model):
            w = m.weight.detach()
            params, zeros = w.numel(), int((w == 0).sum())
            rows.append(
                {
                    "name": name,
                    "shape": list(w.shape),
                    "params": params,
                    "zeros": zeros,
                    "sparsity": zeros / params if params else 0.0,
                    "masked": name in self.masks,
                }
            )
        params = sum(r["params"] for r in rows)
        zeros = sum(r["zeros"] for r in rows)
        rows.append(
            {
                "name": "total",
                "shape": [],
                "params": params,
                "zeros": zeros,
                "sparsity": zeros / params if params else 0.0,
                "masked": None,
            }
        )
        return rows

    # -- persistence ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The masks as CPU bool tensors (safe for ``torch.load(weights_only=True)``)."""
        return {k: v.clone() for k, v in self.masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the masks; the names and shapes must match the current ones."""
        if set(state) != set(self.masks):
            missing, extra = sorted(set(self.masks) - set(state)), sorted(set(state) - set(self.masks))
            raise TrainingError(f"mask state does not match: missing {missing}, unexpected {extra}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(self.masks[k].shape):
                raise TrainingError(f"mask '{k}' has shape {tuple(v.shape)}, expected {tuple(self.masks[k].shape)}")
        self.masks = {k: v.detach().to("cpu", torch.bool).clone() for k, v in state.items()}

    def __repr__(self) -> str:
        return f"MaskSet({len(self.masks)} layers, sparsity={self.sparsity():.4f})"
