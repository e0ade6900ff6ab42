"""Model outputs over a loader (:func:`predict_logits`, torch) and the scoring names the stages import from here.

The scoring itself (softmax, the deployed decision, critical FN/FPR, :class:`ClassificationMetrics`) lives in
:mod:`edgeslim.scoring`, below every stage; ``evaluate`` is its :func:`~edgeslim.scoring.score`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
