"""``POST /v1/models/{m}/classify``: images in, top-k labels and critical-class decisions out.

This is what an application on the device calls: it uploads JPEG/PNG bytes (multipart form, one or more files,
or the raw image as the body) and gets labels, probabilities and which critical classes fired against the
thresholds in the artifact's manifest. Preprocessing is the manifest's, through :mod:`edgeslim.preprocess`, so
the server sees the same pixels as evaluation did.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import EdgeslimError, InputError
from .errors import ModelNotReadyError
from .schemas import ERRORS, ClassifyResponse

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One or more images as multipart files (any field name, e.g. `file`), or one image as the raw "
        "body. JPEG, PNG and anything else Pillow reads.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

router = APIRouter(tags=["classification"])


def describe(probs: np.ndarray, manifest: Any, top_k: int) -> list[dict[str, Any]]:
    """Per-image decision, top-k and critical classes from probabilities ``(N, C)``.

    Uses the runtime's decision rule (:func:`edgeslim.runtime.predictor.decide`), so the server and an in-process
    :class:`~edgeslim.runtime.Predictor` always agree on which critical classes fired.
    """
    from ..runtime.predictor import decide

    classes = manifest.classes
    label = lambda i: classes[i] if i < len(classes) else str(i)  # noqa: E731
    results = []
    for row in probs:
        chosen, fired = decide(row, manifest.critical, manifest.thresholds, manifest.decision_rule)
        order = np.argsort(-row, kind="stable")[: min(top_k, row.shape[0])]
        critical = []
        for i in manifest.critical:
            thr = manifest.thresholds.get(str(i))
            critical.append(
                {"index": i, "label": label(i), "probability": float(row[i]), "threshold": thr, "fired": i in fired}
            )
        results.append(
            {
                "prediction": {"index": chosen, "label": label(chosen), "probability": float(row[chosen])},
                "top_k": [{"index": int(i), "label": label(int(i)), "probability": float(row[i])} for i in order],
                "critical": critical,
                "fired": [label(i) for i in fired],
            }
        )
    return results


async def _images(request: Request, limit: int) -> list[bytes]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        async with request.form(max_files=limit, max_fields=limit) as form:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            images = [await f.read() for f in files]
        if not images:
            raise InputError("the multipart form has no file parts; upload the image as a file field, e.g. -F file=@x.jpg")
    else:
        images = [await request.body()]
    if len(images) > limit:
        raise InputError(f"{len(images)} images in one request; at most {limit} (the model's max batch)")
    for i, im in enumerate(images):
        if not im:
            raise InputError(f"image {i} is empty; send JPEG or PNG bytes")
    return images


@router.post(
    "/v1/models/{model_name}/classify",
    summary="Classify images",
    response_model=ClassifyResponse,
    openapi_extra=_BODY_DOC,
    responses=ERRORS,
)
async def classify(
    request: Request,
    model_name: str,
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return per image"),
) -> dict[str, Any]:
    start = time.perf_counter_ns()
    settings = request.app.state.settings
    model = request.app.state.repository.get(model_name)
    try:
        if not model.ready:
            raise ModelNotReadyError(f"model '{model.name}' is not ready (loading or shutting down)")
        images = await _images(request, max(model.max_batch, 1))
        from ..preprocess import preprocess

        # Decoding and resizing are CPU work: keep them off the event loop.
        x = await run_in_threadpool(preprocess, images, model.manifest.preprocessing)
        feeds = model.check_inputs({model.backend.inputs[0].name: x})
        out, timing = await model.batcher.submit(feeds, timeout_s=settings.request_timeout_s)
        logits = out[model.backend.outputs[0].name]
        from ..runtime.predictor import softmax

        results = describe(softmax(logits.reshape(logits.shape[0], -1)), model.manifest, top_k)
    except EdgeslimError:
        model.stats.record_failure(time.perf_counter_ns() - start)
        raise
    model.stats.record_success(time.perf_counter_ns() - start, timing, len(images))
    return {"model": model.name, "results": results}
