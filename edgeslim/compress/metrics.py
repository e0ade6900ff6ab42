"""Model outputs over a loader (:func:`predict_logits`, torch) and the scoring names the stages import from here.

The scoring itself (softmax, the deployed decision, critical FN/FPR, :class:`ClassificationMetrics`) lives in
:mod:`edgeslim.scoring`, below every stage; ``evaluate`` is its :func:`~edgeslim.scoring.score`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decision import predict as predict  # the one decision rule; callers also import it from here
from ..errors import DataError
from ..scoring import ClassificationMetrics as ClassificationMetrics, score as score, softmax as softmax

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import DataLoader

#: the older name of :func:`edgeslim.scoring.score`
evaluate = score


def predict_logits(
    model: "torch.nn.Module", loader: "DataLoader", device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``loader`` in eval mode without gradients; return ``(logits, labels)`` as numpy arrays.

    Nothing is cached: each call runs the model again. The model's train/eval mode is restored afterwards.
    """
    import torch

    was_training = model.training
    model.eval()
    outs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for x, y in loader:
                out = model(x.to(device))
                outs.append(out.float().cpu().numpy())
                ys.append(torch.as_tensor(y).cpu().numpy())
    finally:
        model.train(was_training)
    if not outs:
        raise DataError("the loader yielded no batches: the split is empty")
    return np.concatenate(outs), np.concatenate(ys).astype(np.int64)


#: model -> {(split, id(data)): (weakref to data, state key, logits, labels)}; entries go with their model
_SPLIT_LOGITS: "weakref.WeakKeyDictionary[Any, dict[tuple[str, int], tuple[Any, tuple, np.ndarray, np.ndarray]]]" = (
    weakref.WeakKeyDictionary())


def _state_key(model: "torch.nn.Module") -> tuple:
    """What changes whenever the model's numbers do: each parameter and buffer's identity and in-place version
    counter (an optimizer step, a BatchNorm update, a pruning that swaps tensors all change it)."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def split_logits(model: "torch.nn.Module", data: Any, split: str, *, batch_size: int = 64,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_logits` over ``data``'s fixed split (its unshuffled eval loader), computed once per model,
    split and state: the pipeline scores a finished model on test, calibrates its threshold on val and validates
    every exported file against the same logits, and each torch pass over a split costs seconds at 192-224 px.

    A model whose parameters or buffers changed since (training goes on, BatchNorm statistics move) is run again.
    Returns copies: a caller may modify what it gets.
    """
    memo = _SPLIT_LOGITS.setdefault(model, {})
    key, state = (split, id(data)), _state_key(model)
    hit = memo.get(key)
    if hit is not None and hit[0]() is data and hit[1] == state:
        return hit[2].copy(), hit[3].copy()
    logits, labels = predict_logits(model, data.loader(split, batch_size=batch_size, shuffle=False), device=device)
    memo[key] = (weakref.ref(data), state, logits, labels)
    return logits.copy(), labels.copy()
