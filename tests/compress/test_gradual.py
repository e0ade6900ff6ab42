"""gradual: Zhu & Gupta's cubic schedule applied every `frequency` steps during fine-tuning, resumable exactly."""

from __future__ import annotations

import pytest
import torch

from edgeslim.compress.prune.gradual import cubic_sparsity, pruning_steps
from edgeslim.compress.prune.masks import MaskSet
from edgeslim.compress.checkpoint import load_checkpoint
from edgeslim.compress.api import compress
from edgeslim.errors import ConfigError
from edgeslim.testing import TinyNet

from _digits import digits as _digits, recipe
from test_train import CrashingBundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return _digits()


def _w0():
    torch.manual_seed(0)
    return TinyNet(num_classes=10)


def test_cubic_schedule_matches_zhu_and_gupta():
    kw = {"final": 0.8, "initial": 0.1, "start": 10, "end": 50}
    assert cubic_sparsity(0, **kw) == 0.1 and cubic_sparsity(10, **kw) == 0.1
    assert cubic_sparsity(50, **kw) == 0.8 and cubic_sparsity(99, **kw) == 0.8
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at t = t0 + n dt / 2
    assert cubic_sparsity(30, **kw) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)
    vals = [cubic_sparsity(t, **kw) for t in range(10, 51)]
    gains = [b - a for a, b in zip(vals, vals[1:])]
    assert all(g >= 0 for g in gains) and gains[0] > gains[-1]  # fast first, slow near the target
    assert pruning_steps(10, 50, 15) == [10, 25, 40, 50]  # the end is always a pruning step
    with pytest.raises(ConfigError, match="end_step"):
        cubic_sparsity(5, final=0.5, start=10, end=10)


def test_gradual_follows_the_schedule_during_training_and_resumes_exactly(data, tmp_path):
    r = recipe({"method": "gradual", "sparsity": 0.7, "frequency": 4, "end_step": 48}, epochs=0, final_epochs=2)
    per_epoch = len(data.loader("train", batch_size=32))
    assert 48 < 2 * per_epoch and per_epoch < 48  # pruning spans the two epochs
    whole = compress(_w0(), data, r, run_dir=tmp_path / "a", progress=False)
    assert whole.masks.sparsity() == pytest.approx(0.7, abs=0.01)
    for name, m in whole.masks.masks.items():
        assert bool((whole.model.get_submodule(name).weight.detach()[~m] == 0).all())
    sched = whole.info["schedule"]
    assert sorted(sched) == pruning_steps(0, 48, 4)

    # after epoch 1 the masks are at the schedule's value for the last pruning step of that epoch
    ck = load_checkpoint(tmp_path / "a" / "compress" / "pruned" / "last.pt")
    assert ck["step"] == 2 * per_epoch
    with pytest.raises(KeyboardInterrupt):
        # train loaders: 1 sizes the schedule, 2 = epoch 1, 3 = epoch 2 (dies)
        compress(_w0(), CrashingBundle(data, crash_on=3), r, run_dir=tmp_path / "b", progress=False)
    ck1 = load_checkpoint(tmp_path / "b" / "compress" / "pruned" / "last.pt")
    assert ck1["epoch"] == 1 and ck1["step"] == per_epoch
    last = max(s for s in sched if s <= per_epoch)
    assert MaskSet(ck1["masks"]).sparsity() == pytest.approx(sched[last], abs=0.01)
    assert sched[last] < 0.7

    resumed = compress(_w0(), data, r, run_dir=tmp_path / "b", resume=True, progress=False)
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(whole.masks.masks[n], resumed.masks.masks[n]) for n in whole.masks.names)


def test_an_unreachable_end_step_is_an_error_before_training(data, tmp_path):
    r = recipe({"method": "gradual", "sparsity": 0.5, "end_step": 10_000}, epochs=1, final_epochs=1)
    with pytest.raises(ConfigError, match="end_step"):
        compress(_w0(), data, r, run_dir=tmp_path, progress=False)
    assert not (tmp_path / "compress" / "dense").exists()
    with pytest.raises(ConfigError, match="initial_sparsity"):
        recipe({"method": "gradual", "sparsity": 0.5, "initial_sparsity": 0.6})
