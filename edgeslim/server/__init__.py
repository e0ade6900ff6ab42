"""The on-device inference server (KServe v2 / Open Inference Protocol).

``create_app(settings)`` returns a FastAPI app; ``serve(settings)`` runs it under uvicorn with graceful shutdown.
Importing this package does not import torch, onnxruntime or openvino: backends load in the app's lifespan.
"""

from __future__ import annotations

from .app import create_app as create_app
from .app import serve as serve
from .settings import ServerSettings as ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
