"""Helpers of the export tests: a TinyNet trained for seconds on real handwriting (sklearn digits at 16x16).

A trained model matters here: top-1 agreement and critical false negatives of an INT8 export only mean something
when the logits separate the classes, and BatchNorm statistics are non-trivial so BN folding is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 16
CRITICAL = 8


@dataclass
class Trained:
    model: object  # TinyNet, eval mode
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def calibration(self, n: int = 64, batch: int = 16) -> list[np.ndarray]:
        return [self.train_x[i : i + batch] for i in range(0, n, batch)]

    def reference(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()


def train_tiny() -> Trained:
    import torch

    from edgeslim import testing

    train_x, train_y, test_x, test_y = testing.digits_splits(1200, 300, size=SIZE)
    model = testing.train_tiny(train_x, train_y, epochs=3)
    with torch.inference_mode():
        acc = float((model(torch.from_numpy(test_x)).argmax(1).numpy() == test_y).mean())
    assert acc > 0.8, f"the shared test model did not train (test accuracy {acc:.2f})"
    return Trained(model, train_x, train_y, test_x, test_y)


def tiny_manifest(name: str = "tiny", *, arch: str = "tiny", batch: int = -1):
    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo

    return Manifest(
        name=name,
        arch=arch,
        classes=[str(i) for i in range(10)],
        critical=[CRITICAL],
        input=TensorInfo(name="input", shape=[batch, 3, SIZE, SIZE]),
        outputs=[TensorInfo(name="logits", shape=[batch, 10])],
        preprocessing=Preprocessing(resize=SIZE, crop=SIZE),
    )


def context(model, directory, **kw):
    from edgeslim.export import ExportContext

    return ExportContext(model=model, directory=directory, input_shape=(3, SIZE, SIZE), num_classes=10, **kw)
