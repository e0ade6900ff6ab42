"""export.int8_formats: INT8 only where it buys something; the other formats keep their FP32 file and say why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgeslim.export import export_artifact
from edgeslim.recipe import ExportSection, QuantizeSection

from export_testlib import tiny_manifest


def test_int8_only_for_the_listed_formats(trained, tmp_path):
    m = export_artifact(
        trained.model, tmp_path / "a", tiny_manifest(), formats=("onnx", "openvino"), precisions=("fp32", "int8"),
        calibration=trained.calibration(32), export_cfg=ExportSection(int8_formats=["openvino"]),
        quantize_cfg=QuantizeSection(calibration_size=32),
    )
    made = {(f.format, f.precision) for f in m.models}
    assert {("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "int8")} <= made
    assert ("onnx", "int8") not in made
    skipped = m.validation["export_skipped"]
    assert any(s["exporter"] == "onnx" and s["precision"] == "int8" and "int8_formats" in s["reason"] for s in skipped)
    assert not m.validation.get("partial")  # asked not to make it: nothing failed


def test_int8_formats_must_be_exported_formats():
    with pytest.raises(ValidationError, match="Did you mean 'openvino'"):
        ExportSection(formats=["onnx", "openvino"], int8_formats=["openvin"])
