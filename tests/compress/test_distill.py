"""Distillation: the KD term, its combination with the class-dependent loss, and the recipe section."""

from __future__ import annotations

import pytest
import torch

from edgeslim.compress.distill import DistillationLoss, kd_term
from edgeslim.compress.loss import ClassDependentLoss
from edgeslim.errors import ConfigError, TrainingError
from edgeslim.recipe import parse_recipe
from edgeslim.testing import TinyNet

torch.set_num_threads(1)


def test_kd_term_is_zero_at_the_teacher_and_pulls_the_student_towards_it():
    g = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(16, 10, generator=g)
    assert float(kd_term(teacher_logits.clone(), teacher_logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(16, 10, generator=g, requires_grad=True)
    before = float(kd_term(student, teacher_logits, 4.0).detach())
    assert before > 0
    kd_term(student, teacher_logits, 4.0).backward()
    with torch.no_grad():
        student -= 1.0 * student.grad
    assert float(kd_term(student, teacher_logits, 4.0).detach()) < before
    with pytest.raises(TrainingError, match="same task"):
        kd_term(torch.zeros(2, 10), torch.zeros(2, 5), 2.0)


def test_distillation_wraps_the_class_dependent_loss():
    torch.manual_seed(0)
    student, teacher = TinyNet(10), TinyNet(10).eval()
    task = ClassDependentLoss([50] * 9 + [10], [9], gamma=5.0, rank_weight=1.0)
    loss = DistillationLoss(task, teacher, weight=0.5, temperature=2.0)
    handle = loss.wrap_student(student)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 9, 9, 3, 4, 5])
    student.train()
    value = loss(student(x), y)
    assert set(loss.last_parts) == {"wce", "rank", "kd"} and loss.last_parts["kd"] > 0
    with torch.no_grad():
        expected = task(student(x), y) + 0.5 * kd_term(student(x), teacher(x), 2.0)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen
    assert student.classifier.weight.grad is not None
    # the training schedule's knobs reach the wrapped loss
    loss.gamma = 2.0
    loss.rank_weight = 0.0
    assert task.gamma == 2.0 and task.rank_weight == 0.0 and loss.gamma == 2.0
    assert not any(n.startswith("teacher") for n, _ in loss.named_parameters())
    handle.remove()
    student(x)
    with pytest.raises(TrainingError, match="wrap_student"):
        loss(student(x), y)


def test_bad_distillation_settings_are_config_errors():
    with pytest.raises(ConfigError, match="weight"):
        DistillationLoss(torch.nn.CrossEntropyLoss(), TinyNet(10), weight=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(torch.nn.CrossEntropyLoss(), TinyNet(10), weight=1.0, temperature=0.0)
    with pytest.raises(ConfigError, match="distill.temperature"):
        parse_recipe({"distill": {"weight": 1.0, "temperature": 0}})
    with pytest.raises(ConfigError, match="unknown key 'distill.temp'"):
        parse_recipe({"distill": {"temp": 2}})
    r = parse_recipe({"distill": {"weight": 0.5}})
    assert r.distill.temperature == 4.0 and r.to_dict()["distill"] == {"weight": 0.5, "temperature": 4.0}


def test_distillation_outside_qat_is_refused_before_training(tmp_path):
    from edgeslim.pipeline import run_pipeline

    r = parse_recipe({"model": {"source": "tiny"}, "data": {"image_size": 16}, "prune": {"method": "none"},
                      "quantize": {"method": "ptq"}, "distill": {"weight": 1.0}, "train": {"epochs": 1}})
    with pytest.raises(ConfigError, match="distill.weight = 1.0 but quantize.method is 'ptq'.*qat"):
        run_pipeline(r, tmp_path / "out", progress=False, stages=("compress",))
    assert not (tmp_path / "out" / "run" / "compress").exists()  # nothing was trained
