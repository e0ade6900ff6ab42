"""Distillation: the KD term, its combination with the class-dependent loss, the recipe section, and real runs of
every pruning method distilling from its dense round (TinyNet on real digits at 16x16)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from edgeslim.compress.distill import DistillationLoss, kd_term
from edgeslim.compress.loss import ClassDependentLoss
from edgeslim.compress.metrics import predict_logits
from edgeslim.compress.prune import PRUNE_METHODS
from edgeslim.compress.prune.base import PruneContext
from edgeslim.compress.checkpoint import load_checkpoint
from edgeslim.compress.api import compress
from edgeslim.errors import ConfigError, TrainingError
from edgeslim.recipe import parse_recipe
from edgeslim.testing import TinyNet

from _digits import digits as _digits, recipe

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
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-5)
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


def test_distillation_without_any_teacher_is_refused_before_anything_is_written(tmp_path):
    from edgeslim.pipeline import run_pipeline

    r = parse_recipe({"model": {"source": "tiny"}, "data": {"image_size": 16}, "prune": {"method": "none"},
                      "quantize": {"method": "ptq"}, "distill": {"weight": 1.0}, "train": {"epochs": 1}})
    with pytest.raises(ConfigError, match="distill.weight = 1.0 but prune.method 'none'.*set quantize.method: qat"):
        run_pipeline(r, tmp_path / "out", progress=False, stages=("compress",))
    assert not (tmp_path / "out" / "run").exists()  # nothing was trained or written, so a fixed rerun just runs

    data = object()  # never touched: the check comes first
    cases = [
        ({"method": "sparse_transfer"}, {}, "sparse_transfer' has no dense model of this task"),
        ({"method": "one_shot", "sparsity": 0.5}, {"epochs": 0}, "train.epochs = 0 skips the dense round"),
        ({"method": "lottery_ticket", "rounds": 1}, {"epochs": 0}, "train.epochs = 0 skips the dense round"),
        ({"method": "lottery_ticket", "rounds": 0}, {}, "prune.rounds = 0 .* only QAT after it"),
    ]
    for prune, train, match in cases:
        r = recipe(prune, **train)
        r.distill.weight = 0.5
        with pytest.raises(ConfigError, match=match):
            compress(TinyNet(10), data, r, run_dir=tmp_path / "c", progress=False)
        assert not (tmp_path / "c").exists()
        r.distill.weight = 0.0  # off: no teacher needed, nothing refused by the check (fails later on the fake data)
        with pytest.raises(AttributeError):
            compress(TinyNet(10), data, r, run_dir=tmp_path / "c", progress=False)


# -- real runs: every method distils from its dense round ------------------------------------------------------

KD_WEIGHT = 3.0
# one small case per registered method (a string: why it has no distilled training outside QAT); a method registered
# without a case fails the coverage test below
METHODS = {
    "one_shot": {"method": "one_shot", "sparsity": 0.6},
    "structured": {"method": "structured", "ratio": 0.5},
    "gradual": {"method": "gradual", "sparsity": 0.5},
    "nm": {"method": "nm"},
    "lottery_ticket": {"method": "lottery_ticket", "rounds": 1, "rate": 0.5},
    "none": "trains only the teacher itself: it distils in QAT only (refused without QAT, above)",
    "sparse_transfer": "has no teacher at all (refused, above)",
}


@pytest.fixture(scope="module")
def data():
    return _digits()


class TeacherCalls:
    """Counts forward passes of the real teacher module (``ctx.teacher``) while a training runs."""

    def __init__(self) -> None:
        self.calls, self.teachers, self._training = 0, [], False

    def __enter__(self) -> "TeacherCalls":
        self._mp = pytest.MonkeyPatch()
        original, spy = PruneContext.train, self

        def train(ctx, model, **kw):
            t = ctx.teacher
            if t is not None and not any(t is seen for seen in spy.teachers):
                spy.teachers.append(t)
                t.register_forward_hook(spy._count)
            spy._training = True
            try:
                return original(ctx, model, **kw)
            finally:
                spy._training = False

        self._mp.setattr(PruneContext, "train", train)
        return self

    def _count(self, *_):
        if self._training:  # not the evaluation of the dense model compress() does afterwards
            self.calls += 1

    def __exit__(self, *exc) -> None:
        self._mp.undo()


def _run(data, prune, weight, run_dir, **train):
    r = recipe(prune, **train)
    r.distill.weight = weight
    torch.manual_seed(0)
    with TeacherCalls() as spy:
        res = compress(TinyNet(10), data, r, run_dir=run_dir, progress=False)
    return res, spy


def _kl_to_teacher(data, student, teacher, temperature=1.0):
    """KL(teacher || student) of the softmax at ``temperature``, mean over the val split."""
    s, _ = predict_logits(student, data.loader("val", batch_size=64))
    t, _ = predict_logits(teacher, data.loader("val", batch_size=64))
    s, t = torch.from_numpy(s) / temperature, torch.from_numpy(t) / temperature
    return float(F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True))


@pytest.fixture(scope="module", params=["one_shot", "structured"])
def kd_pair(request, data, tmp_path_factory):
    """The same run (same W0, seed, data) without and with distillation."""
    root = tmp_path_factory.mktemp(request.param)
    runs = {w: _run(data, METHODS[request.param], w, root / str(w)) for w in (0.0, KD_WEIGHT)}
    return request.param, root, runs


def test_kd_pulls_the_pruned_student_towards_the_dense_teacher(kd_pair, data):
    method, _, runs = kd_pair
    (plain, _), (kd, _) = runs[0.0], runs[KD_WEIGHT]
    # the dense round does not distil (it trains the teacher), so both runs have the very same teacher
    a, b = plain.dense_model.state_dict(), kd.dense_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    kl_plain = _kl_to_teacher(data, plain.model, plain.dense_model)
    kl_kd = _kl_to_teacher(data, kd.model, kd.dense_model)
    # measured (val, T = 1): one_shot 0.549 -> 0.029, structured 0.227 -> 0.061 (KD weight 3, distill T = 4)
    assert kl_kd < 0.6 * kl_plain, (method, kl_plain, kl_kd)
    at_t = [_kl_to_teacher(data, r.model, r.dense_model, 4.0) for r in (kd, plain)]
    assert at_t[0] < at_t[1]  # also at the distillation temperature
    # the KD term is logged for the pruned round only, and only when distilling
    assert [h["kd"] is None for h in kd.history] == [h["round"] == 1 for h in kd.history]
    assert all(h["kd"] > 0 for h in kd.history if h["round"] == 2)
    assert all(h["kd"] is None for h in plain.history)


def test_the_teacher_is_frozen_and_runs_on_every_training_batch_only_when_distilling(kd_pair, data):
    _, root, runs = kd_pair
    batches = len(data.loader("train", batch_size=32, shuffle=False))
    for weight, (res, spy) in runs.items():
        assert len(spy.teachers) == 1 and spy.teachers[0] is res.dense_model  # the real teacher module was hooked
        # 2 pruned epochs: one teacher forward per training batch with KD; none at all at weight 0
        assert spy.calls == (2 * batches if weight else 0), weight
        # untouched: every weight and BatchNorm statistic is still the one the dense round ended with
        dense = load_checkpoint(root / str(weight) / "compress" / "dense" / "last.pt")["model"]
        now = res.dense_model.state_dict()
        assert all(torch.equal(now[k], dense[k]) for k in dense), weight
    teacher = runs[KD_WEIGHT][0].dense_model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_a_resumed_distilled_run_rebuilds_the_teacher_and_ends_identical(kd_pair, data, tmp_path):
    from test_train import CrashingBundle

    method, _, runs = kd_pair
    if method != "one_shot":
        pytest.skip("one resume case is enough")
    whole, _ = runs[KD_WEIGHT]
    r = recipe(METHODS[method])
    r.distill.weight = KD_WEIGHT
    with pytest.raises(KeyboardInterrupt):  # loaders: dense epoch 1, pruned epoch 1, pruned epoch 2 (dies)
        torch.manual_seed(0)
        compress(TinyNet(10), CrashingBundle(data, crash_on=3), r, run_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    with TeacherCalls() as spy:
        resumed = compress(TinyNet(10), data, r, run_dir=tmp_path, resume=True, progress=False)
    assert spy.calls == len(data.loader("train", batch_size=32, shuffle=False))  # only pruned epoch 2 ran
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["kd"] for h in resumed.history] == [h["kd"] for h in whole.history]


def test_a_teacher_from_elsewhere_lets_a_recipe_without_dense_round_distil(kd_pair, data, tmp_path):
    """``compress(..., teacher=dense)``: a model fine-tuned elsewhere is pruned with ``train.epochs: 0`` and its
    pruned fine-tune distils from the given teacher (refused without one), which is left untouched."""
    _, _, runs = kd_pair
    dense = runs[0.0][0].dense_model
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    r = recipe(METHODS["one_shot"], epochs=0, final_epochs=2)
    r.distill.weight = KD_WEIGHT
    with pytest.raises(ConfigError, match="train.epochs = 0 skips the dense round"):
        compress(copy.deepcopy(dense), data, r, run_dir=tmp_path / "refused", progress=False)
    runs_ = {}
    for w in (0.0, KD_WEIGHT):
        r.distill.weight = w
        torch.manual_seed(0)
        runs_[w] = compress(copy.deepcopy(dense), data, r, run_dir=tmp_path / str(w), progress=False, teacher=dense)
    assert all(h["kd"] > 0 for h in runs_[KD_WEIGHT].history)
    assert all(h["kd"] is None for h in runs_[0.0].history)
    assert _kl_to_teacher(data, runs_[KD_WEIGHT].model, dense) < _kl_to_teacher(data, runs_[0.0].model, dense)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


@pytest.mark.parametrize("method", PRUNE_METHODS.names())
def test_every_pruning_method_distils_after_its_dense_round(method, data, tmp_path):
    assert method in METHODS, f"pruning method '{method}' has no distillation case in METHODS: add one"
    prune = METHODS[method]
    if isinstance(prune, str):
        pytest.skip(f"{method} {prune}")
    if method in ("one_shot", "structured"):
        pytest.skip("covered by the kd_pair runs")
    res, spy = _run(data, prune, 1.0, tmp_path, final_epochs=1)
    assert res.dense_model is not None and spy.teachers == [res.dense_model]
    assert spy.calls == len(data.loader("train", batch_size=32, shuffle=False))  # one pruned epoch, every batch
    assert [h["kd"] is None for h in res.history] == [h["round"] == 1 for h in res.history]
    assert all(h["kd"] > 0 for h in res.history if h["round"] != 1)


def test_distillation_combines_with_the_fpr_budget_gamma(data, tmp_path):
    """The FPR budget adapts the class-dependent loss's gamma inside the KD wrapper (it refused the wrapper before)."""
    import json

    r = recipe(METHODS["one_shot"], final_epochs=2)
    r.loss.fpr_budget = 0.05
    r.distill.weight = 1.0
    torch.manual_seed(0)
    res = compress(TinyNet(10), data, r, run_dir=tmp_path, progress=False)
    assert all(h["kd"] > 0 and h["wce"] > 0 for h in res.history if h["round"] == 2)
    trajectory = json.loads((tmp_path / "compress" / "gamma_budget.json").read_text())
    assert [rec["tag"] for rec in trajectory["trajectory"]].count("pruned") == 2  # adapted after each epoch


