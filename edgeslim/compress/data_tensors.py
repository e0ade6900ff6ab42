"""Samples as tensors: the map-style datasets a :class:`~edgeslim.compress.data.DataBundle` holds (images in memory
or image files decoded lazily) and the training-only augmentations.

Plain classes by protocol (``__len__``, ``__getitem__``, ``__getitems__``): importable without torch, picklable for
DataLoader workers; torch is imported when a sample is made. :mod:`edgeslim.compress.data` re-exports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..artifact import Preprocessing
from ..errors import DataError

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is imported lazily
    import torch


# --------------------------------------------------------------------------------------------- datasets


def _normalise_batch(pixels: "torch.Tensor", pre: Preprocessing) -> "torch.Tensor":
    """uint8 NxHxWx3 -> float32 NCHW ``(x - mean) / std``; the same arithmetic as edgeslim.preprocess.normalize."""
    import torch

    mean = torch.tensor(pre.mean, dtype=torch.float32)
    std = torch.tensor(pre.std, dtype=torch.float32)
    x = (pixels.to(torch.float32) - mean) / std
    return x.permute(0, 3, 1, 2).contiguous()


class _Augment:
    """Training-only augmentation on a normalised CHW tensor: small affine (rotation, scale) + shift by crop.

    No flips: they change the meaning of digits and of many real classes. Randomness comes from torch's global
    RNG (seed it with ``torch.manual_seed``; DataLoader workers are seeded from it).
    """

    def __init__(self, pre: Preprocessing, degrees: float = 10.0, scale: tuple[float, float] = (0.9, 1.1)) -> None:
        self.degrees = degrees
        self.scale = scale
        # Fill uncovered pixels with black, expressed in normalised units.
        self.fill = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import math

        import torch
        import torch.nn.functional as F

        angle = math.radians(float(torch.empty(1).uniform_(-self.degrees, self.degrees)))
        scale = float(torch.empty(1).uniform_(*self.scale))
        # Rotation + zoom about the centre via affine_grid/grid_sample (plain torch: torchvision.transforms costs
        # seconds to import). grid_sample pads with 0, so sample (x - fill) and add fill back: black borders.
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype)
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        fill = torch.tensor(self.fill, dtype=x.dtype).view(-1, 1, 1)
        x = F.grid_sample((x - fill).unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x.squeeze(0) + fill
        size = x.shape[-1]
        pad = max(1, size // 8)
        # Random crop of a replicate-padded image: a shift of up to `pad` pixels without inventing content.
        padded = F.pad(x.unsqueeze(0), (pad, pad, pad, pad), mode="replicate").squeeze(0)
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
        return padded[:, top : top + x.shape[-2], left : left + size].contiguous()


class _DihedralAugment:
    """Training-only augmentation for square images whose meaning survives any flip or quarter turn (solar cells):
    one of the 8 symmetries of the square, drawn uniformly from torch's global RNG.

    No interpolation and no invented borders: a cell's cracks and busbars keep their exact pixels, only their
    orientation changes, which is what a cell image at the line can have anyway.
    """

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        k, flip = (int(v) for v in torch.randint(0, 4, (1,)).tolist() + torch.randint(0, 2, (1,)).tolist())
        if flip:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k, dims=(-2, -1)).contiguous() if k else x


# The datasets below are map-style datasets by protocol (__len__, __getitem__, __getitems__): DataLoader needs no
# torch base class, and staying plain keeps this module importable without torch and picklable for workers.


class _ArrayDataset:
    """Images held in memory as uint8 NxHxWx3; normalised per batch (fast, little memory)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, pre: Preprocessing, augment: bool | Callable[..., Any]
    ) -> None:
        import torch

        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        pixels = np.ascontiguousarray(images)
        self._pixels = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())
        self.pre = pre
        # True: the generic affine + shift; a callable: the dataset's own (e.g. flips and quarter turns for cells)
        self.augment = (augment if callable(augment) else _Augment(pre)) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple["torch.Tensor", int]]:
        # DataLoader fetches a whole batch through this hook, so normalisation runs once per batch.
        idx = list(indices)
        x = _normalise_batch(self._pixels[idx], self.pre)
        out = []
        for row, i in zip(x, idx):
            out.append((self.augment(row) if self.augment else row, int(self.labels[i])))
        return out

    def __getitem__(self, index: int) -> tuple["torch.Tensor", int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} images")
        return self.__getitems__([index % len(self)])[0]

    def raw(self, n: int | None) -> list:
        return [self.images[i] for i in range(len(self) if n is None else min(n, len(self)))]


class _FileDataset:
    """Image files decoded lazily with edgeslim.preprocess (the same code the predictor and server run)."""

    def __init__(self, paths: list[str], labels: np.ndarray, pre: Preprocessing, augment: bool) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.pre = pre
        self.augment = _Augment(pre) if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple["torch.Tensor", int]:
        import torch

        from ..errors import InputError
        from ..preprocess import preprocess

        try:
            x = torch.from_numpy(preprocess(self.paths[index], self.pre)[0])
        except InputError as exc:  # the file changed after the scan
            raise DataError(f"{exc}; fix or remove the file") from exc
        return (self.augment(x) if self.augment else x), int(self.labels[index])

    def raw(self, n: int | None) -> list:
        return list(self.paths if n is None else self.paths[:n])
