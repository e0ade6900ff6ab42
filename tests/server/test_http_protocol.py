"""The server's HTTP protocol over raw sockets: inference bodies however they arrive, and uvicorn's own paths.

``InferHttpProtocol`` receives inference bodies into one buffer as they stream in. These tests drive a live server
with hand-written HTTP so the body's arrival (split, paused, pipelined, cut off, chunked, behind
``Expect: 100-continue``) is under the test's control, and compare every answer with the in-process runtime.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from server_helpers import batch, live_server

from edgeslim.server.guard import aligned_buffer

# a live server / real subprocesses: the second step of .ci/run (python -m pytest -m live)
pytestmark = pytest.mark.live

TOKEN = "proto-token"


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("proto"), [artifact], dynamic_batching=False, token=TOKEN) as s:
        yield s


def binary_request(x: np.ndarray, *, token: str = TOKEN, extra: str = "", chunked: bool = False) -> tuple[bytes, bytes]:
    """``(head, body)`` of a binary v2 request for ``x`` (binary output)."""
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    body = header + raw
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n{length}\r\n{extra}\r\n").encode()
    return head, body


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock`` (``buf`` keeps what was read beyond it, for pipelined answers)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "server closed the connection"
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    n = int(headers.get("content-length", 0))
    while len(rest) < n:
        data = sock.recv(65536)
        assert data, "server closed the connection"
        rest += data
    buf[:] = rest[n:]
    return status, headers, rest[:n]


def logits(headers: dict[str, str], body: bytes) -> np.ndarray:
    n = int(headers["inference-header-content-length"])
    meta = json.loads(body[:n])["outputs"][0]
    return np.frombuffer(body[n:], dtype="<f4").reshape(meta["shape"])


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=20)


def test_body_split_into_small_pieces_with_pauses(server, reference):
    x = batch(8, seed=1)
    head, body = binary_request(x)
    with connect(server) as s:
        s.sendall(head)
        for i in range(0, len(body), 997):  # odd piece size: the tensor start falls inside a piece
            s.sendall(body[i : i + 997])
            if i % 8 == 0:
                time.sleep(0.002)
        status, headers, payload = read_response(s, bytearray())
    assert status == 200, payload
    np.testing.assert_allclose(logits(headers, payload), reference.infer(x), rtol=1e-5, atol=1e-5)


def test_pipelined_requests_are_answered_in_order(server, reference):
    xs = [batch(n, seed=10 + n) for n in (1, 3, 2)]
    wire = b"".join(b"".join(binary_request(x)) for x in xs)
    with connect(server) as s:
        s.sendall(wire)  # three requests in one write: each body lands in its own buffer
        buf = bytearray()
        for x in xs:
            status, headers, payload = read_response(s, buf)
            assert status == 200, payload
            np.testing.assert_allclose(logits(headers, payload), reference.infer(x), rtol=1e-5, atol=1e-5)


def test_client_gone_mid_body_leaves_the_server_serving(server, reference):
    head, body = binary_request(batch(8, seed=2))
    for _ in range(3):
        with connect(server) as s:
            s.sendall(head + body[: len(body) // 2])
    x = batch(2, seed=3)
    with connect(server) as s:
        s.sendall(b"".join(binary_request(x)))
        status, headers, payload = read_response(s, bytearray())
    assert status == 200, payload
    np.testing.assert_allclose(logits(headers, payload), reference.infer(x), rtol=1e-5, atol=1e-5)


def test_wrong_token_is_refused_without_waiting_for_the_body(server):
    head, _ = binary_request(batch(8), token="nope")
    with connect(server) as s:
        s.sendall(head)  # the body is never sent: the answer must not wait for it
        status, headers, payload = read_response(s, bytearray())
    assert status == 401 and "bearer token" in json.loads(payload)["error"]
    assert headers["www-authenticate"] == "Bearer"


def test_declared_body_over_the_limit_is_413_without_waiting_for_it(server):
    head = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 999999999999\r\n\r\n")
    with connect(server) as s:
        s.sendall(head)
        status, _, payload = read_response(s, bytearray())
    assert status == 413 and "exceeds the server limit" in json.loads(payload)["error"]


def test_expect_100_continue_and_chunked_bodies_take_uvicorns_path(server, reference):
    x = batch(3, seed=4)
    head, body = binary_request(x, extra="Expect: 100-continue\r\n")
    with connect(server) as s:
        s.sendall(head)
        interim = s.recv(64)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        s.sendall(body)
        status, headers, payload = read_response(s, bytearray(interim.partition(b"\r\n\r\n")[2]))
    assert status == 200, payload
    np.testing.assert_allclose(logits(headers, payload), reference.infer(x), rtol=1e-5, atol=1e-5)

    head, body = binary_request(x, chunked=True)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096]) for i in range(0, len(body), 4096))
    with connect(server) as s:
        s.sendall(head + chunks + b"0\r\n\r\n")
        status, headers, payload = read_response(s, bytearray())
    assert status == 200, payload
    np.testing.assert_allclose(logits(headers, payload), reference.infer(x), rtol=1e-5, atol=1e-5)


def test_truncated_binary_body_is_a_400_on_a_kept_connection(server, reference):
    x = batch(2, seed=5)
    head, body = binary_request(x)
    # Content-Length says one float less than the header declares: the binary section is short.
    head = head.replace(f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(body) - 4}".encode())
    with connect(server) as s:
        s.sendall(head + body[:-4])
        status, _, payload = read_response(s, bytearray())
        assert status == 400 and "input" in json.loads(payload)["error"]
        s.sendall(b"".join(binary_request(x)))  # the same connection still serves
        status, headers, payload = read_response(s, bytearray())
    assert status == 200
    np.testing.assert_allclose(logits(headers, payload), reference.infer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_at", [0, 1, 63, 64, 117])
def test_aligned_buffer_puts_the_tensors_on_a_cache_line(align_at):
    view = aligned_buffer(1000, align_at)
    assert len(view) == 1000 and not view.readonly
    assert (np.frombuffer(view, dtype=np.uint8).ctypes.data + align_at) % 64 == 0


def test_only_authorised_inference_requests_of_declared_length_get_a_buffer():
    import asyncio

    from edgeslim.server.guard import Guard
    from edgeslim.server.infer import InferEndpoint

    endpoint = InferEndpoint(None, None, Guard(token=TOKEN, max_body_bytes=10_000))

    def scope(path="/v2/models/tiny/infer", token=TOKEN, length=b"1000", header=b"117"):
        headers = [(b"authorization", b"Bearer " + token.encode())]
        if length is not None:
            headers.append((b"content-length", length))
        if header is not None:
            headers.append((b"inference-header-content-length", header))
        return {"type": "http", "method": "POST", "path": path, "headers": headers}

    async def buffers():
        return [endpoint.body_buffer(scope(**kw)) for kw in (
            {}, {"path": "/v2/models/tiny/versions/2/infer"}, {"header": None},
            {"token": "wrong"}, {"length": b"10001"}, {"length": None}, {"path": "/v1/models/tiny/classify"},
            {"length": b"-5"},
        )]

    ok, versioned, json_only, wrong_token, too_long, chunked, other_route, negative = asyncio.run(buffers())
    assert wrong_token is too_long is chunked is other_route is negative is None
    for buffer in (ok, versioned, json_only):
        assert len(buffer._view) == 1000
    assert (np.frombuffer(ok._view, dtype=np.uint8).ctypes.data + 117) % 64 == 0
