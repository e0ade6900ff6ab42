"""PyTorch backend: rebuild the architecture, load ``model.safetensors``, run under ``torch.inference_mode``.

The reference every exported model is compared with, and the way to run an artifact on a machine without
ONNX Runtime or OpenVINO.

``options.extra`` keys:
    arch: architecture name for ``edgeslim.compress.sources.build_model`` (required).
    num_classes: number of classes (required).
    input_shape: input shape with -1 for dynamic dims (default ``[-1, 3, -1, -1]``).
    input_name / output_name: tensor names (default ``"input"`` / ``"logits"``, the artifact contract).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendError, ConfigError, require
from ..registry import did_you_mean
from .base import BACKENDS, Backend, TensorSpec

_EXTRA_KEYS = ("arch", "num_classes", "structure", "input_shape", "input_name", "output_name")


def build_model(arch: str, num_classes: int) -> Any:
    """The untrained architecture ``arch`` with a ``num_classes`` head (:func:`edgeslim.models.build_model`).

    Raises:
        UnknownNameError: unknown architecture (with the closest match).
    """
    from ..models import build_model as _build

    return _build(arch, num_classes)


def _torch_device(torch: Any, device: str) -> Any:
    kind, _, index = device.lower().partition(":")
    if kind == "cpu":
        return torch.device("cpu")
    if kind in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise BackendError(
                f"device '{device}' needs CUDA, but torch.cuda.is_available() is False on this machine; use device='cpu'"
            )
        return torch.device(f"cuda:{index or 0}")
    raise ConfigError(f"torch backend: unknown device '{device}'.{did_you_mean(kind, ['cpu', 'cuda'])} Use cpu or cuda[:N]")


@BACKENDS.register("torch", aliases=("pytorch",))
class TorchBackend(Backend):
    """Runs a ``model.safetensors`` state dict in its rebuilt PyTorch architecture."""

    name = "torch"
    formats = ("torch",)
    library = "torch"
    extra = "compress"
    suffix = ".safetensors"  # Triton's PyTorch backend runs TorchScript, not a state dict: no triton_backend

    @classmethod
    def artifact_options(cls, manifest: Any, model_file: Any) -> dict[str, Any]:
        """Options :func:`edgeslim.runtime.load` derives from an artifact's manifest."""
        return {
            "arch": manifest.arch,
            "num_classes": len(manifest.classes),
            "structure": (model_file.extra or {}).get("structure"),
            "input_shape": list(manifest.input.shape),
            "input_name": manifest.input.name,
            "output_name": manifest.outputs[0].name if manifest.outputs else "logits",
        }

    def _load(self) -> None:
        torch = require("torch", extra="compress", purpose="the torch backend")
        st = require("safetensors.torch", extra="compress", purpose="the torch backend")
        extra = dict(self.options.extra)
        for key in extra:
            if key not in _EXTRA_KEYS:
                raise ConfigError(
                    f"torch backend: unknown option '{key}'.{did_you_mean(key, _EXTRA_KEYS)} Known: {', '.join(_EXTRA_KEYS)}"
                )
        arch, num_classes = extra.get("arch"), extra.get("num_classes")
        if not arch or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(
                "the torch backend rebuilds the model, so it needs arch and num_classes, e.g. "
                "BackendOptions(extra={'arch': 'tiny', 'num_classes': 10}); edgeslim.runtime.load() fills them from "
                f"the manifest (got arch={arch!r}, num_classes={num_classes!r})"
            )
        if not self.path.is_file():
            raise BackendError(f"PyTorch weights file {self.path} does not exist")
        self._device = _torch_device(torch, self.options.device)
        if self.options.threads is not None:
            if not isinstance(self.options.threads, int) or self.options.threads < 1:
                raise ConfigError(f"threads must be a positive integer, got {self.options.threads!r}")
            # Process-wide in PyTorch: there is no per-model intra-op pool.
            torch.set_num_threads(self.options.threads)

        if extra.get("structure"):
            from ..models import rebuild_model

            model = rebuild_model(arch, num_classes, extra["structure"])
        else:
            model = build_model(arch, num_classes)
        try:
            state = st.load_file(str(self.path), device="cpu")
        except Exception as exc:
            raise BackendError(f"{self.path} is not a readable safetensors file: {exc}") from exc
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackendError(
                f"{self.path} does not fit architecture '{arch}' with {num_classes} classes: {exc}. "
                "Check the manifest's arch and classes match the weights"
            ) from exc
        self._model = model.to(self._device).eval()
        self._torch = torch

        shape = tuple(int(d) for d in extra.get("input_shape") or (-1, 3, -1, -1))
        self.inputs = [TensorSpec(str(extra.get("input_name") or "input"), "float32", shape)]
        self.outputs = [TensorSpec(str(extra.get("output_name") or "logits"), "float32", (-1, num_classes))]

    @property
    def model(self) -> Any:
        """The loaded ``torch.nn.Module`` (eval mode)."""
        return self._model

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise BackendError(f"{self!r} is closed")
        torch = self._torch
        x = torch.from_numpy(feeds[self.inputs[0].name]).to(self._device)
        try:
            with torch.inference_mode():
                y = self._model(x)
        except RuntimeError as exc:
            raise BackendError(f"PyTorch failed to run {self.path.name}: {exc}") from exc
        return {self.outputs[0].name: y.float().cpu().numpy()}

    def version(self) -> str:
        import torch

        return torch.__version__

    def close(self) -> None:
        self._model = None
