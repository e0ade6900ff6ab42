"""A channel-pruned model survives the artifact round trip: export records its widths, runtimes rebuild it."""

from __future__ import annotations

import copy

import numpy as np
import torch

from edgeslim.compress.prune.structured import prune_channels
from edgeslim.export import export_artifact, export_existing
from edgeslim.runtime import load

from export_testlib import tiny_manifest, train_tiny


def test_channel_pruned_model_loads_in_torch_and_reexports(tmp_path):
    trained = train_tiny()
    model = copy.deepcopy(trained.model).eval()
    prune_channels(model, torch.zeros(1, 3, 16, 16), ratio=0.5, round_to=None,
                   ignored_layers=[model.conv_stem, model.classifier])
    assert model.blocks[3].out_channels < trained.model.blocks[3].out_channels  # really narrower
    m = export_artifact(model, tmp_path / "art", tiny_manifest("narrow"), formats=["onnx"], precisions=["fp32"],
                        validation=(trained.test_x, trained.test_y))
    torch_file = m.model("torch")
    assert torch_file.extra["structure"]["modules"]  # widths recorded
    x = trained.test_x[:8]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    with load(tmp_path / "art", backend="torch") as p:
        np.testing.assert_allclose(p.infer(x), ref, atol=1e-5)
    with load(tmp_path / "art", backend="onnxruntime") as p:
        np.testing.assert_allclose(p.infer(x), ref, atol=1e-4)
    # re-export from the artifact alone rebuilds the narrow model too
    m2 = export_existing(tmp_path / "art", tmp_path / "art2", formats=["openvino"], precisions=["fp32"])
    with load(tmp_path / "art2", backend="openvino") as p:
        np.testing.assert_allclose(p.infer(x), ref, atol=1e-4)
    assert m2.model("torch").extra["structure"] == torch_file.extra["structure"]
