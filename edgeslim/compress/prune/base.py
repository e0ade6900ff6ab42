"""What every pruning method shares: its config base, the registry, the context it runs in, its result.

A method is one config class and one handler, registered together in :data:`PRUNE_METHODS`::

    class OneShot(LayerPruneConfig):
        method: Literal["one_shot"] = "one_shot"
        sparsity: float = Field(default=0.5, ge=0, lt=1)

    @PRUNE_METHODS.register(OneShot, aliases=("oneshot",))
    @teacher_check(dense_round_teacher)
    def one_shot(cfg: OneShot, ctx: PruneContext) -> PruneResult: ...

The handler gets its own config and a :class:`PruneContext` (the model W0, the data, the train / loss / distill
configs, a checkpoint directory, and helpers that build the loss and run a resumable fine-tuning); it never sees
the recipe. This module imports no method (the package's ``__init__`` does) and no torch at import time, so a
recipe can be parsed without torch. See ``docs/adding-a-pruning-method.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import Field

from ...errors import ConfigError
from ...methods import PRUNE_METHODS, MethodConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...recipe import DistillSection, LossSection, Recipe, TrainSection
    from ..train import TrainResult
    from .masks import MaskSet

__all__ = [
    "PRUNE_METHODS", "PruneConfig", "LayerPruneConfig", "PruneContext", "PruneResult", "teacher_check",
    "check_distillation", "dense_round_teacher", "dense_only_teacher", "round_summary", "mask_options",
    "final_epochs",
]


class PruneConfig(MethodConfig):
    """Base of every pruning method's config: ``exclude`` leaves layers dense."""

    exclude: list[str] = Field(default_factory=list, description="glob patterns of module names left dense")


class LayerPruneConfig(PruneConfig):
    """A method that prunes the model's own layers: whether the first conv and the classifier are pruned too."""

    prune_first_conv: bool = False
    prune_classifier: bool = False


def mask_options(cfg: MethodConfig) -> dict[str, Any]:
    """The layer choice of ``cfg`` as :meth:`MaskSet.for_model` keywords (a config without one: the defaults)."""
    return {
        "prune_first_conv": bool(getattr(cfg, "prune_first_conv", False)),
        "prune_classifier": bool(getattr(cfg, "prune_classifier", False)),
        "exclude": list(getattr(cfg, "exclude", ())),
    }


