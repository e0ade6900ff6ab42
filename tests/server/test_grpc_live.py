"""gRPC against a real server process: ``tritonclient.grpc`` unmodified answers as ``tritonclient.http`` does, a
bad-request corpus leaves the server alive, ``perf_analyzer -i grpc`` validates its answers, and ``edgeslim serve
--grpc-port`` serves both protocols from one process.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from grpc_corpus import MODEL, call, corpus
from server_helpers import batch, free_port, live_server

grpc = pytest.importorskip("grpc", reason="gRPC needs edgeslim[serve] (grpcio)")
gclient = pytest.importorskip("tritonclient.grpc", reason="the tests drive gRPC with tritonclient[grpc]")
import tritonclient.http as hclient  # noqa: E402

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "grpc-live-token"
LIMIT = 1_000_000
AUTH = {"authorization": f"Bearer {TOKEN}"}  # copied per call: tritonclient.http adds its own headers to the dict


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    grpc_port = free_port()
    with live_server(tmp_path_factory.mktemp("grpc"), [artifact], batch_delay_ms=1.0, token=TOKEN,
                     max_body_bytes=LIMIT, grpc_port=grpc_port) as s:
        s.grpc_url = f"127.0.0.1:{grpc_port}"
        yield s


def test_tritonclient_grpc_gets_what_tritonclient_http_gets(server, reference):
    h = hclient.InferenceServerClient(server.url)
    g = gclient.InferenceServerClient(server.grpc_url)
    assert g.is_server_ready() and g.is_model_ready(MODEL, headers=dict(AUTH))
    hmeta = h.get_model_metadata(MODEL, headers=dict(AUTH))
    gmeta = g.get_model_metadata(MODEL, headers=dict(AUTH), as_json=True)
    for side in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gmeta[side]] == [
            (t["name"], t["datatype"], t["shape"]) for t in hmeta[side]]
    assert g.get_model_config(MODEL, headers=dict(AUTH)).config.max_batch_size == \
        h.get_model_config(MODEL, headers=dict(AUTH))["max_batch_size"]
    for n, seed in ((1, 0), (4, 1), (8, 2)):
        x = batch(n, seed=seed)
        hin = hclient.InferInput("input", list(x.shape), "FP32")
        hin.set_data_from_numpy(x, binary_data=True)
        gin = gclient.InferInput("input", list(x.shape), "FP32")
        gin.set_data_from_numpy(x)
        over_http = h.infer(MODEL, [hin], headers=dict(AUTH)).as_numpy("logits")
        over_grpc = g.infer(MODEL, [gin], headers=dict(AUTH)).as_numpy("logits")
        assert over_grpc.shape == over_http.shape == (n, 4) and over_grpc.dtype == over_http.dtype
        np.testing.assert_allclose(over_grpc, over_http, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(over_grpc, reference.infer(x), rtol=1e-5, atol=1e-5)
        htop = h.infer(MODEL, [hin], headers=dict(AUTH), outputs=[hclient.InferRequestedOutput("logits", class_count=2)])
        gtop = g.infer(MODEL, [gin], headers=dict(AUTH), outputs=[gclient.InferRequestedOutput("logits", class_count=2)])
        hidx = [[int(s.split(b":")[1]) for s in row] for row in htop.as_numpy("logits")]
        gidx = [[int(s.split(b":")[1]) for s in row] for row in gtop.as_numpy("logits")]
        assert gidx == hidx
    # both protocols count into the one model's statistics
    hstats = h.get_inference_statistics(MODEL, headers=dict(AUTH))["model_stats"][0]["inference_stats"]["success"]["count"]
    gstats = g.get_inference_statistics(MODEL, headers=dict(AUTH)).model_stats[0].inference_stats.success.count
    assert hstats == gstats >= 12


def test_bad_request_corpus_over_grpc_zero_crashes_and_the_server_alive_after(server, reference):
    wrong = []
    with grpc.insecure_channel(server.grpc_url) as ch:
        for _ in range(3):  # every case three times: no state left behind by a refused request
            for case in corpus(LIMIT):
                try:
                    call(ch, case, metadata=tuple(AUTH.items()))
                    wrong.append((case.label, "OK"))
                except grpc.RpcError as exc:
                    if exc.code().name != case.code:
                        wrong.append((case.label, exc.code().name, exc.details()))
            for case in corpus(LIMIT)[:3]:  # and without the token: refused before anything else
                with pytest.raises(grpc.RpcError) as err:
                    call(ch, case)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not wrong, wrong
    assert server.proc.poll() is None
    g = gclient.InferenceServerClient(server.grpc_url)
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready(MODEL, headers=dict(AUTH))
    x = batch(3, seed=8)
    gin = gclient.InferInput("input", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    np.testing.assert_allclose(g.infer(MODEL, [gin], headers=dict(AUTH)).as_numpy("logits"), reference.infer(x),
                               rtol=1e-5, atol=1e-5)
    log = server.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def _perf_analyzer() -> str | None:
    for candidate in (os.environ.get("EDGESLIM_PERF_ANALYZER"), str(ROOT / ".cache/perf_analyzer/perf_analyzer"),
                      shutil.which("perf_analyzer")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.skipif(_perf_analyzer() is None,
                    reason="perf_analyzer not found: run bench/get_perf_analyzer.sh (or set EDGESLIM_PERF_ANALYZER)")
def test_perf_analyzer_over_grpc_gets_correct_answers(server, reference, tmp_path):
    x = batch(1, seed=7)
    want = reference.infer(x)[0]

    def data(offset: float) -> Path:
        path = tmp_path / f"in{offset}.json"
        path.write_text(json.dumps({
            "data": [{"input": {"content": x[0].ravel().tolist(), "shape": list(x.shape[1:])}}],
            "validation_data": [{"logits": {"content": (want + offset).ravel().tolist(), "shape": list(want.shape)}}],
        }))
        return path

    def run(path: Path, out: Path, *extra: str, token: str = TOKEN) -> subprocess.CompletedProcess:
        cmd = [_perf_analyzer(), "-m", MODEL, "-u", server.grpc_url, "-i", "grpc", "--input-data", str(path),
               "-H", f"authorization: Bearer {token}", "-p", "700", "--stability-percentage", "100",
               "--max-trials", "3", "-f", str(out), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    g = gclient.InferenceServerClient(server.grpc_url)
    before = g.get_inference_statistics(MODEL, headers=dict(AUTH)).model_stats[0].inference_stats
    proc = run(data(0.0), tmp_path / "out.csv", "--concurrency-range", "1:4:3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [int(r["Concurrency"]) for r in rows] == [1, 4]
    assert all(float(r["Inferences/Second"]) > 0 and int(r["p50 latency"]) > 0 for r in rows)
    assert "Server:" in proc.stdout  # it read the server's statistics over gRPC for its report
    after = g.get_inference_statistics(MODEL, headers=dict(AUTH)).model_stats[0].inference_stats
    assert after.success.count - before.success.count >= 10 and after.fail.count == before.fail.count
    wrong = run(data(1.0), tmp_path / "w.csv")
    assert wrong.returncode != 0 and "doesn't match expected output" in wrong.stdout + wrong.stderr
    refused = run(data(0.0), tmp_path / "t.csv", token="wrong-token")
    assert refused.returncode != 0 and "bearer token" in refused.stdout + refused.stderr


def test_edgeslim_serve_cli_serves_rest_and_grpc_from_one_process(artifact, reference, tmp_path):
    port, grpc_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgeslim.cli", "serve", str(artifact), "--port", str(port),
                                 "--grpc-port", str(grpc_port), "--threads", "1", "--batch-delay-ms", "0"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        g = gclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if g.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert hclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()
        x = batch(2, seed=12)
        gin = gclient.InferInput("input", list(x.shape), "FP32")
        gin.set_data_from_numpy(x)
        np.testing.assert_allclose(g.infer(MODEL, [gin]).as_numpy("logits"), reference.infer(x), rtol=1e-5, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    # uvicorn re-raises SIGTERM once it has shut down gracefully
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log.read_text(), log.read_text()
    # a second server on a taken gRPC port: one clear line, not a traceback
    with open(log, "wb") as out:
        blocker = subprocess.Popen([sys.executable, "-m", "edgeslim.cli", "serve", str(artifact), "--port",
                                    str(free_port()), "--grpc-port", str(grpc_port), "--threads", "1"],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        g = gclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 60
        while not _ready(g):
            assert blocker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        taken = subprocess.run([sys.executable, "-m", "edgeslim.cli", "serve", str(artifact), "--port",
                                str(free_port()), "--grpc-port", str(grpc_port), "--threads", "1"],
                               capture_output=True, text=True, timeout=120)
    finally:
        blocker.send_signal(signal.SIGTERM)
        blocker.wait(timeout=30)
    assert taken.returncode == 1, taken.stdout + taken.stderr
    assert f"cannot serve gRPC on 127.0.0.1:{grpc_port}" in taken.stdout + taken.stderr
    assert "Traceback" not in taken.stderr


def _ready(g) -> bool:
    try:
        return g.is_server_ready()
    except Exception:  # noqa: BLE001 - not listening yet
        return False
