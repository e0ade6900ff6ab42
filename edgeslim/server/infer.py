"""``POST /v2/models/{m}[/versions/{v}]/infer``: JSON tensors and the binary tensor extension.

The hot path of the server. :class:`InferEndpoint` answers these requests as a plain ASGI app that the server app
calls before FastAPI's middleware stack and router: one pass over the headers for the token and the body limit
(:class:`~edgeslim.server.guard.Guard`), the body read straight from ``receive``, the v2 header parsed by
:mod:`~edgeslim.server.protocol` (``json`` + explicit checks, no pydantic model), tensors as ``np.frombuffer`` views
of the body, and the answer sent as two ASGI messages. For a small model FastAPI's routing, dependency solving and
middleware layers cost more than parsing and encoding together. The FastAPI routes below stay for the OpenAPI
document and run the same :func:`infer_body`, so both paths answer identically.
"""

from __future__ import annotations

import re
import time
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ..errors import EdgeslimError, InputError
from ..registry import did_you_mean
from .errors import ModelNotReadyError, error_response
from .batcher import Timing
from .guard import Guard
from .http_protocol import BODY_EXTENSION, BodyBuffer
from .protocol import (
    InferRequest,
    classify_tensor,
    decode_body,
    encode_infer_response,
    parse_infer_request,
    write_shared_memory,
)
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


async def infer_body(
    model: Any,
    settings: Any,
    read_body: Callable[[], Awaitable[bytes | memoryview]],
    content_encoding: str | None,
    header_len: str | None,
    start_ns: int,
    alone: Callable[[], bool] = lambda: False,
    shm: Any = None,
) -> tuple[bytes, int | None]:
    """Run one inference request on ``model`` and record it in the model's statistics.

    Args:
        read_body: returns the raw request body (called once the model is known to be ready).
        content_encoding: the ``Content-Encoding`` header, if any.
        header_len: the ``Inference-Header-Content-Length`` header, if any.
        start_ns: ``time.perf_counter_ns()`` when the request arrived (the statistics' request duration).
        alone: tells, when the request is ready to run, whether it is the only one in the server (then the
            batcher may run it inline, see :mod:`edgeslim.server.batcher`).
        shm: the server's :class:`~edgeslim.server.sharedmem.SharedMemoryRegistry`, None when shared memory is off.

    Returns:
        ``(body, header_length)`` as :func:`~edgeslim.server.protocol.encode_infer_response` gives them.

    Raises:
        EdgeslimError: bad input (4xx), a full queue or shutdown (503), a timeout (504), a model failure (500).
    """
    try:
        if not model.ready:
            raise ModelNotReadyError(f"model '{model.name}' is not ready (loading or shutting down)")
        raw = await read_body()
        body = decode_body(raw, content_encoding, settings.max_body_bytes)
        view = None if shm is None else shm.view
        if len(body) > _THREAD_PARSE_BYTES and header_len is None:
            req = await run_in_threadpool(parse_infer_request, body, header_len, view)
        else:
            req = parse_infer_request(body, header_len, view)
        results, timing, items = await run_request(model, settings, req, alone)
        payload, header_length = encode_infer_response(model.name, model.version, req.id, results)
    except EdgeslimError:
        model.stats.record_failure(time.perf_counter_ns() - start_ns)
        raise
    model.stats.record_success(time.perf_counter_ns() - start_ns, timing, items)
    return payload, header_length


async def run_request(
    model: Any, settings: Any, req: InferRequest, alone: Callable[[], bool], deadline_s: float | None = None
) -> tuple[list[tuple[str, np.ndarray, Any]], Timing, int]:
    """Check a parsed request against ``model``, run it through the model's batcher and pick its outputs.

    Shared by REST (:func:`infer_body`) and gRPC (:mod:`edgeslim.server.grpc_service`), so both protocols check,
    batch and answer alike. The caller records the statistics.

    With field monitoring on, sets ``req.id`` to the id the answer must carry (the client's, else a generated one)
    once the model has answered: feedback refers to it (:mod:`edgeslim.server.monitor`).

    Args:
        deadline_s: seconds the client still waits (a gRPC deadline); the request's timeout is capped by it.

    Returns:
        ``(outputs, timing, items)``: ``(name, array, binary)`` per output (``binary`` is an output's
        shared-memory parameters once written there), where the time went, and the batch rows inferred.

    Raises:
        EdgeslimError: bad input (4xx), a full queue or shutdown (503), a timeout (504), a model failure (500).
    """
    feeds = model.check_inputs(req.inputs)
    names = model.output_names
    wanted = req.outputs
    if wanted is not None:
        for o in wanted:
            if o.name not in names:
                raise InputError(
                    f"unknown output '{o.name}'.{did_you_mean(o.name, names)} Model '{model.name}' has {names}"
                )
    timeout = settings.request_timeout_s
    if req.timeout_us:
        timeout = min(timeout, req.timeout_us / 1e6)
    if deadline_s is not None:
        timeout = min(timeout, max(deadline_s, 1e-3))
    out, timing = await model.batcher.submit(feeds, timeout_s=timeout, inline=alone())
    if model.monitor is not None:  # feedback and drift (edgeslim.server.monitor); the answer carries the id
        req.id = model.monitor.record_soon(req.id, feeds, out)

    results: list[tuple[str, np.ndarray, Any]]
    if wanted is None:
        results = [(n, out[n], req.binary_default) for n in names]
    else:
        results = []
        for o in wanted:
            arr = out[o.name]
            if o.classification:
                arr = classify_tensor(arr, o.classification, model.manifest.classes)
            if o.shm is not None:
                dest, echo = o.shm
                write_shared_memory(arr, dest, o.name)
                results.append((o.name, arr, echo))
            else:
                results.append((o.name, arr, o.binary))
    return results, timing, model.items(feeds)


