"""Knowledge distillation from a (dense) teacher: an extra loss term over any task loss.

``DistillationLoss(task, teacher, weight=w, temperature=T)`` computes
``task(student_logits, y) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al., 2015; the
``T^2`` keeps the gradient scale of the soft term independent of ``T``). The task loss can be the class-dependent
loss: its ``last_parts`` are kept and ``"kd"`` is added, so training logs show every term.

The teacher needs the student's input, but the training loop calls ``loss(logits, targets)``;
:meth:`wrap_student` puts a forward hook on the student that hands each training batch (and its output) to the loss,
so no training loop has to know about distillation. Under torchrun the hook sits on the plain module inside DDP, so
each rank's teacher (never DDP-wrapped) sees that rank's batch.

Training code does not build it by hand: :meth:`~edgeslim.compress.prune.PruneContext.make_loss` wraps the task
loss whenever the context has a teacher and ``distill.weight > 0``, and
:meth:`~edgeslim.compress.prune.PruneContext.train` hooks the trained model, so every pruning method and QAT get
the same term.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, TrainingError

__all__ = ["DistillationLoss", "kd_term"]


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise TrainingError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ;"
            " the teacher must be a model of the same task (same classes)"
        )
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


class DistillationLoss(nn.Module):
    """A task loss plus a KD term towards a frozen teacher's softened logits.

    Args:
        task: the task loss ``task(logits, targets)`` (e.g. the class-dependent loss).
        teacher: the teacher model (kept in eval mode, never trained; its BatchNorm statistics stay fixed).
        weight: weight ``w`` of the KD term (> 0).
        temperature: softmax temperature ``T`` (> 0).

    Attributes:
        last_parts: the task loss's parts (``wce``, ``rank`` when it has them) plus ``kd``.
    """

    def __init__(self, task: nn.Module, teacher: nn.Module, *, weight: float, temperature: float = 4.0) -> None:
        super().__init__()
        if not weight > 0:
            raise ConfigError(f"distill.weight = {weight}: must be > 0 to distil (0 turns distillation off)")
        if not temperature > 0:
            raise ConfigError(f"distill.temperature = {temperature}: must be > 0 (typical: 2-8)")
        self.task = task
        # a plain attribute, not a submodule: the teacher's weights must not reach the student's optimizer or
        # checkpoints, and .to(device) on the loss must not move it twice
        object.__setattr__(self, "teacher", teacher.eval())
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.weight = float(weight)
        self.temperature = float(temperature)
        self._inputs: tuple[torch.Tensor, Any] | None = None
        self.last_parts: dict[str, float] = {}

    # the class-dependent loss's knobs (gamma, rank_weight) are set by the training schedule on the loss it gets
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            task = super().__getattr__("task")
            if name in ("gamma", "rank_weight", "critical", "class_counts"):
                return getattr(task, name)
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("gamma", "rank_weight") and "task" in self._modules and hasattr(self._modules["task"], name):
            setattr(self._modules["task"], name, value)
            return
        super().__setattr__(name, value)

    def wrap_student(self, student: nn.Module) -> Any:
        """Register a forward hook on ``student`` that records each training batch and its output; returns the
        hook handle.

        The loss then checks that the logits it gets are that output (not a stale or foreign batch). Only
        training-mode forwards are recorded (evaluation passes do not need the teacher).
        """

        def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if module.training and args and isinstance(args[0], torch.Tensor):
                self._inputs = (args[0], output)

        return student.register_forward_hook(keep)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.task(logits, targets)
        parts = dict(getattr(self.task, "last_parts", {}) or {})
        if self._inputs is None or self._inputs[1] is not logits:
            raise TrainingError(
                "DistillationLoss has no input batch for these logits: call wrap_student(model) on the model being"
                " trained, and pass its training-mode output straight to the loss"
            )
        x = self._inputs[0]
        with torch.no_grad():
            teacher_logits = self.teacher(x.to(next(self.teacher.parameters()).device))
        kd = kd_term(logits, teacher_logits.to(logits.device), self.temperature)
        self._inputs = None
        parts["kd"] = float(kd.detach())
        self.last_parts = parts
        return loss + self.weight * kd
