"""uvicorn's httptools protocol, with inference request bodies received straight into one aligned buffer.

Stock uvicorn hands a request body to the app in pieces: it buffers at most 64 KiB, pauses the socket, wakes the
app's ``receive()`` and copies the piece into a new ``bytes``; the app then joins the pieces. A 224x224 FP32
image (0.6 MB) takes about ten such round trips through the event loop and three copies before the server can
look at it. :class:`InferHttpProtocol` keeps everything else of uvicorn (keep-alive, pipelining, graceful
shutdown, the ASGI app for every other route) and changes only the body of requests that the inference fast path
(:class:`~edgeslim.server.infer.InferEndpoint`) will answer *and* whose headers already pass the guard (token,
``Content-Length`` within the limit): their bytes are copied once, as they arrive, into a buffer of exactly
``Content-Length`` bytes in which the binary tensors start 64-byte aligned, and the endpoint wakes once, when the
last byte is in.

Memory stays bounded as before: a buffer exists only for a request that is authorised and whose declared length
is within ``max_body_bytes``; chunked bodies, ``Expect: 100-continue`` and protocol upgrades take uvicorn's own
path. The parser callbacks overridden here (``on_headers_complete``, ``on_body``, ``on_message_complete``,
``connection_lost``) are httptools' and asyncio's names; the uvicorn attributes read (``cycle``,
``cycle.scope``, ``cycle.response_complete``, ``expect_100_continue``, ``parser``) are checked by the live-server
tests, which all run through this class.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .guard import aligned_buffer

#: The ``scope["extensions"]`` key under which the protocol hands the endpoint a :class:`BodyBuffer`.
BODY_EXTENSION = "edgeslim.body"


class BodyBuffer:
    """A request body of a known length being received; ``await buffer.wait()`` gives it whole, or None.

    Args:
        size: the request's ``Content-Length``.
        align_at: byte offset to place on a 64-byte boundary (where the binary tensors start), None for 0.
    """

    __slots__ = ("_view", "_pos", "_future")

    def __init__(self, size: int, align_at: int | None) -> None:
        self._view = aligned_buffer(size, align_at or 0)
        self._pos = 0
        self._future: asyncio.Future[memoryview | None] = asyncio.get_running_loop().create_future()

    def write(self, data: bytes) -> None:
        end = min(self._pos + len(data), len(self._view))  # httptools stops at Content-Length; never past it
        self._view[self._pos : end] = data[: end - self._pos]
        self._pos = end

    def finish(self) -> None:
        """The last byte arrived: the body is what was received (the v2 parser checks every size against it)."""
        if not self._future.done():
            self._future.set_result(self._view[: self._pos])

    def abort(self) -> None:
        """The connection closed before the body was complete: nobody is left to answer."""
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> memoryview | None:
        return await self._future


class InferHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` receiving inference bodies into a :class:`BodyBuffer` (module docstring).

    Args:
        endpoint: the app's :class:`~edgeslim.server.infer.InferEndpoint`; its ``body_buffer(scope)`` says
            whether a request takes this path.
        *args, **kwargs: what uvicorn passes to its protocol class.
    """

    def __init__(self, *args: Any, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._endpoint = endpoint
        self._buffer: BodyBuffer | None = None

    def on_headers_complete(self) -> None:
        self._buffer = None
        super().on_headers_complete()  # creates the request's task; it first runs on the loop's next round
        try:
            if self.expect_100_continue or self.parser.should_upgrade():
                return  # the client waits for uvicorn's "100 Continue" / an upgrade is no inference request
            scope = self.cycle.scope
        except AttributeError:  # a uvicorn whose internals moved: its own body path still serves the request
            return
        if scope["method"] == "POST":
            buffer = self._endpoint.body_buffer(scope)
            if buffer is not None:
                scope.setdefault("extensions", {})[BODY_EXTENSION] = buffer
                self._buffer = buffer

    def on_body(self, body: bytes) -> None:
        buffer = self._buffer
        if buffer is None:
            super().on_body(body)
        elif not self.cycle.response_complete:  # answered early (e.g. model not ready): drop the rest
            buffer.write(body)

    def on_message_complete(self) -> None:
        if self._buffer is not None:
            self._buffer.finish()
            self._buffer = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buffer is not None:
            self._buffer.abort()
            self._buffer = None
        super().connection_lost(exc)
