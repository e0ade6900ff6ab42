"""The OpenVINO exporter: FP32 parity (from ONNX and from PyTorch), FP16 and INT8 IRs, batch shape, port names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeslim.export import EXPORTERS
from edgeslim.export.validate import VALIDATION_OPTIONS
from edgeslim.recipe import QuantizeSection
from edgeslim.runtime import BACKENDS, BackendOptions
from export_testlib import context

torch.set_num_threads(1)


def _ov(path):
    # f32 execution: the CPU plugin defaults to bf16 on CPUs with AMX/AVX512-BF16, which is not the export's error.
    return BACKENDS.get("openvino")(path, BackendOptions(**VALIDATION_OPTIONS["openvino"], threads=1))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """ONNX FP32 first, then OpenVINO FP32/FP16/INT8 converted from it (the order export_artifact uses)."""
    d = tmp_path_factory.mktemp("ov")
    ctx = context(trained.model, d, precisions=("fp32", "fp16", "int8"), calibration=trained.calibration(),
                  quantize=QuantizeSection(calibration_size=64))
    ctx.written += EXPORTERS.get("onnx")().export(context(trained.model, d))
    files = EXPORTERS.get("openvino")().export(ctx)
    return d, {f.precision: f for f in files}, ctx


def test_writes_one_ir_per_precision(exported):
    d, files, ctx = exported
    assert not ctx.errors
    assert {p: f.path for p, f in files.items()} == {
        "fp32": "openvino/model.xml", "fp16": "openvino_fp16/model.xml", "int8": "openvino_int8/model.xml"}
    for f in files.values():
        assert (d / f.path).is_file() and (d / f.path).with_suffix(".bin").is_file()
        assert f.extra["source"] == "model.onnx"
    # FP32 keeps 4-byte weights (ov.save_model would halve them by default); FP16 halves them.
    fp32_bin = (d / files["fp32"].path).with_suffix(".bin").stat().st_size
    fp16_bin = (d / files["fp16"].path).with_suffix(".bin").stat().st_size
    assert fp32_bin >= 4 * 10_000 and fp16_bin < 0.6 * fp32_bin


def test_fp32_matches_pytorch_with_a_dynamic_batch(trained, exported):
    d, files, _ = exported
    with _ov(d / files["fp32"].path) as b:
        assert [(t.name, t.shape) for t in b.inputs] == [("input", (-1, 3, 16, 16))]
        assert [t.name for t in b.outputs] == ["logits"]
        for n in (1, 5):
            x = trained.test_x[:n]
            assert np.abs(b.infer(x)["logits"] - trained.reference(x)).max() < 1e-4


def test_fp16_and_int8_run_and_agree(trained, exported):
    d, files, _ = exported
    ref = trained.reference(trained.test_x)
    for precision, min_agreement in (("fp16", 0.99), ("int8", 0.85)):
        with _ov(d / files[precision].path) as b:
            got = b.infer(trained.test_x)["logits"]
        assert (got.argmax(1) == ref.argmax(1)).mean() >= min_agreement, precision
    assert files["int8"].extra["fake_quantize_nodes"] > 0


def test_converts_from_pytorch_without_onnx_and_static_batch(trained, tmp_path):
    ctx = context(trained.model, tmp_path, dynamic_batch=False)
    (f,) = EXPORTERS.get("openvino")().export(ctx)
    assert f.extra["source"] == "torch"
    with _ov(tmp_path / f.path) as b:
        # Ports converted from PyTorch are unnamed: the exporter names them per the artifact contract.
        assert [(t.name, t.shape) for t in b.inputs] == [("input", (1, 3, 16, 16))]
        assert [t.name for t in b.outputs] == ["logits"]
        x = trained.test_x[:1]
        assert np.abs(b.infer(x)["logits"] - trained.reference(x)).max() < 1e-4


def test_int8_without_calibration_fails_alone(trained, tmp_path):
    ctx = context(trained.model, tmp_path, precisions=("fp32", "int8"), calibration=None)
    files = EXPORTERS.get("openvino")().export(ctx)
    assert [f.precision for f in files] == ["fp32"]
    assert ctx.errors[0]["precision"] == "int8" and "calibration" in ctx.errors[0]["error"]
    assert not (tmp_path / "openvino_int8").exists() or not any((tmp_path / "openvino_int8").iterdir())
