"""Mask machinery: which layers are prunable, what gets pruned, that pruned weights stay exactly zero."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from edgeslim.compress.prune import PRUNE_METHODS
from edgeslim.compress.prune.masks import MaskSet
from edgeslim.compress.prune.stats import count_params_macs, model_sparsity
from edgeslim.errors import ConfigError, TrainingError, UnknownNameError
from edgeslim.testing import TinyNet

torch.set_num_threads(1)

INNER = ["blocks.0", "blocks.3", "blocks.6"]  # TinyNet's convs between the stem and the classifier


def _tiny(seed=0):
    torch.manual_seed(seed)
    return TinyNet(num_classes=10)


def _pruned_values(model, masks):
    return torch.cat([model.get_submodule(n).weight.detach()[~m].flatten() for n, m in masks.masks.items()])


def test_default_masks_leave_first_conv_classifier_bias_and_bn_dense():
    model = _tiny()
    masks = MaskSet.for_model(model)
    assert masks.names == INNER
    assert all(m.dtype == torch.bool and bool(m.all()) for m in masks.masks.values())
    assert masks.sparsity() == 0.0
    every = MaskSet.for_model(model, prune_first_conv=True, prune_classifier=True)
    assert every.names == ["conv_stem", *INNER, "classifier"]
    assert MaskSet.for_model(model, exclude=["blocks.[03]"]).names == ["blocks.6"]


def test_a_sequential_head_without_get_classifier_keeps_its_last_linear_dense():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 2))
    assert MaskSet.for_model(model).names == ["2"]


def test_unknown_exclude_pattern_and_nothing_to_prune_are_errors():
    with pytest.raises(ConfigError, match="matches no prunable layer.*blocks.0"):
        MaskSet.for_model(_tiny(), exclude=["block.*"])
    with pytest.raises(ConfigError, match="nothing to prune"):
        MaskSet.for_model(_tiny(), exclude=["blocks.*"])


def test_layer_scope_prunes_the_smallest_remaining_weights_of_each_layer():
    model = _tiny()
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.5, scope="layer")
    for name, m in masks.masks.items():
        w = model.get_submodule(name).weight.detach()
        assert abs(m.float().mean().item() - 0.5) <= 1 / m.numel()  # rounding of half the layer
        assert torch.equal(w[~m], torch.zeros_like(w[~m]))
    before = {n: m.clone() for n, m in masks.masks.items()}
    kept_abs = {n: model.get_submodule(n).weight.detach().abs()[m] for n, m in masks.masks.items()}

    # second round: prune half of what is left, from the survivors' current magnitudes
    masks.prune(model, 0.5, scope="layer")
    for name, m in masks.masks.items():
        assert not bool((m & ~before[name]).any())  # nothing pruned comes back
        newly = before[name] & ~m
        w_abs_then = torch.zeros_like(m, dtype=torch.float32)
        w_abs_then[before[name]] = kept_abs[name]
        assert w_abs_then[newly].max() <= w_abs_then[m].min()
    assert masks.sparsity() == pytest.approx(0.75, abs=0.01)


def test_global_scope_uses_one_threshold_across_layers():
    model = _tiny()
    w_abs = {n: model.get_submodule(n).weight.detach().abs().clone() for n in INNER}
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.6, scope="global")
    pruned = torch.cat([w_abs[n][~m] for n, m in masks.masks.items()])
    kept = torch.cat([w_abs[n][m] for n, m in masks.masks.items()])
    assert pruned.max() <= kept.min()
    assert masks.sparsity() == pytest.approx(0.6, abs=1e-3)
    # layers end up unequally pruned, which is what distinguishes global from per-layer
    per_layer = [1 - m.float().mean().item() for m in masks.masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05


def test_magnitude_increase_prunes_weights_that_shrank_most_not_the_smallest():
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    w0 = {"0.weight": torch.tensor([[1.0, 1.0, 0.1, 0.1], [1.0, 1.0, 0.1, 0.1]])}
    w_t = torch.tensor([[0.2, 2.0, 0.3, 0.05], [0.9, 1.5, 0.4, 0.12]])
    with torch.no_grad():
        model[0].weight.copy_(w_t)
    # |w_T| - |w_0| = [[-0.8, 1.0, 0.2, -0.05], [-0.1, 0.5, 0.3, 0.02]]: the two lowest are -0.8 and -0.1
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.25, score="magnitude_increase", reference_state=w0)
    assert masks.masks["0"].tolist() == [[False, True, True, True], [False, True, True, True]]
    assert model[0].weight[0, 0].item() == 0.0 and model[0].weight[1, 0].item() == 0.0
    with torch.no_grad():
        model[0].weight.copy_(w_t)
    plain = MaskSet.for_model(model)
    plain.prune(model, 0.25, score="magnitude")  # by magnitude the 0.05 and 0.12 entries go first
    assert plain.masks["0"].tolist() == [[True, True, True, False], [True, True, True, False]]


def _train_steps(model, optimizer, steps=5):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_attached_masks_keep_pruned_weights_exactly_zero_while_training(opt):
    model = _tiny()
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.5)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)
    masks.attach(model, optimizer)
    _train_steps(model, optimizer)
    assert bool((_pruned_values(model, masks) == 0.0).all())
    for name, m in masks.masks.items():
        w = model.get_submodule(name).weight
        assert type(w) is nn.Parameter  # plain weights, no torch.nn.utils.prune re-parametrisation
        assert bool((w.grad[~m] == 0).all())
        assert not hasattr(model.get_submodule(name), "weight_orig")
    # the survivors did train
    assert model.blocks[3].weight.grad.abs().sum() > 0

    masks.detach()
    _train_steps(model, optimizer, steps=2)
    assert bool((_pruned_values(model, masks) != 0).any())  # without the hooks nothing holds them at zero


def test_attach_without_optimizer_zeroes_grads_and_apply_restores_zeros():
    model = _tiny()
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.3)
    masks.attach(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, optimizer, steps=2)
    assert bool((_pruned_values(model, masks) == 0.0).all())  # zero grads + zero momentum: SGD leaves them
    masks.detach()


def test_pruning_while_attached_protects_the_new_zeros_too():
    """Gradual pruning tightens the masks mid-training: the gradient hooks must follow the current masks."""
    model = _tiny()
    masks = MaskSet.for_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    masks.attach(model, opt)
    x = torch.randn(4, 3, 16, 16)
    model(x).sum().backward()
    opt.step()
    masks.prune_to(model, 0.5)  # while attached
    opt.zero_grad()
    model(x).sum().backward()
    for name, m in masks.masks.items():
        g = model.get_submodule(name).weight.grad
        assert bool((g[~m] == 0).all()) and bool((g[m] != 0).any())
    opt.step()  # momentum from before the prune must not revive the new zeros
    assert masks.sparsity() == pytest.approx(0.5, abs=0.01)
    for name, m in masks.masks.items():
        assert bool((model.get_submodule(name).weight.detach()[~m] == 0).all())
    masks.detach()


def test_prune_to_reaches_absolute_targets_and_never_revives_weights():
    model = _tiny()
    masks = MaskSet.for_model(model)
    masks.prune_to(model, 0.3)
    first = {n: m.clone() for n, m in masks.masks.items()}
    for _name, m in masks.masks.items():  # per layer: each layer at the target
        assert 1 - m.float().mean().item() == pytest.approx(0.3, abs=1.5 / m.numel() + 1e-6)
    masks.prune_to(model, 0.2)  # below the current sparsity: nothing changes
    assert all(torch.equal(first[n], masks.masks[n]) for n in first)
    masks.prune_to(model, 0.7, scope="global")
    assert masks.sparsity() == pytest.approx(0.7, abs=1e-3)
    assert all(bool((first[n] | ~masks.masks[n]).all()) for n in first)  # pruned stays pruned
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        masks.prune_to(model, 1.0)


def test_bad_prune_arguments_are_errors():
    model = _tiny()
    masks = MaskSet.for_model(model)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        masks.prune(model, 1.0)
    with pytest.raises(ConfigError, match="reference_state"):
        masks.prune(model, 0.2, score="magnitude_increase")
    with pytest.raises(ConfigError, match="scope"):
        masks.prune(model, 0.2, scope="network")
    with pytest.raises(TrainingError, match="another model"):
        masks.apply(TinyNet(width=8))


def test_mask_state_round_trips_through_a_weights_only_checkpoint():
    model = _tiny()
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.4, scope="global")
    buf = io.BytesIO()
    torch.save(masks.state_dict(), buf)
    buf.seek(0)
    fresh = MaskSet.for_model(_tiny(1))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(fresh.masks[n], masks.masks[n]) for n in masks.names)
    assert fresh.sparsity() == masks.sparsity()
    with pytest.raises(TrainingError, match="missing"):
        fresh.load_state_dict({"blocks.0": masks.masks["blocks.0"]})


def test_table_and_model_sparsity_count_real_zeros_in_any_model():
    model = _tiny()
    masks = MaskSet.for_model(model)
    masks.prune(model, 0.5)
    rows = masks.table(model)
    assert [r["name"] for r in rows] == ["conv_stem", *INNER, "classifier", "total"]
    by = {r["name"]: r for r in rows}
    assert by["conv_stem"]["zeros"] == 0 and by["conv_stem"]["masked"] is False
    assert by["blocks.3"]["shape"] == [32, 16, 1, 1] and by["blocks.3"]["params"] == 512
    assert by["blocks.3"]["zeros"] == 256 and by["blocks.3"]["sparsity"] == 0.5
    assert by["total"]["params"] == sum(r["params"] for r in rows[:-1])
    assert by["total"]["zeros"] == sum(r["zeros"] for r in rows[:-1])

    # a plain model rebuilt from the saved weights, as after an export round trip
    rebuilt = TinyNet(num_classes=10)
    rebuilt.load_state_dict(model.state_dict())
    s = model_sparsity(rebuilt)
    assert s["zeros"] == by["total"]["zeros"] and s["params"] == by["total"]["params"]
    assert s["layers"]["blocks.6"]["sparsity"] == pytest.approx(by["blocks.6"]["sparsity"])
    assert s["overall"] == pytest.approx(by["total"]["sparsity"])
    assert model_sparsity(_tiny())["zeros"] == 0


def test_count_params_macs_counts_the_dense_network_without_touching_it():
    model = _tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    params, macs = count_params_macs(model, (1, 3, 16, 16))
    assert params == sum(p.numel() for p in model.parameters())
    # convs + linear by hand: 16*16*16*3*9 + 8*8*16*9 + 8*8*32*16 + 4*4*32*32*9 + 32*10 = 300352 (+ BN/ReLU/pool)
    assert 300352 <= macs <= 1.1 * 300352
    _, macs_big = count_params_macs(model, (1, 3, 32, 32))
    assert macs_big == pytest.approx(4 * macs, rel=0.02)
    assert torch.equal(model(x), before)
    with pytest.raises(ConfigError, match="input_shape"):
        count_params_macs(model, (1, 3, 0, 16))


def test_pruning_methods_are_registered_with_did_you_mean():
    assert {"lottery_ticket", "none", "one_shot", "gradual", "nm", "structured", "sparse_transfer"} <= set(
        PRUNE_METHODS.names())
    assert callable(PRUNE_METHODS.handler("lottery_ticket"))
    assert PRUNE_METHODS.get("lth") is PRUNE_METHODS.get("lottery_ticket")
    with pytest.raises(UnknownNameError, match="Did you mean 'lottery_ticket'"):
        PRUNE_METHODS.get("lotery_ticket")
