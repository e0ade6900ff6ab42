"""Q/DQ graph transforms (moved to :mod:`edgeslim.compress.qdq`, beside the quantizers that use them)."""

from ..compress.qdq import fold_qdq_weights as fold_qdq_weights
from ..compress.qdq import signed_activations as signed_activations

__all__ = ["fold_qdq_weights", "signed_activations"]
