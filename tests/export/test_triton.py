"""The Triton model repository: configs that parse against Triton's own ModelConfig proto and match the model
files, the same answers as `edgeslim serve`, and a tritonclient program that moves between the two by URL only."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeslim.artifact import ModelFile, load_manifest
from edgeslim.errors import ConfigError, ExportError
from edgeslim.export import EXPORTERS, export_artifact
from edgeslim.export.triton import (
    TritonExporter,
    TritonSettings,
    choose_models,
    format_pbtxt,
    triton_config,
    write_repository,
    write_triton_repository,
)
from export_testlib import SIZE, context, tiny_manifest

NAME = "digits"


def model_config_pb2():
    """Triton's ModelConfig proto as tritonclient ships it (tritonclient/grpc/model_config_pb2.py).

    Loaded from its file: importing ``tritonclient.grpc`` needs the grpc extra, the generated proto module does not.
    """
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PB = model_config_pb2()


def parse_pbtxt(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), PB.ModelConfig())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def artifact(trained, tmp_path_factory) -> Path:
    """An ONNX + OpenVINO artifact (fp32, and fp16 from OpenVINO) with its Triton repository."""
    out = tmp_path_factory.mktemp("triton") / "art"
    export_artifact(trained.model, out, tiny_manifest(NAME), formats=["onnx", "openvino"], precisions=["fp32", "fp16"])
    write_triton_repository(out)
    return out


def test_repository_configs_parse_as_triton_model_config_and_match_the_model_files(artifact):
    import onnx
    import openvino as ov

    manifest = load_manifest(artifact)  # the repository is hashed with the rest of the artifact
    repo = artifact / "triton"
    assert sorted(p.name for p in repo.iterdir()) == [NAME, f"{NAME}_fp16"]

    fp32 = parse_pbtxt(repo / NAME / "config.pbtxt")
    assert fp32.name == NAME and fp32.platform == "onnxruntime_onnx" and fp32.backend == "onnxruntime"
    assert fp32.max_batch_size == 8
    assert list(fp32.dynamic_batching.preferred_batch_size) == []
    assert fp32.dynamic_batching.max_queue_delay_microseconds == 2000
    assert fp32.instance_group[0].kind == PB.ModelInstanceGroup.KIND_AUTO
    (inp,), (out,) = fp32.input, fp32.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input", PB.TYPE_FP32, [3, SIZE, SIZE])
    assert (out.name, out.data_type, list(out.dims)) == ("logits", PB.TYPE_FP32, [10])
    assert out.label_filename == "labels.txt"
    assert (repo / NAME / "labels.txt").read_text().splitlines() == manifest.classes
    assert fp32.parameters["critical"].string_value == "8"

    # The config describes the ONNX file Triton will load: names, element type, batch axis, shape.
    graph = onnx.load(str(repo / NAME / "1" / "model.onnx")).graph
    g_in, g_out = graph.input[0], graph.output[0]
    assert g_in.name == inp.name and g_out.name == out.name
    assert g_in.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = g_in.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and [d.dim_value for d in in_dims[1:]] == list(inp.dims)
    assert [d.dim_value for d in g_out.type.tensor_type.shape.dim[1:]] == list(out.dims)
    # ... and it is the validated file of the artifact, byte for byte.
    assert sha(repo / NAME / "1" / "model.onnx") == manifest.files["model.onnx"]

    fp16 = parse_pbtxt(repo / f"{NAME}_fp16" / "config.pbtxt")
    assert fp16.backend == "openvino" and fp16.platform == ""  # Triton's OpenVINO backend has no platform
    assert fp16.instance_group[0].kind == PB.ModelInstanceGroup.KIND_CPU
    assert fp16.parameters["precision"].string_value == "fp16"
    # The OpenVINO backend fixes the batch at max_batch_size: it must pad smaller batches, not reject them.
    assert fp16.parameters["ENABLE_BATCH_PADDING"].string_value == "YES"
    ir = ov.Core().read_model(str(repo / f"{NAME}_fp16" / "1" / "model.xml"))
    assert ir.inputs[0].get_any_name() == "input" and ir.outputs[0].get_any_name() == "logits"
    assert ir.inputs[0].get_partial_shape()[0].is_dynamic
    assert [d.get_length() for d in ir.inputs[0].get_partial_shape()[1:]] == list(fp16.input[0].dims)
    assert sha(repo / f"{NAME}_fp16" / "1" / "model.bin") == manifest.files["openvino_fp16/model.bin"]


def test_written_config_equals_its_json_form(artifact):
    from google.protobuf import json_format

    manifest = load_manifest(artifact)
    for mf in choose_models(manifest.models).values():
        cfg = triton_config(manifest, mf)
        assert json_format.ParseDict(cfg, PB.ModelConfig()) == parse_pbtxt_text(format_pbtxt(cfg))


def parse_pbtxt_text(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, PB.ModelConfig())


def test_the_repository_model_gives_the_artifacts_answers(artifact, trained):
    import onnxruntime as ort

    from edgeslim import runtime

    x = trained.test_x[:8]
    sess = ort.InferenceSession(str(artifact / "triton" / NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with runtime.load(artifact, backend="onnxruntime", threads=1) as predictor:
        np.testing.assert_allclose(sess.run(["logits"], {"input": x})[0], predictor.infer(x), rtol=1e-6, atol=1e-6)


def test_server_config_agrees_with_the_repository(artifact):
    """`edgeslim serve` answers /v2/models/{m}/config with a valid ModelConfig that says what config.pbtxt says."""
    from fastapi.testclient import TestClient
    from google.protobuf import json_format

    from edgeslim.server import ServerSettings, create_app

    with TestClient(create_app(ServerSettings(models=(artifact,), backend="onnxruntime", threads=1))) as client:
        body = client.get(f"/v2/models/{NAME}/config").json()
    server = json_format.ParseDict(body, PB.ModelConfig())  # rejects any field Triton's proto does not have
    triton = parse_pbtxt(artifact / "triton" / NAME / "config.pbtxt")
    for field in ("name", "platform", "backend", "max_batch_size"):
        assert getattr(server, field) == getattr(triton, field), field
    for a, b in zip([*server.input, *server.output], [*triton.input, *triton.output], strict=True):
        assert (a.name, a.data_type, list(a.dims)) == (b.name, b.data_type, list(b.dims))
    assert server.HasField("dynamic_batching") and triton.HasField("dynamic_batching")
    assert list(server.dynamic_batching.preferred_batch_size) == list(triton.dynamic_batching.preferred_batch_size)
    assert server.dynamic_batching.max_queue_delay_microseconds == triton.dynamic_batching.max_queue_delay_microseconds
    for key in ("classes", "critical"):
        assert server.parameters[key].string_value == triton.parameters[key].string_value


def test_rewrite_follows_the_settings_and_drops_stale_models(artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    models = write_triton_repository(art, settings=TritonSettings(
        formats=("openvino",), precisions=("fp32",), max_batch_size=16, preferred_batch_sizes=(8, 4),
        instance_count=2, instance_kind="gpu", labels=False))
    assert [(m.name, m.format, m.precision, m.source) for m in models] == [(NAME, "openvino", "fp32", "openvino/model.xml")]
    assert sorted(p.name for p in (art / "triton").iterdir()) == [NAME]  # the fp16 model of the first write is gone
    cfg = parse_pbtxt(art / "triton" / NAME / "config.pbtxt")
    assert cfg.backend == "openvino" and cfg.max_batch_size == 16 and cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == PB.ModelInstanceGroup.KIND_CPU  # even though instance_kind asked for gpu
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.output[0].label_filename == "" and not (art / "triton" / NAME / "labels.txt").exists()
    assert sorted(os.listdir(art / "triton" / NAME / "1")) == ["model.bin", "model.xml"]
    load_manifest(art)  # re-hashed: still verifies


def test_exporter_in_an_export_run(artifact, trained, tmp_path):
    """The registered exporter runs after onnx and lists no model file of its own (it serves listed ones)."""
    assert EXPORTERS.get("triton") is TritonExporter
    assert set(TritonExporter.after) >= {"onnx", "openvino", "tensorrt"}
    ctx = context(trained.model, tmp_path, precisions=("fp32", "fp16"))
    shutil.copy2(artifact / "model.onnx", tmp_path / "model.onnx")  # what the onnx exporter wrote before it
    ctx.written.append(load_manifest(artifact).model("onnx", "fp32"))
    ctx.manifest = tiny_manifest(NAME)  # what export_artifact hands the exporters
    (tmp_path / "triton" / "stale" / "1").mkdir(parents=True)  # left by an earlier export of the artifact
    assert TritonExporter().export(ctx) == []
    assert sorted(p.name for p in (tmp_path / "triton").iterdir()) == [NAME]
    assert ctx.skipped == [{"exporter": "triton", "precision": "fp16",
                            "reason": "no onnx/openvino/tensorrt model in fp16 to put in the repository"}]
    assert parse_pbtxt(tmp_path / "triton" / NAME / "config.pbtxt").input[0].dims == [3, SIZE, SIZE]


def test_exporter_without_the_manifest_says_what_to_do(trained, tmp_path):
    ctx = context(trained.model, tmp_path)
    ctx.written.append(ModelFile(format="onnx", precision="fp32", path="model.onnx"))
    with pytest.raises(ExportError, match="write_triton_repository"):
        TritonExporter().export(ctx)


def test_export_artifact_writes_the_repository(trained, tmp_path):
    m = export_artifact(trained.model, tmp_path / "art", tiny_manifest(NAME), formats=["triton", "onnx"],
                        precisions=["fp32"])
    assert f"triton/{NAME}/config.pbtxt" in m.files and f"triton/{NAME}/1/model.onnx" in m.files


# -- configuration rules, without model files --------------------------------------------------------------------


def test_static_batch_models_get_full_shapes_and_no_batching():
    manifest = tiny_manifest(NAME, batch=1)
    cfg = parse_pbtxt_text(format_pbtxt(triton_config(manifest, ModelFile(format="onnx", precision="fp32",
                                                                          path="model.onnx"))))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, SIZE, SIZE] and list(cfg.output[0].dims) == [1, 10]


def test_tensorrt_plan_is_capped_at_its_profile_and_runs_on_gpu():
    manifest = tiny_manifest(NAME)
    models = [ModelFile(format="onnx", precision="fp32", path="model.onnx"),
              ModelFile(format="tensorrt", precision="fp32", path="tensorrt/model.plan",
                        extra={"profile": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [4, 3, 16, 16]}}),
              ModelFile(format="onnx", precision="int8", path="model_int8.onnx"),
              ModelFile(format="torch", precision="fp32", path="model.safetensors")]
    assert {p: m.format for p, m in choose_models(models).items()} == {"fp32": "onnx", "int8": "onnx"}
    settings = TritonSettings(formats=("tensorrt", "onnx"), preferred_batch_sizes=(2, 8))
    chosen = choose_models(models, settings)
    assert {p: m.format for p, m in chosen.items()} == {"fp32": "tensorrt", "int8": "onnx"}
    cfg = parse_pbtxt_text(format_pbtxt(triton_config(manifest, chosen["fp32"], settings)))
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2]  # 8 does not fit the plan's profile
    assert cfg.instance_group[0].kind == PB.ModelInstanceGroup.KIND_GPU


def test_class_names_survive_text_format_quoting(tmp_path):
    manifest = tiny_manifest(NAME).model_copy(update={"classes": ['say "hi"', "back\\slash", "café", *map(str, range(7))]})
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    (model,) = write_repository(tmp_path, manifest, [ModelFile(format="onnx", precision="fp32", path="model.onnx")])
    cfg = parse_pbtxt(tmp_path / "triton" / NAME / "config.pbtxt")
    assert cfg.parameters["classes"].string_value == ",".join(manifest.classes)
    assert (tmp_path / "triton" / NAME / "labels.txt").read_text(encoding="utf-8").splitlines() == manifest.classes


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(formats=("onnxx",)), "Did you mean 'onnx'"),
        (dict(formats=("torch",)), "Triton cannot serve"),
        (dict(formats="onnx"), "sequences"),
        (dict(max_batch_size=4, preferred_batch_sizes=(8,)), r"1\.\.max_batch_size \(4\)"),
        (dict(precisions=("int4",)), "choose from fp32, fp16, int8"),
        (dict(instance_kind="gpus"), "Did you mean 'gpu'"),
        (dict(instance_count=0), "instance_count must be an integer >= 1"),
    ],
)
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ConfigError, match=match):
        TritonSettings(**settings)


def test_nothing_to_serve_and_bad_names_are_clear_errors(tmp_path):
    torch_only = [ModelFile(format="torch", precision="fp32", path="model.safetensors")]
    with pytest.raises(ExportError, match=r"no model Triton can serve.*torch/fp32.*--to onnx,triton"):
        write_repository(tmp_path, tiny_manifest(NAME), torch_only)
    onnx = [ModelFile(format="onnx", precision="fp32", path="model.onnx")]
    with pytest.raises(ExportError, match="cannot name a Triton model directory"):
        write_repository(tmp_path, tiny_manifest("../up"), onnx)
    with pytest.raises(ExportError, match="model.onnx.*does not exist"):
        write_repository(tmp_path, tiny_manifest(NAME), onnx)


# -- client portability ------------------------------------------------------------------------------------------


def classify_digits(url: str, images: np.ndarray, top: int = 3) -> dict:
    """A user's program, written against `edgeslim serve`. Pointed at Triton, only ``url`` changes.

    Metadata and config tell it the tensor names, datatype and largest batch; it sends binary tensors and asks the
    classification extension for the top classes.
    """
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url, connection_timeout=10, network_timeout=30)
    if not client.is_model_ready(NAME):
        raise RuntimeError(f"{NAME} is not ready at {url}")
    meta = client.get_model_metadata(NAME)
    config = client.get_model_config(NAME)
    (spec,), out_name = meta["inputs"], meta["outputs"][0]["name"]
    step = config["max_batch_size"] or len(images)
    tops = []
    for i in range(0, len(images), step):
        chunk = np.ascontiguousarray(images[i : i + step])
        inp = httpclient.InferInput(spec["name"], list(chunk.shape), spec["datatype"])
        inp.set_data_from_numpy(chunk, binary_data=True)
        want = httpclient.InferRequestedOutput(out_name, binary_data=True, class_count=top)
        tops.append(client.infer(NAME, [inp], outputs=[want]).as_numpy(out_name))
    client.close()
    return {"meta": meta, "config": config, "top": np.concatenate(tops)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], ready_url: str, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{cmd[0]} did not become ready in {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_answers(answers: dict, repository: Path, images: np.ndarray) -> None:
    """What the client got is what Triton serves from ``repository``: names, shapes, labels, scores."""
    import onnxruntime as ort

    cfg = parse_pbtxt(repository / NAME / "config.pbtxt")
    meta = answers["meta"]
    assert meta["name"] == cfg.name and meta["platform"] == cfg.platform
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        (t.name, "FP32", [-1, *t.dims]) for t in cfg.input]
    assert [t["name"] for t in meta["outputs"]] == [t.name for t in cfg.output]
    assert answers["config"]["max_batch_size"] == cfg.max_batch_size

    labels = (repository / NAME / cfg.output[0].label_filename).read_text(encoding="utf-8").splitlines()
    session = ort.InferenceSession(str(repository / NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run([cfg.output[0].name], {cfg.input[0].name: images})[0]
    top = answers["top"]
    assert top.shape == (len(images), 3)
    for row, entries in enumerate(top):
        parsed = [e.decode().split(":") for e in entries]
        assert [int(i) for _, i, _ in parsed] == list(np.argsort(-logits[row], kind="stable")[:3])
        for score, index, label in parsed:  # Triton's label_filename: line `index` of labels.txt
            assert label == labels[int(index)]
            assert float(score) == pytest.approx(float(logits[row, int(index)]), abs=1e-5)


def test_a_tritonclient_program_for_edgeslim_serve_sees_what_triton_serves(artifact, trained, tmp_path):
    port = free_port()
    proc = start([sys.executable, "-m", "edgeslim.cli", "serve", str(artifact), "--port", str(port), "--threads", "1",
                  "--grpc-port", "0"],
                 f"http://127.0.0.1:{port}/v2/health/ready", tmp_path / "serve.log")
    try:
        images = trained.test_x[:20]  # more than max_batch_size: the client splits by the config it reads
        answers = classify_digits(f"127.0.0.1:{port}", images)
    finally:
        stop(proc)
    check_answers(answers, artifact / "triton", images)


@pytest.mark.skipif(shutil.which("tritonserver") is None,
                    reason="no tritonserver on PATH (run inside an NVIDIA Triton container to test the real server)")
def test_the_same_program_runs_against_tritonserver(artifact, trained, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    write_triton_repository(art, settings=TritonSettings(formats=("onnx",)))  # every Triton build has ONNX Runtime
    http, grpc, metrics = free_port(), free_port(), free_port()
    proc = start(["tritonserver", f"--model-repository={art / 'triton'}", f"--http-port={http}",
                  f"--grpc-port={grpc}", f"--metrics-port={metrics}"],
                 f"http://127.0.0.1:{http}/v2/health/ready", tmp_path / "triton.log", timeout=300)
    try:
        images = trained.test_x[:20]
        answers = classify_digits(f"127.0.0.1:{http}", images)
    finally:
        stop(proc)
    check_answers(answers, art / "triton", images)
