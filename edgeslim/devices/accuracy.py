"""Accuracy of a loaded backend on labelled samples, as deployed, and its deltas against the FP32 entry."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError


def _check_data(data: Any, manifest: Any) -> None:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise DataError("data must be a pair (inputs float32 NCHW array, labels int array)")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim != 4 or x.dtype != np.float32:
        raise DataError(f"data inputs must be float32 NCHW; got dtype {x.dtype}, shape {list(x.shape)}")
    want = manifest.input.shape[1:]
    if any(w != -1 and w != a for w, a in zip(want, x.shape[1:])):
        raise DataError(
            f"data inputs have shape {list(x.shape)} but model '{manifest.name}' takes {manifest.input.shape}"
            " (-1 = any); preprocess with the artifact's preprocessing"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"labels must be one integer per input: {x.shape[0]} inputs, labels of shape {list(y.shape)}")
    if y.size == 0:
        raise DataError("data is empty: no labelled samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integer class indices, got dtype {y.dtype}")
    n = len(manifest.classes)
    bad = sorted({int(v) for v in y if v < 0 or v >= n})
    if bad:
        raise DataError(
            f"labels {bad[:10]} are outside the model's {n} classes ({', '.join(manifest.classes[:5])}"
            f"{', ...' if n > 5 else ''}); the dataset's classes do not match the model"
        )


def _accuracy(backend: Any, data: tuple[np.ndarray, np.ndarray], manifest: Any) -> dict[str, Any]:
    from ..scoring import score

    x, y = np.asarray(data[0], dtype=np.float32), np.asarray(data[1])
    spec = backend.inputs[0]
    fixed = spec.shape[0] if spec.shape and spec.shape[0] != -1 else None
    chunk = fixed or 32
    logits = []
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk]
        pad = 0
        if fixed and len(part) < fixed:  # a fixed-batch model: pad the last chunk, drop the padding after
            pad = fixed - len(part)
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        out = backend.infer({spec.name: np.ascontiguousarray(part)})
        o = out.get("logits", next(iter(out.values())))
        logits.append(o[: len(o) - pad] if pad else o)
    z = np.concatenate(logits)
    if z.ndim != 2 or z.shape[1] != len(manifest.classes):
        raise DataError(f"model output has shape {list(z.shape)}; expected (N, {len(manifest.classes)}) logits")
    # deployed decisions: the manifest's critical-class thresholds under its rule, as in the runtime and the server
    metrics = score(z, y, manifest)
    d = metrics.to_dict()
    d["samples"] = int(len(y))
    return d


def add_accuracy_deltas(entries: list[dict[str, Any]]) -> None:
    """Add ``accuracy_delta`` to every entry with accuracy: its difference to the FP32 reference entry.

    The reference is another FP32 run on the same backend, else another FP32 run, else the entry itself (same
    samples). Deltas are
    ``this - reference`` for top-1 accuracy, per-class recall and the critical classes' FN / FNR / AUC.
    """
    with_acc = [e for e in entries if isinstance(e.get("accuracy"), dict) and "accuracy" in e["accuracy"]]
    fp32 = [r for r in with_acc if r["model"]["precision"] == "fp32"]
    for e in with_acc:
        same = lambda r, e=e: (r["model"]["path"], r["backend"]["name"]) == (e["model"]["path"], e["backend"]["name"])  # noqa: E731
        # Prefer a different FP32 run on the same backend, then any other FP32 run (an FP32 model on a second
        # backend is compared with the first, which shows cross-backend drift), then itself.
        ref = (
            next((r for r in fp32 if r["backend"]["name"] == e["backend"]["name"] and not same(r)), None)
            or next((r for r in fp32 if not same(r)), None)
            or next((r for r in fp32 if same(r)), None)
        )
        if ref is None:
            e["accuracy_delta"] = {"reference": None, "reason": "no fp32 model in the artifact to compare against"}
            continue
        e["accuracy_delta"] = accuracy_delta(e["accuracy"], ref["accuracy"])
        e["accuracy_delta"]["reference"] = f"{ref['model']['path']} on {ref['backend']['name']}"


def accuracy_delta(acc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """``acc - ref`` for accuracy, per-class recall and critical FN / FNR / AUC (both from ``to_dict()``)."""
    out: dict[str, Any] = {"accuracy": _sub(acc.get("accuracy"), ref.get("accuracy"))}
    pa, pr = _per_class(acc), _per_class(ref)
    out["per_class_recall"] = {k: _sub(pa.get(k), pr.get(k)) for k in pa}
    ca, cr = acc.get("critical_stats") or {}, ref.get("critical_stats") or {}
    out["critical"] = {
        str(k): {f: _sub(v.get(f), (cr.get(k) or {}).get(f)) for f in ("fn", "fnr", "fpr", "auc")} for k, v in ca.items()
    }
    return out


def _per_class(acc: dict[str, Any]) -> dict[str, Any]:
    pc = acc.get("per_class") or {}
    if isinstance(pc, list):
        return {str(i): v for i, v in enumerate(pc)}
    return {str(k): (v.get("recall") if isinstance(v, dict) else v) for k, v in pc.items()}


def _sub(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) - float(b)
    return None
