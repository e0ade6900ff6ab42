"""Acceptance: a real uvicorn server on 127.0.0.1 driven by the unmodified ``tritonclient.http``."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from server_helpers import CLASSES, batch, live_server, png_bytes
from tritonclient.utils import InferenceServerException

# a live server / real subprocesses: the second step of .ci/run (python -m pytest -m live)
pytestmark = pytest.mark.live

TOKEN = "live-token-123"


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("live"), [artifact], batch_delay_ms=1.0, token=TOKEN) as s:
        yield s


def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url, connection_timeout=10, network_timeout=30)


def auth() -> dict[str, str]:
    # A fresh dict per call: tritonclient adds Inference-Header-Content-Length to the dict it is given.
    return {"Authorization": f"Bearer {TOKEN}"}


def infer_input(x: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_health_metadata_config_and_stats(server):
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()  # health needs no token
    assert c.is_model_ready("tiny", headers=auth())
    meta = c.get_server_metadata(headers=auth())
    assert {"binary_tensor_data", "classification", "model_configuration", "model_repository",
            "statistics"} <= set(meta["extensions"])
    mm = c.get_model_metadata("tiny", model_version="1", headers=auth())
    assert mm["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}
    cfg = c.get_model_config("tiny", headers=auth())
    assert cfg["max_batch_size"] == 8 and "dynamic_batching" in cfg
    stats = c.get_inference_statistics("tiny", headers=auth())
    assert stats["model_stats"][0]["name"] == "tiny"
    with pytest.raises(InferenceServerException, match="bearer token"):
        c.get_model_metadata("tiny")
    with pytest.raises(InferenceServerException, match="Did you mean 'tiny'"):
        c.get_model_metadata("tiny_", headers=auth())


def test_repository_index_through_tritonclient_and_model_control_refused(server):
    c = client(server)
    assert c.get_model_repository_index(headers=auth()) == [
        {"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
    with pytest.raises(InferenceServerException, match="bearer token"):
        c.get_model_repository_index()
    for call in (c.load_model, c.unload_model):
        with pytest.raises(InferenceServerException, match="model control is off") as info:
            call("tiny", headers=auth())
        assert info.value.status() == "403"
    assert c.is_model_ready("tiny", headers=auth())  # the refused unload left the model serving


def test_binary_and_json_inference_match_the_runtime(server, reference):
    c = client(server)
    x = batch(4, seed=3)
    want = reference.infer(x)
    res = c.infer("tiny", [infer_input(x)], headers=auth(), request_id="r1")  # binary both ways (default)
    np.testing.assert_allclose(res.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    assert res.get_response()["id"] == "r1"
    out = httpclient.InferRequestedOutput("logits", binary_data=False)
    res = c.infer("tiny", [infer_input(x, binary=False)], outputs=[out], headers=auth(), model_version="1")
    np.testing.assert_allclose(res.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    res = c.infer("tiny", [infer_input(x)], headers=auth(), request_compression_algorithm="gzip")
    np.testing.assert_allclose(res.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_extension(server, reference, binary):
    c = client(server)
    x = batch(2, seed=4)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)
    res = c.infer("tiny", [infer_input(x)], outputs=[out], headers=auth())
    top = res.as_numpy("logits")
    assert top.shape == (2, 3)
    logits = reference.infer(x)
    for row, want in zip(top, logits):
        parts = [(b if isinstance(b, bytes) else b.encode()).decode().split(":") for b in row]
        idx = [int(p[1]) for p in parts]
        assert idx == list(np.argsort(-want)[:3])
        assert [p[2] for p in parts] == [CLASSES[i] for i in idx]
        np.testing.assert_allclose([float(p[0]) for p in parts], want[idx], atol=1e-5)


def test_bad_requests_through_the_client_get_clear_errors(server):
    c = client(server)
    with pytest.raises(InferenceServerException, match="expects \\[-1, 3, 16, 16\\]") as info:
        c.infer("tiny", [infer_input(batch(1)[:, :, :8])], headers=auth())
    assert info.value.status() == "400"
    wrong = httpclient.InferInput("input", [1, 3, 16, 16], "FP64")
    wrong.set_data_from_numpy(batch(1).astype(np.float64))
    with pytest.raises(InferenceServerException, match="datatype FP64"):
        c.infer("tiny", [wrong], headers=auth())
    with pytest.raises(InferenceServerException, match="max_batch_size 8"):
        c.infer("tiny", [infer_input(batch(9))], headers=auth())


def test_concurrent_mixed_clients_all_good_answers_correct(server, reference):
    """Many clients at once, a third of them sending garbage: every good one gets exactly its own answer."""
    good_inputs = {i: batch(1 + i % 3, seed=100 + i) for i in range(48)}

    def one(i: int):
        c = client(server)
        try:
            if i % 3 == 2:  # bad: wrong shape, unknown model, or corrupt body
                kind = i % 9
                if kind == 2:
                    with pytest.raises(InferenceServerException) as info:
                        c.infer("tiny", [infer_input(batch(1)[:, :2])], headers=auth())
                elif kind == 5:
                    with pytest.raises(InferenceServerException) as info:
                        c.infer("missing", [infer_input(batch(1))], headers=auth())
                else:
                    r = httpx.post(f"http://{server.url}/v2/models/tiny/infer", content=b"\x00garbage",
                                   headers={**auth(), "Inference-Header-Content-Length": "3"})
                    return ("bad", r.status_code)
                return ("bad", int(info.value.status()))
            x = good_inputs[i]
            res = c.infer("tiny", [infer_input(x)], headers=auth())
            return ("good", i, res.as_numpy("logits"))
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(48)))
    goods = [r for r in results if r[0] == "good"]
    bads = [r for r in results if r[0] == "bad"]
    assert len(goods) == 32 and len(bads) == 16
    assert all(400 <= status < 500 for _, status in bads)
    for _, i, got in goods:
        np.testing.assert_allclose(got, reference.infer(good_inputs[i]), rtol=1e-5, atol=1e-5)
    # The server is still healthy and its statistics saw batching.
    stats = client(server).get_inference_statistics("tiny", headers=auth())["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] >= 10


def test_metrics_and_classify_over_http(server):
    r = httpx.post(f"http://{server.url}/v1/models/tiny/classify", files={"file": ("a.png", png_bytes(7), "image/png")},
                   headers=auth())
    assert r.status_code == 200 and r.json()["results"][0]["critical"][0]["label"] == "person"
    text = httpx.get(f"http://{server.url}/metrics", headers=auth()).text
    assert 'nv_inference_request_success{model="tiny",version="1"}' in text


def test_full_queue_answers_503_with_retry_after(artifact, tmp_path):
    # queue of 2 and a 1.5 s batching delay: the first two requests wait, the rest must be refused at once.
    with live_server(tmp_path, [artifact], batch_delay_ms=1500.0, queue_size=2, max_batch=64) as s:
        def post(i):
            x = batch(1, seed=i)
            return httpx.post(f"http://{s.url}/v2/models/tiny/infer", timeout=30, json={
                "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": x.ravel().tolist()}]})

        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 503 in codes
    busy = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["Retry-After"]) >= 1 and "queue is full" in r.json()["error"] for r in busy)


def test_request_timeout_is_504(artifact, tmp_path):
    with live_server(tmp_path, [artifact], batch_delay_ms=2000.0, request_timeout_s=0.3) as s:
        c = httpclient.InferenceServerClient(s.url)
        t = time.monotonic()
        with pytest.raises(InferenceServerException, match="did not answer within 0.3 s") as info:
            c.infer("tiny", [infer_input(batch(1))])
        assert info.value.status() == "504" and time.monotonic() - t < 1.9
        # A smaller per-request timeout (microseconds, tritonclient's 'timeout') wins too.
        with pytest.raises(InferenceServerException, match="0.1 s"):
            c.infer("tiny", [infer_input(batch(1))], timeout=100_000)


def test_graceful_shutdown_finishes_in_flight_requests_and_never_imports_torch(artifact, tmp_path, reference):
    x = batch(1, seed=9)
    with live_server(tmp_path, [artifact], batch_delay_ms=1500.0) as s:
        result = {}

        def call():
            c = httpclient.InferenceServerClient(s.url, network_timeout=30)
            result["out"] = c.infer("tiny", [infer_input(x)]).as_numpy("logits")

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.4)  # the request is now waiting in the batcher
        start = time.monotonic()
        code = s.stop(timeout=30)
        t.join(10)
        log = s.log.read_text()
    assert code == 0, log
    np.testing.assert_allclose(result["out"], reference.infer(x), rtol=1e-5, atol=1e-5)
    assert time.monotonic() - start < 10
    assert "TORCH_IMPORTED False" in log, log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{s.url}/v2/health/live", timeout=2)
    assert json  # keep import used by helpers


def test_without_batching_idle_inline_and_queued_requests_all_answer_correctly(artifact, tmp_path, reference):
    """dynamic_batching off: a lone request runs inline on the event loop, overlapping ones queue; both paths
    give every caller its own answer and every execution reaches the statistics."""
    inputs = {i: batch(1 + i % 2, seed=300 + i) for i in range(40)}
    with live_server(tmp_path, [artifact], dynamic_batching=False) as s:
        c = httpclient.InferenceServerClient(s.url)
        for i in range(4):  # one at a time: the idle server runs them inline
            np.testing.assert_allclose(c.infer("tiny", [infer_input(inputs[i])]).as_numpy("logits"),
                                       reference.infer(inputs[i]), rtol=1e-5, atol=1e-5)

        def one(i):
            cl = httpclient.InferenceServerClient(s.url)
            try:
                return i, cl.infer("tiny", [infer_input(inputs[i])]).as_numpy("logits")
            finally:
                cl.close()

        with ThreadPoolExecutor(max_workers=12) as pool:
            for i, got in pool.map(one, range(4, 40)):
                np.testing.assert_allclose(got, reference.infer(inputs[i]), rtol=1e-5, atol=1e-5)
        stats = c.get_inference_statistics("tiny")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 40 and stats["execution_count"] == 40
    assert stats["inference_count"] == sum(x.shape[0] for x in inputs.values())


def test_serve_cli_on_a_tampered_artifact_prints_one_red_line_and_exits_1(artifact, tmp_path):
    """The models load before uvicorn starts, so a file failing its sha256 check is the CLI's one-line error with
    exit code 1, not uvicorn's lifespan traceback and exit code 3."""
    import shutil
    import subprocess
    import sys

    from server_helpers import free_port

    bad = tmp_path / "tampered"
    shutil.copytree(artifact, bad)
    onnx = bad / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1
    onnx.write_bytes(bytes(data))
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeslim.cli", "serve", str(bad), "--port", str(port)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: artifact {bad} failed its integrity check: model.onnx: sha256 mismatch"), lines
    assert "Traceback" not in proc.stderr and "uvicorn" not in proc.stderr.lower()
