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


def test_a_ratio_that_removes_a_whole_layer_is_an_error_before_training(tmp_path):
    data = _digits()
    msg = r"would remove every channel of .*'blocks.3' \(32 channels\).*ratio <= 0.500"
    with pytest.raises(ConfigError, match=msg):
        compress(TinyNet(num_classes=10), data, recipe({"method": "structured", "ratio": 0.6, "round_to": 16}),
                 run_dir=tmp_path, progress=False)
    assert not (tmp_path / "compress" / "dense").exists()
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
    with pytest.raises(ConfigError, match="would remove every channel of 'blocks.3'"):
        prune_channels(TinyNet(num_classes=10).eval(), X[:1], ratio=0.0, round_to=16, stage_ratios={"blocks.3": 0.6})
    with pytest.raises(ValueError, match="every ratio must be in"):
        Structured(stage_ratios={"blocks.3": 1.0})
    with pytest.raises(ValueError, match="use scope 'layer'"):
        Structured(scope="global", stage_ratios={"blocks.3": 0.5})
