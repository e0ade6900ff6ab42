"""one_shot magnitude pruning and the lottery-ticket options, on TinyNet + real digits at 16x16."""

from __future__ import annotations

import pytest
import torch

from edgeslim.compress.prune import NoPruning
from edgeslim.compress.prune.masks import MaskSet
from edgeslim.compress.checkpoint import load_checkpoint
from edgeslim.compress.api import compress
from edgeslim.errors import ConfigError
from edgeslim.export.base import export_artifact
from edgeslim.testing import TinyNet

from _digits import digits as _digits, manifest, recipe, sample_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return _digits()


def _w0(seed=0):
    torch.manual_seed(seed)
    return TinyNet(num_classes=10)


def _masked_zero(res):
    for name, m in res.masks.masks.items():
        w = res.model.get_submodule(name).weight.detach()
        assert bool((w[~m] == 0).all())


def test_one_shot_per_layer_reaches_the_target_keeps_zeros_through_onnx_and_reports_size(data, tmp_path):
    res = compress(_w0(), data, recipe({"method": "one_shot", "sparsity": 0.6}), run_dir=tmp_path / "r",
                   progress=False)
    rows = {r["name"]: r for r in res.sparsity_table}
    for name in res.masks.names:  # per layer: every masked layer at the target
        assert rows[name]["sparsity"] == pytest.approx(0.6, abs=0.02)
    assert rows["conv_stem"]["zeros"] == 0 and rows["classifier"]["zeros"] == 0
    _masked_zero(res)
    assert res.dense_model is not None and res.metrics.accuracy > 0.3  # chance is 0.1
    assert res.size["params"] == res.size["dense_params"] == sum(p.numel() for p in res.model.parameters())
    assert res.size["nonzero_params"] == res.size["params"] - rows["total"]["zeros"]
    assert res.size["macs"] > 0 and [r["round"] for r in res.rounds] == [1, 2]

    x, y = sample_inputs(data)
    m = export_artifact(res.model, tmp_path / "art", manifest(data), formats=["onnx"], precisions=("fp32",),
                        validation=(x, y))
    assert m.sparsity["onnx"]["zeros"] >= rows["total"]["zeros"] > 0
    assert m.validation["passed"]


def test_one_shot_global_and_resume_after_a_crash_in_the_pruned_round(data, tmp_path):
    from test_train import CrashingBundle

    r = recipe({"method": "one_shot", "sparsity": 0.7, "scope": "global"})
    whole = compress(_w0(), data, r, run_dir=tmp_path / "a", progress=False)
    assert whole.masks.sparsity() == pytest.approx(0.7, abs=1e-3)
    per_layer = [1 - m.float().mean().item() for m in whole.masks.masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # global ranking: layers end at different sparsities

    with pytest.raises(KeyboardInterrupt):  # loaders: dense epoch 1, pruned epoch 1, pruned epoch 2 (dies)
        compress(_w0(), CrashingBundle(data, crash_on=3), r, run_dir=tmp_path / "b", progress=False)
    resumed = compress(_w0(), data, r, run_dir=tmp_path / "b", resume=True, progress=False)
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.metrics.to_dict() == whole.metrics.to_dict()


def test_lottery_ticket_rewinds_to_init_or_to_epoch_k_and_scores_by_magnitude_increase(data, tmp_path):
    """With 0 final epochs the final model IS the rewound, masked weights: this checks the rewinding target."""
    w0 = _w0()
    init = {k: v.clone() for k, v in w0.state_dict().items()}
    res = compress(w0, data, recipe({"method": "lottery_ticket", "rounds": 1, "rate": 0.5}, epochs=2,
                                    final_epochs=0), run_dir=tmp_path / "init", progress=False)
    for k, v in res.model.state_dict().items():
        layer = k.rsplit(".", 1)[0]
        expect = init[k] * res.masks.masks[layer] if k.endswith("weight") and layer in res.masks.masks else init[k]
        assert torch.equal(v, expect), k

    late = compress(_w0(), data, recipe({"method": "lottery_ticket", "rounds": 1, "rate": 0.5, "rewind": 1},
                                        epochs=2, final_epochs=0), run_dir=tmp_path / "late", progress=False)
    point = load_checkpoint(tmp_path / "late" / "compress" / "rewind.pt")
    assert not torch.equal(point["blocks.3.weight"], init["blocks.3.weight"])  # epoch 1 weights, not W0
    for name, m in late.masks.masks.items():
        assert torch.equal(late.model.get_submodule(name).weight.detach(), point[f"{name}.weight"] * m)

    inc = compress(_w0(), data, recipe({"method": "lottery_ticket", "rounds": 1, "rate": 0.5, "rewind": 1,
                                        "score": "magnitude_increase"}, epochs=2, final_epochs=0),
                   run_dir=tmp_path / "inc", progress=False)
    # same trained weights, another score: a different ticket at the same sparsity
    assert inc.masks.sparsity() == pytest.approx(late.masks.sparsity())
    assert any(not torch.equal(inc.masks.masks[n], late.masks.masks[n]) for n in late.masks.names)


def test_fields_of_another_method_and_bad_targets_are_rejected_before_training(tmp_path):
    with pytest.raises(ConfigError, match="rounds does not apply to method 'one_shot'"):
        recipe({"method": "one_shot", "rounds": 3})
    with pytest.raises(ConfigError, match="sparsity"):
        recipe({"method": "one_shot", "sparsity": 1.0})
    # a version-1 recipe becomes its dense baseline by changing only the method: none drops every pruning field
    assert recipe({"method": "none", "rounds": 3}).prune == NoPruning()
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        MaskSet.for_model(TinyNet()).prune_to(TinyNet(), 1.5)
