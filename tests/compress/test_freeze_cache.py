"""train.freeze + train.cache: frozen early layers computed once, only the rest trained (real TinyNet on digits, a
timm EfficientNet-Lite0 with random weights for the split)."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeslim.artifact import Preprocessing
from edgeslim.compress.data import load_data
from edgeslim.compress.distill import DistillationLoss
from edgeslim.compress.loss import CrossEntropy, build_loss
from edgeslim.compress.metrics import evaluate, predict_logits
from edgeslim.compress.train import fine_tune, lr_factor
from edgeslim.errors import ConfigError, TrainingError
from edgeslim.models import split_at
from edgeslim.recipe import LossSection, TrainSection
from edgeslim.testing import TinyNet

torch.set_num_threads(1)


def _digits(augment: bool = False):
    return load_data("digits", preprocessing=Preprocessing(resize=16, crop=16), image_size=16, critical=[8],
                     val_fraction=0.15, test_fraction=0.25, seed=0, augment=augment)


@pytest.fixture(scope="module")
def digits():
    return _digits()


def _cfg(**kw) -> TrainSection:
    base = dict(epochs=2, optimizer="adamw", lr=3e-3, freeze="blocks.2", schedule="onecycle", warmup_epochs=0.5,
                select="last")
    return TrainSection(**{**base, **kw})


def _ce(data):
    return build_loss(LossSection(name="cross_entropy", label_smoothing=0.05, balance=True), data.class_counts,
                      data.critical)


def test_split_reproduces_the_model_for_tinynet_and_timm_lite0():
    timm = pytest.importorskip("timm")
    for model, cut, size in ((TinyNet(10), "blocks.5", 16),
                             (timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2), "blocks.4", 32)):
        model.eval()
        x = torch.randn(2, 3, size, size)
        prefix, suffix = split_at(model, cut, x)
        with torch.no_grad():
            torch.testing.assert_close(suffix(prefix(x)), model(x), rtol=1e-5, atol=1e-5)
        # the parts share the model's parameters: training the suffix trains the model
        assert {id(p) for p in suffix.parameters()} <= {id(p) for p in model.parameters()}
        assert not {id(p) for p in suffix.parameters()} & {id(p) for p in prefix.parameters()}


def test_split_refuses_a_bad_boundary_and_a_model_that_runs_layers_out_of_order():
    model = TinyNet(10).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ConfigError, match="did you mean 'blocks.4'|blocks"):
        split_at(model, "block.4", x)
    with pytest.raises(ConfigError, match="last layer"):
        split_at(model, "classifier", x)

    class Functional(TinyNet):  # the activation after bn1 as a function: the children no longer tell the order
        def forward(self, x):
            return self.classifier(self.pool(self.blocks(torch.tanh(self.bn1(self.conv_stem(x))))).flatten(1))

    with pytest.raises(ConfigError, match="train.cache: false"):
        split_at(Functional(10).eval(), "blocks.2", x)


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_layers_keep_their_weights_and_statistics_and_the_rest_trains(digits, cache):
    torch.manual_seed(0)
    model = TinyNet(10)
    before = copy.deepcopy(model.state_dict())
    res = fine_tune(model, digits, _ce(digits), _cfg(cache=cache), progress=False)
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1."))]
    trained = [k for k in before if k.startswith(("blocks.3.", "classifier."))]
    assert frozen and trained
    for k in frozen:  # weights AND BatchNorm running statistics
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in trained)
    # what training learnt is real: well above the 10-class chance level on val
    assert res.val_metrics.accuracy > 0.3


def test_cached_training_reports_the_val_metrics_of_the_whole_model(digits):
    torch.manual_seed(0)
    model = TinyNet(10)
    res = fine_tune(model, digits, _ce(digits), _cfg(), progress=False)
    logits, labels = predict_logits(model.eval(), digits.loader("val", batch_size=64), device="cpu")
    whole = evaluate(logits, labels, digits.classes, digits.critical)
    # the epoch's record comes from the cached path, the final metrics from the whole network: the same pixels, the
    # same decisions (the cache is float32 from OpenVINO, checked against PyTorch to 1e-3 of the feature scale)
    assert res.history[-1]["val_accuracy"] == pytest.approx(whole.accuracy)
    assert res.history[-1]["val_critical_fn"] == whole.critical_fn() == res.val_metrics.critical_fn()


def test_a_resumed_cached_run_ends_with_the_weights_of_an_uninterrupted_one(digits, tmp_path):
    torch.manual_seed(0)
    w0 = TinyNet(10).state_dict()
    full = TinyNet(10)
    full.load_state_dict(w0)
    fine_tune(full, digits, _ce(digits), _cfg(epochs=3), progress=False, run_dir=tmp_path / "a", seed=3)

    killed = TinyNet(10)
    killed.load_state_dict(w0)

    def die(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(killed, digits, _ce(digits), _cfg(epochs=3), progress=False, run_dir=tmp_path / "b", seed=3,
                  on_epoch_start=die)
    resumed = TinyNet(10)
    resumed.load_state_dict(w0)
    fine_tune(resumed, digits, _ce(digits), _cfg(epochs=3), progress=False, run_dir=tmp_path / "b", seed=3,
              resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_distillation_runs_the_teachers_suffix_on_the_cached_features(digits):
    torch.manual_seed(0)
    teacher = TinyNet(10)
    fine_tune(teacher, digits, _ce(digits), _cfg(epochs=1), progress=False)
    student = copy.deepcopy(teacher)  # same frozen layers: one cache feeds both
    loss = DistillationLoss(CrossEntropy(), copy.deepcopy(teacher).eval(), weight=1.0, temperature=4.0)
    handle = loss.wrap_student(student)
    try:
        res = fine_tune(student, digits, loss, _cfg(epochs=1), progress=False)
    finally:
        handle.remove()
    assert res.history[0]["kd"] is not None and res.history[0]["kd"] >= 0



def test_a_teacher_whose_frozen_layers_differ_is_run_on_its_own_cache_of_the_same_samples(digits):
    """prune.frozen_ratio changes the student's frozen layers: the teacher's logits come from its own cached
    features, sample for sample the ones the student's batch holds."""
    from edgeslim.compress.data import split_arrays
    from edgeslim.compress.train import _Cached

    torch.manual_seed(0)
    student = TinyNet(10)
    torch.manual_seed(1)
    teacher = TinyNet(10)  # other frozen layers: one cache cannot feed both
    fine_tune(teacher, digits, _ce(digits), _cfg(epochs=1), progress=False)  # logits that tell samples apart
    teacher.eval()
    loss = DistillationLoss(CrossEntropy(), teacher, weight=1.0, temperature=4.0)
    cached = _Cached.build(student, digits, loss, _cfg(), batch_size=32)
    try:
        assert cached.info["teacher"] == "own cache"
        images, _ = split_arrays(digits, "train")  # the cache's order: the train split's
        batches = cached.batches(32, seed=5)
        assert len(batches) == cached.steps(32)
        for k, (x, y) in enumerate(batches):
            if k == 3:
                break
            idx = batches.order[k]
            with torch.no_grad():
                want = teacher(torch.from_numpy(images[idx.numpy()]))
            got = loss.teacher(x)
            # the cache may come from OpenVINO (checked against PyTorch to 1e-3 of the feature scale), so the
            # logits agree to about that; a sample mismatch would not: each row is nearest its own image's logits
            torch.testing.assert_close(got, want, rtol=0, atol=1e-2 * float(want.abs().max()))
            dist = torch.cdist(got, want)
            assert torch.equal(dist.diagonal(), dist.min(1).values)
            assert torch.equal(y, cached.labels[idx])
        # a batch it was not handed is refused, not answered with another batch's logits
        with pytest.raises(TrainingError, match="not handed"):
            loss.teacher(x[:5])
    finally:
        cached.close()
    assert loss.teacher is teacher  # undone
    assert not any(m.training for m in teacher.modules())  # caching it left every norm as it was

    # and training with it distils
    loss = DistillationLoss(CrossEntropy(), teacher, weight=1.0, temperature=4.0)
    handle = loss.wrap_student(student)
    try:
        res = fine_tune(student, digits, loss, _cfg(epochs=1), progress=False)
    finally:
        handle.remove()
    assert res.history[0]["kd"] is not None and res.history[0]["kd"] > 0


