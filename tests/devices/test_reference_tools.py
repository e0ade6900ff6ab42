"""The reference tools the profiler is checked against: benchmark_app and trtexec command lines, their reports
parsed, and the round statistics of the comparison.

The benchmark_app reports in ``data/`` are verbatim outputs of OpenVINO 2026.4.1 on this project's CPU machine. The
trtexec report follows TensorRT 10's format line for line (``samples/common/sampleReporting.cpp`` and
``sampleOptions.cpp`` of v10.3-v10.16, timestamps and all) with the figures of a plausible 1 ms run; the test that
runs the real trtexec needs a GPU and is skipped here with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeslim.devices.benchmark_app import benchmark_app_command, device_config, parse_benchmark_app
from edgeslim.devices.reference import round_order, spread, summarize, verdict
from edgeslim.devices.trtexec import (
    EXPECTED_OPTIONS,
    find_trtexec,
    option_mismatches,
    parse_trtexec,
    tensorrt_version,
    trtexec_bench_command,
)
from edgeslim.errors import BackendError, ConfigError

DATA = Path(__file__).parent / "data"


# -- benchmark_app ----------------------------------------------------------------------------------------------
def test_benchmark_app_sync_report_is_parsed():
    r = parse_benchmark_app((DATA / "benchmark_app_sync_lite0.txt").read_text())
    assert r["api"] == "sync" and r["requests"] == 1
    assert r["count"] == 98 and r["duration_ms"] == 2030.05
    assert r["latency_ms"] == {"median": 15.25, "mean": 20.50, "min": 9.86, "max": 60.56}
    assert r["throughput_fps"] == 48.27 and r["first_inference_ms"] == 17.90
    assert r["version"] == "2026.4.1-22982-e213a147257-releases/2026/4"
    # benchmark_app's sync throughput is iterations / wall time, not 1 / median latency
    assert r["throughput_fps"] == pytest.approx(r["count"] / (r["duration_ms"] / 1e3), rel=1e-3)
    p = r["properties"]
    assert p["PERFORMANCE_HINT"] == "LATENCY" and p["NUM_STREAMS"] == "1" and p["INFERENCE_NUM_THREADS"] == "2"
    assert p["INFERENCE_PRECISION_HINT"] == "<Type: 'float32'>" and p["ENABLE_CPU_PINNING"] == "True"
    assert len(p) == 27 and "Model" not in p


def test_benchmark_app_async_report_in_microseconds_is_parsed():
    r = parse_benchmark_app((DATA / "benchmark_app_async_tinynet.txt").read_text())
    assert r["api"] == "async" and r["requests"] == 2
    assert r["count"] == 6808 and r["throughput_fps"] == 6804.85
    # printed in us because the mean is under 1 ms; returned in ms
    assert r["latency_ms"]["median"] == pytest.approx(0.2295) and r["latency_ms"]["max"] == pytest.approx(2.79134)
    assert r["properties"]["PERFORMANCE_HINT"] == "THROUGHPUT" and r["properties"]["NUM_STREAMS"] == "2"


def test_benchmark_app_unfinished_output_names_what_is_missing():
    text = (DATA / "benchmark_app_sync_lite0.txt").read_text()
    with pytest.raises(BackendError, match="Measuring performance"):
        parse_benchmark_app(text.split("[Step 10/11]")[0])
    with pytest.raises(BackendError, match="Median"):
        parse_benchmark_app(text.split("[Step 11/11]")[0])


def test_benchmark_app_command_and_config():
    cfg = device_config(hint="latency", threads=2, streams=1)
    assert cfg == {"CPU": {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2",
                           "INFERENCE_PRECISION_HINT": "f32"}}
    assert device_config(hint="THROUGHPUT", precision=None) == {"CPU": {"PERFORMANCE_HINT": "THROUGHPUT"}}
    cmd = benchmark_app_command("m.xml", api="sync", seconds=2, shape=(1, 3, 224, 224), config_file="c.json")
    assert cmd == ["benchmark_app", "-m", "m.xml", "-d", "CPU", "-api", "sync", "-t", "2", "-shape", "[1,3,224,224]",
                   "-ip", "f32", "-load_config", "c.json"]
    # no -hint / -nthreads / -nstreams: they would override the config file (and benchmark_app refuses
    # -nthreads with a hint)
    assert not {"-hint", "-nthreads", "-nstreams"} & set(cmd)
    cmd = benchmark_app_command("m.xml", api="async", seconds=3, shape=(4, 3, 16, 16), requests=2)
    assert cmd[cmd.index("-nireq") + 1] == "2" and cmd[cmd.index("-shape") + 1] == "[4,3,16,16]"
    with pytest.raises(ConfigError, match="whole seconds"):
        benchmark_app_command("m.xml", api="sync", seconds=0.5, shape=(1,))
    with pytest.raises(ConfigError, match="api"):
        benchmark_app_command("m.xml", api="asynchronous", seconds=1, shape=(1,))
    with pytest.raises(ConfigError, match="-nireq"):
        benchmark_app_command("m.xml", api="sync", seconds=1, shape=(1,), requests=2)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("benchmark_app") is None, reason="benchmark_app is not on PATH (pip install openvino)")
def test_benchmark_app_compiles_with_exactly_the_settings_of_the_openvino_backend(tiny_artifact, tmp_path):
    """The same settings given to both tools give the same compiled model, property by property."""
    from edgeslim.runtime.base import BackendOptions
    from edgeslim.runtime.openvino import OpenVINOBackend

    xml = tiny_artifact / "model.xml"
    for hint, streams, api in (("LATENCY", 1, "sync"), ("THROUGHPUT", None, "async")):
        cfg = tmp_path / f"{hint}.json"
        cfg.write_text(json.dumps(device_config(hint=hint, threads=1, streams=streams)))
        out = subprocess.run(benchmark_app_command(xml, api=api, seconds=1, shape=(2, 3, 16, 16), config_file=cfg),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        r = parse_benchmark_app(out.stdout)
        extra = {"hint": hint, **({"streams": streams} if streams else {})}
        with OpenVINOBackend(xml, BackendOptions(threads=1, extra=extra)) as b:
            assert r["properties"] == b.compiled_properties()
            assert r["requests"] == (1 if api == "sync" else b.optimal_requests)
        assert r["count"] >= 1 and r["latency_ms"]["median"] > 0


# -- trtexec ----------------------------------------------------------------------------------------------------
def test_trtexec_summary_is_parsed():
    r = parse_trtexec((DATA / "trtexec_10_summary.txt").read_text())
    assert r["version"] == "10.3.0" and r["passed"]
    assert r["throughput_qps"] == 853.992
    assert r["latency_ms"] == {"min": 1.13379, "max": 1.64136, "mean": 1.16402, "median": 1.16113,
                               "p90": 1.17773, "p95": 1.18457, "p99": 1.26172}
    assert r["gpu_compute_ms"]["median"] == 1.02539 and r["h2d_ms"]["median"] == 0.0849609
    assert r["enqueue_ms"]["p99"] == 0.124023 and r["d2h_ms"]["mean"] == 0.0509262
    assert r["walltime_s"] == 3.00121 and r["gpu_compute_total_s"] == 2.63341
    assert (r["warmup_queries"], r["queries"], r["window_s"]) == (171, 2563, 3.00121)
    # throughput = queries / total host walltime; latency = H2D + compute + D2H
    assert r["throughput_qps"] == pytest.approx(r["queries"] / r["walltime_s"], rel=1e-4)
    assert r["latency_ms"]["mean"] == pytest.approx(
        r["h2d_ms"]["mean"] + r["gpu_compute_ms"]["mean"] + r["d2h_ms"]["mean"], rel=1e-4)
    assert r["shapes"] == {"input": "1x3x224x224"}
    assert r["options"]["Duration"] == "3s (+ 200ms warm up)" and r["options"]["Batch"] == "Explicit"
    assert option_mismatches(r) == {}
    assert r["warnings"][0].startswith("* GPU compute time is unstable")


def test_trtexec_settings_that_differ_are_reported():
    text = (DATA / "trtexec_10_summary.txt").read_text()
    text = text.replace("ExposeDMA: Enabled", "ExposeDMA: Disabled").replace("CUDA Graph: Disabled", "CUDA Graph: Enabled")
    assert option_mismatches(parse_trtexec(text)) == {"ExposeDMA": ("Enabled", "Disabled"),
                                                      "CUDA Graph": ("Disabled", "Enabled")}


def test_trtexec_numbers_in_exponent_form_and_without_timestamps():
    text = "\n".join([
        "&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b5] # trtexec --loadEngine=m.plan",
        "[I] === Performance summary ===",
        "[I] Throughput: 1.23457e+06 qps",
        "[I] Latency: min = 7.5e-05 ms, max = 0.00123 ms, mean = 8e-05 ms, median = 7.9e-05 ms, percentile(99.9%) = 0.001 ms",
        "[I] Total Host Walltime: 3 s",
    ])
    r = parse_trtexec(text)
    assert r["version"] == "11.1.0" and not r["passed"]
    assert r["throughput_qps"] == 1.23457e6
    assert r["latency_ms"] == {"min": 7.5e-05, "max": 0.00123, "mean": 8e-05, "median": 7.9e-05, "p99.9": 0.001}
    assert r["gpu_compute_ms"] is None and r["queries"] is None


def test_trtexec_run_without_a_summary_is_an_error():
    with pytest.raises(BackendError, match="trtexec failed"):
        parse_trtexec("&&&& RUNNING TensorRT.trtexec [TensorRT v100300]\n[E] Error\n&&&& FAILED TensorRT.trtexec")
    with pytest.raises(BackendError, match="no '=== Performance summary ==='"):
        parse_trtexec("[I] Skipped inference phase since --skipInference is added.\n&&&& PASSED TensorRT.trtexec")


def test_tensorrt_version_codes():
    assert tensorrt_version(100300) == "10.3.0" and tensorrt_version(101600) == "10.16.0"
    assert tensorrt_version(110100) == "11.1.0" and tensorrt_version(8601) == "8.6.1"


def test_trtexec_command_asks_for_what_the_backend_does_on_tensorrt_10_and_11():
    base = ["trtexec", "--loadEngine=e.plan", "--device=0", "--shapes=input:1x3x224x224", "--warmUp=200",
            "--duration=3", "--iterations=10", "--infStreams=1", "--exposeDMA", "--percentile=90,95,99"]
    ten = trtexec_bench_command("e.plan", tensorrt_major=10, shapes={"input": (1, 3, 224, 224)})
    assert ten == base + ["--useSpinWait"]
    eleven = trtexec_bench_command("e.plan", tensorrt_major=11, shapes={"input": (1, 3, 224, 224)})
    assert eleven == base + ["--includeDataTransfers", "--noCudaGraph"]
    # a static engine takes no --shapes; fractional windows and the executable pass through
    cmd = trtexec_bench_command(Path("e.plan"), tensorrt_major=10, warmup_ms=50, duration_s=0.5, iterations=100,
                                device=1, executable="/usr/src/tensorrt/bin/trtexec")
    assert cmd[0] == "/usr/src/tensorrt/bin/trtexec" and not any(c.startswith("--shapes") for c in cmd)
    assert {"--warmUp=50", "--duration=0.5", "--iterations=100", "--device=1"} <= set(cmd)
    with pytest.raises(ConfigError, match="TensorRT 10 or newer"):
        trtexec_bench_command("e.plan", tensorrt_major=8)
    with pytest.raises(ConfigError, match="duration_s > 0"):
        trtexec_bench_command("e.plan", tensorrt_major=10, duration_s=0)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_trtexec_measures_the_engine_the_backend_runs(tiny_artifact, tmp_path):
    import tensorrt

    from edgeslim.devices.profiler import ProfileConfig, profile_backend
    from edgeslim.export.tensorrt import EngineSettings, profile_shapes, trtexec_command
    from edgeslim.runtime.base import BackendOptions
    from edgeslim.runtime.tensorrt import TensorRTBackend

    exe = find_trtexec()
    if exe is None:
        pytest.skip("trtexec is neither on PATH nor in TensorRT's install locations")
    engine = tmp_path / "model.plan"
    build = trtexec_command(str(tiny_artifact / "model.onnx"), str(engine),
                            shapes=profile_shapes([-1, 3, 16, 16], EngineSettings(max_batch=4)))
    done = subprocess.run([exe, *build[1:]], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    major = int(tensorrt.__version__.split(".")[0])
    cmd = trtexec_bench_command(engine, tensorrt_major=major, shapes={"input": (2, 3, 16, 16)}, warmup_ms=50,
                                duration_s=0.5, executable=exe)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    r = parse_trtexec(out.stdout + "\n" + out.stderr)
    assert r["passed"] and option_mismatches(r) == {} and set(EXPECTED_OPTIONS) <= set(r["options"])
    assert r["shapes"] == {"input": "2x3x16x16"}
    assert r["version"].split(".")[:2] == tensorrt.__version__.split(".")[:2]
    assert r["queries"] >= 10 and r["window_s"] >= 0.5
    assert r["throughput_qps"] == pytest.approx(r["queries"] / r["walltime_s"], rel=0.01)
    assert r["latency_ms"]["median"] >= r["gpu_compute_ms"]["median"]
    # edgeslim's backend runs the same engine; its end-to-end call cannot be faster than trtexec's H2D+compute+D2H
    # by more than timer noise
    with TensorRTBackend(engine, BackendOptions(device="cuda")) as b:
        ours = profile_backend(b, batch=2, cfg=ProfileConfig(warmup=1, warmup_seconds=0.05, iterations=10, seconds=0.5))
    assert ours["latency_ms"]["median"] >= 0.9 * r["latency_ms"]["median"]


# -- round statistics -------------------------------------------------------------------------------------------
def test_spread_and_round_order():
    s = spread([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (s["n"], s["median"], s["q1"], s["q3"], s["min"], s["max"]) == (5, 3.0, 2.0, 4.0, 1.0, 10.0)
    assert s["cv"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1) / 4.0)
    assert spread([5.0])["cv"] == 0.0
    with pytest.raises(ConfigError):
        spread([])
    assert [round_order(i, ["edgeslim", "benchmark_app"])[0] for i in range(4)] == [
        "edgeslim", "benchmark_app", "edgeslim", "benchmark_app"]


def test_summary_uses_per_round_ratios_and_reports_each_tools_noise():
    # both tools slow down together in round 2 (a noisy neighbour): the per-round ratio stays put
    rounds = [
        {"edgeslim": {"median_ms": 10.0}, "benchmark_app": {"median_ms": 10.0}},
        {"edgeslim": {"median_ms": 15.0}, "benchmark_app": {"median_ms": 14.0}},
        {"edgeslim": {"median_ms": 10.2}, "benchmark_app": {"median_ms": 10.0}},
        {"edgeslim": {"median_ms": 9.9}},  # reference failed this round: skipped
    ]
    s = summarize(rounds, "median_ms", reference="benchmark_app")
    assert s["ratios"] == pytest.approx([1.0, 15 / 14, 1.02])
    assert s["ratio"]["median"] == pytest.approx(1.02)
    assert s["reference"]["cv"] > 0.2 and s["ours"]["n"] == 3  # the tools' own noise is far larger than the ratio's
    assert verdict(s) == "within"
    assert verdict({"ratio": {"median": 0.9, "q1": 0.85, "q3": 0.93}}) == "off"
    assert verdict({"ratio": {"median": 0.9, "q1": 0.85, "q3": 1.0}}) == "undecided"
    with pytest.raises(ConfigError, match="no round"):
        summarize(rounds, "fps", reference="benchmark_app")
