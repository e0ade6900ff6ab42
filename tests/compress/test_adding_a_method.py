"""The worked example of docs/adding-a-pruning-method.md, run: a new method is one config class and one function.

Random unstructured pruning (a baseline every magnitude criterion must beat) is registered, chosen from a recipe,
and run through ``edgeslim.compress`` on TinyNet + real digits at 16x16.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
from pydantic import Field

import edgeslim
from edgeslim.compress.prune import PRUNE_METHODS, LayerPruneConfig, PruneContext, PruneResult
from edgeslim.errors import ConfigError
from edgeslim.recipe import LossSection, TrainSection, parse_recipe

from _digits import digits as _digits

torch.set_num_threads(1)


# -- the example, as in the docs --------------------------------------------------------------------------------------


class RandomPruning(LayerPruneConfig):
    """Random unstructured pruning to a target sparsity, after the dense round."""

    method: Literal["random"] = "random"
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="fraction of weights set to zero in each layer")
    seed: int = Field(default=0, description="seeds the choice of weights")


def random_pruning(cfg: RandomPruning, ctx: PruneContext) -> PruneResult:
    """Dense round, then ``cfg.sparsity`` of each masked layer's weights chosen at random, then masked fine-tuning."""
    from edgeslim.compress.prune.flow import train_dense_then_pruned

    def prune(model: Any, masks: Any) -> tuple[Any, Any, dict[str, Any]]:
        g = torch.Generator().manual_seed(cfg.seed)
        for name, mask in masks.masks.items():
            k = int(round(cfg.sparsity * mask.numel()))
            flat = mask.flatten().clone()
            flat[torch.randperm(mask.numel(), generator=g)[:k]] = False
            masks.masks[name] = flat.view_as(mask)
        masks.apply(model)
        return model, masks, {"target_sparsity": cfg.sparsity, "seed": cfg.seed}

    return train_dense_then_pruned(ctx, cfg, prune)


# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def registered():
    PRUNE_METHODS.register(RandomPruning, aliases=("rand",))(random_pruning)  # in a plugin: the decorator
    try:
        yield
    finally:
        PRUNE_METHODS.unregister("random")
    assert "random" not in PRUNE_METHODS and "rand" not in PRUNE_METHODS


def test_a_registered_method_is_chosen_by_a_recipe_and_runs_through_compress(registered, tmp_path):
    # the recipe knows it at once: by name or alias, its own keys validated, others named
    r = parse_recipe({"version": 2, "prune": {"method": "rand", "sparsity": 0.7}})
    assert r.prune == RandomPruning(sparsity=0.7) and r.to_dict()["prune"]["method"] == "random"
    with pytest.raises(ConfigError, match="unknown key 'prune.rate' for method 'random'.*sparsity, seed"):
        parse_recipe({"version": 2, "prune": {"method": "random", "rate": 0.7}})

    data = _digits()
    train = TrainSection(epochs=1, final_epochs=1, optimizer="adamw", lr=0.003, threads=1)
    res = edgeslim.compress("tiny", data, prune=RandomPruning(sparsity=0.5), train=train,
                            loss=LossSection(gamma=2.0), run_dir=tmp_path, progress=False)
    assert res.info == {"target_sparsity": 0.5, "seed": 0}
    assert res.sparsity == pytest.approx(0.5, abs=0.01)
    assert [r["round"] for r in res.rounds] == [1, 2] and res.dense_model is not None
    for name, mask in res.masks.masks.items():
        w = res.model.get_submodule(name).weight.detach()
        assert bool((w[~mask] == 0).all())  # pruned weights stayed exactly zero through the fine-tuning
        # random, not magnitude: some pruned weight of the dense model was larger than a kept one
        dense = res.dense_model.get_submodule(name).weight.detach().abs()
        assert dense[~mask].max() > dense[mask].min()
    assert 0 <= res.metrics.accuracy <= 1 and res.metrics.critical_recall() is not None
