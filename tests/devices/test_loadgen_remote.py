"""MLPerf LoadGen runs on a real backend, and remote profiling of a live edgeslim server over KServe v2."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest

from edgeslim.devices.loadgen import LoadGenConfig, parse_summary, run_loadgen
from edgeslim.devices.profiler import ProfileConfig
from edgeslim.errors import BackendError, ConfigError

# a live server / real subprocesses: the second step of .ci/run (python -m pytest -m live)
pytestmark = pytest.mark.live

SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Offline
Mode     : PerformanceOnly
Samples per second: 14969.7
Result is : INVALID
  Min duration satisfied : NO
  Min queries satisfied : Yes
  Early stopping satisfied: Yes
Recommendations:
 * Increase expected QPS so the loadgen pre-generates a larger (coalesced) query.

================================================
Additional Stats
================================================
Min latency (ns)                : 916873
Mean latency (ns)               : 39494809
90.00 percentile latency (ns)   : 71757489
"""


def test_parse_summary_verdict_and_figures():
    s = parse_summary(SUMMARY)
    assert s["result"] == "INVALID" and s["scenario"] == "Offline"
    assert s["samples_per_second"] == 14969.7
    assert s["min_duration_satisfied"] is False and s["min_queries_satisfied"] is True
    assert s["p90_latency_ms"] == pytest.approx(71.757489)
    assert s["recommendations"] == ["Increase expected QPS so the loadgen pre-generates a larger (coalesced) query."]


@pytest.fixture(scope="module")
def ort(tiny_artifact):
    from edgeslim.devices.profiler import backend_class
    from edgeslim.runtime.base import BackendOptions

    with backend_class("onnxruntime")(tiny_artifact / "model.onnx", BackendOptions(threads=1)) as b:
        yield b


def test_single_stream_valid_with_p90_and_settings(ort, tmp_path):
    r = run_loadgen(ort, cfg=LoadGenConfig(scenario="single-stream", min_duration_s=0.3, min_query_count=64),
                    input_shape=(3, 16, 16), outdir=tmp_path)
    assert r["result"] == "VALID" and r["valid"] and r["scenario"] == "single-stream"
    assert r["loadgen_scenario"] == "SingleStream"
    assert 0 < r["min_latency_ms"] <= r["p90_latency_ms"] <= r["max_latency_ms"]
    st = r["settings"]
    assert st["min_duration_s"] == 0.3 and st["min_query_count"] == 64 and st["mode"] == "PerformanceOnly"
    assert {"qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"} <= set(st)  # fixed seeds recorded
    assert (tmp_path / "mlperf_log_detail.txt").is_file() and r["log_dir"] == str(tmp_path)


class ColdStart:
    """The real backend, slow for its first calls (a cold model: caches, lazy kernels): LoadGen's throughput probe
    then under-estimates it."""

    def __init__(self, backend, slow_calls: int) -> None:
        self._b, self.left = backend, slow_calls
        self.inputs, self.outputs, self.name = backend.inputs, backend.outputs, backend.name

    def version(self):
        return self._b.version()

    def check_feeds(self, feeds):
        return self._b.check_feeds(feeds)

    def infer(self, feeds):
        if self.left > 0:
            self.left -= 1
            time.sleep(0.05)
        return self._b.infer(feeds)


def test_offline_is_resized_when_the_probe_underestimated_the_throughput(ort):
    # slow through edgeslim's throughput probe (1 + 20 latency calls, 5 batches), fast from the first LoadGen query
    r = run_loadgen(ColdStart(ort, slow_calls=26),
                    cfg=LoadGenConfig(scenario="offline", min_duration_s=0.3, min_query_count=1))
    assert r["valid"], r  # the first run was INVALID (too few samples to fill 0.3 s); the resized one is VALID
    assert r["settings"]["resized_after_invalid_run"] is True and r["settings"]["runs"] in (2, 3)
    assert r["settings"]["expected_qps_used"] > 200  # sized from the measured rate, not the cold probe's


def test_offline_reports_samples_per_second(ort):
    r = run_loadgen(ort, cfg=LoadGenConfig(scenario="offline", min_duration_s=0.3, min_query_count=1))
    assert r["valid"] and r["samples_per_second"] > 100
    assert r["settings"]["expected_qps_used"] > 0


def test_a_run_cut_short_is_invalid(ort):
    r = run_loadgen(ort, cfg=LoadGenConfig(scenario="single-stream", min_duration_s=5.0, min_query_count=10,
                                           max_duration_s=0.2))
    assert r["result"] == "INVALID" and not r["valid"] and r["min_duration_satisfied"] is False


def test_unknown_scenario_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'offline'"):
        LoadGenConfig(scenario="ofline")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_artifact):
    """A real edgeslim server (uvicorn, KServe v2) in a subprocess on a free port."""
    import tritonclient.http as httpclient

    port = _free_port()
    code = textwrap.dedent(f"""
        from edgeslim.server import ServerSettings, serve
        serve(ServerSettings(models=[{str(tiny_artifact)!r}], port={port}, threads=1, log_level="warning",
                             dynamic_batching=False, token="s3cret-token"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server failed to start: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpclient.InferenceServerClient(url).is_server_ready():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not become ready in 90 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_remote_profile_separates_server_compute_from_http(server):
    from edgeslim.devices.remote import profile_remote

    r = profile_remote(f"http://{server}", "tinynet-digits", cfg=ProfileConfig(warmup=3, iterations=30, seconds=0.1),
                       batch=2, token="s3cret-token", concurrency=4)
    assert r["input_shape"] == [2, 3, 16, 16] and r["measured"]["iterations"] >= 30
    lat, srv = r["latency_ms"], r["server_ms"]
    assert srv is not None and srv["requests"] == r["measured"]["iterations"]
    # end to end over HTTP includes the server's compute and queue time, the rest is protocol + network
    assert 0 < srv["compute_mean"] < lat["mean"]
    assert r["overhead_ms"]["mean"] == pytest.approx(lat["mean"] - srv["compute_mean"] - srv["queue_mean"])
    assert r["server"]["name"] and r["throughput_mode"]["requests"] == 4
    assert r["throughput_mode"]["items_per_s"] > 0


def test_remote_errors_are_clear(server):
    from edgeslim.devices.remote import profile_remote

    with pytest.raises(BackendError, match="not ready|unknown|nope"):
        profile_remote(server, "nope", cfg=ProfileConfig(iterations=1, seconds=0), token="s3cret-token")
    with pytest.raises(BackendError, match="cannot reach"):
        profile_remote(f"127.0.0.1:{_free_port()}", "tinynet-digits", cfg=ProfileConfig(iterations=1, seconds=0),
                       timeout_s=2)
    with pytest.raises(ConfigError, match="host:port"):
        profile_remote("http://h:1/v2", "m")
