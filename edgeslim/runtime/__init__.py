"""One inference API over PyTorch, ONNX Runtime, OpenVINO and TensorRT.

Importing this package registers every backend in :data:`BACKENDS`; the backends import their runtime library
only when a model is loaded, so this import stays light.
"""

from __future__ import annotations

from . import onnxruntime as _onnxruntime  # noqa: F401  (registers "onnxruntime")
from . import openvino as _openvino  # noqa: F401  (registers "openvino")
from .base import BACKENDS as BACKENDS
from .base import Backend as Backend
from .base import BackendOptions as BackendOptions
from .base import TensorSpec as TensorSpec
