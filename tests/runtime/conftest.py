"""Test models for the runtime: one TinyNet exported to every format, and small artifact directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from backend_conformance import CLASSES, NUM_CLASSES, SIZE


@dataclass
class TinyModels:
    """Paths of one TinyNet in every format plus its PyTorch reference."""

    model: object  # torch.nn.Module (eval)
    onnx: Path
    onnx_static: Path  # batch fixed to 1
    openvino: Path
    safetensors: Path

    def reference(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()


#: Where the artifacts of :func:`make_artifact` keep each file (the torch weights too, for the torch backend).
FILES = {"onnx": "model.onnx", "openvino": "openvino/model.xml", "torch": "model.safetensors"}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    import torch

    from edgeslim.testing import TinyNet, build_tiny_artifact

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyNet(NUM_CLASSES)
    # Non-trivial BatchNorm statistics, so a backend that folds BN wrongly would show.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    root = tmp_path_factory.mktemp("tiny_models")
    dynamic = build_tiny_artifact(root / "dynamic", model, classes=CLASSES, critical=[1], files=FILES, arch="tiny")
    static = build_tiny_artifact(root / "static", model, classes=CLASSES, critical=[1], files=("onnx",), arch="tiny",
                                 static=True)
    return TinyModels(
        model=model,
        onnx=dynamic / FILES["onnx"],
        onnx_static=static / "model.onnx",
        openvino=dynamic / FILES["openvino"],
        safetensors=dynamic / FILES["torch"],
    )


@pytest.fixture(scope="session")
def batch() -> np.ndarray:
    """A fixed NCHW float32 batch of 5 (the preprocessed range is about [-1, 1])."""
    return np.random.default_rng(0).uniform(-1, 1, (5, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="session")
def make_artifact(tiny_models, tmp_path_factory) -> Callable[..., Path]:
    """``make_artifact(name, *, static=False, thresholds=None, critical=None)`` -> artifact directory.

    The artifact holds the TinyNet as onnx/fp32, openvino/fp32 and torch/fp32, written with
    :func:`edgeslim.artifact.write_artifact` like a real export.
    """
    from edgeslim.testing import build_tiny_artifact

    base = tmp_path_factory.mktemp("artifacts")

    def make(name: str, *, static: bool = False, thresholds: dict[str, float] | None = None,
             critical: list[int] | None = None) -> Path:
        return build_tiny_artifact(
            base / name, tiny_models.model, name=name, source="test", arch="tiny", classes=CLASSES,
            critical=[1] if critical is None else critical, thresholds=thresholds, files=FILES, static=static,
            size=SIZE,
        )

    return make
