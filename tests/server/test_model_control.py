"""Explicit model control (Triton's load / unload with uploaded files): what a remote search relies on.

In process through FastAPI's TestClient, plus one live server driven by tritonclient's own ``load_model``.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgeslim.artifact import MANIFEST
from edgeslim.errors import ConfigError
from edgeslim.server import ServerSettings, create_app

from server_helpers import batch, live_server

TOKEN = "s3cret-token"


def upload_params(artifact: Path, **config) -> dict:
    files = {f"file:{p.relative_to(artifact).as_posix()}": base64.b64encode(p.read_bytes()).decode()
             for p in sorted(artifact.rglob("*")) if p.is_file()}
    return {"parameters": {**files, **({"config": json.dumps(config)} if config else {})}}


def infer(c: TestClient, name: str, x: np.ndarray):
    return c.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})


@pytest.fixture
def explicit(tmp_path):
    settings = ServerSettings(models=(), threads=1, batch_delay_ms=0.0, model_control="explicit",
                              upload_dir=tmp_path / "uploads")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_an_empty_explicit_server_is_ready_and_an_uploaded_artifact_serves_like_the_runtime(explicit, artifact,
                                                                                         reference, tmp_path):
    assert explicit.get("/v2/health/ready").status_code == 200  # waiting for load requests
    assert explicit.post("/v2/repository/index").json() == []
    r = explicit.post("/v2/repository/models/cand-1/load", json=upload_params(artifact, backend="onnxruntime"))
    assert r.status_code == 200, r.text
    assert explicit.post("/v2/repository/index").json() == [
        {"name": "cand-1", "version": "1", "state": "READY", "reason": ""}]
    assert explicit.get("/v2/models/cand-1").json()["name"] == "cand-1"  # served under the name it was loaded as
    x = batch(3, seed=4)
    out = infer(explicit, "cand-1", x).json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, -1), reference.infer(x), rtol=1e-5, atol=1e-5)
    stored = list((tmp_path / "uploads").iterdir())
    assert len(stored) == 1 and (stored[0] / MANIFEST).is_file()
    r = explicit.post("/v2/repository/models/cand-1/unload")
    assert r.status_code == 200, r.text
    assert explicit.post("/v2/repository/index").json() == [
        {"name": "cand-1", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert infer(explicit, "cand-1", x).status_code == 404
    assert list((tmp_path / "uploads").iterdir()) == []  # the upload's files are gone with it


def test_a_bad_upload_is_refused_and_the_model_it_would_replace_keeps_serving(explicit, artifact, tmp_path):
    assert explicit.post("/v2/repository/models/m/load", json=upload_params(artifact)).status_code == 200
    x = batch(2, seed=1)
    before = infer(explicit, "m", x).json()
    bad = upload_params(artifact)
    onnx = next(k for k in bad["parameters"] if k.endswith(".onnx"))
    raw = bytearray(base64.b64decode(bad["parameters"][onnx]))
    raw[-1] ^= 0xFF  # one flipped bit on the way
    bad["parameters"][onnx] = base64.b64encode(bytes(raw)).decode()
    r = explicit.post("/v2/repository/models/m/load", json=bad)
    assert 400 <= r.status_code < 500 and "sha256" in r.json()["error"], r.text
    assert infer(explicit, "m", x).json()["outputs"] == before["outputs"]  # the old model still answers
    assert len(list((tmp_path / "uploads").iterdir())) == 1  # the refused upload left nothing behind

    cases = {
        "../evil.onnx": "not a relative path inside the artifact",
        "/etc/passwd": "not a relative path inside the artifact",
    }
    for path, match in cases.items():
        r = explicit.post("/v2/repository/models/m/load",
                          json={"parameters": {**upload_params(artifact)["parameters"], f"file:{path}": "AAAA"}})
        assert r.status_code == 400 and match in r.json()["error"], r.text
    no_manifest = {k: v for k, v in upload_params(artifact)["parameters"].items() if k != f"file:{MANIFEST}"}
    r = explicit.post("/v2/repository/models/m/load", json={"parameters": no_manifest})
    assert r.status_code == 400 and f"no '{MANIFEST}'" in r.json()["error"]
    r = explicit.post("/v2/repository/models/m/load", json={"parameters": {f"file:{MANIFEST}": "not base64!"}})
    assert r.status_code == 400 and "not valid base64" in r.json()["error"]
    r = explicit.post("/v2/repository/models/m/load", json={"parameters": {"weights": "x"}})
    assert r.status_code == 400 and "unknown load parameter 'weights'" in r.json()["error"]
    r = explicit.post("/v2/repository/models/unknown/load", json={})  # no files, no artifact of that name
    assert r.status_code == 404 and "no artifact named 'unknown'" in r.json()["error"]
    assert explicit.post("/v2/repository/models/nope/unload").status_code == 404
    assert infer(explicit, "m", x).json()["outputs"] == before["outputs"]


def test_reload_by_name_from_the_servers_own_paths(artifact, reference):
    settings = ServerSettings(models=(artifact,), threads=1, batch_delay_ms=0.0, model_control="explicit")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/v2/repository/models/tiny/unload").status_code == 200
        assert c.post("/v2/repository/index").json()[0]["state"] == "UNAVAILABLE"
        r = c.post("/v2/repository/models/tny/load")
        assert r.status_code == 404 and "Did you mean 'tiny'" in r.json()["error"]
        assert c.post("/v2/repository/models/tiny/load").status_code == 200
        x = batch(2, seed=2)
        out = infer(c, "tiny", x).json()["outputs"][0]
        np.testing.assert_allclose(np.array(out["data"]).reshape(2, -1), reference.infer(x), rtol=1e-5, atol=1e-5)
    assert artifact.joinpath(MANIFEST).is_file()  # a model from the server's paths is never deleted on unload


def test_upload_limit_token_and_safe_defaults(artifact, tmp_path):
    small = ServerSettings(models=(), threads=1, model_control="explicit", max_upload_bytes=1000, token=TOKEN)
    with TestClient(create_app(small), raise_server_exceptions=False) as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/v2/repository/models/m/load", json=upload_params(artifact)).status_code == 401
        r = c.post("/v2/repository/models/m/load", json=upload_params(artifact), headers=auth)
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]
        dev = c.get("/v2/edgeslim/device", headers=auth).json()
        assert dev["model_control"] == "explicit" and dev["target"] and "isa" in dev["cpu"]
        assert "edgeslim_device" in c.get("/v2", headers=auth).json()["extensions"]
    with pytest.raises(ConfigError, match="needs a token"):
        ServerSettings(models=(), model_control="explicit", host="0.0.0.0")
    with pytest.raises(ConfigError, match="models is empty.*--model-control explicit"):
        ServerSettings(models=())
    with pytest.raises(ConfigError, match="model_control must be one of"):
        ServerSettings(models=(artifact,), model_control="poll")  # type: ignore[arg-type]


@pytest.mark.live
def test_tritonclient_load_model_uploads_infers_and_unloads(tmp_path, artifact, reference):
    """tritonclient's own ``load_model(files=...)``, unmodified, against a live server."""
    import tritonclient.http as http

    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    with live_server(tmp_path, [], model_control="explicit", token=TOKEN, backend="openvino") as srv:
        c = http.InferenceServerClient(srv.url)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        files = {f"file:{p.relative_to(copy).as_posix()}": p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        c.load_model("up", headers=auth, config=json.dumps({"backend": "onnxruntime"}), files=files)
        assert c.is_model_ready("up", headers=auth)
        x = batch(2, seed=3)
        inp = http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer("up", [inp], headers=auth).as_numpy("logits")
        np.testing.assert_allclose(got, reference.infer(x), rtol=1e-5, atol=1e-5)
        assert c.get_model_config("up", headers=auth)["backend"] == "onnxruntime"  # the config's backend won
        c.unload_model("up", headers=auth)
        assert not c.is_model_ready("up", headers=auth)
        c.close()
