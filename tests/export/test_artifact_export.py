"""export_artifact: one atomic, hashed, validated artifact that loads; export_existing adds formats to one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeslim.artifact import ModelFile, load_manifest
from edgeslim.errors import ConfigError, IntegrityError, UnknownNameError
from edgeslim.export import EXPORTERS, export_artifact, export_existing
from edgeslim.recipe import ExportSection, QuantizeSection, ValidateSection
from edgeslim.runtime import BACKENDS, BackendOptions
from export_testlib import tiny_manifest

torch.set_num_threads(1)

# TinyNet's INT8 agrees 0.90-0.94 with FP32 (see test_validate.py); real models are held to the default 0.95.
VALIDATE = ValidateSection(int8_min_agreement=0.85)
QUANT = QuantizeSection(calibration_size=32)


@pytest.fixture(scope="module")
def full(trained, tmp_path_factory):
    """ONNX + OpenVINO, FP32 + INT8, validated on the test split, of a TinyNet with pruned (zeroed) weights."""
    model = copy.deepcopy(trained.model)
    with torch.no_grad():
        model.blocks[3].weight[::4] = 0
        model.blocks[6].weight[:, ::3] = 0
    out = tmp_path_factory.mktemp("art") / "tiny"
    manifest = export_artifact(
        model, out, tiny_manifest(), formats=("onnx", "openvino"), precisions=("fp32", "int8"),
        calibration=trained.calibration(32), validation=(trained.test_x, trained.test_y), quantize_cfg=QUANT,
        validate_cfg=VALIDATE,
    )
    return out, manifest, model


def test_artifact_loads_verified_with_every_model_listed(full):
    out, manifest, _ = full
    loaded = load_manifest(out)  # verifies every sha256
    assert loaded == manifest
    assert [(m.format, m.precision, m.path) for m in loaded.models] == [
        ("torch", "fp32", "model.safetensors"),
        ("onnx", "fp32", "model.onnx"),
        ("onnx", "int8", "model_int8.onnx"),
        ("openvino", "fp32", "openvino/model.xml"),
        ("openvino", "int8", "openvino_int8/model.xml"),
    ]
    assert loaded.input.name == "input" and loaded.input.shape == [-1, 3, 16, 16]
    assert [(o.name, o.shape) for o in loaded.outputs] == [("logits", [-1, 10])]
    assert set(loaded.files) == {"model.safetensors", "model.onnx", "model_int8.onnx", "openvino/model.xml",
                                 "openvino/model.bin", "openvino_int8/model.xml", "openvino_int8/model.bin"}
    v = loaded.validation
    assert v["passed"] and v["errors"] == [] and v["problems"] == []
    assert set(v["models"]) == {"model.onnx", "model_int8.onnx", "openvino/model.xml", "openvino_int8/model.xml"}
    assert all(r["passed"] for r in v["models"].values())


def test_pruned_zeros_survive_into_the_artifact(full):
    out, manifest, model = full
    zeros = int(sum((m.weight == 0).sum() for m in (model.blocks[3], model.blocks[6])))
    assert manifest.sparsity["torch"]["zeros"] == manifest.sparsity["onnx"]["zeros"] == zeros > 0
    assert manifest.sparsity["onnx"]["layers"]["blocks.3.weight"] == 0.25


def test_torch_weights_rebuild_the_model(trained, full):
    from safetensors.torch import load_file

    from edgeslim.testing import TinyNet

    out, manifest, model = full
    rebuilt = TinyNet(num_classes=10)
    rebuilt.load_state_dict(load_file(str(out / "model.safetensors")))
    rebuilt.eval()
    x = torch.from_numpy(trained.test_x[:8])
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))


def test_a_tampered_file_is_refused(full, tmp_path):
    import shutil

    out, _, _ = full
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    with open(copy_dir / "model.onnx", "r+b") as f:
        f.seek(-20, 2)
        f.write(b"\x00" * 4)
    with pytest.raises(IntegrityError, match="model.onnx: sha256 mismatch"):
        load_manifest(copy_dir)


def test_static_batch_artifact(trained, tmp_path):
    m = export_artifact(trained.model, tmp_path / "s", tiny_manifest(), formats=("onnx",), precisions=("fp32",),
                        export_cfg=ExportSection(dynamic_batch=False),
                        validation=(trained.test_x[:7], trained.test_y[:7]))
    assert m.input.shape == [1, 3, 16, 16] and m.outputs[0].shape == [1, 10]
    assert m.validation["models"]["model.onnx"]["max_abs_diff"] < 1e-4  # 7 samples run one at a time


def test_bad_requests_fail_before_any_work(trained, tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        export_artifact(trained.model, tmp_path / "x", tiny_manifest(), formats=("onnx",), precisions=("int8",))
    with pytest.raises(UnknownNameError, match="Did you mean 'onnx'"):
        export_artifact(trained.model, tmp_path / "x", tiny_manifest(), formats=("onxn",), precisions=("fp32",))
    with pytest.raises(ConfigError, match="precision"):
        export_artifact(trained.model, tmp_path / "x", tiny_manifest(), formats=("onnx",), precisions=("int4",))
    wrong = tiny_manifest().model_copy(update={"classes": ["a", "b", "c"]})
    with pytest.raises(ConfigError, match="3 classes"):
        export_artifact(trained.model, tmp_path / "x", wrong, formats=("onnx",), precisions=("fp32",))
    assert not (tmp_path / "x").exists()


def test_export_existing_adds_a_format_from_the_torch_weights(trained, tmp_path):
    src = tmp_path / "src"
    first = export_artifact(trained.model, src, tiny_manifest(), formats=("onnx",), precisions=("fp32",))
    m = export_existing(src, tmp_path / "more", formats=("openvino",), precisions=("fp32",),
                        validation=(trained.test_x[:20], trained.test_y[:20]))
    assert [(x.format, x.path) for x in m.models] == [
        ("torch", "model.safetensors"), ("onnx", "model.onnx"), ("openvino", "openvino/model.xml")]
    assert m.files["model.onnx"] == first.files["model.onnx"]  # carried over, not re-exported
    assert m.validation["passed"]  # the model rebuilt from arch 'tiny' + safetensors matches the original
    with BACKENDS.get("openvino")(tmp_path / "more" / "openvino/model.xml",
                                  BackendOptions(extra={"config": {"INFERENCE_PRECISION_HINT": "f32"}})) as b:
        x = trained.test_x[:4]
        assert np.abs(b.infer(x)["logits"] - trained.reference(x)).max() < 1e-4
    assert isinstance(m.models[0], ModelFile)


def test_every_registered_exporter_has_a_test_module():
    from pathlib import Path

    here = Path(__file__).parent
    missing = [n for n in EXPORTERS.names() if not (here / f"test_{n}.py").is_file()]
    assert not missing, f"exporters without tests/export/test_<name>.py: {missing}"
