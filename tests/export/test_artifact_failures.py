"""export_artifact failures: isolated per exporter, raised (nothing written) when strict, recorded when not."""

from __future__ import annotations

import pytest
import torch

from edgeslim.artifact import load_manifest
from edgeslim.errors import ExportError, ValidationError
from edgeslim.export import EXPORTERS, Exporter, export_artifact
from edgeslim.recipe import QuantizeSection, ValidateSection
from export_testlib import tiny_manifest

torch.set_num_threads(1)


def test_failing_int8_is_fatal_when_strict_and_leaves_the_old_artifact(trained, tmp_path):
    out = tmp_path / "a"
    first = export_artifact(trained.model, out, tiny_manifest(), formats=("onnx",), precisions=("fp32",))
    bad = QuantizeSection(calibration_size=16, ignored_scope=["no_such_layer"])
    with pytest.raises(ExportError) as info:
        export_artifact(trained.model, out, tiny_manifest("again"), formats=("onnx",),
                        precisions=("fp32", "int8"), calibration=trained.calibration(16), quantize_cfg=bad,
                        strict=True)
    msg = str(info.value)
    assert "onnx/int8" in msg and "no_such_layer" in msg and "strict=False" in msg
    assert load_manifest(out) == first  # the previous complete artifact is untouched
    assert not [p for p in tmp_path.iterdir() if p.name != "a"]  # no temp directory left behind


def test_failing_int8_is_recorded_when_not_strict(trained, tmp_path):
    bad = QuantizeSection(calibration_size=16, ignored_scope=["no_such_layer"])
    m = export_artifact(trained.model, tmp_path / "a", tiny_manifest(), formats=("onnx", "openvino"),
                        precisions=("fp32", "int8"), calibration=trained.calibration(16), quantize_cfg=bad,
                        strict=False)
    assert [(x.format, x.precision) for x in load_manifest(tmp_path / "a").models] == [
        ("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32")]
    assert [(e["exporter"], e["precision"]) for e in m.validation["errors"]] == [("onnx", "int8"), ("openvino", "int8")]
    assert m.validation["partial"]
    assert [(f["format"], f["precision"]) for f in m.validation["failed"]] == [("onnx", "int8"), ("openvino", "int8")]
    assert all("no_such_layer" in f["reason"] for f in m.validation["failed"])


def test_a_file_that_fails_validation_is_left_out_and_the_rest_is_written(trained, tmp_path):
    # the default (not strict): the FP32 ONNX misses an impossible tolerance and is left out; the torch weights stay
    export_artifact(trained.model, tmp_path / "v", tiny_manifest(), formats=("onnx",), precisions=("fp32",),
                    validation=(trained.test_x[:50], trained.test_y[:50]), validate_cfg=ValidateSection(fp32_atol=1e-12))
    loaded = load_manifest(tmp_path / "v")
    assert [x.format for x in loaded.models] == ["torch"]
    assert not (tmp_path / "v" / "model.onnx").exists()
    [failed] = loaded.validation["failed"]
    assert failed["file"] == "model.onnx" and "max_abs_diff" in failed["reason"]
    assert loaded.validation["partial"] and loaded.validation["problems"] == []


class _Broken(Exporter):
    """An exporter plugin that writes a file and then fails, like a real one running out of disk or memory."""

    name = "test-broken"
    precisions = ("fp32",)

    def export(self, ctx):
        ctx.path("broken/half.bin").write_bytes(b"partial")
        raise RuntimeError("device lost")


@pytest.fixture()
def broken_exporter():
    EXPORTERS.register("test-broken", _Broken)
    yield "test-broken"
    EXPORTERS._entries.pop("test-broken")  # the registry has no public unregister; keep it clean for other tests


def test_a_failing_exporter_does_not_stop_the_others(trained, tmp_path, broken_exporter):
    formats = (broken_exporter, "onnx")
    with pytest.raises(ExportError, match="test-broken/\\*: RuntimeError .*device lost"):
        export_artifact(trained.model, tmp_path / "strict", tiny_manifest(), formats=formats, precisions=("fp32",),
                        strict=True)
    assert not (tmp_path / "strict").exists()

    m = export_artifact(trained.model, tmp_path / "lax", tiny_manifest(), formats=formats, precisions=("fp32",),
                        strict=False)
    assert [x.format for x in m.models] == ["torch", "onnx"]
    assert m.validation["errors"][0]["exporter"] == "test-broken"
    assert not (tmp_path / "lax" / "broken").exists() or not any((tmp_path / "lax" / "broken").iterdir())
    load_manifest(tmp_path / "lax")  # the failed exporter's half-written file is not in the artifact


def test_validation_failure_when_strict_writes_nothing(trained, tmp_path):
    with pytest.raises(ValidationError, match="model.onnx: max_abs_diff"):
        export_artifact(trained.model, tmp_path / "v", tiny_manifest(), formats=("onnx",), precisions=("fp32",),
                        validation=(trained.test_x[:50], trained.test_y[:50]),
                        validate_cfg=ValidateSection(fp32_atol=1e-12), strict=True)
    assert not (tmp_path / "v").exists()
