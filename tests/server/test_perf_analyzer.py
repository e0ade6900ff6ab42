"""Acceptance: Triton's own C++ load generator, ``perf_analyzer``, against a live server, validating every answer.

perf_analyzer reads the model's metadata and configuration, sends binary v2 requests from concurrent workers and
reads the server's statistics; with ``validation_data`` it compares each response with the expected output. Get it
with ``bench/get_perf_analyzer.sh`` (CI does); without it these tests are skipped with that instruction.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from server_helpers import batch, live_server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "pa-token"


def _perf_analyzer() -> str | None:
    for candidate in (os.environ.get("EDGESLIM_PERF_ANALYZER"), str(ROOT / ".cache/perf_analyzer/perf_analyzer"),
                      shutil.which("perf_analyzer")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


PERF_ANALYZER = _perf_analyzer()
pytestmark = [pytest.mark.live, pytest.mark.skipif(
    PERF_ANALYZER is None, reason="perf_analyzer not found: run bench/get_perf_analyzer.sh (or set EDGESLIM_PERF_ANALYZER)"
)]


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("pa"), [artifact], batch_delay_ms=1.0, token=TOKEN) as s:
        yield s


def input_data(path: Path, reference, offset: float = 0.0) -> Path:
    """perf_analyzer's input JSON: one real input and the in-process runtime's output as validation data."""
    x = batch(1, seed=7)
    want = reference.infer(x)[0] + offset
    path.write_text(json.dumps({
        "data": [{"input": {"content": x[0].ravel().tolist(), "shape": list(x.shape[1:])}}],
        "validation_data": [{"logits": {"content": want.ravel().tolist(), "shape": list(want.shape)}}],
    }))
    return path


def run(server, data: Path, out: Path, *extra: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    cmd = [PERF_ANALYZER, "-m", "tiny", "-u", server.url, "-i", "http", "--input-data", str(data),
           "-H", f"Authorization: Bearer {token}", "-p", "700", "--stability-percentage", "100",
           "--max-trials", "3", "-f", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def success_count(server) -> int:
    r = httpx.get(f"http://{server.url}/v2/models/tiny/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    stats = r.json()["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 0
    return stats["success"]["count"]


def test_perf_analyzer_gets_correct_answers_with_and_without_batching(server, reference, tmp_path):
    before = success_count(server)
    proc = run(server, input_data(tmp_path / "in.json", reference), tmp_path / "out.csv", "--concurrency-range", "1:4:3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [int(r["Concurrency"]) for r in rows] == [1, 4]
    assert all(float(r["Inferences/Second"]) > 0 and int(r["p50 latency"]) > 0 for r in rows)
    # perf_analyzer read the server's statistics for its own report, and the requests are there
    assert "Server:" in proc.stdout and "Successful request count" in proc.stdout
    assert success_count(server) - before >= 10


def test_perf_analyzer_validation_catches_a_wrong_answer_and_the_token_is_enforced(server, reference, tmp_path):
    wrong = run(server, input_data(tmp_path / "wrong.json", reference, offset=1.0), tmp_path / "w.csv")
    assert wrong.returncode != 0 and "doesn't match expected output" in wrong.stdout + wrong.stderr
    refused = run(server, input_data(tmp_path / "in.json", reference), tmp_path / "t.csv", token="wrong")
    assert refused.returncode != 0 and "bearer token" in refused.stdout + refused.stderr
