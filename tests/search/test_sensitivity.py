"""Per-stage channel ratios from measured sensitivity: the stages, the measurement, the allocation."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.compress.prune import Structured
from edgeslim.search.sensitivity import allocate, stage_names, stage_sensitivity


def test_stages_are_the_block_containers_children():
    from edgeslim.compress.sources import load_pretrained, replace_head
    from edgeslim.testing import TinyNet

    lite0 = replace_head(load_pretrained("efficientnet_lite0", pretrained=False).model, 2)
    assert stage_names(lite0) == [f"blocks.{i}" for i in range(7)]
    assert stage_names(TinyNet(num_classes=10)) == ["blocks.0", "blocks.3", "blocks.6"]


def test_allocation_keeps_the_mean_ratio_and_prunes_the_insensitive_stage_harder():
    sens = {"probe_ratio": 0.5, "base_loss": 1.0, "stages": {
        "a": {"loss_increase": 0.40, "params": 1000, "max_ratio": 0.9},
        "b": {"loss_increase": 0.01, "params": 1000, "max_ratio": 0.9},
        "c": {"loss_increase": None, "params": 500, "max_ratio": 0.3},   # could not be probed: as the worst
        "d": {"loss_increase": 0.10, "params": 0, "max_ratio": 0.0},     # nothing prunable: left out
    }}
    r = allocate(sens, 0.4)
    assert set(r) == {"a", "b", "c"}
    mean = (1000 * r["a"] + 1000 * r["b"] + 500 * r["c"]) / 2500
    assert mean == pytest.approx(0.4, abs=2e-3)  # the same mean ratio as the uniform choice
    assert r["b"] > 0.4 > r["a"] and r["c"] <= 0.3  # insensitive harder, sensitive softer, caps kept
    assert allocate(sens, 0.0) == {}


def test_stage_sensitivity_measures_every_stage_on_real_data():
    import torch

    from edgeslim.artifact import Preprocessing
    from edgeslim.compress.data import load_data, split_arrays
    from edgeslim.testing import TinyNet

    torch.manual_seed(0)
    data = load_data("digits", preprocessing=Preprocessing(resize=16, crop=16), image_size=16, critical=[8])
    x, y = split_arrays(data, "val")
    model = TinyNet(num_classes=10).eval()
    s = stage_sensitivity(model, x[:128], y[:128], ratio=0.5, cfg=Structured(ratio=0.5, round_to=4))
    assert s["probe_ratio"] == 0.5 and np.isfinite(s["base_loss"])
    st = s["stages"]
    assert set(st) == {"blocks.0", "blocks.3", "blocks.6"}
    # blocks.0 is the depthwise conv right after the kept stem: its channels follow the stem, nothing to prune
    assert st["blocks.3"]["params"] > 0 and 0 < st["blocks.3"]["max_ratio"] < 1
    assert st["blocks.3"]["loss_increase"] is not None and np.isfinite(st["blocks.3"]["loss_increase"])
    r = allocate(s, 0.5)
    assert r and all(0 <= v <= st[k]["max_ratio"] for k, v in r.items())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in TinyNet(10).parameters())  # not pruned
    # a stage frozen by train.freeze is pruned by no training: the probe leaves it whole and gives it no ratio
    frozen = stage_sensitivity(model, x[:128], y[:128], ratio=0.5, cfg=Structured(ratio=0.5, round_to=4),
                               freeze="blocks.5")
    assert frozen["stages"]["blocks.3"]["max_ratio"] == 0.0 and frozen["stages"]["blocks.3"]["loss_increase"] is None
    assert frozen["stages"]["blocks.6"] == st["blocks.6"]
    assert allocate(frozen, 0.5).get("blocks.3", 0.0) == 0.0


def _digits_val(n: int = 256):
    from edgeslim.artifact import Preprocessing
    from edgeslim.compress.data import load_data, split_arrays

    data = load_data("digits", preprocessing=Preprocessing(resize=16, crop=16), image_size=16, critical=[8],
                     val_fraction=0.3)
    x, y = split_arrays(data, "val")
    return x[:n], y[:n]


def test_critical_sensitivity_is_the_loss_of_the_critical_samples_and_drives_the_allocation():
    import torch

    from edgeslim.testing import TinyNet

    torch.manual_seed(0)
    x, y = _digits_val()
    model = TinyNet(num_classes=10).eval()  # the identities below hold for any weights
    cfg = Structured(ratio=0.5, round_to=4)
    crit = stage_sensitivity(model, x, y, ratio=0.5, cfg=cfg, critical=[8])
    mean = stage_sensitivity(model, x, y, ratio=0.5, cfg=cfg, critical=[8], signal="mean")
    only8 = stage_sensitivity(model, x[y == 8], y[y == 8], ratio=0.5, cfg=cfg, signal="mean")
    assert crit["signal"] == "critical" and mean["signal"] == "mean" and crit["critical_samples"] == int((y == 8).sum())
    probed = [k for k, v in crit["stages"].items() if v["loss_increase"] is not None]
    assert probed
    for k in probed:
        c, m = crit["stages"][k], mean["stages"][k]
        # the critical signal is the mean-loss sensitivity measured on the critical samples alone
        assert c["critical_loss_increase"] == pytest.approx(only8["stages"][k]["mean_loss_increase"], rel=1e-4, abs=1e-5)
        assert c["loss_increase"] == c["critical_loss_increase"] and m["loss_increase"] == m["mean_loss_increase"]
        assert c["mean_loss_increase"] == pytest.approx(m["mean_loss_increase"], rel=1e-6)
    # no critical sample in the split: the mean loss, said so
    none = stage_sensitivity(model, x[y != 8], y[y != 8], ratio=0.5, cfg=cfg, critical=[8])
    assert none["signal"] == "mean" and none["critical_samples"] == 0
    with pytest.raises(Exception, match="sensitivity signal"):
        stage_sensitivity(model, x, y, ratio=0.5, cfg=cfg, signal="median")


def test_a_stage_with_a_squeeze_excitation_layer_narrower_than_round_to_is_still_pruned():
    """MobileNetV3-small (random init): features.1 holds an 8-channel SE reduction; at round_to 8 it is kept whole and the stage's
    other layers are pruned, so the per-stage allocation is not stuck at 0 there."""
    import torch
    from torchvision.models import mobilenet_v3_small

    from edgeslim.compress.prune.structured import _ignored, prune_channels

    torch.manual_seed(0)
    model = mobilenet_v3_small(weights=None, num_classes=10).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    cfg = Structured(ratio=0.5, round_to=8)
    s = stage_sensitivity(model, x, y, ratio=0.5, cfg=cfg, critical=[8])
    assert s["stages"]["features.1"]["max_ratio"] > 0 and s["stages"]["features.1"]["loss_increase"] is not None
    ratios = allocate(s, 0.5)
    assert ratios.get("features.1", 0) > 0
    pruned = prune_channels(model, torch.from_numpy(x[:1]), ratio=0.0, round_to=8, stage_ratios=ratios,
                            ignored_layers=_ignored(model, prune_first_conv=False, exclude=()))
    assert pruned.features[1].block[1].fc1.out_channels == 8  # kept whole
    with torch.inference_mode():
        assert pruned(torch.from_numpy(x)).shape == (4, 10)
