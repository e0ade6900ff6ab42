"""What the server compares live traffic with: the val reference stored per model file, and the input statistic.

The export stores, for each model file it writes with a val split, a small versioned reference in the file's
``extra["field_reference"]`` (:class:`~edgeslim.artifact.FieldReference`): a capped, seeded sample of the val
critical-class probabilities, of two cheap input statistics per image, and the file's val recall on each critical
class at its deployed thresholds. The server (:mod:`edgeslim.server.monitor`) tests recent requests against it.
Both sides compute the input statistics with :func:`input_statistics`, here, so that they measure the same thing.
"""

from __future__ import annotations

import numpy as np

#: Where a model file keeps its reference (``ModelFile.extra``) and the version this edgeslim writes and reads.
REFERENCE_KEY = "field_reference"
REFERENCE_VERSION = 1
#: Most values per sample stored in a reference (val splits are small; this bounds the manifest on large ones).
REFERENCE_CAP = 1000
#: Input values per image that the input statistics read (a fixed stride through the flat image); the reference
#: records the number it was computed with (``FieldReference.input_values``) and the server reads as many. 256: the
#: strided copy costs about a microsecond per request, and the per-image mean and spread it estimates vary far more
#: between images than within one.
STAT_VALUES = 256


def input_sample(x: np.ndarray, values: int = STAT_VALUES) -> np.ndarray:
    """``(n, k)``: at most ``values`` values of each image of ``x`` (``(n, ...)`` preprocessed input), read at a fixed
    stride that depends only on the image size, so the reference and the server read the same pixels. A view: the
    server copies it into its window and computes the statistics later, out of the request path."""
    a = np.asarray(x)
    flat = a.reshape(a.shape[0] if a.ndim else 1, -1)
    step = max(1, flat.shape[1] // values)
    return flat[:, : step * values : step]


def input_statistics(x: np.ndarray, *, sampled: bool = False, values: int = STAT_VALUES) -> np.ndarray:
    """Per image of ``x``: ``(n, 2)`` mean and standard deviation of its :func:`input_sample` (``sampled``: ``x``
    already is one)."""
    sub = np.asarray(x if sampled else input_sample(x, values), dtype=np.float64)
    out = np.empty((sub.shape[0], 2), dtype=np.float64)
    out[:, 0] = sub.mean(axis=1)
    out[:, 1] = sub.std(axis=1)
    return out


def capped_sample(values: np.ndarray, cap: int = REFERENCE_CAP, seed: int = 0) -> list[float]:
    """At most ``cap`` of ``values`` (a seeded sample without replacement when there are more), sorted, rounded to
    7 significant digits (float32 precision) so the manifest stays small."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) > cap:
        v = np.random.default_rng(seed).choice(v, size=cap, replace=False)
    return [float(f"{x:.7g}") for x in np.sort(v)]
