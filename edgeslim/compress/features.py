"""Frozen early stages, computed once: the cache behind ``train.freeze`` + ``train.cache``.

With the stem and the first stages frozen (``train.freeze: blocks.4``), their output is a fixed function of the
input image. :class:`FeatureCache` computes it once for every training image (for each of the 8 symmetries of the
square when the data set augments that way, so that augmentation survives the cache) and for the val split; every
epoch then runs only the trainable suffix. On ELPV at 224 px this is what makes a 224 px fine-tune fit a few CPU
minutes (``docs/elpv.md``).

The cache is filled by OpenVINO when it is installed (the frozen part converted straight from PyTorch with
``openvino.convert_model``, compiled for throughput): on 2 CPU cores that is several times faster than PyTorch
eager. Its outputs are checked against PyTorch on the first batch; a mismatch falls back to PyTorch with a warning.
A cache is keyed by the frozen part's weights and the split, so the dense, pruned and QAT rounds of one run share
it as long as they leave the frozen part untouched, and a round that changed it (pruning inside the frozen part)
gets a cache of its own.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import eval_mode

log = logging.getLogger(__name__)

__all__ = ["FeatureCache", "SYMMETRIES", "frozen_digest"]

#: the 8 symmetries of the square as (quarter turns, flip first): the dihedral augmentation's orbit
SYMMETRIES: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))
_BATCH = 64
# cached entries per (digest, split, symmetric); a run holds at most the dense and one pruned prefix at a time
_MAX_ENTRIES = 4


def _transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def frozen_digest(prefix: nn.Module) -> str:
    """A digest of the frozen part's structure and weights (what its outputs depend on)."""
    h = hashlib.sha256()
    for name, t in prefix.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Entry:
    features: torch.Tensor  # N x C x H x W float32 (N = images x symmetries)
    labels: torch.Tensor  # N int64
    engine: str
    seconds: float


class FeatureCache:
    """Outputs of a frozen prefix per split, computed once per distinct prefix.

    Args:
        engine: ``auto`` (OpenVINO when installed, else PyTorch), ``openvino`` or ``torch``.
    """

    def __init__(self, engine: str = "auto") -> None:
        self.engine = engine
        self._entries: dict[tuple[str, str, bool], _Entry] = {}

    def get(self, prefix: nn.Module, data: Any, split: str, *, symmetries: bool, batch_size: int = _BATCH
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, labels)`` of ``split``; with ``symmetries``, every image in its 8 orientations (the
        features of orientation ``j`` of image ``i`` at row ``j * n + i``)."""
        key = (frozen_digest(prefix), split, symmetries)
        if key not in self._entries:
            while len(self._entries) >= _MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = self._compute(prefix, data, split, symmetries, batch_size)
        e = self._entries[key]
        return e.features, e.labels

    def _compute(self, prefix: nn.Module, data: Any, split: str, symmetries: bool, batch_size: int) -> _Entry:
        import time

        t0 = time.perf_counter()
        dataset = data._split(split)
        was_aug = getattr(dataset, "augment", None)
        dataset.augment = None  # the un-augmented images; the symmetries are applied here, all 8 of them
        try:
            loader = data.loader(split, batch_size=batch_size, shuffle=False)
            batches = [x for x, _ in loader]
        finally:
            dataset.augment = was_aug
        labels = torch.as_tensor(data.labels(split), dtype=torch.int64)
        orbit = SYMMETRIES if symmetries else ((0, False),)
        run, engine = self._runner(prefix, batches[0])
        feats = [run(_transform(x, k, f).contiguous()) for k, f in orbit for x in batches]
        features = torch.cat(feats)
        seconds = time.perf_counter() - t0
        log.info("cached the frozen layers' outputs for %s: %d x %s in %.1f s (%s)", split, features.shape[0],
                 tuple(features.shape[1:]), seconds, engine)
        return _Entry(features, labels.repeat(len(orbit)), engine, seconds)

    def _runner(self, prefix: nn.Module, first: torch.Tensor):
        def torch_run(x: torch.Tensor) -> torch.Tensor:
            # frozen BatchNorm: running statistics, as the deployed model computes them
            with eval_mode(prefix), torch.no_grad():
                return prefix(x).detach().clone()

        if self.engine == "torch":
            return torch_run, "torch"
        try:
            import openvino as ov
        except ImportError:
            if self.engine == "openvino":
                from ..errors import require

                require("openvino", extra="serve")
            return torch_run, "torch"
        with eval_mode(prefix):
            try:
                ref = torch_run(first)
                with torch.no_grad():
                    om = ov.convert_model(prefix, example_input=first, input=[ov.PartialShape([-1, *first.shape[1:]])])
                # run by the OpenVINO runner like every other model (f32: the cache stands in for PyTorch's outputs)
                from ..runtime import BackendOptions, from_model

                runner = from_model(om, BackendOptions(device="cpu"),
                                    openvino={"hint": "THROUGHPUT", "inference_precision": "f32"})
                output = runner.outputs[0].name

                def ov_run(x: torch.Tensor) -> torch.Tensor:
                    return torch.from_numpy(np.array(runner.infer(x.numpy())[output], copy=True))

                got = ov_run(first)
                scale = float(ref.abs().max()) or 1.0
                err = float((got - ref).abs().max())
                if got.shape != ref.shape or err > 1e-3 * scale:
                    log.warning("OpenVINO's frozen-layer outputs differ from PyTorch's by %.2g (scale %.2g): caching with"
                                " PyTorch instead", err, scale)
                    return torch_run, "torch"
                return ov_run, "openvino"
            except Exception as exc:  # noqa: BLE001 - any conversion failure means "use PyTorch", said once
                log.warning("OpenVINO could not run the frozen layers (%s): caching with PyTorch", exc)
                return torch_run, "torch"
