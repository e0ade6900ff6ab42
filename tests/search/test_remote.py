"""A remote search target: an edgeslim server under explicit model control times and scores the files itself."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeslim.errors import BackendError, ConfigError
from edgeslim.search.target import resolve_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import build_tiny_artifact, live_server  # noqa: E402

TOKEN = "search-token-1"
pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("remote") / "tiny")


def test_a_remote_target_is_the_device_the_server_runs_on(tmp_path, tiny):
    from edgeslim.hardware import host_target

    with live_server(tmp_path, [], model_control="explicit", token=TOKEN, backend="onnxruntime") as srv:
        t = resolve_target(f"http://{srv.url}", token=TOKEN)
        # the server's own detection names the hardware (here it is this host) and its backend is the one timed
        assert t.name == host_target().name and t.backend == "onnxruntime" and t.url == f"http://{srv.url}"
        assert "fp32" in t.precisions and "int8" in t.precisions and not t.sparse_2_4
        assert "remote" in t.info and "token" not in t.to_dict()
        with pytest.raises(BackendError, match="refused the token"):
            resolve_target(f"http://{srv.url}", token="wrong-token")
        with pytest.raises(ConfigError, match="serves with backend 'onnxruntime', not 'openvino'"):
            resolve_target(f"http://{srv.url}", token=TOKEN, backend="openvino")
        with pytest.raises(ConfigError, match="drop --isa"):
            resolve_target(f"http://{srv.url}", token=TOKEN, isa="sse41")
    with live_server(tmp_path, [tiny]) as fixed:  # model control off: it cannot load candidates
        with pytest.raises(ConfigError, match="restart it with `edgeslim serve --model-control explicit"):
            resolve_target(f"http://{fixed.url}")


def test_remote_site_times_and_scores_the_uploaded_file_as_the_local_runtime_does(tmp_path, tiny):
    from edgeslim.devices.profiler import ProfileConfig
    from edgeslim.search.site import LocalSite, RemoteSite

    up = tmp_path / "uploads"
    x = np.random.default_rng(0).standard_normal((13, 3, 16, 16)).astype(np.float32)  # not a multiple of 8
    with live_server(tmp_path, [], model_control="explicit", token=TOKEN, upload_dir=str(up)) as srv:
        site = RemoteSite(f"http://{srv.url}", token=TOKEN, backend="onnxruntime")
        z, manifest = site.logits(tiny, "fp32", x)
        zl, ml = LocalSite("onnxruntime", threads=1).logits(tiny, "fp32", x)
        np.testing.assert_allclose(z, zl, rtol=1e-5, atol=1e-5)
        assert manifest.thresholds == ml.thresholds and manifest.critical == ml.critical
        lat = site.latency(tiny, "fp32", ProfileConfig(warmup=2, iterations=10, seconds=0.0, throughput=False))
        assert lat["latency_ms"]["p90"] > 0 and lat["measured"]["iterations"] >= 10
        assert lat["server_ms"]["compute_mean"] > 0  # the device's compute time, apart from the network
        assert list(up.iterdir()) == []  # every upload unloaded and removed
        with pytest.raises(BackendError, match="refused to load"):
            RemoteSite(f"http://{srv.url}", token=TOKEN, backend="tensorrt").latency(
                tiny, "fp32", ProfileConfig(iterations=1, seconds=0.0))


def test_architecture_latency_measured_on_the_remote_device(tmp_path):
    from edgeslim.recipe import parse_recipe
    from edgeslim.search.latency import measure_architecture
    from edgeslim.search.site import RemoteSite

    base = parse_recipe({"model": {"source": "tiny"}, "data": {"image_size": 16}})
    with live_server(tmp_path, [], model_control="explicit", token=TOKEN, backend="openvino") as srv:
        site = RemoteSite(f"http://{srv.url}", token=TOKEN, backend="openvino")
        m = measure_architecture(base, {"prune": "structured:0.5", "precision": "fp32", "image_size": 16},
                                 backend="openvino", num_classes=10, iterations=10, seconds=0.0, site=site)
    assert m.p90_ms > 0 and m.size_mb > 0
    assert m.layers == [] and m.layer_sum_ms is None  # the server gives no per-layer counters


@pytest.mark.slow
def test_a_search_against_a_remote_target_measures_every_candidate_there(tmp_path):
    """End to end on TinyNet + digits: the target is the server's device, every architecture is uploaded and timed
    there, the pick is scored there on test, and nothing stays on the device afterwards."""
    import copy
    import json

    from edgeslim.recipe import parse_recipe
    from edgeslim.search.study import search

    from .conftest import TINY_BASE

    base = copy.deepcopy(TINY_BASE)
    up = tmp_path / "uploads"
    with live_server(tmp_path, [], model_control="explicit", token=TOKEN, backend="openvino",
                     upload_dir=str(up)) as srv:
        base["search"].update(target=f"http://{srv.url}", latency_ms=50.0, max_critical_fn=40)
        res = search(parse_recipe(base), tmp_path / "s", progress=False, token=TOKEN)
        stats = srv.url
    doc = json.loads((tmp_path / "s" / "front.json").read_text())
    assert doc["target"]["url"] == f"http://{stats}" and res.pick is not None
    assert res.pick["test"]["n"] > 0 and all(p["measured_p90_ms"] > 0 for p in doc["front"])
    assert list(up.iterdir()) == []
