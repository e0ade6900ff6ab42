"""Model statistics: zeros per layer, parameters and MACs, the input shape of a data bundle."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, TrainingError
from ...models import prunable_layers


def count_params_macs(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass (dense count: zeros are still counted).

    Args:
        model: the network (not modified; Torch-Pruning counts on a copy).
        input_shape: e.g. ``(1, 3, 224, 224)``.
    """
    import torch_pruning as tp

    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise ConfigError(f"input_shape {tuple(input_shape)}: give positive sizes, e.g. (1, 3, 224, 224)")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(tuple(int(d) for d in input_shape), device=device))
    return int(params), int(macs)



def example_shape(data: Any, batch: int = 1) -> tuple[int, ...]:
    """``(batch, C, H, W)`` of the data's inputs (from one sample), for tracing and MAC counts."""
    for split in ("val", "test", "train"):
        try:
            x, _ = next(iter(data.loader(split, batch_size=1, shuffle=False)))
        except (StopIteration, KeyError, ValueError):
            continue
        return (batch, *tuple(x.shape[1:]))
    raise TrainingError("the data has no sample to take the input shape from")



def model_sparsity(model: nn.Module) -> dict[str, Any]:
    """Zeros in every Conv/Linear weight of any model (no masks needed, e.g. after reloading an export).

    Returns:
        ``{"overall": float, "params": int, "zeros": int, "layers": {name: {"params", "zeros", "sparsity"}}}``.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, m in prunable_layers(model):
        w = m.weight.detach()
        params, zeros = w.numel(), int((w == 0).sum())
        layers[name] = {"params": params, "zeros": zeros, "sparsity": zeros / params if params else 0.0}
    params = sum(v["params"] for v in layers.values())
    zeros = sum(v["zeros"] for v in layers.values())
    return {"overall": zeros / params if params else 0.0, "params": params, "zeros": zeros, "layers": layers}

