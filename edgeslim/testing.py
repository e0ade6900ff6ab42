"""Tiny models and data for tests and examples, shipped in the package so anyone can use them.

``TinyNet`` has the same shape of interface as a real backbone (a first conv named ``conv_stem``, depthwise and
pointwise convs, BatchNorm, a ``classifier`` head), trains to useful accuracy on 16x16 digits in seconds on a CPU,
and exports to ONNX and OpenVINO. :func:`digits` is the one digits loader of the test suites and
:func:`build_tiny_artifact` the one tiny-artifact builder (ONNX FP32 / INT8, OpenVINO IR, torch weights).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import numpy as np


class TinyNet(nn.Module):
    """A small CNN classifier (about 10k parameters)."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_stem = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)  # a module, not torch.relu: the children run in order (models.split_at)
        self.blocks = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.pool(self.blocks(x)).flatten(1)
        return self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)


# -- digits and tiny artifacts: the one loader and the one builder every test suite uses -------------------------
#: Image side of the digits tests and of :func:`build_tiny_artifact` (TinyNet trains on 16x16 in seconds).
SIZE = 16
#: The class names of :func:`digits` (the name of each digit is its index).
DIGIT_CLASSES = [str(i) for i in range(10)]


def digits(size: int = SIZE) -> tuple["np.ndarray", "np.ndarray"]:
    """scikit-learn's 1,797 handwritten digits as ``(x, y)``: float32 N x 3 x size x size in [-1, 1], int64 labels.

    The 8x8 images are upsampled by pixel repetition and normalised with mean 0.5 / std 0.5 (the
    ``Preprocessing(resize=size, crop=size)`` defaults of :func:`build_tiny_artifact`'s manifest).
    """
    import importlib.util
    from pathlib import Path

    import numpy as np

    if size % 8:
        raise ValueError(f"digits(size={size}): use a multiple of 8 (the images are 8x8)")
    # scikit-learn's bundled CSV, read directly: importing sklearn (and scipy) costs seconds per test process
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        from .errors import require

        require("sklearn", extra="compress", purpose="the digits data set")
    data = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    k = size // 8
    x = (images.astype(np.float32) / 16.0).repeat(k, axis=1).repeat(k, axis=2)
    x = np.repeat((x - 0.5)[:, None] / 0.5, 3, axis=1)
    return np.ascontiguousarray(x, dtype=np.float32), target.astype(np.int64)


def digits_splits(n_train: int, n_test: int | None = None, *, seed: int = 0, size: int = SIZE):
    """:func:`digits` shuffled with ``seed`` and cut into ``(train_x, train_y, test_x, test_y)``; the test split
    is the next ``n_test`` images (all the rest when None)."""
    import numpy as np

    x, y = digits(size)
    perm = np.random.default_rng(seed).permutation(len(x))
    tr = perm[:n_train]
    te = perm[n_train:] if n_test is None else perm[n_train : n_train + n_test]
    return x[tr], y[tr], x[te], y[te]


def train_tiny(x: "np.ndarray", y: "np.ndarray", *, num_classes: int = 10, epochs: int = 3, lr: float = 0.01,
               batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> TinyNet:
    """A :class:`TinyNet` trained with Adam and cross-entropy on ``(x, y)`` for a few epochs (seconds on a CPU),
    returned in eval mode. Deterministic for a given ``seed`` (one intra-op thread)."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = TinyNet(num_classes=num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(tx)) if shuffle else torch.arange(len(tx))
        for i in range(0, len(tx), batch_size):
            b = order[i : i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(tx[b]), ty[b]).backward()
            opt.step()
    return model.eval()


def export_onnx(model: nn.Module, path: "str | os.PathLike[str]", *, size: int = SIZE, dynamic: bool = True,
                opset: int | None = None) -> None:
    """``model`` to ONNX with input ``input`` (N x 3 x size x size) and output ``logits``; a dynamic batch axis
    unless ``dynamic`` is False (batch 1)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 3, size, size),), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None, dynamo=False,
            **({"opset_version": opset} if opset else {}),
        )


