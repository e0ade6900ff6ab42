"""One inference API over PyTorch, ONNX Runtime, OpenVINO and TensorRT.

>>> from edgeslim.runtime import load
>>> with load("artifacts/tiny", backend="openvino") as model:   # doctest: +SKIP
...     print(model.predict("cat.jpg").name)

Importing this package registers every backend in :data:`BACKENDS`; a backend imports its runtime library only
when a model is loaded, so this import stays light.
"""

from __future__ import annotations

from . import onnxruntime as _onnxruntime  # noqa: F401  (registers "onnxruntime")
from . import openvino as _openvino  # noqa: F401  (registers "openvino")
from . import tensorrt as _tensorrt  # noqa: F401  (registers "tensorrt")
from . import torch as _torch  # noqa: F401  (registers "torch")
from .base import BACKENDS as BACKENDS
from .base import Backend as Backend
from .base import BackendOptions as BackendOptions
from .base import TensorSpec as TensorSpec
from .predictor import Prediction as Prediction
from .predictor import Predictor as Predictor
from .predictor import load as load

__all__ = ["BACKENDS", "Backend", "BackendOptions", "Prediction", "Predictor", "TensorSpec", "load"]
