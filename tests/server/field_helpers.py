"""The field-monitoring tests' model: TinyNet trained on real digits, exported by the real export with its val split.

The export writes each file's val reference (``extra["field_reference"]``) as it does for a recipe; the critical
class 8 gets a threshold calibrated on val to a 10 % false-alarm rate, as ``decision.target_fpr`` would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_TRAIN, N_VAL = 900, 300
CRITICAL = 8


@dataclass
class DigitsModel:
    artifact: Path
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def build_digits_model(directory: Path) -> DigitsModel:
    from edgeslim import testing
    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
    from edgeslim.compress.thresholds import calibrate_thresholds, manifest_thresholds
    from edgeslim.export import export_artifact
    from edgeslim.runtime.predictor import softmax

    x, y, rest_x, rest_y = testing.digits_splits(N_TRAIN)
    val = (rest_x[:N_VAL], rest_y[:N_VAL])
    test = (rest_x[N_VAL:], rest_y[N_VAL:])
    model = testing.train_tiny(x, y, epochs=4, shuffle=True)
    import torch

    with torch.inference_mode():
        probs = softmax(model(torch.from_numpy(val[0])).numpy())
    thr = calibrate_thresholds(probs, val[1], [CRITICAL], target_fpr=0.1)
    size = testing.SIZE
    manifest = Manifest(
        name="digits-field", arch="tinynet", classes=list(testing.DIGIT_CLASSES), critical=[CRITICAL],
        thresholds=manifest_thresholds(thr), recipe={"decision": {"target_fpr": 0.1}},
        input=TensorInfo(name="input", shape=[-1, 3, size, size]),
        outputs=[TensorInfo(name="logits", shape=[-1, 10])],
        preprocessing=Preprocessing(resize=size, crop=size),
    )
    out = directory / "digits-field"
    export_artifact(model, out, manifest, formats=["onnx"], precisions=["fp32"], val_split=val, strict=True)
    return DigitsModel(out, val, test)
