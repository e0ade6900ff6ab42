"""Fine-tuning: seeded, checkpointed every epoch, resumable to identical weights.

:func:`fine_tune` trains a model on a DataBundle's ``train`` split, evaluates on ``val`` after every epoch, keeps
the checkpoint chosen by ``select`` and saves ``run_dir/<tag>/last.pt`` atomically after every epoch. With
``resume=True`` it continues from the last completed epoch and ends with the same weights an uninterrupted run
would have (the data order of each epoch depends only on ``(seed, epoch)``; RNG states are checkpointed).

The pruning methods (:mod:`edgeslim.compress.prune`) train through it, and :func:`edgeslim.compress.api.compress`
runs them.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError, TrainingError
from . import distributed as dist
from .metrics import ClassificationMetrics, evaluate, predict_logits, split_logits
from .checkpoint import load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import TrainSection
    from .prune.masks import MaskSet

log = logging.getLogger(__name__)

SELECTS = ("last", "critical_recall", "critical_auc", "accuracy")
# loss terms logged per epoch when the loss reports them in ``last_parts`` (class-dependent: wce, rank; KD: kd)
_PARTS = ("wce", "rank", "kd")
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """The outcome of :func:`fine_tune`.

    Attributes:
        model: the trained model, holding the selected epoch's weights.
        history: one record per epoch: ``tag, round, epoch, loss, wce, rank, kd, val_accuracy, val_critical_recall,
            val_critical_auc, val_critical_fn, seconds`` (a loss term is ``None`` when the loss has none).
        best_epoch: the selected epoch (1-based; 0 when no epoch ran).
        val_metrics: the selected model's metrics on the validation split, computed fresh (``None`` without one).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    val_metrics: ClassificationMetrics | None


# -- helpers ---------------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device '{name}' is not a device; use 'cpu' or 'cuda' / 'cuda:0'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device is '{name}' but CUDA is not available here; set train.device: cpu")
    if dev.type == "cuda" and dev.index is None and dist.is_distributed():
        dev = torch.device("cuda", torch.cuda.current_device())  # torchrun: this process's GPU (LOCAL_RANK)
    return dev


