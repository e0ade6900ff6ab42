"""Checkpoint I/O of training, pruning and QAT: atomic ``torch.save``, ``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..errors import TrainingError

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

