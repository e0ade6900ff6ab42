"""End-to-end CLI run of a small recipe on the real pretrained source (EfficientNet-Lite0 shipped in a package)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgeslim.artifact import load_manifest
from edgeslim.cli import app
from edgeslim.runtime import load

pytestmark = pytest.mark.slow

SMALL = {
    "version": 1,
    "name": "lite0-small",
    "model": {"source": "efficientnet_lite0"},
    "data": {"dataset": "digits", "image_size": 64, "critical": [8], "imbalance": {"8": 0.25}},
    "train": {"epochs": 3, "lr": 0.01},
    "prune": {"rounds": 1, "rate": 0.3, "rewind": 1, "exclude": ["*conv_dw"]},
    "quantize": {"calibration_size": 128},
    "profile": {"iterations": 20, "seconds": 0.5, "warmup": 3},
    # one short round is a smoke run: its INT8 files agree with FP32 on about 0.84 of the test images (the full
    # default recipe reaches the same top-1 in INT8); the default 0.95 gate is exercised in tests/export
    "validate": {"int8_min_agreement": 0.8, "max_extra_critical_fn": 3},
}


def test_small_recipe_on_pretrained_lite0(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["pipeline", str(recipe), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    rows = {(x["model"], x["format"], x["precision"]): x for x in report["pipeline"]["summary"]}
    # the pretrained backbone learns digits in three epochs; the pruned model keeps most of it
    assert rows[("dense", "onnx", "fp32")]["accuracy"] > 0.7
    assert rows[("compressed", "openvino", "fp32")]["accuracy"] > 0.7
    m = load_manifest(out / "compressed")
    assert m.arch == "timm:tf_efficientnet_lite0" and m.source == "efficientnet_lite0"
    # the deployed predictor takes raw digit images and agrees with the exported model's own accuracy
    from edgeslim.compress.data import load_data
    from edgeslim.compress.sources import load_pretrained

    data = load_data("digits", preprocessing=load_pretrained("efficientnet_lite0").preprocessing, image_size=64,
                     critical=[8], imbalance={"8": 0.25})
    imgs, labels = data.raw_images("test", 60), data.labels("test")[:60]
    with load(out / "compressed", backend="openvino", precision="int8") as p:
        preds = p.predict(imgs)
    acc = float(np.mean([pr.label for pr in preds] == labels))
    assert acc > 0.6
