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


def digits_16() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits (8x8, 0..16) as normalised 3x16x16 float32 images."""
    import importlib.util
    from pathlib import Path

    # Read scikit-learn's bundled CSV directly: importing sklearn (and scipy) costs seconds per test file.
    spec = importlib.util.find_spec("sklearn")
    data = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    img = images.astype(np.float32) / 16.0 * 255.0
    img = img.repeat(2, axis=1).repeat(2, axis=2)  # 8x8 -> 16x16
    x = np.repeat(img[:, None], 3, axis=1)
    x = (x - 127.5) / 127.5
    return np.ascontiguousarray(x, dtype=np.float32), target.astype(np.int64)


def train_tiny() -> Trained:
    import torch

    from edgeslim.testing import TinyNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits_16()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    train_x, train_y, test_x, test_y = x[:1200], y[:1200], x[1200:1500], y[1200:1500]
    model = TinyNet(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    model.train()
    for _ in range(3):
        for i in range(0, len(tx), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(tx[i : i + 64]), ty[i : i + 64]).backward()
            opt.step()
    model.eval()
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
