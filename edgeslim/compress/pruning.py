"""Unstructured pruning masks and the pruning-method registry.

:class:`MaskSet` holds one boolean mask per prunable weight (Conv / Linear). Pruned weights are kept exactly zero
while training by zeroing their gradients and re-applying the mask after every optimizer step; the model keeps
plain ``nn.Parameter`` weights (no ``torch.nn.utils.prune`` re-parametrisation), so export sees ordinary tensors.

:data:`PRUNERS` maps a method name (``recipe.prune.method``) to a function ``(PruneContext) -> PruneResult``.
A method gets the initial model, the data, the recipe, a checkpoint directory and helpers to build the loss and
run a (resumable) fine-tuning; it returns the final model, its masks and the training history. Registered here:
``lottery_ticket`` (iterative magnitude pruning with rewinding, Frankle & Carbin / Entezari & Saukh) and ``none``
(dense fine-tuning); in their own modules, sharing :class:`MaskSet` and :func:`train_dense_then_pruned`:
``one_shot`` (oneshot.py), ``gradual`` (gradual.py, Zhu & Gupta), ``nm`` (nm.py, 2:4 semi-structured),
``structured`` (structured.py, Torch-Pruning channels) and ``sparse_transfer`` (transfer.py, Iofinova et al.).
"""

from __future__ import annotations

import copy
import fnmatch
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .._io import atomic_write_bytes
from .distributed import sync_masks
from ..errors import ConfigError, TrainingError
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import Recipe
    from .train import TrainResult

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv / Linear layer with a weight, in registration order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]