@dataclass
class PruneContext:
    """Everything a pruning method gets besides its config.

    Attributes:
        model: the starting weights W0 (pretrained backbone + freshly initialised head).
        data: a DataBundle (``loader(split, ...)``, ``labels(split)``, ``classes``, ``critical``, ``class_counts``).
        training: the train config (epochs, final_epochs, optimizer, select, ...).
        loss: the loss config.
        run_dir: the method's own checkpoint directory (created; everything resumable lives here).
        distill: the distillation config (``None``: no distillation).
        seed: seeds every training.
        batch_size: training and evaluation batch size.
        resume: continue from the checkpoints in ``run_dir`` instead of starting over.
        progress: show progress bars.
        teacher: the distillation teacher, ``None`` until there is one. A method sets it to its dense model once
            the dense round has trained it (that model is rebuilt from the dense round's checkpoint on resume, so
            the teacher is too); every later :meth:`train` then distils from it when ``distill.weight > 0``.
    """

    model: "nn.Module"
    data: Any
    training: "TrainSection"
    loss: "LossSection"
    run_dir: Path
    distill: "DistillSection | None" = None
    seed: int = 0
    batch_size: int = 32
    resume: bool = False
    progress: bool = True
    teacher: "nn.Module | None" = None
    # the FPR-budget state of the loss schedule, shared by the trainings of one run (see _epoch_start_hook)
    _budget: Any = field(default=None, init=False, repr=False)
    _budget_hook: Any = field(default=None, init=False, repr=False)

    @classmethod
    def from_recipe(cls, recipe: "Recipe", **kwargs: Any) -> "PruneContext":
        """A context with the recipe's train, loss and distill configs, seed and batch size (for the composer)."""
        return cls(training=recipe.train, loss=recipe.loss, distill=recipe.distill, seed=recipe.seed,
                   batch_size=recipe.data.batch_size, **kwargs)

    def start_from_w0(self) -> "nn.Module":
        """Checkpoint W0 as ``run_dir/w0.pt``, or, when resuming, load the exact W0 the interrupted run started from.

        Returns :attr:`model` (holding W0).
        """
        from ..checkpoint import load_checkpoint, save_checkpoint

        path = self.run_dir / "w0.pt"
        if self.resume and path.is_file():
            self.model.load_state_dict(load_checkpoint(path))
        else:
            save_checkpoint(path, self.model.state_dict())
        return self.model

    @property
    def final_epochs(self) -> int:
        """Epochs of the final (pruned) round: ``train.final_epochs``, default ``train.epochs``."""
        return final_epochs(self.training)

    @property
    def distilling(self) -> bool:
        """True when the losses :meth:`make_loss` builds carry the KD term (a teacher and ``distill.weight > 0``)."""
        return self.teacher is not None and self.distill is not None and self.distill.weight > 0

    def make_loss(self, gamma: float | None = None) -> "nn.Module":
        """The configured loss for this data; ``gamma`` overrides ``loss.gamma``.

        The one place every training's loss is built: the task loss (class-dependent or cross-entropy) and, when
        :attr:`distilling`, the KD term towards :attr:`teacher` around it
        (:class:`~edgeslim.compress.distill.DistillationLoss`). Such a loss needs the batch the student sees:
        :meth:`train` hooks the trained model for it; a caller training with it directly calls
        ``loss.wrap_student(model)`` itself.
        """
        from ..loss import build_loss

        loss = build_loss(self.loss, self.data.class_counts, self.data.critical, gamma=gamma)
        if not self.distilling:
            return loss  # no teacher forward at all
        from ..distill import DistillationLoss

        d = self.distill  # not None: ``distilling`` checked it
        return DistillationLoss(loss, self.teacher, weight=d.weight, temperature=d.temperature)  # type: ignore[union-attr]

    def make_masks(self, model: nn.Module, cfg: "MethodConfig") -> MaskSet:
        """All-ones masks for ``model`` honouring ``cfg``'s layer choice (first conv, classifier, exclude)."""
        from .masks import MaskSet

        return MaskSet.for_model(model, **mask_options(cfg))

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
        """Fine-tune ``model`` with the context's loss and train config, checkpointing under ``run_dir/tag``.

        With ``resume``, a finished training is not repeated and an interrupted one continues. When
        :attr:`distilling`, the loss carries the KD term and :attr:`teacher` (frozen, eval mode, no grad, never
        wrapped in DDP) runs on every training batch ``model`` sees.
        """
        from ..distill import DistillationLoss
        from ..train import fine_tune

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
                self.training,
                on_epoch_start=start_hook,
                masks=masks,
                run_dir=self.run_dir,
                tag=tag,
                resume=self.resume,
                seed=self.seed,
                progress=self.progress,
                batch_size=self.batch_size,
                select=select,
                epochs=epochs,
                on_epoch_end=end_hook,
                on_step_end=on_step_end,
            )
        finally:
            if handle is not None:
                handle.remove()

    # -- per-epoch loss schedule: ranking warm-up and the FPR-budget critical weight --------------------------------

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
        from ..loss import FprBudgetGamma, loss_schedule

        def controller() -> FprBudgetGamma:
            if self._budget is None:
                self._budget = FprBudgetGamma.from_section(
                    self.loss, self.data, state_path=self.run_dir / "gamma_budget.json", resume=self.resume
                )
            return self._budget

        start, self._budget_hook = loss_schedule(loss, self.loss, tag=tag, gamma=gamma, controller=controller)
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
        notes: what the run did other than asked, in words, for the summary and the manifest (e.g. the layers
            channel pruning kept whole because ``round_to`` leaves them no narrower width).
    """

    model: "nn.Module"
    masks: "MaskSet"
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    dense_model: "nn.Module | None" = None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Pruner = Callable[[Any, PruneContext], PruneResult]
# why a run of this method would distil without a teacher: (its config, the train config, whether QAT follows)
NoTeacher = Callable[[Any, "TrainSection", bool], "str | None"]


def teacher_check(no_teacher: NoTeacher) -> Callable[[Pruner], Pruner]:
    """Declare, on a pruning method, when a run leaves distillation without a teacher.

    ``no_teacher(cfg, train, qat)`` returns why no training of the run (the method's own fine-tuning, or QAT after
    it when ``qat``) would have a teacher, or ``None`` when one will. :func:`check_distillation` turns that into a
    ConfigError before anything is trained or written. Put it under ``@PRUNE_METHODS.register(...)``.
    """

    def mark(fn: Pruner) -> Pruner:
        fn.no_teacher = no_teacher  # type: ignore[attr-defined]
        return fn

    return mark


def check_distillation(prune: MethodConfig, *, train: "TrainSection", distill: "DistillSection | None",
                       qat: bool = False) -> None:
    """Refuse, before any training, ``distill.weight > 0`` in a run where no training would have a teacher.

    The teacher is the dense model after the dense round; the method declares (:func:`teacher_check`) when it has
    none. A method that declares nothing is not checked.

    Args:
        prune: the pruning method's config.
        train: the train config.
        distill: the distillation config (``None``: off).
        qat: quantization-aware training follows the method (it distils from the dense model too).

    Raises:
        ConfigError: names the reason and the fix.
        UnknownNameError: the pruning method is not registered.
    """
    if distill is None or not distill.weight > 0:
        return
    no_teacher = getattr(PRUNE_METHODS.handler(prune), "no_teacher", None)
    why = no_teacher(prune, train, qat) if no_teacher is not None else None
    if why:
        raise ConfigError(
            f"distill.weight = {distill.weight} but {why} (or set distill.weight: 0 to train without distillation)"
        )


def final_epochs(train: "TrainSection") -> int:
    """Epochs of the final round: ``train.final_epochs``, default ``train.epochs``."""
    return train.final_epochs if train.final_epochs is not None else train.epochs


def dense_round_teacher(cfg: Any, train: "TrainSection", qat: bool) -> str | None:
    """:func:`teacher_check` of the methods built on :func:`~.flow.train_dense_then_pruned`: the dense round trains
    the teacher, so it needs ``train.epochs > 0``."""
    if train.epochs == 0:
        return ("train.epochs = 0 skips the dense round that trains the teacher (W0 has an untrained head); set"
                " train.epochs > 0")
    return None


def dense_only_teacher(what: str, train: "TrainSection", qat: bool) -> str | None:
    """Why a run whose only training is the dense model's has no teacher (``None`` when QAT after it has one)."""
    if not qat:
        return (f"{what} trains only the dense model, which is the teacher itself, and quantize.method is not"
                " 'qat': only QAT after it can distil from it; set quantize.method: qat")
    if final_epochs(train) == 0:
        return (f"{what} trains the dense model for 0 epochs, so the QAT teacher would be untrained; set"
                " train.epochs > 0")
    return None


def round_summary(r: int, gamma: float, epochs: int, masks: "MaskSet", res: "TrainResult") -> dict[str, Any]:
    """The per-round record of :attr:`PruneResult.rounds`."""
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


def ratio_for(name: str, ratio: float, stage_ratios: dict[str, float] | None) -> float:
    """The ratio of layer ``name``: that of the longest ``stage_ratios`` prefix it lies under, else ``ratio``."""
    best = None
    for prefix in stage_ratios or {}:
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return ratio if best is None else float(stage_ratios[best])  # type: ignore[index]


def kept_width(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels a group of ``channels`` keeps at ``ratio``: Torch-Pruning's arithmetic for a per-group (local) scope,
    ``int(channels * (1 - ratio))`` rounded down to a multiple of ``round_to``. It may be 0; the caller decides what a
    group that would be emptied becomes. Structured pruning (:mod:`.structured`) and the frozen layers' refit
    (:mod:`.reconstruct`) both size groups with it, so one ratio gives one width whichever of them prunes."""
    kept = int(channels * (1 - ratio))
    if round_to:
        kept -= kept % round_to
    return kept

