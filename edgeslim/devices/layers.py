"""Per-layer profile of one loaded model file (``edgeslim profile ARTIFACT --layers``).

The times come from the runner itself (:meth:`edgeslim.runtime.base.Backend.layer_times`: OpenVINO ``PERF_COUNT``,
ONNX Runtime's profiler, TensorRT's ``IProfiler``), as ``benchmark_app -pc`` and ``trtexec --dumpProfile`` show
them; the search's latency model reads the same method. Their sum is set against the end-to-end median of the same
file and batch: the layers leave out the call's overhead and the gaps between kernels, so the sum is below it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import EdgeslimError

#: runs of the profiled model per file and batch (each layer's figure is its median over them)
LAYER_RUNS = 20


def layer_profile(backend: Any, shape: Sequence[int], dtype: str, *, end_to_end_ms: float | None,
                  runs: int = LAYER_RUNS) -> dict[str, Any]:
    """Each layer's time of ``backend`` at input ``shape``, the sum, the share per op type.

    Returns:
        ``{"runs", "layers": [{"name", "type", "exec", "ms", "share"}] slowest first, "by_type": [{"type",
        "layers", "ms", "share"}] slowest first, "sum_ms", "end_to_end_ms", "sum_over_end_to_end"}``, or
        ``{"error": ...}`` when the backend has no per-layer profiler or the run failed (the entry is kept).
    """
    # the input the latency figures ran with (same seed), so the counters see the same data-dependent kernels
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(dtype)
    try:
        rows = backend.layer_times({backend.inputs[0].name: x}, runs=runs)
    except EdgeslimError as exc:
        return {"error": str(exc)}
    total = float(sum(r["ms"] for r in rows))
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault(r["type"] or "(not named)", {"type": r["type"] or "(not named)", "layers": 0, "ms": 0.0})
        g["layers"] += 1
        g["ms"] += r["ms"]

    def share(ms: float) -> float | None:
        return ms / total if total > 0 else None

    return {
        "runs": runs,
        "layers": [{**r, "share": share(r["ms"])} for r in sorted(rows, key=lambda r: -r["ms"])],
        "by_type": [{**g, "share": share(g["ms"])} for g in sorted(groups.values(), key=lambda g: -g["ms"])],
        "sum_ms": total,
        "end_to_end_ms": end_to_end_ms,
        "sum_over_end_to_end": total / end_to_end_ms if end_to_end_ms else None,
    }
