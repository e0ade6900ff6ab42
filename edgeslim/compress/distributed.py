"""torch.distributed for ``torchrun``: process-group setup from the environment and the few collectives training needs.

``edgeslim compress`` / ``edgeslim pipeline`` (and :func:`edgeslim.compress.api.compress`) run unchanged under
``torchrun --nproc_per_node N`` (and multi-node rendezvous). :func:`init_from_env` joins the process group when
torchrun's variables (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) are set:
backend ``nccl`` when CUDA is available, ``gloo`` on CPU. Without them every helper here is a no-op and a run is
exactly the single-process run.

How the pieces use it:

- Training wraps the model in ``DistributedDataParallel`` for the optimizer steps only; evaluation, pruning and
  export use the plain module. ``data.batch_size`` stays the GLOBAL batch: each rank gets ``batch_size / world``.
- The train loader uses a ``DistributedSampler`` whose global order is the single-process order of that epoch,
  so the union of the ranks' step-``k`` batches is the single-process step-``k`` batch.
- Val/test are evaluated sharded and the logits all-gathered back into dataset order, so metrics (and checkpoint
  selection) are those of a single-process evaluation and identical on every rank.
- Pruning masks are computed on rank 0 and broadcast; class counts come from the full training split, which
  every rank loads itself, and are checked to be equal across ranks.
- Only rank 0 writes checkpoints, artifacts and reports; the others wait at a barrier and then read the same
  files, so ``--out`` must be on a filesystem every node sees (e.g. NFS) for multi-node runs.

BatchNorm is NOT synchronised (``SyncBatchNorm`` runs on GPUs only): each rank normalises its own per-rank batch
and DDP broadcasts rank 0's running statistics before every forward, as plain DDP does. Results therefore match
a single-process run closely but not bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError, TrainingError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from torch import nn

__all__ = [
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "check_same",
    "gather_ordered",
    "init_from_env",
    "is_distributed",
    "is_main",
    "local_rank",
    "rank",
    "shutdown",
    "world_size",
]

log = logging.getLogger(__name__)

# set when init_from_env created the group, so shutdown() only tears down what we started
_OWNED = False


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    import sys

    if "torch.distributed" not in sys.modules:  # never imported: certainly not initialised (keeps this cheap)
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: the group's, else torchrun's ``RANK`` (so rank 1 stays quiet also before the
    group is joined and after it is torn down), else 0."""
    if is_distributed():
        return _dist().get_rank()
    try:
        return int(os.environ.get("RANK", "0") or 0) if _env_world() > 1 else 0
    except ValueError:
        return 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return _dist().get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """The rank on this node (torchrun's ``LOCAL_RANK``; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def _env_world() -> int:
    raw = os.environ.get("WORLD_SIZE", "1") or "1"
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={raw!r} is not an integer; launch with torchrun --nproc_per_node N") from None


def init_from_env(*, timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes in the environment; a no-op for a single process.

    Backend ``nccl`` when CUDA is available (each process then uses ``cuda:LOCAL_RANK``), else ``gloo``.
    Calling it again, or with a group already initialised by the caller, changes nothing.

    Args:
        timeout_s: how long collectives wait for the slowest rank before failing.

    Returns:
        True when this process is part of a group of more than one process.

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 but torchrun's ``RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` are missing.
    """
    global _OWNED
    if _env_world() <= 1:
        return is_distributed()
    import torch

    dist = _dist()
    if dist.is_initialized():
        return dist.get_world_size() > 1
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the run with "
            "torchrun (e.g. torchrun --nproc_per_node 2 -m edgeslim.cli compress ...), which sets them"
        )
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _OWNED = True
    log.info("joined process group: rank %d of %d, backend %s", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Destroy the process group if :func:`init_from_env` created it (a group the caller made is left alone)."""
    global _OWNED
    if _OWNED and _dist().is_initialized():
        _dist().destroy_process_group()
    _OWNED = False


def _coll_device() -> "torch.device":
    import torch

    # NCCL moves CUDA tensors only; gloo moves CPU tensors
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if is_distributed():
        _dist().barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects; no-op for a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src, device=_coll_device() if _dist().get_backend() == "nccl" else None)
    return box[0]


def all_reduce_sum(values: "torch.Tensor") -> "torch.Tensor":
    """Element-wise sum of ``values`` over ranks (float64 on return; the input for a single process)."""
    import torch

    if not is_distributed():
        return values
    t = values.detach().to(_coll_device(), torch.float64).clone()
    _dist().all_reduce(t, op=_dist().ReduceOp.SUM)
    return t.cpu()


def check_same(value: Any, what: str) -> None:
    """Raise unless ``value`` (picklable, comparable) is equal on every rank.

    Raises:
        TrainingError: ranks disagree; the message names ``what`` and the values per rank.
    """
    if not is_distributed():
        return
    everyone: list[Any] = [None] * world_size()
    _dist().all_gather_object(everyone, value)
    if any(v != everyone[0] for v in everyone):
        shown = "; ".join(f"rank {r}: {v!r}"[:200] for r, v in enumerate(everyone))
        raise TrainingError(
            f"{what} differs between ranks ({shown}); every rank must load the same data and recipe (same"
            " dataset path and files on every node)"
        )


def gather_ordered(values: "np.ndarray", n: int) -> "np.ndarray":
    """Undo a ``DistributedSampler(shuffle=False)`` shard: all-gather each rank's rows back into dataset order.

    Rank ``r`` holds rows ``r, r + W, r + 2W, ...`` of the (padded) dataset; the result is the first ``n`` rows in
    dataset order on every rank. For a single process ``values[:n]`` is returned.
    """
    import numpy as np
    import torch

    if not is_distributed():
        return values[:n]
    w = world_size()
    local = torch.from_numpy(np.ascontiguousarray(values))
    parts = [torch.empty_like(local) for _ in range(w)]
    # every shard has the same length (the sampler pads), so a plain all_gather works
    dev = _coll_device()
    gathered = [p.to(dev) for p in parts]
    _dist().all_gather(gathered, local.to(dev))
    stacked = torch.stack([g.cpu() for g in gathered], dim=1)  # (per_rank, W, ...) -> interleave ranks
    return stacked.reshape(-1, *local.shape[1:])[:n].numpy()


def broadcast_module(model: "nn.Module", src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``model`` with rank ``src``'s (in place; no-op for one process)."""
    if not is_distributed():
        return
    import torch

    dev = _coll_device()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            buf = t.detach().to(dev).clone()
            _dist().broadcast(buf, src=src)
            t.copy_(buf.to(t.device))


def checksum(tensors: dict[str, "torch.Tensor"]) -> str:
    """A sha256 over named tensors (names, shapes, bytes), to compare state across ranks."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def main_writes() -> Iterator[bool]:
    """``with main_writes() as writer:`` - write only ``if writer``; every rank waits at a barrier afterwards.

    The barrier is reached also when the block raises on one rank only if that rank re-raises after it; a failure
    on rank 0 ends the run through torchrun, which stops the other workers.
    """
    try:
        yield is_main()
    finally:
        barrier()


def sync_masks(masks: Any, model: "nn.Module | None" = None) -> None:
    """Make every rank hold rank 0's pruning masks (a :class:`~edgeslim.compress.prune.MaskSet`) and apply them.

    Masks are a deterministic function of the weights, which DDP keeps equal, so this normally changes nothing;
    it guarantees identical masks even where floating-point reductions differ in the last bit between ranks.

    Raises:
        TrainingError: a rank masks other layers or shapes than rank 0 (the ranks built different models).
    """
    if not is_distributed():
        return
    mine = {k: tuple(v.shape) for k, v in masks.masks.items()}
    check_same(mine, "the pruned layers and their shapes")
    masks.load_state_dict(broadcast_object(masks.state_dict() if is_main() else None))
    if model is not None:
        masks.apply(model)