#: The inference paths, as FastAPI's ``{model_name}`` / ``{version}`` parameters match them (no '/' inside).
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

_JSON = [(b"content-type", b"application/json")]
_BINARY = [(b"content-type", b"application/octet-stream")]


def _header_int(value: bytes | str | None) -> int | None:
    """An integer header value; None when absent or malformed (parse_infer_request reports a bad header)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Disconnected(Exception):
    """The client closed the connection before its request body arrived."""


class InferEndpoint:
    """The ASGI fast path for ``POST /v2/models/{m}[/versions/{v}]/infer`` (see the module docstring).

    Same checks, statistics and answers as the FastAPI route, errors included: every failure is
    ``{"error": ...}`` with the status :func:`~edgeslim.server.errors.http_status` gives it.
    """

    def __init__(self, repository: Any, settings: Any, guard: Guard, shared_memory: Any = None) -> None:
        self.repository = repository
        self.settings = settings
        self.guard = guard
        self.shared_memory = shared_memory
        self.in_flight = 0  # inference requests between arrival and answer (all on the event loop: no lock)

    def _alone(self) -> bool:
        return self.in_flight == 1

    def body_buffer(self, scope: dict) -> BodyBuffer | None:
        """A buffer to receive the body of ``scope`` into, if this endpoint will answer it and may read it.

        Called by :class:`~edgeslim.server.http_protocol.InferHttpProtocol` once the request headers are in: only
        an inference request that passes the guard (token, ``Content-Length`` within the limit) gets one, so
        nothing is buffered for a request that is about to be refused.
        """
        if self.match(scope) is None or self.guard.reject(scope) is not None:
            return None
        size = align_at = None
        for key, value in scope["headers"]:
            if key == b"content-length":  # the HTTP parser has refused malformed or duplicate ones
                size = _header_int(value)
            elif key == b"inference-header-content-length":
                align_at = _header_int(value)
        if size is None or size < 0:  # chunked: uvicorn's own path, counted against the limit as it streams
            return None
        return BodyBuffer(size, align_at)

    def match(self, scope: dict) -> tuple[str, str | None] | None:
        """``(model, version)`` if ``scope`` is an inference request this endpoint answers, else None."""
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root):]
        m = INFER_PATH.fullmatch(path)
        return None if m is None else (m.group(1), m.group(2))

    async def __call__(self, scope: dict, receive: Any, send: Any, model_name: str, version: str | None) -> None:
        start = time.perf_counter_ns()
        rejected = self.guard.reject(scope)
        if rejected is not None:
            return await rejected(scope, receive, send)
        encoding = header_len = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_len = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")

        buffer = scope.get("extensions", {}).get(BODY_EXTENSION)  # InferHttpProtocol's, under uvicorn

        async def read_body() -> bytes | memoryview:
            if buffer is not None:
                body = await buffer.wait()
            else:  # binary tensors start right after the JSON header: have them land aligned
                body = await self.guard.read_body(receive, align_at=_header_int(header_len))
            if body is None:
                raise _Disconnected
            return body

        self.in_flight += 1
        try:
            model = self.repository.get(model_name, version)
            payload, header_length = await infer_body(
                model, self.settings, read_body, encoding, header_len, start, self._alone, self.shared_memory
            )
        except _Disconnected:  # the client went away while sending: nobody to answer
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer, as FastAPI's handlers do
            return await error_response(exc, scope["path"])(scope, receive, send)
        finally:
            self.in_flight -= 1
        if header_length is None:
            headers = [*_JSON, (b"content-length", str(len(payload)).encode())]
        else:
            headers = [*_BINARY, (b"inference-header-content-length", str(header_length).encode()),
                       (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _infer(request: Request, model_name: str, version: str | None) -> Response:
    start = time.perf_counter_ns()
    model = request.app.state.repository.get(model_name, version)
    payload, header_length = await infer_body(
        model,
        request.app.state.settings,
        request.body,
        request.headers.get("content-encoding"),
        request.headers.get("inference-header-content-length"),
        start,
        shm=request.app.state.shared_memory,
    )
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
