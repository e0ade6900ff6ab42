"""TensorRT exporter: the CPU-testable parts (profile shapes, trtexec command, build script, behaviour without a
GPU) run everywhere; real engine builds are marked ``tensorrt``."""

from __future__ import annotations

import importlib.util
import os
import shlex
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeslim.artifact import Manifest, ModelFile, Preprocessing, TensorInfo
from edgeslim.errors import ConfigError, ExportError
from edgeslim.export import EXPORTERS, ExportContext, export_artifact
from edgeslim.export.tensorrt import (
    BUILD_SCRIPT,
    EngineSettings,
    build_script,
    commands_for,
    plan_jobs,
    profile_shapes,
    trtexec_command,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


# -- profile shapes ---------------------------------------------------------------------------------------------
def test_profile_for_dynamic_batch():
    shapes = profile_shapes([-1, 3, 224, 224], EngineSettings(min_batch=1, opt_batch=4, max_batch=16))
    assert shapes == {"min": (1, 3, 224, 224), "opt": (4, 3, 224, 224), "max": (16, 3, 224, 224)}


def test_static_batch_has_no_profile():
    assert profile_shapes([1, 3, 224, 224]) is None


@pytest.mark.parametrize("shape", [[-1, 3, -1, 224], [-1, 3, 224], [1, 0, 224, 224]])
def test_profile_refuses_dynamic_image_size_or_wrong_rank(shape):
    with pytest.raises(ConfigError):
        profile_shapes(shape)


@pytest.mark.parametrize("kw", [{"min_batch": 0}, {"opt_batch": 9, "max_batch": 8}, {"min_batch": 4, "opt_batch": 2}])
def test_settings_refuse_an_unordered_profile(kw):
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        EngineSettings(**kw)


# -- trtexec command --------------------------------------------------------------------------------------------
def test_trtexec_fp32_dynamic():
    shapes = profile_shapes([-1, 3, 224, 224], EngineSettings(max_batch=8))
    cmd = trtexec_command("model.onnx", "tensorrt/model.plan", shapes=shapes, workspace_mb=2048)
    assert cmd == [
        "trtexec",
        "--onnx=model.onnx",
        "--saveEngine=tensorrt/model.plan",
        "--minShapes=input:1x3x224x224",
        "--optShapes=input:1x3x224x224",
        "--maxShapes=input:8x3x224x224",
        "--memPoolSize=workspace:2048M",
        "--skipInference",
    ]


def test_trtexec_int8_is_explicit_quantization_without_int8_flag():
    cmd = trtexec_command("model_int8.onnx", "tensorrt/model_int8.plan", strongly_typed=True, sparse_weights=True,
                          timing_cache="/cache/trt.cache")
    assert "--onnx=model_int8.onnx" in cmd and "--stronglyTyped" in cmd
    assert "--int8" not in cmd and not any(c.startswith("--calib") for c in cmd)
    assert "--sparsity=enable" in cmd and "--timingCacheFile=/cache/trt.cache" in cmd
    # a static ONNX gets no shape flags (trtexec refuses explicit shapes for static models)
    assert not any(c.startswith(("--minShapes", "--optShapes", "--maxShapes")) for c in cmd)


def test_trtexec_fp16_flag():
    assert "--fp16" in trtexec_command("model.onnx", "e.plan", fp16=True)
    assert "--fp16" not in trtexec_command("model.onnx", "e.plan")


def _ctx(tmp_path, *, precisions, onnx=("fp32",), dynamic=True):
    written = [ModelFile(format="onnx", precision=p, path="model.onnx" if p == "fp32" else f"model_{p}.onnx")
               for p in onnx]
    return ExportContext(model=None, directory=tmp_path, input_shape=(3, 32, 32), num_classes=4,
                         dynamic_batch=dynamic, precisions=tuple(precisions), written=written)


def test_jobs_pick_the_right_onnx_per_precision(tmp_path):
    jobs, missing = plan_jobs(_ctx(tmp_path, precisions=("fp32", "fp16", "int8"), onnx=("fp32", "int8")))
    assert missing == []
    by = {j.precision: j for j in jobs}
    assert (by["fp32"].onnx, by["fp32"].engine) == ("model.onnx", "tensorrt/model.plan")
    assert by["fp16"].onnx == "model.onnx" and by["fp16"].fp16
    assert by["int8"].onnx == "model_int8.onnx" and by["int8"].strongly_typed and not by["int8"].fp16


def test_jobs_without_the_int8_onnx_say_why(tmp_path):
    jobs, missing = plan_jobs(_ctx(tmp_path, precisions=("fp32", "int8")))
    assert [j.precision for j in jobs] == ["fp32"]
    assert missing[0][0] == "int8" and "Q/DQ" in missing[0][1]


def test_build_script_runs_trtexec_from_the_artifact_directory(tmp_path):
    """Run the generated script with a recording ``trtexec`` first on PATH: checks quoting and working directory."""
    ctx = _ctx(tmp_path, precisions=("fp32", "int8"), onnx=("fp32", "int8"))
    jobs, _ = plan_jobs(ctx)
    commands = commands_for(jobs, ctx, EngineSettings(max_batch=4))
    art = tmp_path / "my artifact"  # a space in the path must survive
    (art / "tensorrt").mkdir(parents=True)
    script = art / BUILD_SCRIPT
    script.write_text(build_script(commands))
    script.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "trtexec"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" >> "$TRTEXEC_LOG"\necho "---" >> "$TRTEXEC_LOG"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "TRTEXEC_LOG": str(log)}
    subprocess.run(["sh", str(script)], check=True, env=env, cwd=tmp_path, timeout=30)
    calls = [c.strip().splitlines() for c in log.read_text().split("---") if c.strip()]
    assert len(calls) == 2
    assert all(Path(c[0]) == art for c in calls)
    assert calls[0][1:] == commands["fp32"][1:]
    assert calls[1][1:] == commands["int8"][1:]
    assert "--maxShapes=input:4x3x32x32" in calls[0]


# -- the exporter without TensorRT / GPU ------------------------------------------------------------------------
def _manifest() -> Manifest:
    return Manifest(
        name="tiny-trt",
        arch="tiny",
        classes=["a", "b", "c", "d"],
        critical=[1],
        input=TensorInfo(name="input", shape=[-1, 3, 16, 16]),
        outputs=[TensorInfo(name="logits", shape=[-1, 4])],
        preprocessing=Preprocessing(resize=16, crop=16),
    )


@pytest.fixture(scope="module")
def tiny():
    import torch

    from edgeslim.testing import TinyNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return TinyNet(4).eval()


def test_registered():
    assert EXPORTERS.canonical("trt") == "tensorrt"


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the real build runs instead")
def test_without_tensorrt_the_error_is_recorded_once_and_the_build_script_is_written(tmp_path):
    from edgeslim.export.tensorrt import TensorRTExporter

    (tmp_path / "model.onnx").write_bytes(b"onnx bytes are not read without tensorrt")
    (tmp_path / "model_int8.onnx").write_bytes(b"-")
    ctx = _ctx(tmp_path, precisions=("fp32", "int8"), onnx=("fp32", "int8"))
    files = TensorRTExporter(EngineSettings(max_batch=8)).export(ctx)
    assert files == []
    assert len(ctx.errors) == 1  # one record for the missing package, not one per precision
    err = ctx.errors[0]
    assert (err["exporter"], err["precision"]) == ("tensorrt", "fp32,int8")
    assert "pip install 'edgeslim[tensorrt]'" in err["error"] and BUILD_SCRIPT in err["error"]
    script = tmp_path / BUILD_SCRIPT
    assert os.access(script, os.X_OK)
    lines = [shlex.split(x) for x in script.read_text().splitlines() if x.startswith("trtexec")]
    shapes = profile_shapes([-1, 3, 32, 32], EngineSettings(max_batch=8))
    assert lines == [
        trtexec_command("model.onnx", "tensorrt/model.plan", shapes=shapes),
        trtexec_command("model_int8.onnx", "tensorrt/model_int8.plan", shapes=shapes, strongly_typed=True),
    ]


def test_tensorrt_without_onnx_says_to_add_it(tiny, tmp_path):
    out = tmp_path / "art"
    manifest = export_artifact(tiny, out, _manifest(), formats=["tensorrt"], precisions=("fp32",), strict=False)
    assert "add 'onnx' to the export formats" in manifest.validation["errors"][0]["error"]
    assert [m.format for m in manifest.models] == ["torch"]  # the rest of the export completed
    assert not (out / BUILD_SCRIPT).exists()  # nothing to build from, so no script
    # strict mode: the exporter's recorded failure is an error and nothing is written
    with pytest.raises(ExportError, match="tensorrt/fp32: TensorRT builds from the FP32 ONNX"):
        export_artifact(tiny, tmp_path / "strict", _manifest(), formats=["tensorrt"], precisions=("fp32",),
                        strict=True)
    assert not (tmp_path / "strict").exists()


# -- real engines -----------------------------------------------------------------------------------------------
@pytest.mark.tensorrt
def test_real_engine_build_and_run(tiny, tmp_path):
    import torch

    from edgeslim.runtime import load

    out = tmp_path / "art"
    manifest = export_artifact(tiny, out, _manifest(), formats=["onnx", "tensorrt"], precisions=("fp32",),
                               export_cfg=None)
    mf = manifest.model("tensorrt", "fp32")
    assert mf.path == "tensorrt/model.plan"
    assert {"tensorrt_version", "gpu", "compute_capability", "trtexec"} <= set(mf.extra)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    with load(out, backend="tensorrt", device="cuda") as model:
        got = model.infer(x)
    with torch.inference_mode():
        ref = tiny(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-3)


@pytest.mark.tensorrt
def test_build_engines_on_the_device_for_an_onnx_only_artifact(tiny, tmp_path):
    from edgeslim.export.tensorrt import build_artifact_engines
    from edgeslim.runtime import load

    out = tmp_path / "art"
    export_artifact(tiny, out, _manifest(), formats=["onnx"], precisions=("fp32",))
    manifest = build_artifact_engines(out, settings=EngineSettings(max_batch=4))
    assert manifest.model("tensorrt", "fp32").extra["profile"]["max"] == [4, 3, 16, 16]
    assert (out / BUILD_SCRIPT).is_file()
    with load(out, backend="tensorrt", device="cuda") as model:
        assert model.infer(np.zeros((4, 3, 16, 16), np.float32)).shape == (4, 4)
