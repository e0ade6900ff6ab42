"""Backend options reach each served model's backend, and /config names OpenVINO models the way Triton does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_helpers import CLASSES, CRITICAL, THRESHOLDS, batch

from edgeslim.errors import ConfigError
from edgeslim.server import ServerSettings, create_app
from edgeslim.server.settings import parse_backend_options

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_artifact(tmp_path_factory) -> Path:
    """TinyNet exported by edgeslim's own exporter to ONNX and an OpenVINO IR (validated)."""
    import torch

    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
    from edgeslim.export import export_artifact
    from edgeslim.testing import TinyNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyNet(num_classes=len(CLASSES)).eval()
    manifest = Manifest(
        name="tinyov", arch="tinynet", classes=CLASSES, critical=CRITICAL, thresholds=THRESHOLDS,
        input=TensorInfo(name="input", shape=[-1, 3, 16, 16]),
        outputs=[TensorInfo(name="logits", shape=[-1, len(CLASSES)])],
        preprocessing=Preprocessing(resize=16, crop=16),
    )
    out = tmp_path_factory.mktemp("ov") / "tinyov"
    export_artifact(model, out, manifest, formats=["onnx", "openvino"], precisions=["fp32"], validation=(batch(4), None))
    return out


def test_parse_backend_options_types_and_nested_entries():
    opts = parse_backend_options(["hint=THROUGHPUT", "streams=2", "session_config:session.intra_op.allow_spinning=0",
                                  "session_config:session.inter_op.allow_spinning=0", "flag=true", "scale=0.5"])
    assert opts == {"hint": "THROUGHPUT", "streams": 2, "flag": True, "scale": 0.5,
                    "session_config": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}}
    for bad in ("hint", "=1", ":x=1", "a:=1"):
        with pytest.raises(ConfigError, match="backend option"):
            parse_backend_options([bad])
    with pytest.raises(ConfigError, match="both as a value"):
        parse_backend_options(["config=1", "config:X=1"])
    with pytest.raises(ConfigError, match="backend_options must map"):
        ServerSettings(models=[Path(".")], backend_options={"hint": "THROUGHPUT"})


def test_openvino_model_gets_its_options_and_a_triton_style_config(ov_artifact):
    settings = ServerSettings(
        models=[ov_artifact], backend="ov", threads=1, batch_delay_ms=0.0,
        backend_options={"openvino": {"hint": "THROUGHPUT", "streams": 1},
                         "onnxruntime": {"session_config": {"session.intra_op.allow_spinning": "0"}}},
    )
    app = create_app(settings)
    with TestClient(app) as client:
        served = app.state.repository.get("tinyov")
        backend = served.backend
        assert backend.name == "openvino"
        # the options were applied by OpenVINO, not just stored
        assert str(backend._compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
        assert int(backend._compiled.get_property("NUM_STREAMS")) == 1
        cfg = client.get("/v2/models/tinyov/config").json()
        assert cfg["backend"] == "openvino" and cfg["platform"] == ""
        assert client.get("/v2/models/tinyov").json()["platform"] == "openvino"
        x = batch(2)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 16, 16], "data": x.ravel().tolist()}]}
        r = client.post("/v2/models/tinyov/infer", json=body)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
        np.testing.assert_allclose(got, backend.infer(x)["logits"], atol=1e-5)


def test_onnxruntime_options_reach_the_session(ov_artifact):
    settings = ServerSettings(models=[ov_artifact], threads=1,
                              backend_options={"onnxruntime": {"session_config": {
                                  "session.intra_op.allow_spinning": "0"}}})
    app = create_app(settings)
    with TestClient(app) as client:
        backend = app.state.repository.get("tinyov").backend
        entries = backend._session.get_session_options().get_session_config_entry
        assert entries("session.intra_op.allow_spinning") == "0"
        cfg = client.get("/v2/models/tinyov/config").json()
        assert cfg["platform"] == "onnxruntime_onnx" and cfg["backend"] == "onnxruntime"


def test_onnxruntime_threads_do_not_spin_in_the_server_unless_asked(ov_artifact):
    app = create_app(ServerSettings(models=[ov_artifact], threads=1))
    with TestClient(app):
        entry = app.state.repository.get("tinyov").backend._session.get_session_options().get_session_config_entry
        assert entry("session.intra_op.allow_spinning") == "0" and entry("session.inter_op.allow_spinning") == "0"
    spin = {"onnxruntime": {"session_config": {"session.intra_op.allow_spinning": "1"}}}
    app = create_app(ServerSettings(models=[ov_artifact], threads=1, backend_options=spin))
    with TestClient(app):
        entry = app.state.repository.get("tinyov").backend._session.get_session_options().get_session_config_entry
        assert entry("session.intra_op.allow_spinning") == "1" and entry("session.inter_op.allow_spinning") == "0"


def test_an_unknown_backend_option_is_a_clear_error_at_start(ov_artifact):
    settings = ServerSettings(models=[ov_artifact], backend="openvino", backend_options={"openvino": {"hnt": "X"}})
    with pytest.raises(ConfigError, match=r"unknown option 'hnt'.*hint"):
        with TestClient(create_app(settings)):
            pass