def _optimizer(model: nn.Module, cfg: "TrainSection") -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters (all requires_grad=False)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer '{cfg.optimizer}': use 'sgd' or 'adamw'")


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (1-based) of ``total``.

    A pure function of the step, not a torch ``LRScheduler``: the step is checkpointed, so a resumed run gets the
    exact rate of an uninterrupted one without a scheduler state to keep in step with the optimizer.
    ``onecycle`` is torch's ``OneCycleLR`` shape (linear warm-up from lr/25, then cosine to ~0); ``cosine`` is
    ``CosineAnnealingLR`` to 0 after the optional warm-up.
    """
    import math

    if schedule == "constant" or total <= 0:
        return 1.0
    if warmup > 0 and step <= warmup:
        return 1 / 25 + (1 - 1 / 25) * step / warmup
    span = max(1, total - warmup)
    done = min(1.0, (step - warmup) / span)
    return 0.5 * (1 + math.cos(math.pi * done))


def _freeze(model: nn.Module, boundary: str) -> list[str]:
    """requires_grad=False for every parameter of the layers up to and including ``boundary``
    (:func:`edgeslim.models.frozen_modules`); returns the frozen parameter names."""
    from ..models import frozen_modules

    frozen: list[str] = []
    for n in frozen_modules(model, boundary):
        for pn, p in model.get_submodule(n).named_parameters(recurse=False):
            p.requires_grad_(False)
            frozen.append(f"{n}.{pn}" if n else pn)
    if not frozen:
        raise ConfigError(f"train.freeze '{boundary}': no layer up to it has weights; name a later layer")
    return frozen


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # the shuffle of an epoch depends only on (seed, epoch), so a resumed run sees the same batches
    return (seed * 1_000_003 + epoch) % 2**63


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # plain types and tensors only, so the checkpoint loads with weights_only=True
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _selection_key(select: str, m: ClassificationMetrics | None, max_fpr: float = 1.0) -> tuple[float, ...]:
    """Larger is better. ``critical_recall`` only counts epochs whose critical FPR is within ``max_fpr``:
    without that budget, an epoch that calls everything critical (recall 1.0, accuracy near chance) wins."""
    if m is None:
        return ()
    neg = float("-inf")
    if select == "critical_recall":
        r = m.critical_recall()
        fprs = [m.critical_stats[c]["fpr"] for c in m.critical if m.critical_stats[c]["fpr"] is not None]
        within = not fprs or max(fprs) <= max_fpr
        if not within:  # outside the budget: ranked below every epoch within it, by accuracy
            return (0.0, m.accuracy, m.accuracy)
        return (1.0, neg if r is None else r, m.accuracy)
    if select == "critical_auc":
        a = m.critical_auc()
        return (neg if a is None else a, m.accuracy)
    return (m.accuracy,)


def _has_split(data: Any, split: str) -> bool:
    try:
        return len(data.labels(split)) > 0
    except (KeyError, ValueError, DataError):
        return False


def _evaluate_split(model: nn.Module, data: Any, split: str, batch_size: int, device: torch.device):
    if dist.is_distributed():
        # each rank predicts its shard; the all-gathered logits are in dataset order, so the metrics (and the
        # checkpoint selection made from them) equal a single-process evaluation and agree on every rank
        n = len(data.labels(split))
        loader = data.loader(split, batch_size=batch_size, shuffle=False, distributed=True)
        logits, labels = predict_logits(model, loader, device=str(device))
        logits, labels = dist.gather_ordered(logits, n), dist.gather_ordered(labels, n)
        return evaluate(logits, labels, data.classes, data.critical)
    logits, labels = split_logits(model, data, split, batch_size=batch_size, device=str(device))
    return evaluate(logits, labels, data.classes, data.critical)


def _broadcast_buffers(model: nn.Module) -> None:
    # DDP syncs buffers (BatchNorm running statistics) from rank 0 at the START of each forward, so after the last
    # step every rank holds its own update; evaluation, selection and checkpoints must all see rank 0's
    if dist.is_distributed():
        import torch.distributed as tdist

        with torch.no_grad():
            for b in model.buffers():
                tdist.broadcast(b.data, src=0)


def _freeze_frozen_norms(model: nn.Module) -> None:
    # train() puts BatchNorm in batch-statistics mode and updates its running stats; for a frozen backbone that
    # would change the features the head is trained on (and the exported model) although no weight is trained
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


# -- frozen layers, computed once --------------------------------------------------------------------------------


class _TeacherLookup(nn.Module):
    """A distillation teacher whose logits for every cached training sample were computed once: it answers for
    the samples of the batch that :class:`_Batches` is handing out (the student's input is only checked for size)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.index: torch.Tensor | None = None
        self._anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # gives the loss a device to move to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None or len(self.index) != x.shape[0]:
            raise TrainingError("the cached teacher was asked about a batch it was not handed")
        return self.logits[self.index]


def _suffix_logits(suffix: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    from ..models import eval_mode

    with eval_mode(suffix), torch.no_grad():
        return torch.cat([suffix(x).float() for x in feats.split(256)])


class _Batches:
    """One epoch of cached batches; tells the teacher lookup (if any) which samples each batch holds."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, order: tuple[torch.Tensor, ...],
                 lookup: _TeacherLookup | None) -> None:
        self.feats, self.labels, self.order, self.lookup = feats, labels, order, lookup

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in self.order:
            if self.lookup is not None:
                self.lookup.index = i
            yield self.feats[i], self.labels[i]


class _Cached:
    """The trainable suffix of a model whose frozen prefix's outputs are cached (``train.freeze`` + ``cache``)."""

    def __init__(self, suffix: nn.Module, feats: torch.Tensor, labels: torch.Tensor,
                 val: tuple[torch.Tensor, torch.Tensor] | None, info: dict[str, Any], undo: Callable[[], None],
                 lookup: _TeacherLookup | None = None) -> None:
        self.suffix, self.feats, self.labels, self.val, self.info, self._undo = suffix, feats, labels, val, info, undo
        self.lookup = lookup  # the teacher that answers per batch, when it has its own cache

    @classmethod
    def build(cls, model: nn.Module, data: Any, loss_fn: nn.Module, cfg: "TrainSection", batch_size: int
              ) -> "_Cached":
        from ..models import split_at
        from .data import _DihedralAugment
        from .distill import DistillationLoss
        from .features import FeatureCache, frozen_digest

        if dist.is_distributed():
            raise ConfigError("train.cache runs in one process; under torchrun set train.cache: false")
        train_set = data._split("train")
        aug = getattr(train_set, "augment", None)
        if aug is not None and not isinstance(aug, _DihedralAugment):
            raise ConfigError(
                "train.cache would freeze one random draw of this data set's augmentation (random rotations and"
                " shifts); set data.augment: false, or train.cache: false to augment every epoch"
            )
        probe = next(iter(data.loader("val" if _has_split(data, "val") else "train", batch_size=2)))[0]
        prefix, suffix = split_at(model, cfg.freeze or "", probe)
        cache = getattr(data, "_feature_cache", None)
        if cache is None:
            cache = FeatureCache()
            data._feature_cache = cache  # the dense, pruned and QAT rounds of one run share it
        feats, labels = cache.get(prefix, data, "train", symmetries=aug is not None)
        val = cache.get(prefix, data, "val", symmetries=False) if _has_split(data, "val") else None
        undo: Callable[[], None] = lambda: None
        lookup: _TeacherLookup | None = None
        if isinstance(loss_fn, DistillationLoss):
            teacher = loss_fn.teacher
            t_prefix, t_suffix = split_at(teacher, cfg.freeze or "", probe)
            if frozen_digest(t_prefix) == frozen_digest(prefix):
                handle = loss_fn.wrap_student(suffix)
                loss_fn.teacher = t_suffix
            else:
                # the student's frozen layers were pruned (prune.frozen_ratio): the teacher sees its own cached
                # features of the same cells and symmetries, and its logits are computed once
                t_feats, t_labels = cache.get(t_prefix, data, "train", symmetries=aug is not None)
                if not torch.equal(t_labels, labels):
                    raise TrainingError("the teacher's and the student's feature caches hold different samples")
                lookup = _TeacherLookup(_suffix_logits(t_suffix, t_feats))
                handle = loss_fn.wrap_student(suffix)
                loss_fn.teacher = lookup

            def undo() -> None:
                handle.remove()
                loss_fn.teacher = teacher

        info = {"frozen": cfg.freeze, "samples": int(feats.shape[0]), "shape": list(feats.shape[1:]),
                "symmetries": 8 if aug is not None else 1}
        if lookup is not None:
            info["teacher"] = "own cache"
        return cls(suffix, feats, labels, val, info, undo, lookup)

    def steps(self, batch_size: int) -> int:
        return -(-int(self.labels.shape[0]) // batch_size)

    def batches(self, batch_size: int, seed: int) -> "_Batches":
        order = torch.randperm(int(self.labels.shape[0]), generator=torch.Generator().manual_seed(seed))
        return _Batches(self.feats, self.labels, order.split(batch_size), self.lookup)

    def val_logits(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.val is None:
            raise DataError("no validation split was cached")
        from ..models import eval_mode

        with eval_mode(self.suffix), torch.no_grad():  # the suffix is a chain: .train(was) would not restore it
            out = [self.suffix(x.to(device)).float().cpu() for x in self.val[0].split(256)]
        return torch.cat(out), self.val[1]

    def close(self) -> None:
        self._undo()


def _evaluate(model: nn.Module, data: Any, batch_size: int, device: torch.device, cached: _Cached | None):
    if cached is None or cached.val is None:
        return _evaluate_split(model, data, "val", batch_size, device)
    logits, labels = cached.val_logits(device)
    return evaluate(logits.numpy(), labels.numpy(), data.classes, data.critical)


# -- fine-tuning -----------------------------------------------------------------------------------------------


def fine_tune(
    model: nn.Module,
    data: Any,
    loss_fn: nn.Module,
    cfg: "TrainSection",
    *,
    masks: MaskSet | None = None,
    run_dir: Path | str | None = None,
    tag: str = "train",
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 32,
    select: str | None = None,
    epochs: int | None = None,
    on_epoch_start: Callable[[int, nn.Module], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    on_step_end: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``data``'s train split, selecting a checkpoint on its val split.

    Args:
        model: trained in place; on return it holds the selected epoch's weights.
        data: a DataBundle: ``loader(split, *, batch_size, shuffle, seed)``, ``labels(split)``, ``classes``,
            ``critical``.
        loss_fn: ``loss_fn(logits, targets)``; its ``last_parts`` (``wce``, ``rank``, ``kd``) are logged when present.
        cfg: optimizer, lr, momentum, weight decay, epochs, select, device and threads.
        masks: pruning masks kept applied throughout (pruned weights stay exactly zero).
        run_dir: where ``<tag>/last.pt`` is written after every epoch (no checkpoints when ``None``).
        tag: sub-directory name of this training's checkpoint.
        resume: continue from ``run_dir/<tag>/last.pt`` when it exists (a finished training is not repeated).
        seed: seeds torch, numpy, random and every epoch's shuffle.
        progress: show a ``rich`` progress bar.
        batch_size: training and evaluation batch size.
        select: overrides ``cfg.select``: ``last``, ``critical_recall`` (ties: accuracy), ``critical_auc`` (ties:
            accuracy) or ``accuracy``. The earliest epoch wins a tie. Without a val split, ``last`` is used.
        epochs: overrides ``cfg.epochs``.
        on_epoch_start: called as ``f(epoch, model)`` before each epoch that runs, also the first one after a
            resume (so epoch-dependent settings such as a loss warm-up are right after a crash).
        on_epoch_end: called as ``f(epoch, model)`` after each epoch, before its checkpoint is written; a dict it
            returns is added to that epoch's history record.
        on_step_end: called as ``f(step, model)`` after every optimizer step (and after the masks are re-applied);
            ``step`` counts from 1 over the whole training and continues across a resume (it is checkpointed), so
            a schedule that is a function of ``step`` (e.g. gradual pruning) resumes exactly. Changes it makes to
            ``masks`` are checkpointed with them at the end of the epoch.

    BatchNorm layers whose parameters are all frozen (``requires_grad=False``) are kept in eval mode while the rest
    trains, so a frozen backbone (linear probing) does not drift through its running statistics.

    Raises:
        ConfigError: bad ``select``/``epochs``/device, or ``resume`` without ``run_dir``.
        TrainingError: the loss became NaN/inf, or the checkpoint does not match this training.
    """
    select = cfg.select if select is None else select
    if select not in SELECTS:
        raise ConfigError(f"select '{select}': use one of {', '.join(SELECTS)}")
    n_epochs = cfg.epochs if epochs is None else epochs
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0:
        raise ConfigError(f"epochs = {n_epochs!r}: must be an integer >= 0")
    if batch_size <= 0:
        raise ConfigError(f"batch_size = {batch_size}: must be > 0")
    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir (where the checkpoint of the interrupted run is)")
    device = _device(cfg.device)
    world = dist.world_size()
    if batch_size % world:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must split evenly over {world} processes; use a"
            f" multiple of {world} (e.g. {batch_size - batch_size % world or world})"
        )
    rank_batch = batch_size // world
    progress = progress and dist.is_main()
    has_val = _has_split(data, "val")
    if select != "last" and not has_val:
        log.warning("no validation samples: keeping the last epoch instead of selecting by %s", select)
        select = "last"

    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt_path = Path(run_dir) / tag / "last.pt" if run_dir is not None else None
    if cfg.freeze:
        _freeze(model, cfg.freeze)
    cached = _Cached.build(model, data, loss_fn, cfg, batch_size) if cfg.freeze and cfg.cache else None
    model.to(device)
    loss_fn.to(device)
    optimizer = _optimizer(model, cfg)

    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_key: tuple[float, ...] | None = None
    best_epoch = 0
    start = 1
    step = 0
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck.get("version") != CHECKPOINT_VERSION or ck.get("seed") != seed or ck.get("select") != select:
            raise TrainingError(
                f"checkpoint {ckpt_path} was written by a different training (seed {ck.get('seed')}, select"
                f" {ck.get('select')!r}; now seed {seed}, select {select!r}); use another run_dir or resume=False"
            )
        if ck["epoch"] > n_epochs:
            raise TrainingError(
                f"checkpoint {ckpt_path} has {ck['epoch']} epochs done but {n_epochs} were asked; resume=False"
            )
        if (ck["masks"] is None) != (masks is None):
            raise TrainingError(f"checkpoint {ckpt_path} and this call disagree on pruning masks; resume=False")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if masks is not None:
            masks.load_state_dict(ck["masks"])
        _set_rng_state(ck["rng"])
        history = list(ck["history"])
        best_state, best_epoch = ck["best_state"], int(ck["best_epoch"])
        best_key = tuple(ck["best_key"]) if ck["best_key"] is not None else None
        start = int(ck["epoch"]) + 1
        step = int(ck.get("step", 0))
        log.info("%s: resuming after epoch %d of %d from %s", tag, start - 1, n_epochs, ckpt_path)
    else:
        _seed_all(seed)

    if masks is not None:
        masks.attach(model, optimizer)
    net: nn.Module = model  # what the training steps call: the DDP wrapper under torchrun
    if dist.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        # wraps the same parameters (the mask hooks stay attached); construction broadcasts rank 0's weights
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not progress,
            transient=False,
        ) as bar:
            task = bar.add_task(tag, total=None, status="")
            # a DataLoader's length without building one (drop_last=False; a rank's shards add up to the global batch)
            steps_per_epoch = cached.steps(batch_size) if cached is not None else -(-len(data.labels("train")) // batch_size)
            total_steps = steps_per_epoch * n_epochs
            warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
            for epoch in range(start, n_epochs + 1):
                if on_epoch_start is not None:
                    on_epoch_start(epoch, model)
                t0 = time.perf_counter()
                model.train()
                _freeze_frozen_norms(model)
                if cached is not None:
                    loader = cached.batches(batch_size, _epoch_seed(seed, epoch))
                    forward: nn.Module = cached.suffix
                elif world > 1:
                    # seed + epoch = the single-process seed of this epoch: same global order, sharded over ranks
                    loader = data.loader("train", batch_size=rank_batch, shuffle=True, seed=_epoch_seed(seed, 0),
                                         epoch=epoch, distributed=True)
                    forward = net
                else:
                    loader = data.loader("train", batch_size=batch_size, shuffle=True, seed=_epoch_seed(seed, epoch))
                    forward = net
                bar.update(task, description=f"{tag} epoch {epoch}/{n_epochs}", total=len(loader), completed=0)
                sums = {"loss": 0.0, **dict.fromkeys(_PARTS, 0.0)}
                seen = 0
                parts_seen = dict.fromkeys(_PARTS, False)
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    if cfg.schedule != "constant":
                        f = lr_factor(cfg.schedule, step + 1, total_steps, warmup_steps)
                        for g in optimizer.param_groups:
                            g["lr"] = cfg.lr * f
                    loss = loss_fn(forward(x), y)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"{tag}: the loss became {loss.detach().item()} in epoch {epoch}; lower train.lr"
                            f" (now {cfg.lr}) or check the data"
                        )
                    loss.backward()
                    if cfg.grad_clip:
                        # the squared-hinge ranking term grows quadratically in the score gap; on a fresh head a
                        # few large gradients can throw the pretrained backbone off (loss 1e8 seen without it)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    step += 1
                    if on_step_end is not None:
                        on_step_end(step, model)
                    n = int(y.shape[0])
                    seen += n
                    sums["loss"] += float(loss.detach()) * n
                    parts = getattr(loss_fn, "last_parts", None) or {}
                    for k in _PARTS:
                        if k in parts:
                            parts_seen[k] = True
                            sums[k] += parts[k] * n
                    bar.advance(task)
                if world > 1:
                    keys = ["loss", *_PARTS]
                    totals = dist.all_reduce_sum(torch.tensor(
                        [sums[k] for k in keys] + [float(seen)] + [float(parts_seen[k]) for k in _PARTS]
                    ))
                    sums = {k: float(totals[i]) for i, k in enumerate(keys)}
                    seen = int(totals[len(keys)])
                    parts_seen = {k: bool(totals[len(keys) + 1 + i]) for i, k in enumerate(_PARTS)}
                    _broadcast_buffers(model)
                    if masks is not None:
                        dist.sync_masks(masks, model)  # a per-step schedule (gradual) may have changed them
                if seen == 0:
                    raise DataError("the train split yielded no samples")
                vm = _evaluate(model, data, batch_size, device, cached) if has_val else None
                record = {
                    "tag": tag,
                    "round": None,
                    "epoch": epoch,
                    "loss": sums["loss"] / seen,
                    **{k: sums[k] / seen if parts_seen[k] else None for k in _PARTS},
                    "val_accuracy": vm.accuracy if vm else None,
                    "val_critical_recall": vm.critical_recall() if vm else None,
                    "val_critical_auc": vm.critical_auc() if vm else None,
                    "val_critical_fn": vm.critical_fn() if vm else None,
                    "seconds": time.perf_counter() - t0,
                }
                history.append(record)
                key = _selection_key(select, vm, cfg.select_max_fpr)
                if select != "last" and (best_key is None or key > best_key):
                    best_key, best_epoch, best_state = key, epoch, _cpu_state(model)
                bar.update(
                    task,
                    status=f"loss {record['loss']:.4f}  val acc {_fmt(record['val_accuracy'])}"
                    f"  crit recall {_fmt(record['val_critical_recall'])}",
                )
                if on_epoch_end is not None:
                    extra = on_epoch_end(epoch, model)
                    if isinstance(extra, dict):  # e.g. the FPR budget's val FPR and terms: kept in the history
                        record.update(extra)
                if ckpt_path is not None:
                    save_checkpoint(
                        ckpt_path,
                        {
                            "version": CHECKPOINT_VERSION,
                            "tag": tag,
                            "epoch": epoch,
                            "epochs": n_epochs,
                            "step": step,
                            "seed": seed,
                            "select": select,
                            "model": _cpu_state(model),
                            "optimizer": optimizer.state_dict(),
                            "masks": masks.state_dict() if masks is not None else None,
                            "rng": _rng_state(),
                            "history": history,
                            "best_state": best_state,
                            "best_epoch": best_epoch,
                            "best_key": list(best_key) if best_key is not None else None,
                        },
                    )
    finally:
        if masks is not None:
            masks.detach()
        if cached is not None:
            cached.close()
        torch.set_num_threads(prev_threads)

    if select == "last" or best_state is None:
        best_epoch = n_epochs if history else 0
    else:
        model.load_state_dict(best_state)
    if masks is not None:
        masks.apply(model)  # a no-op for masked checkpoints; guards a model whose weights were edited outside
    # the cached path computes the whole network's val logits from the same pixels (tested), without re-running the
    # frozen layers in PyTorch eager (the slow half at 224 px)
    val_metrics = _evaluate(model, data, batch_size, device, cached) if has_val else None
    if cached is not None:
        log.info("%s: trained the layers after '%s' on %s cached outputs", tag, cfg.freeze, cached.info)
    return TrainResult(model=model, history=history, best_epoch=best_epoch, val_metrics=val_metrics)
