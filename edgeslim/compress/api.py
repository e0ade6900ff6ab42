"""The compress stage's verb: :func:`compress` runs one pruning method and evaluates the result.

It takes the configs that vary (the pruning method's config, the train / loss / distill configs), not a recipe, so
it can be called alone from Python::

    from edgeslim.compress.api import compress
    from edgeslim.compress.prune import OneShot
    result = compress("tiny", data, prune=OneShot(sparsity=0.8), run_dir="runs/a")
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from torch import nn

from .._io import atomic_write_json
from ..errors import ConfigError, DataError, TrainingError
from ..methods import PRUNE_METHODS, MethodConfig
from ..models import prunable_layers
from . import distributed as dist
from .metrics import ClassificationMetrics
from .prune.base import PruneContext, PruneResult, check_distillation
from .prune.masks import MaskSet
from .prune.stats import count_params_macs, example_shape
from .train import _device, _evaluate_split, _has_split

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import DistillSection, LossSection, Recipe, TrainSection

__all__ = ["CompressResult", "compress"]


@dataclass
class CompressResult:
    """The outcome of :func:`compress`.

    Attributes:
        dense_model: the dense reference (round 1 of the lottery ticket), or ``None`` if the method has none.
        model: the final model (pruned weights exactly zero).
        masks: its masks.
        dense_metrics: the dense model's metrics on the test split (``None`` without a dense model).
        metrics: the final model's metrics on the test split.
        val_metrics: the final model's metrics on the validation split (``None`` without one).
        history: per-epoch records of every training.
        sparsity_table: :meth:`MaskSet.table` of the final model.
        rounds: one summary per training round.
        seconds: wall time of this call.
        size: ``params``, ``nonzero_params`` and ``macs`` (one sample) of the final model and, with a dense
            reference, ``dense_params`` / ``dense_macs``; MACs are dense counts (zeros still counted).
        info: what the pruning method reports (e.g. layers N:M skipped, channel widths and the structure spec).
        notes: what the method did other than asked, in words (e.g. layers channel pruning kept whole).
    """

    dense_model: nn.Module | None
    model: nn.Module
    masks: MaskSet
    dense_metrics: ClassificationMetrics | None
    metrics: ClassificationMetrics
    val_metrics: ClassificationMetrics | None
    history: list[dict[str, Any]] = field(default_factory=list)
    sparsity_table: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    size: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Fraction of pruned weights over the masked (prunable) layers."""
        return self.masks.sparsity()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (metrics, rounds, history, sparsity), without the models."""
        return {
            "sparsity": self.sparsity,
            "dense_metrics": self.dense_metrics.to_dict() if self.dense_metrics is not None else None,
            "metrics": self.metrics.to_dict(),
            "val_metrics": self.val_metrics.to_dict() if self.val_metrics is not None else None,
            "rounds": self.rounds,
            "history": self.history,
            "sparsity_table": self.sparsity_table,
            "size": self.size,
            "info": self.info,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def _digest(options: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _same_but_new_defaults(stored: Any, options: dict[str, Any], sections: dict[str, Any]) -> bool:
    """Whether a run's stored options are ``options`` but for fields a newer edgeslim added to a config section,
    at their defaults (such a field did not exist when the run was checkpointed, so it cannot have changed it)."""
    from pydantic_core import to_jsonable_python

    if not isinstance(stored, dict):
        return False
    ours = dict(options)
    for key, model in sections.items():
        old, new = stored.get(key), ours.get(key)
        if model is None or not isinstance(old, dict) or not isinstance(new, dict):
            continue
        fields = type(model).model_fields
        added_defaults = {
            k for k, v in new.items()
            if k not in old and k in fields and not fields[k].is_required()
            and json.dumps(v, sort_keys=True) == json.dumps(
                to_jsonable_python(fields[k].get_default(call_default_factory=True)), sort_keys=True)
        }
        ours[key] = {k: v for k, v in new.items() if k not in added_defaults}
    return json.dumps(ours, sort_keys=True) == json.dumps(stored, sort_keys=True)


def compress(
    model: nn.Module | str,
    data: Any,
    recipe: "Recipe | None" = None,
    *,
    prune: MethodConfig | Mapping[str, Any] | None = None,
    train: "TrainSection | None" = None,
    loss: "LossSection | None" = None,
    distill: "DistillSection | None" = None,
    seed: int = 0,
    batch_size: int = 32,
    qat: bool = False,
    run_dir: Path | str,
    resume: bool = False,
    progress: bool = True,
    teacher: nn.Module | None = None,
    run_key: Mapping[str, Any] | None = None,
) -> CompressResult:
    """Fine-tune and prune ``model`` with one pruning method and evaluate it on the held-out test split.

    ``model`` is W0: the pretrained backbone with a freshly initialised head for ``data.classes``; it is trained
    in place and ends up as ``result.model`` (deep-copy it first to keep W0). A source spec (``"tiny"``,
    ``"timm:resnet18"``, see :data:`~edgeslim.compress.sources.SOURCES`) is loaded and given such a head first.
    ``prune`` (a config such as :class:`~edgeslim.compress.prune.OneShot`, or its dict form) chooses the method
    (default: :class:`~edgeslim.compress.prune.LotteryTicket`), which trains with ``loss`` and ``train``;
    checkpoints go to ``run_dir/compress`` (removed first unless ``resume``). With ``resume=True`` an
    interrupted run continues: finished rounds are not repeated and the current one resumes from its last epoch.

    With ``distill.weight > 0`` every training after the dense round (the pruned fine-tuning, the later lottery
    rounds) adds the KD term towards the dense model (:class:`~edgeslim.compress.distill.DistillationLoss`); a
    resumed run rebuilds that teacher from the dense round's checkpoint. ``teacher`` gives the teacher for a model
    whose dense fine-tune happened elsewhere (``train.epochs: 0`` on an already fine-tuned ``model``): it is
    copied, frozen, and distilled from from the first training on; a dense round, if any, replaces it.

    Under ``torchrun`` (see :mod:`edgeslim.compress.distributed`) the process group is joined from the environment,
    training runs data-parallel with ``batch_size`` as the global batch, pruning masks are rank 0's on every rank,
    metrics are those of the whole split, and only rank 0 writes to ``run_dir``. ``data`` must be the same on every
    rank (each loads the full bundle, so the class counts the loss weights use are those of the full training
    split; this is checked).

    Args:
        model: W0, or a pretrained source spec.
        data: a DataBundle (:func:`edgeslim.compress.data.load_data`).
        recipe: shorthand for a whole recipe's compress options (:meth:`~edgeslim.recipe.Recipe.compress_options`);
            the keyword configs are then not given.
        prune: the pruning method's config.
        train, loss, distill: the train, loss and distillation configs (defaults: the recipe defaults; no KD).
        seed: seeds every training.
        batch_size: training and evaluation batch size.
        qat: quantization-aware training follows (only for the check that distillation has a teacher).
        run_dir: where ``compress/`` (checkpoints, ``summary.json``) is written.
        resume: continue an interrupted run in ``run_dir``.
        progress: show progress bars.
        teacher: a distillation teacher trained elsewhere.
        run_key: more facts a resumed run must share with the interrupted one (the composer passes the model and
            data sections), on top of the configs above.

    Raises:
        UnknownNameError: the pruning method is not registered.
        ConfigError: ``distill.weight > 0`` but no training would have a teacher (checked before anything runs).
        TrainingError: ``resume`` was asked for a ``run_dir`` holding a run of different options.
    """
    from ..recipe import LossSection, TrainSection

    if recipe is not None:
        if any(x is not None for x in (prune, train, loss, distill, run_key)):
            raise ConfigError("give compress() a recipe or the configs (prune=, train=, loss=, distill=), not both")
        return compress(model, data, run_dir=run_dir, resume=resume, progress=progress, teacher=teacher,
                        **recipe.compress_options())
    t0 = time.perf_counter()
    cfg = PRUNE_METHODS.parse(prune if prune is not None else {}, default="lottery_ticket")
    pruner = PRUNE_METHODS.handler(cfg)
    train = train if train is not None else TrainSection()
    loss = loss if loss is not None else LossSection()
    if teacher is None:
        # before anything is written: a refused run leaves no run to "resume"
        check_distillation(cfg, train=train, distill=distill, qat=qat)
    n_classes = len(data.classes)
    if n_classes < 2:
        raise DataError(f"the data has {n_classes} class(es); classification needs at least 2")
    if isinstance(model, str):
        from .sources import load_pretrained, replace_head

        model = replace_head(load_pretrained(model).model, n_classes)
    dist.init_from_env()
    if dist.is_distributed():
        sizes = {s: len(data.labels(s)) if _has_split(data, s) else 0 for s in ("train", "val", "test")}
        dist.check_same((list(data.class_counts), list(data.critical), sizes), "the data (class counts, splits)")
    work = Path(run_dir) / "compress"
    marker = work / "recipe.json"
    # only what changes the trained weights; export/profile edits must not block a resume
    options: dict[str, Any] = {
        "seed": seed, "batch_size": batch_size, "prune": cfg.model_dump(mode="json"),
        "train": train.model_dump(mode="json", by_alias=True), "loss": loss.model_dump(mode="json", by_alias=True),
        **dict(run_key or {}),
    }
    if distill is not None and distill.weight > 0:  # distillation trains the rounds after the dense one
        options["distill"] = distill.model_dump(mode="json")
    digest = _digest(options)
    if resume and marker.is_file():
        stored = json.loads(marker.read_text())
        sections = {"prune": cfg, "train": train, "loss": loss, "distill": distill}
        if stored.get("digest") != digest and not _same_but_new_defaults(stored.get("options"), options, sections):
            raise TrainingError(
                f"{work} holds a run of a different recipe (its model/data/loss/train/prune/distill differ); resume"
                " with the same recipe, pick another run_dir, or pass resume=False to start over"
            )
    dist.barrier()  # every rank has read the old marker before rank 0 replaces it
    with dist.main_writes() as writer:
        if writer:
            if not resume and work.exists():
                shutil.rmtree(work)  # only our own namespace: stale rounds must never be picked up by a resume
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(marker, {"digest": digest, "options": options})

    ctx = PruneContext(model=model, data=data, training=train, loss=loss, distill=distill, seed=seed,
                       batch_size=batch_size, run_dir=work, resume=resume, progress=progress)
    if teacher is not None:
        ctx.teacher = copy.deepcopy(teacher).eval()
    res = pruner(cfg, ctx)
    if not isinstance(res, PruneResult):
        raise TrainingError(f"pruning method '{cfg.method}' returned {type(res).__name__}, expected a PruneResult")
    budget = getattr(ctx, "_budget", None)
    if budget is not None:  # whether the FPR budget held, for the reports and the manifest
        res.info = {**res.info, "fpr_budget": budget.summary()}
    device = _device(train.device)
    bs = batch_size
    metrics = _evaluate_split(res.model, data, "test", bs, device)
    dense_metrics = _evaluate_split(res.dense_model, data, "test", bs, device) if res.dense_model is not None else None
    val_metrics = _evaluate_split(res.model, data, "val", bs, device) if _has_split(data, "val") else None
    shape = example_shape(data)
    params, macs = count_params_macs(res.model, shape)
    zeros = sum(int((m.weight.detach() == 0).sum()) for _, m in prunable_layers(res.model))
    size: dict[str, Any] = {
        "input_shape": list(shape), "params": params, "nonzero_params": params - zeros, "macs": macs,
    }
    if res.dense_model is not None:
        size["dense_params"], size["dense_macs"] = count_params_macs(res.dense_model, shape)
    result = CompressResult(
        dense_model=res.dense_model,
        model=res.model,
        masks=res.masks,
        dense_metrics=dense_metrics,
        metrics=metrics,
        val_metrics=val_metrics,
        history=res.history,
        sparsity_table=res.masks.table(res.model),
        rounds=res.rounds,
        seconds=time.perf_counter() - t0,
        size=size,
        info=res.info,
        notes=list(res.notes),
    )
    with dist.main_writes() as writer:
        if writer:
            atomic_write_json(work / "summary.json", result.to_dict())
    return result
