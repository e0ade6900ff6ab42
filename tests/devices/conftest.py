"""A small real artifact for the devices tests: TinyNet trained on sklearn digits (16x16 RGB), exported to
ONNX FP32, ONNX INT8 (onnxruntime static QDQ quantization) and an OpenVINO FP32 IR, plus held-out labelled data
(built by :mod:`edgeslim.testing`).
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


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y): 1,400 digits to train on, the other 397 held out."""
    from edgeslim.testing import digits_splits

    return digits_splits(1400)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, digits) -> Path:
    from edgeslim.testing import build_tiny_artifact, train_tiny

    xtr, ytr, _, _ = digits
    model = train_tiny(xtr, ytr, epochs=6, shuffle=True)
    return build_tiny_artifact(
        tmp_path_factory.mktemp("art") / "tiny", model, name="tinynet-digits", classes=CLASSES, critical=CRITICAL,
        files={"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "openvino": "model.xml"},
        calibration=xtr[:256], opset=17,
    )


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
        self.started_ns: list[int] = []  # when each call began (the order of calls across backends)
        self.inputs = [TensorSpec("input", "float32", (-1, 4))]
        self.outputs = [TensorSpec("logits", "float32", (-1, 2))]

    def _infer(self, feeds):
        self.calls += 1
        t0 = time.perf_counter_ns()
        self.started_ns.append(t0)
        end = t0 + self.cost_ns
        while time.perf_counter_ns() < end:
            pass
        self.durations_ns.append(time.perf_counter_ns() - t0)
        return {"logits": np.zeros((feeds["input"].shape[0], 2), np.float32)}


@pytest.fixture
def spin():
    """Factory of :class:`SpinBackend` taking ``ms`` per call."""
    return lambda ms: SpinBackend("spin", BackendOptions(extra={"ms": ms}))
