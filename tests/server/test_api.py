"""The app through FastAPI's TestClient: every bad-input case is a 4xx with a JSON error, never a 500."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edgeslim.errors import ConfigError
from edgeslim.server import ServerSettings, create_app

from server_helpers import CLASSES, batch, build_tiny_artifact, png_bytes

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def client(artifact):
    app = create_app(ServerSettings(models=[artifact], threads=1, batch_delay_ms=0.0, max_body_bytes=200_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def infer_json(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def binary_body(x: np.ndarray, **head) -> tuple[bytes, dict]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}], **head}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def assert_error(r, status: int, match: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    assert match.lower() in body["error"].lower(), body["error"]


# -- good requests ----------------------------------------------------------------------------------------------
def test_json_inference_matches_the_in_process_runtime(client, reference):
    x = batch(3, seed=1)
    r = client.post("/v2/models/tiny/infer", json=infer_json(x, id="abc"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "tiny" and body["model_version"] == "1"
    (out,) = body["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 4), reference.infer(x), rtol=1e-5, atol=1e-5)


def test_binary_inference_with_versioned_path_and_gzip_body(client, reference):
    x = batch(2, seed=2)
    body, headers = binary_body(x, parameters={"binary_data_output": True})
    r = client.post("/v2/models/tiny/versions/1/infer", content=gzip.compress(body),
                    headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 4 * 4
    got = np.frombuffer(r.content[n:], "<f4").reshape(2, 4)
    np.testing.assert_allclose(got, reference.infer(x), rtol=1e-5, atol=1e-5)


def test_classify_endpoint_agrees_with_predictor(client, reference):
    images = [png_bytes(seed=s) for s in range(3)]
    r = client.post("/v1/models/tiny/classify?top_k=2",
                    files=[("file", (f"{i}.png", im, "image/png")) for i, im in enumerate(images)])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = reference.predict(images, top_k=2)
    assert len(results) == 3
    for res, exp in zip(results, expected):
        assert res["prediction"]["index"] == exp.label
        assert [p["index"] for p in res["top_k"]] == [i for i, _, _ in exp.top_k]
        np.testing.assert_allclose([p["probability"] for p in res["top_k"]], [p for *_, p in exp.top_k], atol=1e-5)
        (crit,) = res["critical"]
        assert crit["label"] == "person" and crit["threshold"] == 0.3
        assert crit["fired"] == (2 in exp.critical)
    # The raw body form gives the same answer as the multipart form.
    r2 = client.post("/v1/models/tiny/classify?top_k=2", content=images[0], headers={"Content-Type": "image/png"})
    assert r2.json()["results"][0] == results[0]


def test_metadata_config_and_server_extensions(client):
    assert client.get("/v2").json()["extensions"] == [
        "binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics",
        "edgeslim_device"]
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    cfg = client.get("/v2/models/tiny/versions/1/config").json()
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, 16, 16]
    assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/tiny/ready").status_code == 200


@pytest.mark.parametrize("body", [None, b"", b"{}", b'{"ready": true}', b'{"ready": false, "repository_name": ""}'])
def test_repository_index_lists_every_served_model(client, body):
    r = client.post("/v2/repository/index", content=body)
    assert r.status_code == 200, r.text
    assert r.json() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]


def test_repository_index_bad_bodies_and_model_control_refused(client):
    assert_error(client.post("/v2/repository/index", content=b'{"ready": "maybe"}'), 400,
                 "invalid repository index request: ready:")
    assert_error(client.post("/v2/repository/index", content=b"{not json"), 400, 'send {} or {"ready": true}')
    for action in ("load", "unload"):
        for name in ("tiny", "other"):
            assert_error(client.post(f"/v2/repository/models/{name}/{action}", json={}), 403,
                         f"cannot {action} model '{name}': model control is off")
    assert client.get("/v2/repository/index").status_code == 405  # POST only, as in Triton


def test_repository_index_while_shutting_down_and_ready_filter(artifact):
    app = create_app(ServerSettings(models=[artifact], threads=1))
    with TestClient(app) as c:
        assert c.post("/v2/repository/index", json={"ready": True}).json()[0]["state"] == "READY"
    after = TestClient(app)  # no lifespan: the closed repository answers as during shutdown
    assert after.post("/v2/repository/index").json() == [
        {"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": "shutting down"}]
    assert after.post("/v2/repository/index", json={"ready": True}).json() == []


def test_openapi_documents_every_route_and_the_binary_body(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}", "/v2/models/{model_name}/ready",
              "/v2/models/{model_name}/config", "/v2/models/{model_name}/stats", "/v2/models/{model_name}/infer",
              "/v2/models/{model_name}/versions/{version}/infer", "/v1/models/{model_name}/classify", "/metrics",
              "/v2/repository/index", "/v2/repository/models/{model_name}/load", "/v2/edgeslim/device"]:
        assert p in paths, p
    body = paths["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/InferRequestBody"
    assert "RequestInput" in spec["components"]["schemas"]
    classify = paths["/v1/models/{model_name}/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ClassifyResponse")
    assert {"400", "404", "413", "503"} <= set(classify["responses"])
    assert client.get("/docs").status_code == 200


def test_metrics_use_triton_names_and_count_requests(client):
    from prometheus_client.parser import text_string_to_metric_families

    before = client.get("/v2/models/tiny/stats").json()["model_stats"][0]
    client.post("/v2/models/tiny/infer", json=infer_json(batch(2)))
    client.post("/v2/models/tiny/infer", json=infer_json(batch(1), outputs=[{"name": "nope"}]))
    text = client.get("/metrics").text
    assert "# TYPE nv_inference_request_success counter" in text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ["nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count",
                 "nv_cpu_memory_used_bytes", "edgeslim_server_resident_memory_bytes"]:
        assert name in fams, name

    def value(name):
        (s,) = [s for s in fams[name].samples if s.labels.get("model") == "tiny"]
        assert s.labels["version"] == "1"
        return s.value

    stats = client.get("/v2/models/tiny/stats").json()["model_stats"][0]
    assert value("nv_inference_request_success") == stats["inference_stats"]["success"]["count"]
    assert stats["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert stats["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert stats["inference_count"] == before["inference_count"] + 2
    assert value("nv_inference_count") == stats["inference_count"]
    assert fams["edgeslim_server_resident_memory_bytes"].samples[0].value > 10e6


# -- bad requests: each one a 4xx with {"error": ...} -------------------------------------------------------------
def _bad_binary_cases():
    x = batch(1)
    body, headers = binary_body(x)
    return [
        ("truncated tensor", body[:-8], headers, 400, "runs past the end"),
        ("trailing bytes", body + b"xx", headers, 400, "after the last binary input"),
        ("header length past body", body, {**headers, "Inference-Header-Content-Length": "999999"}, 400, "body has"),
        ("header length not a number", body, {**headers, "Inference-Header-Content-Length": "ten"}, 400, "integer"),
        ("binary without header length", body, {"Content-Type": "application/octet-stream"}, 400, "not valid JSON"),
        ("bad gzip", body, {**headers, "Content-Encoding": "gzip"}, 400, "not valid gzip"),
        ("unsupported encoding", body, {**headers, "Content-Encoding": "br"}, 400, "not supported"),
    ]


@pytest.mark.parametrize("case", _bad_binary_cases(), ids=lambda c: c[0])
def test_bad_binary_requests(client, case):
    _, body, headers, status, match = case
    assert_error(client.post("/v2/models/tiny/infer", content=body, headers=headers), status, match)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda r: r["inputs"][0].update(datatype="FP64"), "datatype FP64; model 'tiny' expects FP32"),
        (lambda r: r["inputs"][0].update(datatype="INT32", data=[0] * 768), "expects FP32"),
        (lambda r: r["inputs"][0].update(shape=[1, 3, 8, 32]), "expects [-1, 3, 16, 16]"),
        (lambda r: r["inputs"][0].update(shape=[3, 16, 16], data=[0.0] * 768), "expects [-1, 3, 16, 16]"),
        (lambda r: r["inputs"][0].update(shape=[0, 3, 16, 16], data=[]), "batch size 0"),
        (lambda r: r["inputs"][0].update(shape=[9, 3, 16, 16], data=[0.0] * 9 * 768), "max_batch_size 8"),
        (lambda r: r["inputs"][0].update(name="image"), "unknown ['image'], missing ['input']"),
        (lambda r: r["inputs"][0].update(data=[float("nan")] + [0.0] * 767), "NaN/Inf"),
        (lambda r: r["inputs"][0].update(data=[float("inf")] + [0.0] * 767), "NaN/Inf"),
        (lambda r: r["inputs"][0].update(data=[0.0] * 10), "has 10 elements"),
        (lambda r: r["inputs"].append(dict(r["inputs"][0])), "appears twice"),
        (lambda r: r.update(outputs=[{"name": "logit"}]), "Did you mean 'logits'"),
        (lambda r: r.update(outputs=[{"name": "logits", "parameters": {"classification": -1}}]), "classification"),
        (lambda r: r.update(outputs=[{"name": "logits", "parameters": {"binary_data": "yes"}}]), "true or false"),
        (lambda r: r.update(id=5), "'id' must be a string"),
        (lambda r: r.update(parameters={"sequence_id": 3}), "not supported"),
        (lambda r: r.update(parameters={"timeout": -1}), "timeout"),
    ],
)
def test_bad_json_requests(client, mutate, match):
    req = infer_json(batch(1))
    mutate(req)
    assert_error(client.post("/v2/models/tiny/infer", content=json.dumps(req)), 400, match)


@pytest.mark.parametrize(
    "path,status,match",
    [
        ("/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("/v2/models/tinyy/infer", 404, "did you mean 'tiny'"),
        ("/v2/models/..%2F..%2Fetc%2Fpasswd/infer", 404, "not found"),
        ("/v2/models/a%20b/infer", 404, "invalid model name"),
        ("/v2/models/tiny/versions/2/infer", 404, "no version '2'"),
    ],
)
def test_unknown_or_invalid_model_names(client, path, status, match):
    assert_error(client.post(path, json=infer_json(batch(1))), status, match)


def test_other_route_errors_are_json_too(client):
    assert_error(client.get("/v2/models/tiny/infer"), 405, "method not allowed")
    assert_error(client.get("/nothing/here"), 404, "not found")
    assert_error(client.get("/v2/models/nope"), 404, "unknown model")
    assert_error(client.get("/v2/models/nope/ready"), 404, "unknown model")
    assert_error(client.post("/v1/models/tiny/classify?top_k=0", content=png_bytes()), 400, "top_k")


def test_body_size_limit_with_and_without_content_length(client):
    big = json.dumps(infer_json(batch(1))) + " " * 200_000  # valid JSON, but over this client's 200 kB limit
    assert_error(client.post("/v2/models/tiny/infer", content=big), 413, "exceeds")

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(30):
            yield b" " * 10_000

    assert_error(client.post("/v2/models/tiny/infer", content=chunks()), 413, "exceeds")
    bomb = gzip.compress(b" " * 5_000_000)
    assert_error(client.post("/v2/models/tiny/infer", content=bomb, headers={"Content-Encoding": "gzip"}), 413,
                 "expands beyond")


def _jpeg(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _png_bomb() -> bytes:
    # A 1-bit 10000x10000 PNG is ~12 kB on the wire but 100 Mpx decoded: over preprocess.MAX_IMAGE_PIXELS.
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data,match",
    [
        ("not an image", b"hello, I am text", "not a readable image"),
        ("truncated jpeg", _jpeg()[:200], "not a readable image"),
        ("truncated png", png_bytes()[:60], "not a readable image"),
        ("decompression bomb", _png_bomb(), "decompression bomb"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_classify_rejects_bad_images(client, name, data, match):
    assert len(data) < 200_000
    r = client.post("/v1/models/tiny/classify", files={"file": ("x.png", data, "image/png")})
    assert_error(r, 400, match)
    r = client.post("/v1/models/tiny/classify", content=data, headers={"Content-Type": "image/png"})
    assert_error(r, 400, match)


def test_classify_form_problems(client):
    assert_error(client.post("/v1/models/tiny/classify", data={"note": "x"},
                             headers={"Content-Type": "multipart/form-data; boundary=zzz"}), 400, "")
    assert_error(client.post("/v1/models/tiny/classify", files={"file": ("x.png", b"", "image/png")}), 400, "empty")
    too_many = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(9)]
    assert_error(client.post("/v1/models/tiny/classify", files=too_many), 400, "")
    assert_error(client.post("/v1/models/tiny/classify", content=b""), 400, "empty")


# -- security and settings ----------------------------------------------------------------------------------------
def test_token_is_required_everywhere_but_health(artifact):
    app = create_app(ServerSettings(models=[artifact], threads=1, token=TOKEN))
    with TestClient(app) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        for method, path in [("get", "/v2"), ("get", "/v2/models/tiny"), ("get", "/metrics"), ("get", "/openapi.json"),
                             ("post", "/v2/models/tiny/infer"), ("post", "/v1/models/tiny/classify"),
                             ("post", "/v2/repository/index")]:
            r = getattr(c, method)(path)
            assert_error(r, 401, "missing bearer token")
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert_error(c.get("/v2", headers={"Authorization": "Bearer wrong-token"}), 401, "wrong bearer token")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/v2", headers=auth).status_code == 200
        spec = c.get("/openapi.json", headers=auth).json()
        assert spec["paths"]["/v2/models/{model_name}/infer"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in spec["paths"]["/v2/health/live"]["get"]
        r = c.post("/v2/models/tiny/infer", json=infer_json(batch(1)), headers=auth)
        assert r.status_code == 200


def test_nonfinite_allow_passes_nan_through(artifact):
    app = create_app(ServerSettings(models=[artifact], threads=1, nonfinite="allow"))
    x = batch(1)
    x[0, 0, 0, 0] = np.nan
    with TestClient(app) as c:
        r = c.post("/v2/models/tiny/infer", content=json.dumps(infer_json(x)))
    assert r.status_code == 200


def test_settings_validation_names_the_field():
    with pytest.raises(ConfigError, match="max_batch"):
        ServerSettings(models=["x"], max_batch=0)
    with pytest.raises(ConfigError, match="preferred batch size 16"):
        ServerSettings(models=["x"], max_batch=8, preferred_batch_sizes=(4, 16))
    with pytest.raises(ConfigError, match="nonfinite"):
        ServerSettings(models=["x"], nonfinite="ignore")
    with pytest.raises(ConfigError, match="token"):
        ServerSettings(models=["x"], token="short")
    with pytest.raises(ConfigError, match="empty"):
        ServerSettings(models=[])
    with pytest.raises(ConfigError, match="busy_poll_us"):
        ServerSettings(models=["x"], busy_poll_us=-1)
    assert TOKEN not in repr(ServerSettings(models=["x"], token=TOKEN))  # never logged


def test_bad_model_paths_and_duplicate_names(tmp_path, artifact):
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(ServerSettings(models=[tmp_path / "missing"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither an artifact"):
        create_app(ServerSettings(models=[tmp_path / "empty"]))
    app = create_app(ServerSettings(models=[artifact, artifact]))
    with pytest.raises(ConfigError, match="two artifacts are named 'tiny'"):
        with TestClient(app):
            pass


def test_several_models_from_a_directory(tmp_path, artifact):
    import shutil

    shutil.copytree(artifact, tmp_path / "a")
    build_tiny_artifact(tmp_path / "b", name="tiny-b")
    with TestClient(create_app(ServerSettings(models=[tmp_path], threads=1))) as c:
        stats = c.get("/v2/models/stats").json()["model_stats"]
        assert [s["name"] for s in stats] == ["tiny", "tiny-b"]
        assert c.post("/v2/repository/index").json() == [
            {"name": "tiny", "version": "1", "state": "READY", "reason": ""},
            {"name": "tiny-b", "version": "1", "state": "READY", "reason": ""},
        ]
        for name in ("tiny", "tiny-b"):
            assert c.post(f"/v2/models/{name}/infer", json=infer_json(batch(1))).status_code == 200
    assert CLASSES


def test_field_monitoring_per_model(tmp_path, artifact):
    import shutil

    shutil.copytree(artifact, tmp_path / "a")
    build_tiny_artifact(tmp_path / "b", name="tiny-b")
    with pytest.raises(ConfigError, match="model_field_monitoring must map"):
        ServerSettings(models=[tmp_path], model_field_monitoring={"tiny": "off"})
    with pytest.raises(ConfigError, match=r"not served: \['tiny-c'\].*Did you mean 'tiny-b'"):
        with TestClient(create_app(ServerSettings(models=[tmp_path], model_field_monitoring={"tiny-c": False}))):
            pass
    settings = ServerSettings(models=[tmp_path], threads=1, model_field_monitoring={"tiny-b": False})
    with TestClient(create_app(settings)) as c:
        on = c.post("/v2/models/tiny/infer", json=infer_json(batch(1))).json()
        off = c.post("/v2/models/tiny-b/infer", json=infer_json(batch(1))).json()
        assert on["id"] and "id" not in off  # only a monitored model's answer carries an id for feedback
        r = c.post("/v2/models/tiny-b/feedback", json={"id": "x", "label": 0})
        assert_error(r, 400, "model_field_monitoring setting turns it off")


def test_power_gauges_from_a_windowed_reader(artifact):
    from edgeslim.server.metrics import WindowedPower

    class Reader:  # the issue-5 reader protocol: start() / stop() -> dict
        name = "fake-rail"

        def __init__(self):
            self.windows = 0

        def start(self):
            self.windows += 1

        def stop(self):
            return {"available": True, "source": self.name, "mean_w": 2.5 * self.windows, "energy_j": 1.0}

    reader = Reader()
    app = create_app(ServerSettings(models=[artifact], threads=1), power_reader=WindowedPower(reader))
    with TestClient(app) as c:
        assert "edgeslim_power_watts" not in c.get("/metrics").text  # first scrape opens the window
        text = c.get("/metrics").text
    assert 'edgeslim_power_watts{rail="fake-rail"} 2.5' in text
    assert reader.windows == 2


# -- the inference fast path answers exactly like the FastAPI route ---------------------------------------------------
def _fast_path_cases():
    x = batch(2, seed=5)
    body, headers = binary_body(x, outputs=[{"name": "logits", "parameters": {"binary_data": True}}], id="b1")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return [
        ("binary", "/v2/models/tiny/infer", body, {**headers, **auth}),
        ("json", "/v2/models/tiny/versions/1/infer", json.dumps(infer_json(x, id="j")).encode(), auth),
        ("gzip", "/v2/models/tiny/infer", gzip.compress(body), {**headers, **auth, "Content-Encoding": "gzip"}),
        ("classification", "/v2/models/tiny/infer",
         json.dumps(infer_json(x, outputs=[{"name": "logits", "parameters": {"classification": 2}}])).encode(), auth),
        ("no token", "/v2/models/tiny/infer", body, headers),
        ("wrong token", "/v2/models/tiny/infer", body, {**headers, "Authorization": "Bearer nope-nope"}),
        ("unknown model", "/v2/models/tinyy/infer", body, {**headers, **auth}),
        ("unknown version", "/v2/models/tiny/versions/7/infer", body, {**headers, **auth}),
        ("truncated", "/v2/models/tiny/infer", body[:-4], {**headers, **auth}),
        ("too large", "/v2/models/tiny/infer", b" " * 300_000, auth),
        ("bad output", "/v2/models/tiny/infer", json.dumps(infer_json(x, outputs=[{"name": "x"}])).encode(), auth),
    ]


def test_fast_path_and_fastapi_route_give_the_same_answers(artifact):
    # field monitoring off: each app would generate its own request ids, and the answers are compared byte for byte
    settings = ServerSettings(models=[artifact], threads=1, batch_delay_ms=0.0, max_body_bytes=200_000, token=TOKEN,
                              field_monitoring=False)
    fast, routed = create_app(settings), create_app(settings)
    assert fast.fast_infer is not None and fast.fast_infer.match({"path": "/v2/models/tiny/versions/1/infer"})
    assert fast.fast_infer.match({"path": "/v2/models/../x/infer"}) is None  # '/' never inside a name
    routed.fast_infer = None  # every request through FastAPI's middleware, router and exception handlers
    calls = []
    original = type(fast.fast_infer).__call__

    async def counting(self, *args):
        calls.append(args[3])
        return await original(self, *args)

    type(fast.fast_infer).__call__ = counting
    try:
        with TestClient(fast) as a, TestClient(routed) as b:
            for name, path, body, headers in _fast_path_cases():
                ra, rb = a.post(path, content=body, headers=headers), b.post(path, content=body, headers=headers)
                assert ra.status_code == rb.status_code, (name, ra.text, rb.text)
                assert ra.content == rb.content, name
                for h in ("content-type", "inference-header-content-length", "www-authenticate", "content-length"):
                    assert ra.headers.get(h) == rb.headers.get(h), (name, h)
                if ra.status_code != 200:
                    assert set(ra.json()) == {"error"}, name
            sa = a.get("/v2/models/tiny/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            sb = b.get("/v2/models/tiny/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    finally:
        type(fast.fast_infer).__call__ = original
    assert len(calls) == len(_fast_path_cases())  # every inference request took the fast path on `fast`
    for key in ("inference_count", "execution_count"):
        assert sa["model_stats"][0][key] == sb["model_stats"][0][key]
    ia, ib = sa["model_stats"][0]["inference_stats"], sb["model_stats"][0]["inference_stats"]
    for key in ("success", "fail"):
        assert ia[key]["count"] == ib[key]["count"] > 0


def test_binary_body_in_chunks_lands_aligned_and_answers_right(client, reference):
    import asyncio

    from edgeslim.server.guard import Guard
    from edgeslim.server.protocol import parse_infer_request

    x = batch(3, seed=8)
    body, headers = binary_body(x, parameters={"binary_data_output": True})
    n = int(headers["Inference-Header-Content-Length"])
    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]

    async def read() -> memoryview:
        it = iter(chunks)

        async def receive():
            c = next(it)
            return {"type": "http.request", "body": c, "more_body": c is not chunks[-1]}

        return await Guard(token=None, max_body_bytes=1 << 20).read_body(receive, align_at=n)

    joined = asyncio.run(read())
    arr = parse_infer_request(joined, n).inputs["input"]
    assert arr.ctypes.data % 64 == 0 and arr.flags.aligned
    np.testing.assert_array_equal(arr, x)
    # The same over HTTP, streamed in chunks (no Content-Length).
    r = client.post("/v2/models/tiny/infer", content=iter(chunks), headers=headers)
    assert r.status_code == 200, r.text
    h = int(r.headers["Inference-Header-Content-Length"])
    np.testing.assert_allclose(np.frombuffer(r.content[h:], "<f4").reshape(3, 4), reference.infer(x), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_inference_cpus_pin_the_inference_thread_only(artifact):
    import os

    cpu = max(os.sched_getaffinity(0))
    loop_cpus = os.sched_getaffinity(0)
    app = create_app(ServerSettings(models=[artifact], threads=1, inference_cpus=(cpu,)))
    with TestClient(app) as c:
        assert c.post("/v2/models/tiny/infer", json=infer_json(batch(1))).status_code == 200
        thread = app.state.repository.models["tiny"].batcher._thread
        assert os.sched_getaffinity(thread.native_id) == {cpu}
        assert os.sched_getaffinity(0) == loop_cpus  # nothing else is pinned
    with pytest.raises(ConfigError, match="inference_cpus"):
        ServerSettings(models=["x"], inference_cpus=(os.cpu_count(),))
    with pytest.raises(ConfigError, match="inference_cpus"):
        ServerSettings(models=["x"], inference_cpus=())
