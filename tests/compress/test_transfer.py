"""sparse_transfer: a sparse source keeps its zero pattern downstream, in full fine-tuning or linear probing."""

from __future__ import annotations

import pytest
import torch

from edgeslim.compress.prune.masks import MaskSet
from edgeslim.compress.api import compress
from edgeslim.errors import ConfigError
from edgeslim.testing import TinyNet

from _digits import digits as _digits, recipe

torch.set_num_threads(1)
BACKBONE = ("conv_stem", "blocks.0", "blocks.3", "blocks.6")


@pytest.fixture(scope="module")
def data():
    return _digits()


@pytest.fixture(scope="module")
def source_state(data):
    """A 'sparse ImageNet' stand-in: TinyNet trained 2 epochs with plain CE, every layer then pruned to 50%."""
    from edgeslim.compress.loss import build_loss
    from edgeslim.compress.train import fine_tune
    from edgeslim.recipe import LossSection, TrainSection

    torch.manual_seed(0)
    src = TinyNet(num_classes=10)
    loss = build_loss(LossSection(name="cross_entropy"), data.class_counts, data.critical)
    fine_tune(src, data, loss, TrainSection(epochs=2, optimizer="adamw", lr=0.01, select="last", threads=1),
              progress=False)
    MaskSet.for_model(src, prune_first_conv=True).prune_to(src, 0.5)
    return {k: v.clone() for k, v in src.state_dict().items()}


def _sparse_source(state):
    """The sparse backbone with a fresh 10-way head for the new task."""
    src = TinyNet(num_classes=10)
    src.load_state_dict(state)
    torch.manual_seed(1)
    src.reset_classifier(10)
    return src


def test_full_fine_tuning_keeps_the_source_zero_pattern(data, source_state, tmp_path):
    src = _sparse_source(source_state)
    zeros = {n: (src.get_submodule(n).weight == 0).clone() for n in BACKBONE}
    before = {k: v.clone() for k, v in src.state_dict().items()}
    res = compress(src, data, recipe({"method": "sparse_transfer"}, epochs=0, final_epochs=2), run_dir=tmp_path,
                   progress=False)
    assert res.info["mode"] == "full" and res.info["source_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert res.dense_model is None and "classifier" not in res.masks.masks
    for n in BACKBONE:
        w = res.model.get_submodule(n).weight.detach()
        assert torch.equal(w == 0, zeros[n]), n  # the same zeros, no more, no fewer
    assert not torch.equal(res.model.state_dict()["blocks.3.weight"], before["blocks.3.weight"])  # it trained
    assert all(p.requires_grad for p in res.model.parameters())


def test_linear_probe_trains_only_the_head_and_leaves_the_backbone_bit_identical(data, source_state, tmp_path):
    src = _sparse_source(source_state)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    res = compress(src, data, recipe({"method": "sparse_transfer", "mode": "linear_probe"}, epochs=0,
                                     final_epochs=2, lr=0.03), run_dir=tmp_path, progress=False)
    after = res.model.state_dict()
    for k, v in before.items():
        if k.startswith("classifier."):
            assert not torch.equal(after[k], v), k
        else:
            assert torch.equal(after[k], v), k  # weights and BatchNorm running statistics
    assert res.info["trainable"] == 2
    assert res.metrics.accuracy > 0.4  # a new head on the frozen sparse features (chance: 0.1; 0.77 when written)
    assert all(p.requires_grad for p in res.model.parameters())  # handed on as an ordinary model


def test_a_dense_source_is_an_error_before_training(data, tmp_path):
    with pytest.raises(ConfigError, match="needs a sparse source"):
        compress(TinyNet(num_classes=10), data, recipe({"method": "sparse_transfer"}), run_dir=tmp_path,
                 progress=False)
    with pytest.raises(ConfigError, match="prune_first_conv does not apply"):
        recipe({"method": "sparse_transfer", "prune_first_conv": True})