def test_distillation_works_through_ddp_with_an_unwrapped_teacher(data, tmp_path):
    """The student inside DistributedDataParallel (gloo, one process): the hook on the plain module hands the batch
    to the loss and the teacher, not wrapped, stays frozen. The 2-process torchrun run is the slow test below."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    r = recipe(METHODS["one_shot"])
    r.distill.weight = 1.0
    teacher = TinyNet(10)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = TinyNet(10)
    ctx = PruneContext.from_recipe(r, model=student, data=data, run_dir=tmp_path, teacher=teacher)
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = DistributedDataParallel(student)
        loss = ctx.make_loss()
        assert isinstance(loss, DistillationLoss)
        handle = loss.wrap_student(student)
        x, y = next(iter(data.loader("train", batch_size=8, shuffle=False)))
        student.train()
        value = loss(net(x), y)
        value.backward()
        handle.remove()
    finally:
        tdist.destroy_process_group()
    assert loss.last_parts["kd"] > 0 and student.classifier.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    ctx.distill.weight = 0.0
    assert not isinstance(ctx.make_loss(), DistillationLoss)  # weight 0: the plain task loss, no teacher


@pytest.mark.slow  # one torchrun launch of 2 gloo processes (~30 s on 2 cores)
def test_distillation_under_torchrun_keeps_the_replicas_equal(tmp_path):
    import json

    from test_distributed import DATA, RECIPE, WORKER, _rank, _torchrun

    rec = dict(RECIPE, prune=METHODS["one_shot"], distill={"weight": 1.0},
               train=dict(RECIPE["train"], epochs=1, final_epochs=1))
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "ranks").mkdir()
    _torchrun(["worker.py", json.dumps(rec), json.dumps(DATA), str(tmp_path / "run"), str(tmp_path / "ranks"), "0"],
              cwd=tmp_path)
    (j0, t0), (j1, t1) = _rank(tmp_path, 0), _rank(tmp_path, 1)
    assert j0["world"] == j1["world"] == 2
    for k in t0["model"]:  # each rank's own (unwrapped) teacher on its own half batch; DDP kept the students equal
        assert torch.equal(t0["model"][k], t1["model"][k]), k
    kd = [h["kd"] for h in j0["history"]]
    assert kd[0] is None and kd[1] > 0 and kd == [h["kd"] for h in j1["history"]]  # reduced over the ranks
