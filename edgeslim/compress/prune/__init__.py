"""Pruning: one config class and one handler per method, registered in :data:`PRUNE_METHODS`.

- ``base.py``: :class:`PruneConfig`, :class:`PruneContext`, :class:`PruneResult`, teacher checks (no method, no torch).
- ``masks.py``: :class:`MaskSet` and :func:`skipped_layers`; ``stats.py``: zeros, parameters and MACs;
  ``flow.py``: the dense round -> prune -> masked fine-tune flow. (Checkpoints: :mod:`edgeslim.compress.checkpoint`,
  shared with the training loop, which imports nothing of this package.)
- one module per method: ``lottery.py`` (:class:`LotteryTicket`), ``oneshot.py`` (:class:`OneShot`),
  ``gradual.py`` (:class:`Gradual`), ``nm.py`` (:class:`NM`), ``structured.py`` (:class:`Structured`),
  ``transfer.py`` (:class:`SparseTransfer`), ``dense.py`` (:class:`NoPruning`).

This package registers the built-in methods by importing their modules (the base imports none of them). Importing
it does not import torch: the handlers import it when they run. To add a method, see
``docs/adding-a-pruning-method.md``.
"""

from __future__ import annotations

from ...methods import PRUNE_METHODS as PRUNE_METHODS
from .base import LayerPruneConfig as LayerPruneConfig
from .base import PruneConfig as PruneConfig
from .base import PruneContext as PruneContext
from .base import PruneResult as PruneResult
from .base import check_distillation as check_distillation
from .base import dense_round_teacher as dense_round_teacher
from .base import teacher_check as teacher_check
from .dense import NoPruning as NoPruning
from .gradual import Gradual as Gradual
from .lottery import LotteryTicket as LotteryTicket
from .nm import NM as NM
from .oneshot import OneShot as OneShot
from .structured import Structured as Structured
from .transfer import SparseTransfer as SparseTransfer

__all__ = [
    "PRUNE_METHODS", "PruneConfig", "LayerPruneConfig", "PruneContext", "PruneResult", "check_distillation",
    "dense_round_teacher", "teacher_check", "NoPruning", "Gradual", "LotteryTicket", "NM", "OneShot", "Structured",
    "SparseTransfer",
]