#: The file each kind of model is written to by default in :func:`build_tiny_artifact`.
DEFAULT_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "openvino": "openvino/model.xml",
                 "torch": "model.safetensors"}


def build_tiny_artifact(
    directory: "str | os.PathLike[str]",
    model: nn.Module | None = None,
    *,
    name: str = "tiny",
    classes: "Sequence[str]" = tuple(DIGIT_CLASSES),
    critical: "Sequence[int]" = (8,),
    thresholds: "dict[str, float] | None" = None,
    files: "Sequence[str] | dict[str, str]" = ("onnx",),
    calibration: "np.ndarray | None" = None,
    static: bool = False,
    size: int = SIZE,
    arch: str = "tinynet",
    source: str = "test",
    opset: int | None = None,
    recipe: "dict | None" = None,
    seed: int = 0,
) -> "Path":
    """A real edgeslim artifact of a :class:`TinyNet`, written atomically as an export writes one.

    Args:
        directory: the artifact directory to create.
        model: the model (eval mode); default an untrained ``TinyNet(len(classes))`` seeded with ``seed``.
        name, classes, critical, thresholds, arch, source: the manifest's fields.
        files: which model files, ``onnx`` (FP32), ``onnx-int8`` (onnxruntime static QDQ INT8, needs
            ``calibration``), ``openvino`` (FP32 IR converted from the ONNX file), ``torch`` (safetensors state
            dict); a sequence uses :data:`DEFAULT_FILES`' paths, a dict maps each kind to its path.
        calibration: NCHW float32 inputs for the INT8 calibration.
        static: a batch axis fixed to 1 instead of dynamic.
        size: image side.
        opset: ONNX opset (default: torch's).
        recipe: the recipe recorded in the manifest (what the profiler re-creates its test split from).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from .artifact import Manifest, ModelFile, Preprocessing, TensorInfo, write_artifact

    paths = dict(files) if isinstance(files, dict) else {k: DEFAULT_FILES[k] for k in files}
    unknown = sorted(set(paths) - set(DEFAULT_FILES))
    if unknown:
        raise ValueError(f"build_tiny_artifact: unknown file kinds {unknown}; use {sorted(DEFAULT_FILES)}")
    if "onnx-int8" in paths and calibration is None:
        raise ValueError("build_tiny_artifact: 'onnx-int8' needs calibration inputs")
    if model is None:
        torch.manual_seed(seed)
        model = TinyNet(num_classes=len(classes)).eval()
    n = 1 if static else -1
    kinds = {"onnx": ("onnx", "fp32"), "onnx-int8": ("onnx", "int8"), "openvino": ("openvino", "fp32"),
             "torch": ("torch", "fp32")}
    manifest = Manifest(
        name=name, source=source, arch=arch, classes=list(classes), critical=list(critical),
        thresholds=dict(thresholds or {}), recipe=dict(recipe or {}),
        input=TensorInfo(name="input", shape=[n, 3, size, size]),
        outputs=[TensorInfo(name="logits", shape=[n, len(classes)])],
        preprocessing=Preprocessing(resize=size, crop=size),
        models=[ModelFile(format=kinds[k][0], precision=kinds[k][1], path=p) for k, p in paths.items()],
    )

    def writer(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            fp32 = Path(scratch) / "model.onnx"
            export_onnx(model, fp32, size=size, dynamic=not static, opset=opset)
            import onnx

            onnx.checker.check_model(str(fp32))
            for kind, rel in paths.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if kind == "onnx":
                    shutil.copy(fp32, dest)
                elif kind == "onnx-int8":
                    _quantize_onnx(fp32, dest, calibration)
                elif kind == "openvino":
                    import openvino as ov

                    ov.save_model(ov.convert_model(str(fp32)), str(dest), compress_to_fp16=False)
                else:
                    from safetensors.torch import save_file

                    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest))

    out = Path(directory)
    write_artifact(out, manifest, writer)
    return out


def _quantize_onnx(src: "Path", dest: "Path", calibration: "np.ndarray") -> None:
    """Static QDQ INT8 with onnxruntime's quantizer (signed activations and weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calibration[i : i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