def _classifier_name(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> str | None:
    """The classifier layer: ``model.get_classifier()`` (timm, TinyNet) when it is prunable, else the last layer."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # noqa: BLE001 - a model's own helper may not apply; fall back to the last layer
            head = None
        for name, m in layers:
            if m is head:
                return name
        if isinstance(head, nn.Module):  # e.g. a Sequential head: its last prunable layer
            inner = [n for n, m in layers if any(m is sub for sub in head.modules())]
            if inner:
                return inner[-1]
    return layers[-1][0] if layers else None


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: str | Path, obj: Any) -> Path:
    """``torch.save`` through an atomic write (temp file + rename), so a crash never leaves half a checkpoint.

    Under torch.distributed only rank 0 writes; every rank waits at a barrier until the file is in place, so all
    of them can read it right after (the directory must be shared between nodes).
    """
    from . import distributed as dist

    path = Path(path)
    with dist.main_writes() as writer:
        if writer:
            atomic_write_bytes(path, _to_bytes(obj))
    return path


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU, with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a broken file
        raise TrainingError(f"cannot read checkpoint {path} ({exc}); delete it or start with resume=False") from exc


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
        skip: set[str] = set()
        if not prune_first_conv:
            first = next((n for n, m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
            if first is not None:
                skip.add(first)
        if not prune_classifier:
            head = _classifier_name(model, layers)
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


def model_sparsity(model: nn.Module) -> dict[str, Any]:
    """Zeros in every Conv/Linear weight of any model (no masks needed, e.g. after reloading an export).

    Returns:
        ``{"overall": float, "params": int, "zeros": int, "layers": {name: {"params", "zeros", "sparsity"}}}``.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, m in prunable_layers(model):
        w = m.weight.detach()
        params, zeros = w.numel(), int((w == 0).sum())
        layers[name] = {"params": params, "zeros": zeros, "sparsity": zeros / params if params else 0.0}
    params = sum(v["params"] for v in layers.values())
    zeros = sum(v["zeros"] for v in layers.values())
    return {"overall": zeros / params if params else 0.0, "params": params, "zeros": zeros, "layers": layers}


def count_params_macs(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass (dense count: zeros are still counted).

    Args:
        model: the network (not modified; Torch-Pruning counts on a copy).
        input_shape: e.g. ``(1, 3, 224, 224)``.
    """
    import torch_pruning as tp

    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise ConfigError(f"input_shape {tuple(input_shape)}: give positive sizes, e.g. (1, 3, 224, 224)")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(tuple(int(d) for d in input_shape), device=device))
    return int(params), int(macs)


# ---------------------------------------------------------------------------------------------------------------
# Pruning methods
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PruneContext:
    """Everything a pruning method gets.

    Attributes:
        model: the starting weights W0 (pretrained backbone + freshly initialised head).
        data: a DataBundle (``loader(split, ...)``, ``labels(split)``, ``classes``, ``critical``, ``class_counts``).
        recipe: the resolved recipe; a method reads ``recipe.prune``, ``recipe.train`` and ``recipe.loss``.
        run_dir: the method's own checkpoint directory (created; everything resumable lives here).
        resume: continue from the checkpoints in ``run_dir`` instead of starting over.
        progress: show progress bars.
        teacher: the distillation teacher, ``None`` until there is one. A method sets it to its dense model once
            the dense round has trained it (that model is rebuilt from the dense round's checkpoint on resume, so
            the teacher is too); every later :meth:`train` then distils from it when ``recipe.distill.weight > 0``.
    """

    model: nn.Module
    data: Any
    recipe: "Recipe"
    run_dir: Path
    resume: bool = False
    progress: bool = True
    teacher: nn.Module | None = None

    @property
    def distilling(self) -> bool:
        """True when the losses :meth:`make_loss` builds carry the KD term (a teacher and ``distill.weight > 0``)."""
        return self.teacher is not None and self.recipe.distill.weight > 0

    def make_loss(self, gamma: float | None = None) -> nn.Module:
        """The recipe's loss for this data; ``gamma`` overrides ``recipe.loss.gamma``.

        The one place every training's loss is built: the task loss (class-dependent or cross-entropy) and, when
        :attr:`distilling`, the KD term towards :attr:`teacher` around it
        (:class:`~edgeslim.compress.distill.DistillationLoss`). Such a loss needs the batch the student sees:
        :meth:`train` hooks the trained model for it; a caller training with it directly calls
        ``loss.wrap_student(model)`` itself.
        """
        from .loss import build_loss

        loss = build_loss(self.recipe.loss, self.data.class_counts, self.data.critical, gamma=gamma)
        if not self.distilling:
            return loss  # no teacher forward at all
        from .distill import DistillationLoss

        d = self.recipe.distill
        return DistillationLoss(loss, self.teacher, weight=d.weight, temperature=d.temperature)

    def make_masks(self, model: nn.Module) -> MaskSet:
        """All-ones masks for ``model`` honouring ``recipe.prune`` (first conv, classifier, exclude)."""
        p = self.recipe.prune
        return MaskSet.for_model(
            model, prune_first_conv=p.prune_first_conv, prune_classifier=p.prune_classifier, exclude=p.exclude
        )

    def train(
        self,
        model: nn.Module,
        *,
        tag: str,
        masks: MaskSet | None = None,
        gamma: float | None = None,
        epochs: int | None = None,
        select: str | None = None,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None,
        on_step_end: Callable[[int, nn.Module], None] | None = None,
    ) -> "TrainResult":
        """Fine-tune ``model`` with the recipe's loss and train section, checkpointing under ``run_dir/tag``.

        With ``resume``, a finished training is not repeated and an interrupted one continues. When
        :attr:`distilling`, the loss carries the KD term and :attr:`teacher` (frozen, eval mode, no grad, never
        wrapped in DDP) runs on every training batch ``model`` sees.
        """
        from .distill import DistillationLoss
        from .train import fine_tune

        loss = self.make_loss(gamma)
        start_hook = self._epoch_start_hook(loss, tag, gamma)  # also sets self._budget_hook for this training
        end_hook = self._chain(self._budget_hook, on_epoch_end)
        # on the plain module: under torchrun DDP calls it, so the hook sees this rank's batch
        handle = loss.wrap_student(model) if isinstance(loss, DistillationLoss) else None
        try:
            return fine_tune(
                model,
                self.data,
                loss,
                self.recipe.train,
                on_epoch_start=start_hook,
                masks=masks,
                run_dir=self.run_dir,
                tag=tag,
                resume=self.resume,
                seed=self.recipe.seed,
                progress=self.progress,
                batch_size=self.recipe.data.batch_size,
                select=select,
                epochs=epochs,
                on_epoch_end=end_hook,
                on_step_end=on_step_end,
            )
        finally:
            if handle is not None:
                handle.remove()

    # -- per-epoch loss schedule: ranking warm-up and the FPR-budget critical weight --------------------------------
    _budget_hook = None

    @staticmethod
    def _chain(a, b):
        if a is None or b is None:
            return a or b

        def both(epoch: int, model: nn.Module) -> dict | None:
            # an end hook may return fields for the epoch's history record (the FPR budget does): keep them all
            ra, rb = a(epoch, model), b(epoch, model)
            out = {**(ra if isinstance(ra, dict) else {}), **(rb if isinstance(rb, dict) else {})}
            return out or None

        return both

    def _epoch_start_hook(self, loss: nn.Module, tag: str, gamma: float | None):
        """Set the loss's epoch-dependent knobs before each epoch (also the first after a resume); the schedule
        (ranking warm-up, FPR budget) lives in :func:`edgeslim.compress.loss.loss_schedule`."""
        from .loss import FprBudgetGamma, loss_schedule

        def controller() -> FprBudgetGamma:
            if getattr(self, "_budget", None) is None:
                self._budget = FprBudgetGamma.from_section(
                    self.recipe.loss, self.data, state_path=self.run_dir / "gamma_budget.json", resume=self.resume
                )
            return self._budget

        start, self._budget_hook = loss_schedule(loss, self.recipe.loss, tag=tag, gamma=gamma, controller=controller)
        return start


@dataclass
class PruneResult:
    """What a pruning method returns.

    Attributes:
        model: the final (pruned, fine-tuned) model, masked weights exactly zero.
        masks: its masks (all ones for dense methods).
        history: per-epoch records of every training, each with ``round``.
        rounds: one summary per training round.
        dense_model: the dense reference the method trained, if any (else ``None``).
        info: method-specific facts for the report (e.g. the layers N:M skipped, the pruned channel widths).
    """

    model: nn.Module
    masks: MaskSet
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    dense_model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


Pruner = Callable[[PruneContext], PruneResult]
PRUNERS: Registry[Pruner] = Registry("pruning method")


def teacher_check(no_teacher: Callable[["Recipe"], str | None]) -> Callable[[Pruner], Pruner]:
    """Declare, on a pruning method, when a recipe leaves distillation without a teacher.

    ``no_teacher(recipe)`` returns why no training of the run (the method's own fine-tuning, or QAT after it)
    would have a teacher, or ``None`` when one will. :func:`check_distillation` turns that into a ConfigError before
    anything is trained or written. Put it under ``@PRUNERS.register(...)``.
    """

    def mark(fn: Pruner) -> Pruner:
        fn.no_teacher = no_teacher  # type: ignore[attr-defined]
        return fn

    return mark


def check_distillation(recipe: "Recipe") -> None:
    """Refuse, before any training, ``distill.weight > 0`` in a recipe where no training would have a teacher.

    The teacher is the dense model after the dense round; the method declares (:func:`teacher_check`) when it has
    none. A method that declares nothing is not checked.

    Raises:
        ConfigError: names the reason and the fix.
        UnknownNameError: the pruning method is not registered.
    """
    d = recipe.distill
    if not d.weight > 0:
        return
    no_teacher = getattr(PRUNERS.get(recipe.prune.method), "no_teacher", None)
    why = no_teacher(recipe) if no_teacher is not None else None
    if why:
        raise ConfigError(
            f"distill.weight = {d.weight} but {why} (or set distill.weight: 0 to train without distillation)"
        )


def _final_epochs(recipe: "Recipe") -> int:
    t = recipe.train
    return t.final_epochs if t.final_epochs is not None else t.epochs


def dense_round_teacher(recipe: "Recipe") -> str | None:
    """:func:`teacher_check` of the methods built on :func:`train_dense_then_pruned`: the dense round trains the
    teacher, so it needs ``train.epochs > 0``."""
    if recipe.train.epochs == 0:
        return ("train.epochs = 0 skips the dense round that trains the teacher (W0 has an untrained head); set"
                " train.epochs > 0")
    return None


def _lottery_teacher(recipe: "Recipe") -> str | None:
    if recipe.prune.rounds == 0:
        return _dense_only_teacher(recipe, f"prune.rounds = 0 with method '{recipe.prune.method}'")
    return dense_round_teacher(recipe)


def _dense_only_teacher(recipe: "Recipe", what: str) -> str | None:
    if recipe.quantize.method != "qat":
        return (f"{what} trains only the dense model, which is the teacher itself, and quantize.method is"
                f" '{recipe.quantize.method}': only QAT after it can distil from it; set quantize.method: qat")
    if _final_epochs(recipe) == 0:
        return (f"{what} trains the dense model for 0 epochs, so the QAT teacher would be untrained; set"
                " train.epochs > 0")
    return None


def _round_summary(r: int, gamma: float, epochs: int, masks: MaskSet, res: "TrainResult") -> dict[str, Any]:
    vm = res.val_metrics
    return {
        "round": r,
        "gamma": gamma,
        "epochs": epochs,
        "sparsity": masks.sparsity(),
        "best_epoch": res.best_epoch,
        "val_accuracy": vm.accuracy if vm is not None else None,
        "val_critical_recall": vm.critical_recall() if vm is not None else None,
        "val_critical_auc": vm.critical_auc() if vm is not None else None,
        "val_critical_fn": vm.critical_fn() if vm is not None else None,
        "seconds": float(sum(h.get("seconds", 0.0) for h in res.history)),
    }


@PRUNERS.register("lottery_ticket", aliases=("lth", "imp"))
@teacher_check(_lottery_teacher)
def lottery_ticket(ctx: PruneContext) -> PruneResult:
    """Iterative magnitude pruning with rewinding (the loop of ``docs/class-dependent-loss.md``).

    Round 1 trains the dense model (gamma = 1 under the ``paper`` schedule; that model is the dense reference).
    Each of ``prune.rounds`` rounds then scores the surviving weights, prunes ``prune.rate`` of them, rewinds the
    survivors to W0 (or to the weights after epoch ``prune.rewind`` of round 1) and trains again with gamma. The
    last training keeps the checkpoint chosen by ``train.select`` on the validation split; earlier ones keep their
    last epoch (the weights the next round scores). With ``prune.rounds = 0`` there is one, dense, training with
    gamma. Every training checkpoints each epoch under ``run_dir/round<r>``; with ``resume`` finished rounds are
    not repeated. Rounds 2 and later distil from the round-1 (dense) model when ``distill.weight > 0``.
    """
    p, t, lossc = ctx.recipe.prune, ctx.recipe.train, ctx.recipe.loss
    model = ctx.model
    w0_path = ctx.run_dir / "w0.pt"
    if ctx.resume and w0_path.is_file():
        model.load_state_dict(load_checkpoint(w0_path))  # the exact W0 the interrupted run started from
    else:
        save_checkpoint(w0_path, model.state_dict())
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}

    late = p.rewind if isinstance(p.rewind, int) and p.rewind > 0 else None
    if late is not None and p.rounds > 0 and late > t.epochs:
        raise ConfigError(
            f"prune.rewind = {late}: late rewinding needs an epoch of round 1, which has train.epochs = {t.epochs};"
            f" use an epoch in 0..{t.epochs} or 'init'"
        )
    rewind_path = ctx.run_dir / "rewind.pt"

    def keep_rewind_point(epoch: int, m: nn.Module) -> None:
        if epoch == late:
            save_checkpoint(rewind_path, m.state_dict())

    masks = ctx.make_masks(model)
    history: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    dense_model: nn.Module | None = None
    total = p.rounds + 1
    for r in range(1, total + 1):
        final = r == total
        gamma = 1.0 if (lossc.gamma_schedule == "paper" and r == 1 and not final) else lossc.gamma
        epochs = t.final_epochs if (final and t.final_epochs is not None) else t.epochs
        res = ctx.train(
            model,
            tag=f"round{r}",
            masks=masks,
            gamma=gamma,
            epochs=epochs,
            select=t.select if final else "last",
            on_epoch_end=keep_rewind_point if (r == 1 and late is not None) else None,
        )
        model = res.model
        for h in res.history:
            h["round"] = r
        history.extend(res.history)
        rounds.append(_round_summary(r, gamma, epochs, masks, res))
        if r == 1:
            dense_model = copy.deepcopy(model)
            ctx.teacher = dense_model  # of every later round (used only when distill.weight > 0)
        if final:
            break
        masks.prune(model, p.rate, scope=p.scope, score=p.score, reference_state=w0)
        sync_masks(masks, model)  # under torchrun: rank 0's masks on every rank
        if late is not None:
            if not rewind_path.is_file():
                raise TrainingError(
                    f"the late-rewinding point {rewind_path} is missing; restart this run with resume=False"
                )
            model.load_state_dict(load_checkpoint(rewind_path))
        else:
            model.load_state_dict(w0)
        masks.apply(model)
    return PruneResult(model=model, masks=masks, history=history, rounds=rounds, dense_model=dense_model)


@PRUNERS.register("none", aliases=("dense",))
@teacher_check(lambda recipe: _dense_only_teacher(recipe, "prune.method 'none'"))
def no_pruning(ctx: PruneContext) -> PruneResult:
    """Dense fine-tuning with the recipe's loss (gamma throughout) and checkpoint selection; no weight is pruned.

    The trained model is the dense reference; distillation (``distill.weight > 0``) has no teacher here and applies
    only to QAT after it.
    """
    t = ctx.recipe.train
    epochs = t.final_epochs if t.final_epochs is not None else t.epochs
    gamma = ctx.recipe.loss.gamma
    res = ctx.train(ctx.model, tag="dense", gamma=gamma, epochs=epochs, select=t.select)
    masks = ctx.make_masks(res.model)
    for h in res.history:
        h["round"] = 1
    return PruneResult(
        model=res.model,
        masks=masks,
        history=list(res.history),
        rounds=[_round_summary(1, gamma, epochs, masks, res)],
        dense_model=res.model,
    )


# -- the shared "dense round -> prune -> masked fine-tuning" flow of one_shot, gradual, nm and structured ----------


def example_shape(data: Any, batch: int = 1) -> tuple[int, ...]:
    """``(batch, C, H, W)`` of the data's inputs (from one sample), for tracing and MAC counts."""
    for split in ("val", "test", "train"):
        try:
            x, _ = next(iter(data.loader(split, batch_size=1, shuffle=False)))
        except (StopIteration, KeyError, ValueError):
            continue
        return (batch, *tuple(x.shape[1:]))
    raise TrainingError("the data has no sample to take the input shape from")


def train_dense_then_pruned(
    ctx: PruneContext,
    prune: Callable[[nn.Module, MaskSet], tuple[nn.Module, MaskSet, dict[str, Any]]],
    *,
    on_step_end: Callable[[MaskSet], Callable[[int, nn.Module], None] | None] | None = None,
) -> PruneResult:
    """The flow the one-shot families share: dense fine-tuning, pruning, then fine-tuning under the masks.

    Round 1 (``tag="dense"``) fine-tunes W0 for ``train.epochs`` with gamma = 1 under the ``paper`` gamma schedule
    (else gamma) and keeps its last epoch: that is the dense reference and the weights ``prune`` scores. With
    ``train.epochs = 0`` there is no dense round and W0 itself is pruned (no dense reference). ``prune(model,
    masks)`` returns the model to fine-tune (the same one, or a smaller one for channel pruning), its masks and
    facts for the report. Round 2 (``tag="pruned"``) fine-tunes it for ``train.final_epochs`` (default
    ``train.epochs``) with gamma and keeps the checkpoint chosen by ``train.select``; ``on_step_end(masks)`` may
    give a per-step hook for it (gradual pruning). Pruning is deterministic given the round-1 weights, so a resumed
    run rebuilds the same masks / structure and continues round 2 from its checkpoint. The dense model is round 2's
    distillation teacher (``distill.weight > 0``); its methods declare :func:`dense_round_teacher`.
    """
    t, lossc = ctx.recipe.train, ctx.recipe.loss
    model = ctx.model
    w0_path = ctx.run_dir / "w0.pt"
    if ctx.resume and w0_path.is_file():
        model.load_state_dict(load_checkpoint(w0_path))  # the exact W0 the interrupted run started from
    else:
        save_checkpoint(w0_path, model.state_dict())
    history: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    dense_model: nn.Module | None = None
    masks = ctx.make_masks(model)  # before training: a bad exclude pattern fails here, not after round 1
    r = 0
    if t.epochs > 0:
        r = 1
        gamma = 1.0 if lossc.gamma_schedule == "paper" else lossc.gamma
        res = ctx.train(model, tag="dense", gamma=gamma, epochs=t.epochs, select="last")
        model = res.model
        for h in res.history:
            h["round"] = r
        history.extend(res.history)
        rounds.append(_round_summary(r, gamma, t.epochs, ctx.make_masks(model), res))
        dense_model = copy.deepcopy(model)  # before prune(): channel pruning shrinks ``model`` in place
        ctx.teacher = dense_model  # of the pruned round (used only when distill.weight > 0)
    model, masks, info = prune(model, masks)
    sync_masks(masks, model)  # under torchrun: rank 0's masks on every rank
    r += 1
    epochs = t.final_epochs if t.final_epochs is not None else t.epochs
    hook = on_step_end(masks) if on_step_end is not None else None
    res = ctx.train(model, tag="pruned", masks=masks, gamma=lossc.gamma, epochs=epochs, select=t.select,
                    on_step_end=hook)
    for h in res.history:
        h["round"] = r
    history.extend(res.history)
    rounds.append(_round_summary(r, lossc.gamma, epochs, masks, res))
    return PruneResult(model=res.model, masks=masks, history=history, rounds=rounds, dense_model=dense_model, info=info)


# the other families live in their own modules and register themselves in PRUNERS on import
from . import gradual as _gradual  # noqa: E402,F401
from . import nm as _nm  # noqa: E402,F401
from . import oneshot as _oneshot  # noqa: E402,F401
from . import structured as _structured  # noqa: E402,F401
from . import transfer as _transfer  # noqa: E402,F401
