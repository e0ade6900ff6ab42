"""Compression: pretrained sources, data, the class-dependent loss, pruning, fine-tuning and quantization.

The package is also the verb: ``edgeslim.compress(model, data, prune=OneShot(sparsity=0.8), run_dir=...)`` calls
:func:`edgeslim.compress.api.compress`. Importing it stays light (no torch).
"""

from .._verbs import make_callable as _make_callable

_make_callable(__name__, "edgeslim.compress.api:compress")
