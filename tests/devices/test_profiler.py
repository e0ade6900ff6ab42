"""The profiler on real backends (onnxruntime on a TinyNet artifact) and on a backend of known duration."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgeslim.devices.profiler import ProfileConfig, backend_class, latency_stats, profile_artifact, profile_backend
from edgeslim.errors import ArtifactError, ConfigError, DataError, MissingDependencyError, UnknownNameError

FAST = ProfileConfig(warmup=3, iterations=20, seconds=0.05)


def test_latency_matches_a_known_duration_and_window_minimums_hold(spin):
    b = spin(2.0)
    cfg = ProfileConfig(warmup=5, iterations=30, seconds=0.15)
    r = profile_backend(b, batch=3, cfg=cfg, load_seconds=0.25)
    lat = r["latency_ms"]
    m = r["measured"]
    assert 2.0 <= lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    # The profiler's per-call time is the backend's own time plus the call overhead (validation, dispatch):
    # compare with what the backend measured on the same calls, which holds even on a loaded machine.
    own = np.array(b.durations_ns[-m["iterations"]:]) / 1e6
    assert lat["median"] == pytest.approx(float(np.median(own)), abs=0.25)
    assert lat["mean"] == pytest.approx(float(own.mean()), abs=0.25)
    assert m["iterations"] >= 30 and m["seconds"] >= 0.15
    # every call counted exactly once: first inference + warm-up + window
    assert b.calls == 1 + r["warmup"]["iterations"] + m["iterations"]
    assert r["warmup"]["iterations"] >= 5
    # items/s = batch * calls / wall, and wall >= sum of per-call latencies
    assert r["throughput"]["items_per_s"] == pytest.approx(3 * m["iterations"] / m["seconds"])
    assert r["throughput"]["items_per_s"] <= 3 / (lat["mean"] / 1e3) * 1.001
    assert r["load_s"] == 0.25 and r["first_inference_ms"] >= 2.0
    assert r["input_shape"] == [3, 4]


def test_iterations_floor_dominates_when_calls_are_slow(spin):
    r = profile_backend(spin(5.0), batch=1, cfg=ProfileConfig(warmup=0, iterations=12, seconds=0.0))
    assert r["measured"]["iterations"] == 12
    assert r["warmup"]["iterations"] == 0


def test_warmup_seconds_are_honoured(spin):
    b = spin(1.0)
    r = profile_backend(b, batch=1, cfg=ProfileConfig(warmup=1, warmup_seconds=0.1, iterations=5, seconds=0))
    n = r["warmup"]["iterations"]
    starts = b.started_ns[1:1 + n]  # after the first inference
    # time, not the count of 1, ruled: the warm-up lasted 0.1 s, and it stopped with the first call that ended past
    # it (every call began inside the 0.1 s; a host that starves the process may make that one call)
    assert r["warmup"]["seconds"] >= 0.1 and n >= 1
    assert all(t - starts[0] < 0.1e9 for t in starts)


def test_paired_latency_takes_turns_and_gives_each_ones_speed_up_against_the_first(spin):
    from edgeslim.devices.measure import paired_latency

    a, b = spin(1.0), spin(4.0)
    res = paired_latency([a, b], rounds=4, calls=5, warmup=2, turn_warmup=1)
    assert [r["latency_ms"]["count"] for r in res] == [20, 20]  # the turns' first (warm-up) calls are not timed
    # after each one's warm-up, turns of 1 + 5 calls: a, b, a, b ... (both see the same state of the host)
    calls = sorted([(t, "a") for t in a.started_ns[2:]] + [(t, "b") for t in b.started_ns[2:]])
    assert [who for _, who in calls] == (["a"] * 6 + ["b"] * 6) * 4
    # ratio = the first's median / this one's; each call adds at most 0.25 ms to the backend's own time (the bound
    # test_latency_matches_a_known_duration_and_window_minimums_hold holds the profiler's clock to)
    own_a, own_b = (float(np.median([d for i, d in enumerate(x.durations_ns[2:]) if i % 6])) / 1e6 for x in (a, b))
    assert res[0]["ratio"] == 1.0
    assert own_a / (own_b + 0.25) <= res[1]["ratio"] <= (own_a + 0.25) / own_b
    assert res[1]["ratio"] < 0.5  # a 4 ms call against a 1 ms one


def test_paired_latency_refuses_an_empty_or_bad_window(spin):
    from edgeslim.devices.measure import paired_latency

    with pytest.raises(ConfigError, match="at least one backend"):
        paired_latency([])
    with pytest.raises(ConfigError, match="rounds must be an integer >= 1"):
        paired_latency([spin(0.1)], rounds=0)


def test_latency_stats_percentiles():
    s = latency_stats(np.arange(1, 101) * 1_000_000)  # 1..100 ms
    assert s["min"] == 1 and s["max"] == 100 and s["median"] == 50.5 and s["count"] == 100
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)


def test_memory_peak_is_reported_for_the_window(spin):
    r = profile_backend(spin(0.1), batch=1, cfg=FAST)
    mem = r["memory"]
    assert mem["peak_rss_mb"] > 10
    assert mem["peak_delta_mb"] >= 0 or mem["peak_scope"] == "process lifetime"
    assert mem["process_peak_rss_mb"] >= mem["peak_rss_mb"]


def test_bad_config_and_batch_are_rejected(spin):
    with pytest.raises(ConfigError, match="iterations"):
        ProfileConfig(iterations=0)
    with pytest.raises(ConfigError, match="batch_sizes"):
        ProfileConfig(batch_sizes=(0,))
    with pytest.raises(ConfigError, match="batch"):
        profile_backend(spin(0.1), batch=0, cfg=FAST)
    with pytest.raises(ConfigError, match="images"):
        profile_backend(spin(0.1), batch=1, cfg=ProfileConfig(iterations=2, seconds=0, end_to_end=True))


def test_onnxruntime_end_to_end_includes_decode_and_preprocess(tiny_artifact, png_images):
    from edgeslim.artifact import load_manifest

    man = load_manifest(tiny_artifact)
    cls = backend_class("onnxruntime")
    from edgeslim.runtime.base import BackendOptions

    with cls(tiny_artifact / "model.onnx", BackendOptions(threads=1)) as b:
        r = profile_backend(
            b, batch=2, cfg=ProfileConfig(warmup=2, iterations=20, seconds=0.05, end_to_end=True),
            images=png_images, preprocessing=man.preprocessing,
        )
    assert r["input_shape"] == [2, 3, 16, 16]
    e2e, pre, comp = r["end_to_end_ms"], r["preprocess_ms"], r["compute_in_end_to_end_ms"]
    assert pre["median"] > 0 and comp["median"] > 0
    assert e2e["median"] >= comp["median"] and e2e["median"] >= pre["median"]
    assert e2e["median"] <= pre["max"] + comp["max"] + 1.0


def test_profile_artifact_one_entry_per_model_backend_batch_with_conditions(tiny_artifact):
    import onnxruntime

    from edgeslim.artifact import load_manifest

    man = load_manifest(tiny_artifact)
    lines: list[str] = []
    entries = profile_artifact(
        tiny_artifact, backends=("onnxruntime",), cfg=ProfileConfig(warmup=2, iterations=10, seconds=0.02, batch_sizes=(1, 4)),
        threads=1, progress=lines.append,
    )
    assert [(e["model"]["path"], e["batch"]) for e in entries] == [
        ("model.onnx", 1), ("model.onnx", 4), ("model.int8.onnx", 1), ("model.int8.onnx", 4),
    ]
    for e in entries:
        assert e["status"] == "ok"
        assert e["model"]["sha256"] == man.files[e["model"]["path"]]
        assert e["backend"] == {"name": "onnxruntime", "version": onnxruntime.__version__}
        assert e["conditions"]["threads"] == 1 and e["conditions"]["cpu"]["logical_cores"]
        assert e["conditions"]["config"]["batch_sizes"] == [1, 4]
        assert e["input_shape"][0] == e["batch"]
        assert e["load_s"] > 0
    assert any("median" in ln for ln in lines) and len(lines) == 8


def test_precision_filter_and_missing_precision(tiny_artifact):
    entries = profile_artifact(tiny_artifact, backends=("ort",), precisions=["int8"], cfg=FAST, progress=False)
    assert [e["model"]["precision"] for e in entries] == ["int8"]
    with pytest.raises(ConfigError, match="fp16"):
        profile_artifact(tiny_artifact, backends=("onnxruntime",), precisions=["fp16"], cfg=FAST, progress=False)


def test_unknown_backend_suggests_the_closest_name(tiny_artifact):
    with pytest.raises(UnknownNameError, match="Did you mean 'onnxruntime'"):
        profile_artifact(tiny_artifact, backends=("onnxrutime",), cfg=FAST, progress=False)


def test_missing_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        profile_artifact(tmp_path / "nope", cfg=FAST, progress=False)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_backend_not_installed_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"edgeslim\[tensorrt\]"):
        backend_class("tensorrt")


def test_labels_outside_the_model_classes_are_rejected(tiny_artifact, digits):
    _, _, xte, yte = digits
    with pytest.raises(DataError, match="classes do not match"):
        profile_artifact(tiny_artifact, backends=("onnxruntime",), cfg=FAST, progress=False, data=(xte, yte + 5))
    with pytest.raises(DataError, match="shape"):
        profile_artifact(tiny_artifact, backends=("onnxruntime",), cfg=FAST, progress=False, data=(xte[:, :, :8], yte))


def test_a_model_that_fails_to_load_keeps_the_other_results(tmp_path, tiny_artifact):
    import shutil

    from edgeslim.artifact import finalize, load_manifest

    art = tmp_path / "broken"
    shutil.copytree(tiny_artifact, art)
    (art / "model.int8.onnx").write_bytes(b"not an onnx file")
    finalize(art, load_manifest(art, verify=False))  # a consistent manifest around a bad file
    entries = profile_artifact(art, backends=("onnxruntime",), cfg=FAST, progress=False)
    status = {e["model"]["path"]: e["status"] for e in entries}
    assert status == {"model.onnx": "ok", "model.int8.onnx": "failed"}
    bad = next(e for e in entries if e["status"] == "failed")
    assert "model.int8.onnx" in bad["error"]


def test_accuracy_per_backend_with_deltas_against_fp32(tiny_artifact, digits):
    from edgeslim.compress.metrics import evaluate

    _, _, xte, yte = digits
    entries = profile_artifact(
        tiny_artifact, backends=("onnxruntime", "openvino"), cfg=FAST, threads=1, progress=False, data=(xte, yte)
    )
    by = {(e["model"]["path"], e["backend"]["name"]): e for e in entries}
    assert set(by) == {("model.onnx", "onnxruntime"), ("model.int8.onnx", "onnxruntime"), ("model.xml", "openvino")}
    fp32 = by[("model.onnx", "onnxruntime")]["accuracy"]
    assert fp32["n"] == len(yte) and fp32["samples"] == len(yte)
    assert fp32["accuracy"] > 0.8  # the fixture's TinyNet learned the digits
    assert set(fp32["critical_stats"]) == {"3", "8"}
    # the same FP32 network in OpenVINO gives the same predictions on the same samples
    ov = by[("model.xml", "openvino")]
    assert ov["accuracy"]["confusion"] == fp32["confusion"]
    assert ov["accuracy_delta"]["accuracy"] == pytest.approx(0.0)
    assert ov["accuracy_delta"]["reference"] == "model.onnx on onnxruntime"
    # the INT8 delta is its accuracy minus the FP32 one, per class and for the critical FN
    i8 = by[("model.int8.onnx", "onnxruntime")]
    d = i8["accuracy_delta"]
    assert d["reference"] == "model.onnx on onnxruntime"
    assert d["accuracy"] == pytest.approx(i8["accuracy"]["accuracy"] - fp32["accuracy"])
    assert d["critical"]["3"]["fn"] == i8["accuracy"]["critical_stats"]["3"]["fn"] - fp32["critical_stats"]["3"]["fn"]
    assert len(d["per_class_recall"]) == 10
    # and the profiler's accuracy is the one compress.metrics computes from the same logits
    from edgeslim.runtime.base import BackendOptions

    with backend_class("onnxruntime")(tiny_artifact / "model.onnx", BackendOptions(threads=1)) as b:
        ref = evaluate(b.infer(xte)["logits"], yte, [str(i) for i in range(10)], [3, 8])
    assert fp32["accuracy"] == pytest.approx(ref.accuracy)


def test_openvino_throughput_mode_runs_async_requests(tiny_artifact):
    entries = profile_artifact(
        tiny_artifact, backends=("openvino",), threads=2, progress=False,
        cfg=ProfileConfig(warmup=2, iterations=50, seconds=0.2, batch_sizes=(4,), throughput=True),
    )
    (e,) = entries
    tm = e["throughput_mode"]
    assert tm["mode"] == "async" and tm["options"] == {"hint": "THROUGHPUT"}
    assert tm["requests"] >= 1 and tm["inferences"] >= 50 and tm["seconds"] >= 0.2
    assert tm["items_per_s"] == pytest.approx(4 * tm["inferences"] / tm["seconds"])
    # benchmark_app's counting: the window ends on a whole round of requests, and every request's own latency
    assert tm["inferences"] % tm["requests"] == 0
    assert tm["latency_ms"]["count"] == tm["inferences"] and tm["latency_ms"]["median"] > 0
    assert tm["warmup"]["iterations"] >= 2 and tm["first_inference_ms"] > 0
    # the settings it ran with, as benchmark_app prints them
    assert tm["properties"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert int(tm["properties"]["OPTIMAL_NUMBER_OF_INFER_REQUESTS"]) == tm["requests"]
    # the synchronous figure is measured separately, under the latency hint
    assert e["throughput"]["mode"] == "sync" and e["throughput"]["items_per_s"] > 0
    off = profile_artifact(tiny_artifact, backends=("openvino",), progress=False,
                           cfg=ProfileConfig(warmup=1, iterations=5, seconds=0, throughput=False))
    assert "throughput_mode" not in off[0]


def test_openvino_calls_are_also_timed_on_openvinos_own_clock(tiny_artifact):
    """benchmark_app reports OpenVINO's request latency; the profiler keeps that clock for every call too, and it
    can only be shorter than the wall time of the same call (which adds edgeslim's input check and copies)."""
    from edgeslim.runtime.base import BackendOptions

    cfg = ProfileConfig(warmup=2, iterations=30, seconds=0.0)
    with backend_class("openvino")(tiny_artifact / "model.xml", BackendOptions(threads=1)) as b:
        r = profile_backend(b, batch=1, cfg=cfg)
        assert b.last_latency_ms() > 0
    own, wall = r["runtime_latency_ms"], r["latency_ms"]
    assert 0 < own["min"] <= own["median"] <= own["max"]
    assert own["median"] <= wall["median"] and own["min"] <= wall["min"]
    with backend_class("onnxruntime")(tiny_artifact / "model.onnx", BackendOptions(threads=1)) as b:
        assert "runtime_latency_ms" not in profile_backend(b, batch=1, cfg=cfg)  # no clock of its own: wall only
