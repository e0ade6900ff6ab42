"""The bearer token and the body-size limit, checked on the raw ASGI scope before any handler runs or reads a body.

Used twice: as a pure ASGI middleware in front of every FastAPI route, and directly by the inference fast path
(:mod:`edgeslim.server.infer`), so both enforce exactly the same rules with the same answers. Pure ASGI rather than
Starlette's ``BaseHTTPMiddleware``: no extra task, no request object, one pass over the header list.
"""

from __future__ import annotations

import secrets
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.responses import JSONResponse

from .errors import BodyTooLargeError, json_error

#: Routes that never need the token.
OPEN_PREFIXES = ("/v2/health/",)
_REPOSITORY = "/v2/repository/models/"

Receive = Callable[[], Awaitable[dict]]

_ALIGN = 64  # bytes: a cache line, and what AVX-512 loads like


def aligned_buffer(size: int, align_at: int) -> memoryview:
    """A writable buffer of ``size`` bytes in which byte offset ``align_at`` is 64-byte aligned.

    Binary tensors that start there become aligned numpy views (unaligned float arrays take numpy's slower
    buffered loops, and some runtimes copy them). Pages are not touched until written.
    """
    buf = np.empty(size + _ALIGN, dtype=np.uint8)
    start = -(buf.ctypes.data + align_at) % _ALIGN
    return memoryview(buf)[start : start + size]


class Guard:
    """Token and body-size checks for one server.

    Args:
        token: the bearer token every route outside :data:`OPEN_PREFIXES` requires; None: no auth.
        max_body_bytes: largest request body, by ``Content-Length`` up front or counted while it streams in.
        max_upload_bytes: the same for a model load request (an artifact uploaded as base64 JSON); None: the
            server has no model control, and a load request gets ``max_body_bytes`` like any other.
    """

    def __init__(self, *, token: str | None, max_body_bytes: int, max_upload_bytes: int | None = None) -> None:
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, path: str) -> int:
        """The body limit of a route: the upload limit for ``/v2/repository/models/{m}/load``, else the body's."""
        if self.max_upload_bytes is not None and path.startswith(_REPOSITORY) and path.endswith("/load"):
            return self.max_upload_bytes
        return self.max_body_bytes

    def reject(self, scope: dict) -> JSONResponse | None:
        """The 401/400/413 answer for a request whose headers already break a rule, else None."""
        auth = None
        length = None
        for key, value in scope.get("headers") or ():
            # ASGI servers give header names lower-cased; only two of them matter here.
            if key == b"authorization":
                auth = value
            elif key == b"content-length":
                length = value
        if self.token is not None and not scope["path"].startswith(OPEN_PREFIXES):
            scheme, _, given = (auth or b"").partition(b" ")
            # compare_digest: the time taken must not reveal how much of the token matched.
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.token):
                why = "missing" if not auth else "wrong"
                return json_error(
                    401,
                    f"{why} bearer token: send the header 'Authorization: Bearer <token>' set when the server started",
                    {"WWW-Authenticate": "Bearer"},
                )
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return json_error(400, f"Content-Length {length[:40]!r} is not an integer")
            limit = self.limit_for(scope["path"])
            if n > limit:
                return json_error(413, f"request body of {n} bytes exceeds the server limit of {limit} bytes")
        return None

    def limited(self, receive: Receive, path: str = "") -> Receive:
        """``receive`` that raises :class:`BodyTooLargeError` once the streamed body passes the route's limit.

        Chunked bodies have no Content-Length: they are counted as they stream in.
        """
        limit = self.limit_for(path)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(f"request body exceeds the server limit of {limit} bytes")
            return message

        return limited_receive

    async def read_body(self, receive: Receive, *, align_at: int | None = None) -> bytes | memoryview | None:
        """The whole request body within the limit, joined once; None if the client went away.

        Args:
            align_at: when the body arrives in several chunks (and must be copied to be joined anyway), copy it
                into a buffer where this byte offset is 64-byte aligned: the binary tensors that start there become
                aligned numpy views (unaligned float arrays take numpy's slower buffered loops). The result is then
                a memoryview.
        """
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                return None
            chunk = message.get("body", b"")
            if chunk:
                seen += len(chunk)
                if seen > self.max_body_bytes:
                    raise BodyTooLargeError(f"request body exceeds the server limit of {self.max_body_bytes} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if len(chunks) == 1:
            return chunks[0]
        if align_at is None or not 0 <= align_at <= seen:
            return b"".join(chunks)
        view = aligned_buffer(seen, align_at)
        pos = 0
        for chunk in chunks:
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return view


class GuardMiddleware:
    """ASGI middleware applying a :class:`Guard` in front of every route."""

    def __init__(self, app: Any, *, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict, receive: Receive, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rejected = self.guard.reject(scope)
        if rejected is not None:
            return await rejected(scope, receive, send)
        await self.app(scope, self.guard.limited(receive, scope["path"]), send)