def test_cache_refuses_a_random_augmentation_it_would_freeze():
    with pytest.raises(ConfigError, match="train.cache: false"):
        fine_tune(TinyNet(10), _digits(augment=True), CrossEntropy(), _cfg(epochs=1), progress=False)


def test_lr_schedules():
    total, warm = 100, 10
    one = [lr_factor("onecycle", s, total, warm) for s in range(1, total + 1)]
    assert one[0] == pytest.approx(1 / 25 + (1 - 1 / 25) / warm)
    assert max(one) == pytest.approx(1.0) and one.index(max(one)) == warm - 1
    assert all(a >= b for a, b in zip(one[warm:], one[warm + 1:])) and one[-1] < 1e-3
    cos = [lr_factor("cosine", s, total, 0) for s in range(1, total + 1)]
    assert all(a >= b for a, b in zip(cos, cos[1:])) and cos[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("constant", 50, total, warm) == 1.0


def test_structured_pruning_leaves_the_frozen_layers_whole_and_distils_through_one_cache(digits, tmp_path):
    from edgeslim.compress.api import compress
    from edgeslim.compress.prune import Structured
    from edgeslim.recipe import DistillSection

    torch.manual_seed(0)
    res = compress(TinyNet(10), digits, prune=Structured(ratio=0.5, round_to=4), train=_cfg(epochs=1),
                   loss=LossSection(name="cross_entropy"), distill=DistillSection(weight=1.0, temperature=2.0),
                   run_dir=tmp_path, progress=False)
    m = res.model
    assert m.blocks[0].weight.shape[0] == 16  # frozen depthwise conv (blocks.0): whole
    assert m.blocks[3].weight.shape[0] < 32  # after the boundary: pruned
    assert any("frozen by train.freeze" in n for n in res.notes)
    assert any(h.get("kd") is not None for h in res.history if h.get("round") == 2)
