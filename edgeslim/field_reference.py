"""What the server compares live traffic with: the val reference stored per model file, and the input statistic.

The export stores, for each model file it writes with a val split, a small versioned reference in the file's
``extra["field_reference"]`` (:class:`~edgeslim.artifact.FieldReference`): a capped, seeded sample of the val
critical-class probabilities, of two cheap input statistics per image, and the file's val recall on each critical
class at its deployed thresholds. The server (:mod:`edgeslim.server.monitor`) tests recent requests against it.
Both sides compute the input statistics with :func:`input_statistics`, here, so that they measure the same thing.
"""

from __future__ import annotations

import math

import numpy as np

#: Where a model file keeps its reference (``ModelFile.extra``) and the version this edgeslim writes and reads.
REFERENCE_KEY = "field_reference"
REFERENCE_VERSION = 2  # 2: input statistics over every value (1: a strided sample)
#: Most values per sample stored in a reference (val splits are small; this bounds the manifest on large ones).
REFERENCE_CAP = 1000
def input_statistics(x: np.ndarray) -> np.ndarray:
    """Per image of ``x`` (``(n, ...)`` preprocessed float input): ``(n, 2)`` mean and standard deviation over every
    value of the image.

    Over every value, not a strided sample: a fixed sample of a structured image (a solar cell's busbars) reads other
    structures once the image is turned, and a model trained with flips and turns would then see drift in traffic
    that is not drifting. Two contiguous float32 reductions (``einsum``): about 10 us for a 3x64x64 image and 80 us
    for 3x224x224 on a loaded 2-core host, against a model that runs milliseconds on either.
    """
    flat = np.asarray(x, dtype=np.float32).reshape(x.shape[0] if np.ndim(x) else 1, -1)
    n = flat.shape[1]
    if flat.shape[0] == 1:  # one image per request, the server's common case: two reductions, Python floats
        # einsum, not np.dot: OpenBLAS threads a dot this long, and waking its sleeping threads on every request of
        # an idle server cost more than the reduction itself (a live on/off A/B measured +0.3 ms p50 with np.dot)
        f = flat[0]
        mean = float(np.add.reduce(f)) / n
        return np.array([[mean, math.sqrt(max(float(np.einsum("i,i->", f, f)) / n - mean * mean, 0.0))]])
    out = np.empty((flat.shape[0], 2), dtype=np.float64)
    out[:, 0] = np.add.reduce(flat, axis=1)  # float32 pairwise summation: accurate, and the fastest reduction
    out[:, 1] = np.einsum("ij,ij->i", flat, flat)
    out /= n
    out[:, 1] -= out[:, 0] * out[:, 0]
    np.sqrt(np.maximum(out[:, 1], 0.0, out=out[:, 1]), out=out[:, 1])
    return out


def capped_sample(values: np.ndarray, cap: int = REFERENCE_CAP, seed: int = 0) -> list[float]:
    """At most ``cap`` of ``values`` (a seeded sample without replacement when there are more), sorted, rounded to
    7 significant digits (float32 precision) so the manifest stays small."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) > cap:
        v = np.random.default_rng(seed).choice(v, size=cap, replace=False)
    return [float(f"{x:.7g}") for x in np.sort(v)]
