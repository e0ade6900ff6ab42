"""gRPC (``inference.GRPCInferenceService``) in process: the app under FastAPI's TestClient, whose lifespan starts
the gRPC server on its event loop, driven by the unmodified ``tritonclient.grpc`` and by a raw channel.

What a user relies on: the same answers as REST and the in-process runtime, every bad request a clear status code
(never a crash), the token, the size limit and the queue limit as REST enforces them. ``test_grpc_live.py`` does the
same against a real ``edgeslim serve`` process, with ``tritonclient.http`` beside it and ``perf_analyzer -i grpc``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgeslim.errors import ConfigError
from edgeslim.server import ServerSettings, create_app

from grpc_corpus import MODEL, Case, call, corpus
from server_helpers import batch, free_port

grpc = pytest.importorskip("grpc", reason="gRPC needs edgeslim[serve] (grpcio)")
gclient = pytest.importorskip("tritonclient.grpc", reason="the tests drive gRPC with tritonclient[grpc]")
from tritonclient.grpc import service_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "grpc-s3cret"
LIMIT = 200_000


def serve(settings: ServerSettings):
    """The app with gRPC on a free port, started; yields (REST TestClient, gRPC address)."""
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    return client, f"127.0.0.1:{settings.grpc_port}"


@pytest.fixture(scope="module")
def server(artifact):
    rest, url = serve(ServerSettings(models=[artifact], threads=1, batch_delay_ms=0.0, max_body_bytes=LIMIT,
                                     grpc_port=free_port()))
    with rest:
        yield rest, url


def grpc_infer(url: str, x: np.ndarray, **kw) -> np.ndarray:
    c = gclient.InferenceServerClient(url)
    inp = gclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return c.infer(MODEL, [inp], **kw)


def test_grpc_answers_as_rest_and_the_runtime_on_the_same_model(server, reference):
    rest, url = server
    c = gclient.InferenceServerClient(url)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    # an unknown model or version is not ready (as Triton answers), not an error: is_model_ready says False
    assert c.is_model_ready("nope") is False and c.is_model_ready(MODEL, model_version="2") is False
    assert rest.get("/v2/models/nope/ready").status_code == 404  # which tritonclient.http reads as False
    for n, seed in ((1, 0), (3, 1), (8, 2)):
        x = batch(n, seed=seed)
        got = grpc_infer(url, x, request_id=f"r{n}")
        assert got.get_response().id == f"r{n}"
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        over_rest = np.array(rest.post(f"/v2/models/{MODEL}/infer", json=body).json()["outputs"][0]["data"])
        np.testing.assert_array_equal(got.as_numpy("logits").ravel(), over_rest.astype(np.float32))
        np.testing.assert_allclose(got.as_numpy("logits"), reference.infer(x), rtol=1e-5, atol=1e-5)
    # the classification extension: the same "score:index:label" strings as REST's
    x = batch(2, seed=5)
    top = grpc_infer(url, x, outputs=[gclient.InferRequestedOutput("logits", class_count=3)]).as_numpy("logits")
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
    want = rest.post(f"/v2/models/{MODEL}/infer", json=body).json()["outputs"][0]["data"]
    assert [s.decode() for s in top.ravel()] == want


def test_typed_contents_give_the_same_answer_as_raw_contents(server, reference):
    _, url = server
    x = batch(2, seed=9)
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="input", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(url) as ch:
        reply = service_pb2.ModelInferResponse.FromString(call(ch, Case("typed", "ModelInfer", req, "OK")))
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("logits", "FP32", [2, 4])]
    got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 4)
    np.testing.assert_array_equal(got, grpc_infer(url, x).as_numpy("logits"))
    np.testing.assert_allclose(got, reference.infer(x), rtol=1e-5, atol=1e-5)


def test_metadata_config_statistics_and_index_say_what_rest_says(server):
    rest, url = server
    c = gclient.InferenceServerClient(url)
    meta = c.get_model_metadata(MODEL, as_json=True)
    want = rest.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == want["name"] and meta["versions"] == want["versions"]
    assert meta["platform"] == want["platform"]
    for side in ("inputs", "outputs"):  # proto JSON writes int64 as strings
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[side]] == [
            (t["name"], t["datatype"], t["shape"]) for t in want[side]]
    cfg = c.get_model_config(MODEL).config
    rcfg = rest.get(f"/v2/models/{MODEL}/config").json()
    assert cfg.max_batch_size == rcfg["max_batch_size"] == 8
    assert [(i.name, list(i.dims)) for i in cfg.input] == [(i["name"], i["dims"]) for i in rcfg["input"]]
    assert cfg.parameters["classes"].string_value == rcfg["parameters"]["classes"]["string_value"]
    server_meta = c.get_server_metadata()
    assert server_meta.name == "edgeslim" and "classification" in server_meta.extensions
    assert "model_repository" in server_meta.extensions
    assert [(m.name, m.state) for m in c.get_model_repository_index().models] == [(MODEL, "READY")]

    before = c.get_inference_statistics(MODEL).model_stats[0]
    grpc_infer(url, batch(3, seed=2))
    after = c.get_inference_statistics(MODEL).model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 3
    rstats = rest.get(f"/v2/models/{MODEL}/stats").json()["model_stats"][0]
    assert rstats["inference_stats"]["success"]["count"] == after.inference_stats.success.count  # one model, one count
    assert [m.name for m in c.get_inference_statistics().model_stats] == [MODEL]  # no name: every model


def test_bad_request_corpus_gets_the_right_status_codes_and_the_server_lives_on(server, reference):
    rest, url = server
    c = gclient.InferenceServerClient(url)
    fails = c.get_inference_statistics(MODEL).model_stats[0].inference_stats.fail.count
    cases = corpus(LIMIT)
    wrong = []
    with grpc.insecure_channel(url) as ch:
        for case in cases:
            try:
                call(ch, case)
                wrong.append((case.label, "OK"))
            except grpc.RpcError as exc:
                if exc.code().name != case.code or not exc.details():
                    wrong.append((case.label, exc.code().name, exc.details()))
                assert "Traceback" not in exc.details()
    assert not wrong, wrong
    # every bad request that reached the model is one failure, and nothing else changed: good answers go on
    counted = sum(case.counted for case in cases)
    assert c.get_inference_statistics(MODEL).model_stats[0].inference_stats.fail.count == fails + counted
    assert c.is_server_live() and c.is_model_ready(MODEL)
    x = batch(2, seed=11)
    np.testing.assert_allclose(grpc_infer(url, x).as_numpy("logits"), reference.infer(x), rtol=1e-5, atol=1e-5)
    assert rest.get("/v2/health/ready").status_code == 200


def test_a_stream_answers_each_request_and_reports_a_bad_one_without_closing(server, reference):
    _, url = server
    results: list = []
    done = threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 3:
            done.set()

    c = gclient.InferenceServerClient(url)
    c.start_stream(callback)
    try:
        for name in ("input", "inptu", "input"):
            x = batch(1, seed=4)
            inp = gclient.InferInput(name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            c.async_stream_infer(MODEL, [inp])
        assert done.wait(30)
    finally:
        c.stop_stream()
    (ok1, err1), (bad, err2), (ok2, err3) = results
    assert err1 is None and err3 is None and bad is None
    assert "inptu" in str(err2) and "Did you mean 'input'" in str(err2)
    for ok in (ok1, ok2):
        np.testing.assert_allclose(ok.as_numpy("logits"), reference.infer(batch(1, seed=4)), rtol=1e-5, atol=1e-5)


def test_the_token_guards_every_method_but_health(artifact):
    rest, url = serve(ServerSettings(models=[artifact], threads=1, token=TOKEN, grpc_port=free_port()))
    with rest:
        c = gclient.InferenceServerClient(url)
        assert c.is_server_live() and c.is_server_ready()  # health is open, as /v2/health/* is
        for headers, why in ((None, "missing"), ({"authorization": "Bearer nope-nope"}, "wrong"),
                             ({"authorization": f"Basic {TOKEN}"}, "wrong")):
            for fn in (lambda h: c.is_model_ready(MODEL, headers=h), lambda h: c.get_model_metadata(MODEL, headers=h),
                       lambda h: grpc_infer(url, batch(1), headers=h)):
                with pytest.raises(InferenceServerException) as err:
                    fn(headers)
                assert err.value.status() == "StatusCode.UNAUTHENTICATED", err.value
                assert f"{why} bearer token" in err.value.message()
        good = {"authorization": f"Bearer {TOKEN}"}
        assert grpc_infer(url, batch(1), headers=good).as_numpy("logits").shape == (1, 4)
        # the stream too: refused before any request is read
        errors: list = []
        c.start_stream(lambda result, error: errors.append(error))
        inp = gclient.InferInput("input", [1, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(batch(1))
        try:
            c.async_stream_infer(MODEL, [inp])
        except InferenceServerException as exc:  # the stream was already closed: the reason is in the callback
            assert "no longer in valid state" in exc.message()
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        c.stop_stream()
        assert errors and "UNAUTHENTICATED" in str(errors[0].status())


def test_a_full_queue_is_resource_exhausted_and_a_timeout_deadline_exceeded(artifact):
    # one request waits 1.5 s for partners (batching delay), so the second finds the queue (1 slot) full
    rest, url = serve(ServerSettings(models=[artifact], threads=1, batch_delay_ms=1500.0, queue_size=1,
                                     grpc_port=free_port()))
    with rest:
        c = gclient.InferenceServerClient(url)
        inp = gclient.InferInput("input", [1, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(batch(1))
        first: list = []
        c.async_infer(MODEL, [inp], callback=lambda result, error: first.append((result, error)))
        time.sleep(0.5)
        with pytest.raises(InferenceServerException) as err:
            c.infer(MODEL, [inp])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "queue is full" in err.value.message()
        deadline = time.monotonic() + 10
        while not first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first and first[0][1] is None  # the queued request still gets its answer
        # parameters.timeout (microseconds) shorter than the batching delay: DEADLINE_EXCEEDED, as REST's 504
        with pytest.raises(InferenceServerException) as err:
            c.infer(MODEL, [inp], timeout=100_000)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED", err.value


def test_explicit_model_control_loads_an_upload_and_unloads_it_over_grpc(artifact, reference, tmp_path):
    small = 20_000  # inference requests; the upload has the upload limit (512 MiB)
    rest, url = serve(ServerSettings(models=(), threads=1, batch_delay_ms=0.0, model_control="explicit",
                                     upload_dir=tmp_path / "up", max_body_bytes=small, grpc_port=free_port()))
    files = {p.relative_to(artifact).as_posix(): p.read_bytes() for p in artifact.rglob("*") if p.is_file()}
    assert sum(len(b) for b in files.values()) > small  # an upload may exceed the inference limit
    with rest:
        c = gclient.InferenceServerClient(url)
        assert c.is_server_ready()  # waiting for load requests
        c.load_model("cand", config=json.dumps({"backend": "onnxruntime"}), files={f"file:{k}": v
                                                                                  for k, v in files.items()})
        assert [(m.name, m.state) for m in c.get_model_repository_index().models] == [("cand", "READY")]
        x = batch(2, seed=6)
        inp = gclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(c.infer("cand", [inp]).as_numpy("logits"), reference.infer(x), rtol=1e-5, atol=1e-5)
        # ... but an inference request still has the inference limit
        big = gclient.InferInput("input", [7, 3, 16, 16], "FP32")  # 21504 bytes
        big.set_data_from_numpy(np.zeros((7, 3, 16, 16), np.float32))
        with pytest.raises(InferenceServerException) as err:
            c.infer("cand", [big])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and str(small) in err.value.message()
        corrupt = dict(files, **{"model.onnx": files["model.onnx"][:-1] + bytes([files["model.onnx"][-1] ^ 1])})
        with pytest.raises(InferenceServerException) as err:
            c.load_model("cand", files={f"file:{k}": v for k, v in corrupt.items()})
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "model.onnx" in err.value.message()
        assert c.is_model_ready("cand")  # the refused load left the old one serving
        c.unload_model("cand")
        with pytest.raises(InferenceServerException) as err:
            c.infer("cand", [inp])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        assert [(m.name, m.state) for m in c.get_model_repository_index().models] == [("cand", "UNAVAILABLE")]


def test_grpc_port_settings_and_a_taken_port(artifact):
    with pytest.raises(ConfigError, match="differ from the REST port"):
        ServerSettings(models=[artifact], port=9100, grpc_port=9100)
    with pytest.raises(ConfigError, match="grpc_port"):
        ServerSettings(models=[artifact], grpc_port=70000)
    assert ServerSettings(models=[artifact]).grpc_port == 0  # the library serves REST only unless asked
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(ServerSettings(models=[artifact], threads=1, grpc_port=port))
        with pytest.raises(ConfigError, match=f"cannot serve gRPC on 127.0.0.1:{port}.*--grpc-port"):
            with TestClient(app):
                pass


def test_serve_cli_has_the_grpc_port_flag(artifact: Path):
    from typer.testing import CliRunner

    from edgeslim.cli import app

    runner = CliRunner()
    helped = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "--grpc-port" in helped.stdout and "8001" in helped.stdout
    same = runner.invoke(app, ["serve", str(artifact), "--port", "9100", "--grpc-port", "9100"])
    assert same.exit_code == 1 and "differ from the REST port" in same.stdout + same.stderr
