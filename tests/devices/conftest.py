"""A small real artifact for the devices tests: TinyNet trained on sklearn digits (16x16 RGB), exported to
ONNX FP32, ONNX INT8 (onnxruntime static QDQ quantization) and an OpenVINO FP32 IR, plus held-out labelled data.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from edgeslim.runtime.base import Backend, BackendOptions, TensorSpec

CLASSES = [str(i) for i in range(10)]
CRITICAL = [3, 8]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0  # 8x8 in [0, 1]
    x = np.kron(x, np.ones((2, 2), np.float32))  # 16x16
    x = (x - 0.5) / 0.5
    x = np.repeat(x[:, None], 3, axis=1)  # N, 3, 16, 16
    return np.ascontiguousarray(x), d.target.astype(np.int64)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = _digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1400], idx[1400:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, digits) -> Path:
    import torch

    from edgeslim.artifact import Manifest, ModelFile, Preprocessing, TensorInfo, write_artifact
    from edgeslim.testing import TinyNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    xtr, ytr, _, _ = digits
    model = TinyNet(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(6):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[b]), Y[b]).backward()
            opt.step()
    model.eval()

    def writer(tmp: Path):
        import onnx
        import openvino as ov
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        onnx_path = tmp / "model.onnx"
        torch.onnx.export(
            model, (torch.zeros(1, 3, 16, 16),), str(onnx_path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17,
        )
        onnx.checker.check_model(str(onnx_path))

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter([{"input": xtr[i : i + 16]} for i in range(0, 256, 16)])

            def get_next(self):
                return next(self.it, None)

        quantize_static(
            str(onnx_path), str(tmp / "model.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        )
        ov_model = ov.convert_model(str(onnx_path))
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        return None

    manifest = Manifest(
        name="tinynet-digits",
        arch="tinynet",
        classes=CLASSES,
        critical=CRITICAL,
        input=TensorInfo(name="input", shape=[-1, 3, 16, 16]),
        outputs=[TensorInfo(name="logits", shape=[-1, 10])],
        preprocessing=Preprocessing(resize=16, crop=16),
        models=[
            ModelFile(format="onnx", precision="fp32", path="model.onnx"),
            ModelFile(format="onnx", precision="int8", path="model.int8.onnx"),
            ModelFile(format="openvino", precision="fp32", path="model.xml"),
        ],
    )
    out = tmp_path_factory.mktemp("art") / "tiny"
    write_artifact(out, manifest, writer)
    return out


@pytest.fixture(scope="session")
def png_images(digits) -> list[bytes]:
    """A few digits encoded as PNG bytes, as a camera or client would send them."""
    from PIL import Image

    _, _, xte, _ = digits
    out = []
    for x in xte[:8]:
        px = ((x.transpose(1, 2, 0) * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class SpinBackend(Backend):
    """Takes a known time per call (busy wait, so the scheduler does not add sleep slack): the truth to
    check the profiler's clock and statistics against."""

    name = "spin"
    formats = ()

    def _load(self) -> None:
        self.cost_ns = int(self.options.extra["ms"] * 1e6)
        self.calls = 0
        self.durations_ns: list[int] = []  # the backend's own clock, to compare the profiler's with
        self.inputs = [TensorSpec("input", "float32", (-1, 4))]
        self.outputs = [TensorSpec("logits", "float32", (-1, 2))]

    def _infer(self, feeds):
        self.calls += 1
        t0 = time.perf_counter_ns()
        end = t0 + self.cost_ns
        while time.perf_counter_ns() < end:
            pass
        self.durations_ns.append(time.perf_counter_ns() - t0)
        return {"logits": np.zeros((feeds["input"].shape[0], 2), np.float32)}


@pytest.fixture
def spin():
    """Factory of :class:`SpinBackend` taking ``ms`` per call."""
    return lambda ms: SpinBackend("spin", BackendOptions(extra={"ms": ms}))
