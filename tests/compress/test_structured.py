"""structured: Torch-Pruning channel pruning, the whole-layer guard, and rebuilding the smaller model from an
artifact with build_model + restore_structure."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeslim.compress.prune.stats import count_params_macs
from edgeslim.models import build_model
from edgeslim.compress.api import compress
from edgeslim.compress.prune.structured import _ignored, prune_channels
from edgeslim.models import rebuild_model, restore_structure, structure_spec
from edgeslim.errors import ArtifactError, ConfigError
from edgeslim.export.base import export_artifact
from edgeslim.testing import TinyNet

from _digits import digits as _digits, manifest, recipe, sample_inputs

torch.set_num_threads(1)
X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _pruned(ratio, scope="layer", round_to=8):
    torch.manual_seed(0)
    m = TinyNet(num_classes=10).eval()
    prune_channels(m, X[:1], ratio=ratio, scope=scope, round_to=round_to,
                   ignored_layers=_ignored(m, prune_first_conv=False, exclude=()))
    return m


def test_spec_rebuilds_the_pruned_widths_exactly():
    m = _pruned(0.5)
    assert m.blocks[3].out_channels == 16 and m.classifier.in_features == 16 and m.classifier.out_features == 10
    assert m.conv_stem.out_channels == 16  # first conv kept at full width by default
    spec = json.loads(json.dumps(structure_spec(m, reference=TinyNet(num_classes=10))))  # JSON-ready
    assert set(spec["modules"]) == {"blocks.3", "blocks.4", "blocks.6", "blocks.7", "classifier"}
    rebuilt = restore_structure(TinyNet(num_classes=10), spec)
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(X), m(X))
    assert structure_spec(TinyNet(), reference=TinyNet())["modules"] == {}
    with pytest.raises(ArtifactError, match="another architecture"):
        restore_structure(TinyNet(), {"version": 1, "modules": {"head": {"type": "Linear"}}})
    with pytest.raises(ArtifactError, match="version"):
        restore_structure(TinyNet(), {"modules": {}})


def test_global_scope_and_size_reduction():
    dense_p, dense_macs = count_params_macs(TinyNet(num_classes=10), (1, 3, 16, 16))
    g = _pruned(0.5, scope="global", round_to=None)
    p, macs = count_params_macs(g, (1, 3, 16, 16))
    assert p < dense_p and macs < dense_macs and g(X).shape == (2, 10)


def test_a_ratio_that_would_empty_a_layer_prunes_it_to_round_to_and_the_run_says_so(tmp_path):
    data = _digits()
    # blocks.3 and blocks.6 have 32 channels: ratio 0.6 keeps int(32 * 0.4) = 12, rounded down to 16 -> 0
    res = compress(TinyNet(num_classes=10), data, recipe({"method": "structured", "ratio": 0.6, "round_to": 16},
                                                         epochs=1, final_epochs=1), run_dir=tmp_path, progress=False)
    assert res.model.blocks[3].out_channels == 16 and res.model.blocks[6].out_channels == 16  # round_to, not 0
    assert set(res.info["capped"]) == {"blocks.3", "blocks.6"} and res.info["kept_whole"] == []
    assert len(res.notes) == 1 and "'blocks.3' (32)" in res.notes[0] and "round_to 16" in res.notes[0]
    assert res.to_dict()["notes"] == res.notes
    with pytest.raises(ConfigError, match="ratio"):
        recipe({"method": "structured", "ratio": 1.0})


def test_structured_fine_tunes_a_smaller_model_that_the_artifact_rebuilds(tmp_path):
    data = _digits()
    torch.manual_seed(0)
    res = compress(TinyNet(num_classes=10), data, recipe({"method": "structured", "ratio": 0.5}, epochs=1,
                                                         final_epochs=2), run_dir=tmp_path / "r", progress=False)
    assert res.size["params"] < 0.5 * res.size["dense_params"] and res.size["macs"] < res.size["dense_macs"]
    assert res.info["params_after"] == res.size["params"]
    assert {w["name"]: w["after"] for w in res.info["widths"]}["blocks.6"] == 16
    assert res.metrics.accuracy > 0.3 and res.sparsity == 0.0  # dense, just narrower

    x, y = sample_inputs(data)
    m = export_artifact(res.model, tmp_path / "art", manifest(data), formats=["onnx"], precisions=("fp32",),
                        validation=(x, y))
    assert m.validation["passed"]
    rebuilt = rebuild_model("tiny", 10, res.info["structure"])
    rebuilt.load_state_dict(load_file(str(tmp_path / "art" / "model.safetensors")), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):  # what the artifact does today without the spec
        build_model("tiny", 10).load_state_dict(load_file(str(tmp_path / "art" / "model.safetensors")))
    with torch.inference_mode():
        assert torch.allclose(rebuilt.eval()(torch.from_numpy(x)), res.model.eval()(torch.from_numpy(x)))


def test_stage_ratios_prune_each_named_stage_to_its_own_ratio():
    from edgeslim.compress.prune import Structured

    torch.manual_seed(0)
    m = TinyNet(num_classes=10).eval()
    prune_channels(m, X[:1], ratio=0.0, round_to=None, stage_ratios={"blocks.3": 0.5},
                   ignored_layers=_ignored(m, prune_first_conv=False, exclude=()))
    assert m.blocks[3].out_channels == 16 and m.blocks[6].out_channels == 32  # only the named stage shrank
    m = TinyNet(num_classes=10).eval()
    prune_channels(m, X[:1], ratio=0.5, round_to=None, stage_ratios={"blocks.6": 0.25},
                   ignored_layers=_ignored(m, prune_first_conv=False, exclude=()))
    assert m.blocks[3].out_channels == 16 and m.blocks[6].out_channels == 24  # the rest at `ratio`
    with pytest.raises(ConfigError, match="Did you mean 'blocks.3'"):
        prune_channels(TinyNet(num_classes=10).eval(), X[:1], ratio=0.0, stage_ratios={"block.3": 0.5})
    m = TinyNet(num_classes=10).eval()  # a stage ratio that would empty a layer: pruned to round_to instead
    prune_channels(m, X[:1], ratio=0.0, round_to=16, stage_ratios={"blocks.3": 0.6})
    assert m.blocks[3].out_channels == 16 and m.blocks[6].out_channels == 32
    with pytest.raises(ValueError, match="every ratio must be in"):
        Structured(stage_ratios={"blocks.3": 1.0})
    with pytest.raises(ValueError, match="use scope 'layer'"):
        Structured(scope="global", stage_ratios={"blocks.3": 0.5})


def _family(name: str):
    """Common families at random init: torchvision MobileNetV3-small, timm EfficientNet-B0 (squeeze-excitation
    reductions of 4-10 channels), with a 3-class head."""
    if name == "mobilenet_v3_small":
        from torchvision.models import mobilenet_v3_small

        return mobilenet_v3_small(weights=None, num_classes=3)
    import timm

    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=3)


@pytest.mark.parametrize("name, narrow", [
    ("mobilenet_v3_small", {"features.1.block.1.fc1"}),  # 16 -> SE 8 channels
    ("efficientnet_b0", {"blocks.0.0.se.conv_reduce", "blocks.1.0.se.conv_reduce"}),  # SE 8 and 4 channels
])
def test_squeeze_excitation_layers_no_wider_than_round_to_are_kept_whole(name, narrow):
    from edgeslim.compress.prune.structured import channel_plan

    torch.manual_seed(0)
    m = _family(name).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ign = _ignored(m, prune_first_conv=False, exclude=())
    plan = channel_plan(m, x[:1], ratio=0.3, round_to=8, ignored_layers=ign)
    whole = {r["layer"] for r in plan.kept_whole}
    assert narrow <= whole and all(r["channels"] <= 8 for r in plan.kept_whole)
    assert any(n in plan.notes()[0] for n in narrow) and "kept whole" in plan.notes()[0]
    widths = {n: mod.out_channels for n, mod in m.named_modules() if n in whole}
    params0, _ = count_params_macs(m, (1, 3, 64, 64))
    prune_channels(m, x[:1], ratio=0.3, round_to=8, ignored_layers=_ignored(m, prune_first_conv=False, exclude=()))
    params1, _ = count_params_macs(m, (1, 3, 64, 64))
    mods = dict(m.named_modules())
    assert {n: mods[n].out_channels for n in whole} == widths  # kept whole
    for r in plan.rows:  # the others at the planned width, a multiple of round_to
        if r["action"] in ("pruned", "capped"):
            assert mods[r["layer"]].weight.shape[0] == r["kept"] and r["kept"] % 8 == 0, r
    assert params1 < 0.75 * params0  # 30 % of the channels out of most layers (in and out): about half the weights
    with torch.inference_mode():
        assert m(x).shape == (2, 3) and torch.isfinite(m(x)).all()


def test_a_file_checkpoint_of_mobilenet_v3_prunes_and_lists_the_layers_kept_whole(tmp_path):
    """The issue's case: a torchvision MobileNetV3-small `file:` checkpoint, structured 0.3, round_to 8."""
    from torchvision.models import mobilenet_v3_small

    from edgeslim.compress.sources import load_pretrained, replace_head

    torch.manual_seed(0)
    ckpt = tmp_path / "mnv3.pt"
    torch.save(mobilenet_v3_small(weights=None).state_dict(), ckpt)
    data = _digits()
    src = load_pretrained(f"file:{ckpt}", arch="torchvision:mobilenet_v3_small")
    res = compress(replace_head(src.model, len(data.classes)), data,
                   recipe({"method": "structured", "ratio": 0.3}, epochs=1, final_epochs=1),
                   run_dir=tmp_path / "r", progress=False)
    assert "features.1.block.1.fc1" in res.info["kept_whole"]
    assert any("features.1.block.1.fc1" in n and "kept whole" in n for n in res.notes)
    assert res.size["params"] < res.size["dense_params"]
    x, _ = sample_inputs(data, 8)
    with torch.inference_mode():
        assert res.model.eval()(torch.from_numpy(x)).shape == (len(x), len(data.classes))


def test_the_notes_reach_the_manifest_and_the_summary(tmp_path):
    from edgeslim.artifact import load_manifest
    from edgeslim.pipeline import run_pipeline
    from edgeslim.recipe import parse_recipe

    r = parse_recipe({
        "version": 2, "name": "notes", "seed": 0, "model": {"source": "tiny"},
        "data": {"dataset": "digits", "image_size": 16, "critical": [8], "batch_size": 64},
        "train": {"epochs": 1, "final_epochs": 1, "threads": 1},
        "prune": {"method": "structured", "ratio": 0.6, "round_to": 16}, "export": {"formats": []},
    })
    res = run_pipeline(r, tmp_path / "p", progress=False, stages=("compress", "export"))
    assert len(res.notes) == 1 and "'blocks.3' (32)" in res.notes[0]
    assert load_manifest(res.artifacts["compressed"]).notes == res.notes
    assert f"- note: {res.notes[0]}" in (tmp_path / "p" / "report.md").read_text()
    assert json.loads((tmp_path / "p" / "report.json").read_text())["pipeline"]["notes"] == res.notes
