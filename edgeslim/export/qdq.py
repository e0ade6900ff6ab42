"""Q/DQ graph transforms (moved to :mod:`edgeslim.quant.qdq`, the INT8 package); this old import path re-exports them."""

from ..quant.qdq import fold_qdq_weights as fold_qdq_weights
from ..quant.qdq import signed_activations as signed_activations

__all__ = ["fold_qdq_weights", "signed_activations"]
