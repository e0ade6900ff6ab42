"""``POST /v2/models/{m}[/versions/{v}]/infer``: JSON tensors and the binary tensor extension."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ..errors import EdgeslimError, InputError
from ..registry import did_you_mean
from .errors import ModelNotReadyError
from .protocol import classify_tensor, decode_body, encode_infer_response, parse_infer_request
from .schemas import ERRORS, InferResponseBody

# JSON bodies above this are parsed in a worker thread so one big request cannot stall the event loop.
_THREAD_PARSE_BYTES = 256 * 1024

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": (
            "A v2 inference request. Binary tensor extension: send the JSON header followed by the raw tensors, "
            "with `Inference-Header-Content-Length: <JSON length>` and `parameters.binary_data_size` on each "
            "binary input (little-endian, row-major; BYTES elements are a 4-byte length + bytes). "
            "`Content-Encoding: gzip|deflate` is accepted."
        ),
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequestBody"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "schema": {"type": "integer"},
            "description": "length of the JSON header when binary tensors follow it",
        }
    ],
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON response, or JSON header + binary outputs when any output is binary "
        "(then the `Inference-Header-Content-Length` response header gives the JSON length)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "model": InferResponseBody,
    },
    **ERRORS,
}

router = APIRouter(tags=["inference"])


async def _infer(request: Request, model_name: str, version: str | None) -> Response:
    start = time.perf_counter_ns()
    settings = request.app.state.settings
    model = request.app.state.repository.get(model_name, version)
    try:
        if not model.ready:
            raise ModelNotReadyError(f"model '{model.name}' is not ready (loading or shutting down)")
        raw = await request.body()
        body = decode_body(raw, request.headers.get("content-encoding"), settings.max_body_bytes)
        header_len = request.headers.get("inference-header-content-length")
        if len(body) > _THREAD_PARSE_BYTES and header_len is None:
            req = await run_in_threadpool(parse_infer_request, body, header_len)
        else:
            req = parse_infer_request(body, header_len)
        feeds = model.check_inputs(req.inputs)

        names = [o.name for o in model.backend.outputs]
        wanted = req.outputs if req.outputs is not None else None
        if wanted is not None:
            for o in wanted:
                if o.name not in names:
                    raise InputError(
                        f"unknown output '{o.name}'.{did_you_mean(o.name, names)} Model '{model.name}' has {names}"
                    )
        timeout = settings.request_timeout_s
        if req.timeout_us:
            timeout = min(timeout, req.timeout_us / 1e6)
        out, timing = await model.batcher.submit(feeds, timeout_s=timeout)

        results = []
        if wanted is None:
            results = [(n, out[n], req.binary_default) for n in names]
        else:
            for o in wanted:
                arr = out[o.name]
                if o.classification:
                    arr = classify_tensor(arr, o.classification, model.manifest.classes)
                results.append((o.name, arr, o.binary))
        payload, header_length = encode_infer_response(model.name, model.version, req.id, results)
    except EdgeslimError:
        model.stats.record_failure(time.perf_counter_ns() - start)
        raise
    model.stats.record_success(time.perf_counter_ns() - start, timing, model.items(feeds))
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


@router.post("/v2/models/{model_name}/infer", summary="Inference", openapi_extra=_BODY_DOC, responses=_RESPONSES,
             response_class=Response)
async def infer(request: Request, model_name: str) -> Response:
    return await _infer(request, model_name, None)


@router.post("/v2/models/{model_name}/versions/{version}/infer", summary="Inference (one version)",
             openapi_extra=_BODY_DOC, responses=_RESPONSES, response_class=Response)
async def infer_version(request: Request, model_name: str, version: str) -> Response:
    return await _infer(request, model_name, version)
