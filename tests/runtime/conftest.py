"""Test models for the runtime: one TinyNet exported to every format, and small artifact directories."""

from __future__ import annotations

import warnings
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


def _export_onnx(model, path: Path, *, dynamic: bool) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, SIZE, SIZE),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
            dynamo=False,
        )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    import openvino as ov
    import torch
    from safetensors.torch import save_file

    from edgeslim.testing import TinyNet

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
    _export_onnx(model, root / "model.onnx", dynamic=True)
    _export_onnx(model, root / "model_b1.onnx", dynamic=False)
    (root / "openvino").mkdir()
    ov.save_model(ov.convert_model(str(root / "model.onnx")), str(root / "openvino" / "model.xml"), compress_to_fp16=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    return TinyModels(
        model=model,
        onnx=root / "model.onnx",
        onnx_static=root / "model_b1.onnx",
        openvino=root / "openvino" / "model.xml",
        safetensors=root / "model.safetensors",
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
    import shutil

    from edgeslim.artifact import Manifest, ModelFile, Preprocessing, TensorInfo, write_artifact

    base = tmp_path_factory.mktemp("artifacts")

    def make(name: str, *, static: bool = False, thresholds: dict[str, float] | None = None,
             critical: list[int] | None = None) -> Path:
        batch_dim = 1 if static else -1
        manifest = Manifest(
            name=name,
            source="test",
            arch="tiny",
            classes=CLASSES,
            critical=[1] if critical is None else critical,
            thresholds=thresholds or {},
            input=TensorInfo(name="input", shape=[batch_dim, 3, SIZE, SIZE]),
            outputs=[TensorInfo(name="logits", shape=[batch_dim, NUM_CLASSES])],
            preprocessing=Preprocessing(resize=SIZE, crop=SIZE),
            models=[
                ModelFile(format="onnx", precision="fp32", path="model.onnx"),
                ModelFile(format="openvino", precision="fp32", path="openvino/model.xml"),
                ModelFile(format="torch", precision="fp32", path="model.safetensors"),
            ],
        )

        def writer(tmp: Path) -> None:
            shutil.copy(tiny_models.onnx_static if static else tiny_models.onnx, tmp / "model.onnx")
            (tmp / "openvino").mkdir()
            shutil.copy(tiny_models.openvino, tmp / "openvino" / "model.xml")
            shutil.copy(tiny_models.openvino.with_suffix(".bin"), tmp / "openvino" / "model.bin")
            shutil.copy(tiny_models.safetensors, tmp / "model.safetensors")

        write_artifact(base / name, manifest, writer)
        return base / name

    return make
