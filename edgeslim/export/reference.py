"""The val reference each exported model file carries for monitoring in the field (``extra["field_reference"]``).

Computed where the export calibrates thresholds on val (:func:`edgeslim.export.base._export`), inside the atomic
artifact write, so a manifest never lists a reference for other files than those it describes. What it holds is
:class:`~edgeslim.artifact.FieldReference`; what reads it is :mod:`edgeslim.server.monitor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifact import Manifest, ModelFile
from ..errors import EdgeslimError
from ..field_reference import REFERENCE_KEY, REFERENCE_VERSION, capped_sample, input_statistics


def file_logits(directory: Path, mf: ModelFile, x: np.ndarray, torch_logits: np.ndarray) -> np.ndarray | None:
    """The val logits of one model file: its own run for reduced precision (INT8 and FP16 move the scores), the
    PyTorch model's for FP32 files (they match it within the validation tolerance); None when it cannot run here."""
    if mf.precision not in ("int8", "fp16"):
        return torch_logits
    from ..runtime import BACKENDS, BackendOptions
    from .validate import DEFAULT_BACKENDS, VALIDATION_OPTIONS, _run

    name = DEFAULT_BACKENDS.get(mf.format)
    if name is None or name not in BACKENDS:
        return None
    try:
        with BACKENDS.get(name)(directory / mf.path, BackendOptions(**VALIDATION_OPTIONS.get(name, {}))) as b:
            return np.asarray(_run(b, x), dtype=np.float32)
    except EdgeslimError:
        return None


def field_reference(m: Manifest, mf: ModelFile, logits: np.ndarray, labels: np.ndarray,
                    stats: np.ndarray) -> dict[str, Any]:
    """The reference of ``mf`` from its val ``logits``, the val ``labels`` and the val :func:`input_statistics`."""
    from ..compress.metrics import evaluate
    from ..runtime.predictor import softmax

    thresholds = {int(k): v for k, v in m.thresholds_for(mf).items()}
    metrics = evaluate(logits, labels, m.classes, m.critical, thresholds=thresholds, rule=m.decision_rule)
    probs = softmax(logits)
    recall = {}
    for c in m.critical:
        row = metrics.per_class[c]
        recall[str(c)] = {"hits": int(row["tp"]), "positives": int(row["tp"] + row["fn"])}
    return {
        "version": REFERENCE_VERSION,
        "split": "val",
        "samples": int(len(labels)),
        "critical_scores": {str(c): capped_sample(probs[:, c], seed=c) for c in m.critical},
        "input_mean": capped_sample(stats[:, 0], seed=101),
        "input_std": capped_sample(stats[:, 1], seed=101),
        "critical_recall": recall,
    }


def store_field_references(directory: Path, m: Manifest, files: Sequence[ModelFile], model: Any,
                           val_split: tuple[np.ndarray, np.ndarray], *,
                           torch_logits: np.ndarray | None = None) -> None:
    """Give each of ``files`` its val reference (``extra["field_reference"]``); a file that cannot run here, or a
    manifest without critical classes, gets none (the server then reports drift as off for it).

    ``torch_logits``: the torch model's logits on the val inputs when the caller has them (computed here if not)."""
    if not m.critical:
        return
    x = np.asarray(val_split[0], dtype=np.float32)
    y = np.asarray(val_split[1]).astype(np.int64)
    if not len(y):
        return
    stats = input_statistics(x)
    torch_logits = np.asarray(_reference_logits(model, x) if torch_logits is None else torch_logits, dtype=np.float32)
    for mf in files:
        logits = file_logits(directory, mf, x, torch_logits)
        if logits is not None:
            mf.extra[REFERENCE_KEY] = field_reference(m, mf, logits, y, stats)


def _reference_logits(model: Any, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """The torch model's logits on ``inputs`` (float32 NCHW), in batches: the reference every exported file is
    validated against."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch], dtype=np.float32))).numpy())
    return np.concatenate(out)
