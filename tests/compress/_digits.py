"""Shared bits of the pruning-method tests: the real digits bundle at 16x16 and a tiny recipe."""

from __future__ import annotations

from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
from edgeslim.compress.data import load_data
from edgeslim.recipe import parse_recipe

CRITICAL = 8


def digits():
    """digits at 16x16 RGB, digit 8 critical and kept at 25% in training."""
    return load_data("digits", preprocessing=Preprocessing(resize=16, crop=16), image_size=16, critical=[CRITICAL],
                     imbalance={str(CRITICAL): 0.25}, val_fraction=0.15, test_fraction=0.25, seed=0)


def recipe(prune: dict, *, epochs: int = 1, final_epochs: int | None = 2, **train):
    t = {"epochs": epochs, "final_epochs": final_epochs, "optimizer": "adamw", "lr": 0.003, "threads": 1}
    t.update(train)
    return parse_recipe({
        "seed": 0, "model": {"source": "tiny"}, "data": {"critical": [CRITICAL], "batch_size": 32},
        "loss": {"gamma": 2.0, "lambda": 1.0}, "train": t, "prune": prune,
    })


def manifest(data, name: str = "pruned") -> Manifest:
    return Manifest(name=name, arch="tiny", classes=data.classes, critical=data.critical,
                    input=TensorInfo(name="input", dtype="float32", shape=[-1, 3, 16, 16]),
                    outputs=[TensorInfo(name="logits", dtype="float32", shape=[-1, len(data.classes)])],
                    preprocessing=data.preprocessing)


def sample_inputs(data, n: int = 64):
    import numpy as np

    xs, ys = [], []
    for x, y in data.loader("test", batch_size=n):
        xs.append(x.numpy())
        ys.append(y.numpy())
        break
    return np.concatenate(xs), np.concatenate(ys)
