"""Task data: labelled images split into train / val / test, with critical classes and training imbalance.

A dataset spec is ``name`` or ``name:arg`` and names an entry of :data:`DATASETS`:

- ``digits``: scikit-learn's 1797 real 8x8 handwritten digits, rendered as RGB images of ``image_size`` (default
  64) and kept in memory.
- ``imagefolder:<dir>``: torchvision's ImageFolder convention (one sub-folder per class). With ``train/`` (and
  optionally ``val/``, ``test/``) sub-folders those splits are used, a missing one is split off ``train``;
  otherwise the one folder is split. Images are decoded lazily with :mod:`edgeslim.preprocess`, so training,
  the runtime predictor and the server see the same pixels.
- ``elpv``: the ELPV solar-cell data set (Deitsch et al. 2019, the PyPI package ``elpv-dataset``): 2,624 300x300
  grayscale electroluminescence images of cells from 44 modules, each with an expert defect probability (0, 1/3,
  2/3, 1) and its module type (mono, poly). Classes ``functional`` / ``defective`` (probability >= 0.5) or the four
  grades; options in :class:`ElpvOptions`. The data is CC BY-NC-SA 4.0: it is read from the installed package and
  never copied into this project.

Splits are stratified and seeded. ``imbalance`` keeps a fraction of a class's TRAINING samples only (val and test
stay untouched, so metrics are measured on the natural distribution); ``class_counts`` reports the training counts
after it, which is what the class-dependent loss weights use.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from ..artifact import Preprocessing
from ..errors import ConfigError, DataError
from ..registry import Registry, did_you_mean

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is imported lazily
    import torch
    from torch.utils.data import DataLoader, Dataset

    from ..recipe import DataSection

__all__ = ["DATASETS", "DataBundle", "ELPV_BINARY", "ELPV_GRADES", "IMAGE_EXTENSIONS", "load_data", "load_data_from_recipe"]

#: Datasets by name; an entry is ``fn(arg, *, preprocessing, image_size) -> _Pool`` (an entry that takes options
#: also has the keyword ``options``: a mapping from the recipe's data section).
DATASETS: Registry[Callable[..., "_Pool"]] = Registry("dataset")

#: File endings read by ``imagefolder`` (torchvision's ImageFolder list); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

SPLITS = ("train", "val", "test")

Items = Union[np.ndarray, list]  # uint8 NxHxWx3 images in memory, or a list of file paths


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


# --------------------------------------------------------------------------------------------- bundle


@dataclass
class DataBundle:
    """The task's data, split and ready for training and evaluation.

    Attributes:
        train, val, test: datasets of ``(float32 CHW tensor normalised with preprocessing, int label)``.
        classes: label names, index = class id.
        critical: resolved critical class indices.
        class_counts: training-set count per class AFTER imbalance (what the loss weights use).
        preprocessing: how raw images become inputs (resize/crop set to the task's image size).
        info: what was done: source, layout, split sizes per class, imbalance applied, seed.
        num_workers: DataLoader workers used by :meth:`loader`.
        meta: per split, per-sample metadata arrays in dataset order (``elpv``: ``type`` mono/poly and
            ``probability``); empty for datasets without any. Read it with :meth:`metadata`.
    """

    train: "Dataset"
    val: "Dataset"
    test: "Dataset"
    classes: list[str]
    critical: list[int]
    class_counts: list[int]
    preprocessing: Preprocessing
    info: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    meta: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def _split(self, split: str) -> Any:
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}'.{did_you_mean(split, SPLITS)} Splits: {', '.join(SPLITS)}")
        return getattr(self, split)

    def loader(
        self, split: str, *, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
        distributed: bool = False,
    ) -> "DataLoader":
        """A DataLoader over one split; shuffling is seeded so runs repeat.

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: samples per batch (per rank when ``distributed``).
            shuffle: draw a random order from ``seed + epoch``.
            seed: the shuffle seed.
            epoch: added to ``seed`` (``DistributedSampler.set_epoch``), so each epoch has its own order.
            distributed: inside a torch.distributed process group, give this rank its shard through a
                ``DistributedSampler`` (``drop_last=False``: the last samples are repeated to even out the
                shards). The shuffled global order is the single-process order for the same ``seed + epoch``,
                and rank ``r`` takes positions ``r, r + W, ...`` of it, so the ranks' step-``k`` batches together
                are the single-process step-``k`` batch of ``W * batch_size``. Ignored for a single process.
        """
        import torch
        from torch.utils.data import DataLoader

        from . import distributed as dist

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
        dataset = self._split(split)
        if distributed and dist.is_distributed():
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=shuffle, seed=seed,
                drop_last=False,
            )
            sampler.set_epoch(epoch)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers)
        generator = torch.Generator().manual_seed(seed + epoch) if shuffle else None
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=self.num_workers,
        )

    def metadata(self, split: str) -> dict[str, np.ndarray]:
        """Per-sample metadata of a split in dataset order (copies), e.g. ``{"type": ..., "probability": ...}``."""
        self._split(split)
        return {k: np.asarray(v).copy() for k, v in self.meta.get(split, {}).items()}

    def labels(self, split: str) -> np.ndarray:
        """The labels of a split, in dataset order (int64)."""
        return np.asarray(self._split(split).labels, dtype=np.int64).copy()

    def raw_images(self, split: str, n: int | None = None) -> list:
        """The first ``n`` (default all) raw images of a split: uint8 HxWx3 arrays or file paths.

        Feeding them through ``edgeslim.preprocess.preprocess(img, bundle.preprocessing)`` gives the split's
        (non-augmented) tensors, which is what end-to-end predictor and profiler tests rely on.
        """
        return self._split(split).raw(n)


# --------------------------------------------------------------------------------------------- sources


@dataclass
class _Pool:
    """What a dataset entry provides before splitting: classes and items, either all together or per split."""

    classes: list[str]
    splits: dict[str, tuple[Items, np.ndarray]]  # key "all", or some of "train"/"val"/"test" ("train" required)
    make: Callable[[Items, np.ndarray, bool], Any]  # (items, labels, augment) -> Dataset
    preprocessing: Preprocessing
    info: dict[str, Any] = field(default_factory=dict)
    # per split key: what stratified splits stratify on (default: the labels), and per-sample metadata arrays
    strata: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _take(items: Items, idx: np.ndarray) -> Items:
    return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]


@functools.lru_cache(maxsize=4)
def _render_digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as read-only uint8 Nx size x size x3 RGB images, and their labels (cached per size)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values 0..16 -> 0..255 grey, upscaled bilinearly, replicated to RGB (white digit on black, as in the source).
    grey = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR)) for g in grey])
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    images.flags.writeable = False  # shared between bundles through the cache
    labels.flags.writeable = False
    return images, labels


@DATASETS.register("digits")
def _digits(arg: str | None, *, preprocessing: Preprocessing, image_size: int | None) -> _Pool:
    """scikit-learn's handwritten digits as RGB uint8 images of ``image_size`` (default 64)."""
    if arg:
        raise ConfigError(f"dataset 'digits' takes no argument; use 'digits' instead of 'digits:{arg}'")
    size = image_size or 64
    images, labels = _render_digits(size)
    pre = preprocessing.model_copy(update={"resize": size, "crop": size})
    return _Pool(
        classes=[str(c) for c in range(10)],
        splits={"all": (images, labels)},
        make=lambda items, labels, augment: _ArrayDataset(items, labels, pre, augment),
        preprocessing=pre,
        info={"image_size": size},
    )


def _scan_class_folders(root: Path) -> dict[str, list[str]]:
    """class name -> sorted image paths, validating as it goes (empty classes, unreadable images)."""
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image folder {root} has no class sub-folders; expected {root}/<class>/<image> "
            "(torchvision ImageFolder layout)"
        )
    out: dict[str, list[str]] = {}
    bad: list[str] = []
    for d in class_dirs:
        files = sorted(
            str(p) for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise DataError(
                f"class folder {d} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        for f in files:
            try:
                with Image.open(f) as im:
                    im.verify()  # checks the header and structure without decoding every pixel
            except Exception as exc:  # PIL raises many types for broken files
                bad.append(f"{f} ({type(exc).__name__})")
        out[d.name] = files
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} unreadable image(s) in {root}: {'; '.join(bad[:5])}{more}; fix or remove them")
    return out


@DATASETS.register("imagefolder")
def _imagefolder(arg: str | None, *, preprocessing: Preprocessing, image_size: int | None) -> _Pool:
    """Images in ``<dir>/<class>/`` or ``<dir>/{train,val,test}/<class>/``."""
    if not arg:
        raise ConfigError("dataset 'imagefolder' needs a directory: 'imagefolder:<dir>', e.g. 'imagefolder:data/parts'")
    root = Path(os.path.expanduser(arg))
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    if (root / "train").is_dir():
        layout = "splits"
        scanned = {s: _scan_class_folders(root / s) for s in SPLITS if (root / s).is_dir()}
        reference = set(scanned["train"])
        for split, found in scanned.items():
            if set(found) != reference:
                lacks, extra = sorted(reference - set(found)), sorted(set(found) - reference)
                raise DataError(
                    f"class folders differ between {root / 'train'} and {root / split}: "
                    + (f"{split} lacks {lacks}" if lacks else "")
                    + ("; " if lacks and extra else "")
                    + (f"{split} has extra {extra}" if extra else "")
                    + "; every split needs the same class folders"
                )
    else:
        layout = "single"
        scanned = {"all": _scan_class_folders(root)}
    classes = sorted(next(iter(scanned.values())))
    splits = {}
    for split, found in scanned.items():
        paths = [p for c in classes for p in found[c]]
        labels = np.asarray([i for i, c in enumerate(classes) for _ in found[c]], dtype=np.int64)
        splits[split] = (paths, labels)
    if image_size is not None:
        # Keep the source's resize/crop ratio (e.g. 256/224) at the new input size.
        resize = max(image_size, round(image_size * preprocessing.resize / preprocessing.crop))
        pre = preprocessing.model_copy(update={"resize": resize, "crop": image_size})
    else:
        pre = preprocessing
    return _Pool(
        classes=classes, splits=splits, preprocessing=pre,
        make=lambda items, labels, augment: _FileDataset(items, labels, pre, augment),
        info={"root": str(root), "layout": layout, "image_size": pre.crop},
    )


ELPV_BINARY = ("functional", "defective")
ELPV_GRADES = ("0", "1/3", "2/3", "1")
_ELPV_INSTALL = "pip install elpv-dataset (or pip install 'edgeslim[elpv]')"


def _elpv_package_dir() -> Path:
    """Where the installed ``elpv-dataset`` keeps ``data/labels.csv`` and ``data/images``."""
    import importlib.util

    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"dataset 'elpv' needs the ELPV solar-cell images, which come in the package elpv-dataset (data licence"
            f" CC BY-NC-SA 4.0); it is not installed. Fix: {_ELPV_INSTALL}"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (root / "labels.csv").is_file():
        raise DataError(f"the installed elpv-dataset has no {root / 'labels.csv'}; reinstall it: {_ELPV_INSTALL}")
    return root


@functools.lru_cache(maxsize=1)
def _elpv_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image paths, defect probabilities, module types) of every cell, in the package's order."""
    root = _elpv_package_dir()
    # the package's own load_dataset() parses labels.csv the same way but decodes all 2,624 PNGs (about 10 s);
    # reading the index here lets a run decode only the cells it uses, once per image size (_elpv_images)
    data = np.genfromtxt(root / "labels.csv", dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    paths = np.asarray([str(root / p) for p in np.char.decode(data["path"])])
    return paths, np.asarray(data["probability"], dtype=np.float64), np.char.decode(data["type"])


@functools.lru_cache(maxsize=4)
def _elpv_images(size: int, pre_key: str, idx: tuple[int, ...]) -> np.ndarray:
    """The cells ``idx`` as read-only uint8 N x size x size x 3 (grey replicated to RGB), cached per size."""
    from ..preprocess import open_image, resize_crop

    paths = _elpv_labels()[0]
    pre = Preprocessing.model_validate_json(pre_key)
    # the same resize the runtime predictor and the server apply to a 300x300 cell image (edgeslim.preprocess)
    images = np.stack([np.asarray(resize_crop(open_image(str(paths[i])), pre), dtype=np.uint8) for i in idx])
    images.flags.writeable = False  # shared between bundles through the cache
    return images


def check_data_section(section: "DataSection") -> None:
    """Refuse, from the recipe alone, a critical or imbalance class the dataset does not have (did-you-mean).

    Only datasets whose classes are known without reading any image are checked (``digits``, ``elpv``); the
    others are checked when :func:`load_data` reads them, still before any training.
    """
    name = section.dataset.split(":", 1)[0].strip()
    if name == "digits":
        classes = [str(c) for c in range(10)]
    elif name == "elpv":
        labels = section.elpv.labels if section.elpv is not None else "binary"
        classes = list(ELPV_BINARY if labels == "binary" else ELPV_GRADES)
    else:
        return
    for key in section.critical:
        _resolve_class(key, classes, "critical class")
    for key in section.imbalance:
        _resolve_class(key, classes, "imbalance class")


def _stratified_subset(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn per stratum in proportion to its size (largest remainders), sorted."""
    values, counts = np.unique(strata, return_counts=True)
    exact = counts * (n / len(strata))
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    keep = [rng.choice(np.flatnonzero(strata == v), k, replace=False) for v, k in zip(values, take) if k]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


@DATASETS.register("elpv")
def _elpv(
    arg: str | None, *, preprocessing: Preprocessing, image_size: int | None, options: Any = None, seed: int = 0
) -> _Pool:
    """ELPV solar cells (the ``elpv-dataset`` package), grey replicated to RGB at ``image_size`` (default 300).

    Splits are stratified by defect probability AND module type (the paper's protocol); with ``domain_shift`` the
    test split is every cell of the other module type.
    """
    from pydantic import ValidationError

    from ..recipe import ElpvOptions

    if arg:
        raise ConfigError(f"dataset 'elpv' takes no argument; use 'elpv' and set options under data.elpv, not 'elpv:{arg}'")
    try:
        opts = options if isinstance(options, ElpvOptions) else ElpvOptions.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise ConfigError(f"data.elpv: {exc.errors()[0]['msg']} ({exc.errors()[0]['loc']})") from None
    _, proba, types = _elpv_labels()
    grade = np.rint(proba * 3).astype(np.int64)  # 0, 1/3, 2/3, 1 -> 0..3
    if opts.labels == "binary":
        classes, labels = list(ELPV_BINARY), (proba >= 0.5).astype(np.int64)
    else:
        classes, labels = list(ELPV_GRADES), grade
    strata = grade * 2 + (types == "poly").astype(np.int64)  # probability x type, as in the paper's split
    keep = np.arange(len(labels))
    if opts.modules != "all":
        keep = keep[types[keep] == opts.modules]
    if opts.subset is not None and opts.subset < len(keep):
        keep = keep[_stratified_subset(strata[keep], opts.subset, np.random.default_rng(seed))]
    what = (f"modules: {opts.modules}" if opts.modules != "all" else "") + (
        f"{', ' if opts.modules != 'all' else ''}subset: {opts.subset}" if opts.subset else "")

    def require_every_class(sel: np.ndarray, where: str) -> None:
        counts = np.bincount(labels[sel], minlength=len(classes))
        empty = [classes[c] for c in range(len(classes)) if counts[c] == 0]
        if empty:
            raise DataError(
                f"data.elpv ({where}) leaves class(es) {empty} without any cell (counts"
                f" {dict(zip(classes, counts.tolist()))}); every class needs cells: widen the filter"
                + (" or raise subset" if opts.subset else "")
            )

    size = image_size or 300
    pre = preprocessing.model_copy(update={"resize": size, "crop": size})
    images = _elpv_images(size, pre.model_dump_json(), tuple(int(i) for i in keep))
    pos = {int(i): n for n, i in enumerate(keep)}

    def part(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images[[pos[int(i)] for i in sel]], labels[sel]

    # cell: the image's index in the package (labels.csv order), so splits can be traced back to the source
    meta_of = lambda sel: {
        "type": types[sel].astype(str), "probability": proba[sel].copy(), "cell": np.asarray(sel, dtype=np.int64),
    }
    if opts.domain_shift is not None:
        src, dst = opts.domain_shift.split("->")
        tr, te = keep[types[keep] == src], keep[types[keep] == dst]
        require_every_class(tr, f"domain_shift {opts.domain_shift}: training on {src}")
        require_every_class(te, f"domain_shift {opts.domain_shift}: testing on {dst}")
        splits = {"train": part(tr), "test": part(te)}
        strata_of = {"train": strata[tr], "test": strata[te]}
        meta = {"train": meta_of(tr), "test": meta_of(te)}
    else:
        require_every_class(keep, what or "all cells")
        splits, strata_of, meta = {"all": part(keep)}, {"all": strata[keep]}, {"all": meta_of(keep)}
    make = lambda items, lab, augment: _ArrayDataset(
        items, lab, pre, _DihedralAugment() if augment else False
    )
    return _Pool(
        classes=classes, splits=splits, make=make, preprocessing=pre, strata=strata_of, meta=meta,
        info={
            "image_size": size, "labels": opts.labels, "modules": opts.modules, "domain_shift": opts.domain_shift,
            "subset": opts.subset, "augmentation": "flips and quarter turns", "licence": "CC BY-NC-SA 4.0",
            "stratified_by": "defect probability and module type",
        },
    )


# --------------------------------------------------------------------------------------------- splitting


def _resolve_class(key: int | str, classes: list[str], what: str) -> int:
    """A class given by label ("8", "cat") or index (8, "8") -> index; label match wins."""
    if isinstance(key, str) and key in classes:
        return classes.index(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if 0 <= int(key) < len(classes):
            return int(key)
        raise DataError(f"{what} {key} is out of range: the data has {len(classes)} classes (0..{len(classes) - 1})")
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return _resolve_class(int(key), classes, what)
    shown = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
    raise DataError(f"{what} '{key}' is not a class of the data.{did_you_mean(str(key), classes)} Classes: {shown}")


def _split_indices(
    labels: np.ndarray, fraction: float, seed: int, what: str, classes: list[str], strata: np.ndarray | None = None
):
    """Stratified (rest, part) index arrays with ``fraction`` of the samples in ``part``.

    ``strata`` (default: the labels) is what the split keeps in proportion, e.g. ELPV's probability x module type.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if fraction <= 0:
        return idx, idx[:0]
    try:
        rest, part = train_test_split(
            idx, test_size=fraction, stratify=labels if strata is None else strata, random_state=seed
        )
    except ValueError as exc:
        counts = np.bincount(labels, minlength=len(classes))
        smallest = int(np.argmin(counts))
        raise DataError(
            f"cannot split off a stratified {what} split ({fraction:.0%} of {len(labels)} images): {exc}. "
            f"Smallest class '{classes[smallest]}' has {counts[smallest]} image(s); add images, or change "
            "val_fraction/test_fraction, or provide the split as its own folder"
        ) from None
    return np.sort(rest), np.sort(part)


def _cap_per_class(labels: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.append(members if len(members) <= cap else np.sort(rng.choice(members, cap, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def load_data(
    spec: str,
    *,
    preprocessing: Preprocessing,
    image_size: int | None = None,
    critical: Sequence[int | str] = (),
    imbalance: dict[str, float] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
    augment: bool = False,
    max_per_class: int | None = None,
    options: Any = None,
) -> DataBundle:
    """Load a dataset, split it (stratified, seeded), apply training imbalance and resolve critical classes.

    Args:
        spec: ``digits``, ``elpv`` or ``imagefolder:<dir>``.
        preprocessing: the model's preprocessing (mean/std and interpolation are kept; resize/crop follow
            ``image_size``).
        image_size: input side; default 64 for ``digits``, the preprocessing's crop for ``imagefolder``.
        critical: critical classes by label (``"8"``, ``"cat"``) or index (``8``).
        imbalance: class (label or index) -> fraction of its TRAINING samples to keep, in (0, 1].
        val_fraction: fraction of all samples held out for validation (0: no val split). For folders with
            their own ``val/`` it is unused.
        test_fraction: fraction of all samples held out for testing, unless the folder has ``test/``.
        seed: seeds the splits, ``imbalance`` and ``max_per_class``.
        augment: random affine + shift on the training split only.
        max_per_class: keep at most this many samples per class (before splitting), for quick runs.
        options: the dataset's own options (``elpv``: an :class:`~edgeslim.recipe.ElpvOptions` or its mapping);
            a dataset without options refuses them.

    Raises:
        DataError: missing/empty/unreadable data, classes differing between splits, unknown critical or
            imbalance class (with the closest match), too few images to stratify.
        ConfigError: invalid fractions or sizes.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"dataset must be a string like 'digits' or 'imagefolder:<dir>'; got {spec!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer; got {image_size!r}")
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: need 0 <= val < 1, 0 < test < 1 and "
            "val + test < 1 to leave training data"
        )
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise ConfigError(f"max_per_class must be a positive integer; got {max_per_class!r}")
    name, _, arg = spec.strip().partition(":")
    entry = DATASETS.get(name)
    takes = inspect.signature(entry).parameters
    extra: dict[str, Any] = {"seed": seed} if "seed" in takes else {}
    if options:
        if "options" not in takes:
            raise ConfigError(f"dataset '{name}' takes no options; remove them ({', '.join(map(str, options))})")
        extra["options"] = options
    pool: _Pool = entry(arg or None, preprocessing=preprocessing, image_size=image_size, **extra)
    classes = pool.classes
    critical_idx = sorted({_resolve_class(k, classes, "critical class") for k in critical})
    rng = np.random.default_rng(seed)

    parts = dict(pool.splits)
    # where every sample of a part came from (pool key, index there): its stratum and metadata follow it
    origin = {key: (key, np.arange(len(labels))) for key, (_, labels) in parts.items()}

    def take(key: str, src: str, idx: np.ndarray) -> None:
        items, labels = parts[src]
        parts[key] = (_take(items, idx), labels[idx])
        origin[key] = (origin[src][0], origin[src][1][idx])

    def strata(key: str) -> np.ndarray | None:
        pool_key, idx = origin[key]
        return pool.strata[pool_key][idx] if pool_key in pool.strata else None

    if max_per_class is not None:
        for key in list(parts):
            take(key, key, _cap_per_class(parts[key][1], max_per_class, rng))

    # Carve test, then val, out of what is not given as its own split; fractions are of that whole.
    whole_key = "all" if "all" in parts else "train"
    if whole_key != "train":
        take("train", whole_key, np.arange(len(parts[whole_key][1])))
        del parts[whole_key]
    given = set(parts) - {"train"}
    if "test" not in given:
        rest, part = _split_indices(parts["train"][1], test_fraction, seed, "test", classes, strata("train"))
        take("test", "train", part)
        take("train", "train", rest)
    if "val" not in given:
        remaining = 1.0 - (test_fraction if "test" not in given else 0.0)
        rest, part = _split_indices(parts["train"][1], val_fraction / remaining, seed, "val", classes, strata("train"))
        take("val", "train", part)
        take("train", "train", rest)

    # Imbalance: only the training split, so val/test keep the natural distribution.
    applied: dict[str, dict[str, Any]] = {}
    if imbalance:
        labels = parts["train"][1]
        drop: list[np.ndarray] = []
        for key, fraction in imbalance.items():
            if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise ConfigError(f"imbalance[{key!r}] = {fraction!r}: the keep-fraction must be in (0, 1]")
            c = _resolve_class(key, classes, "imbalance class")
            members = np.flatnonzero(labels == c)
            n_keep = max(1, int(round(fraction * len(members)))) if len(members) else 0
            kept = rng.choice(members, n_keep, replace=False) if n_keep else members
            drop.append(np.setdiff1d(members, kept))
            applied[classes[c]] = {"fraction": float(fraction), "before": int(len(members)), "after": int(n_keep)}
        keep = np.setdiff1d(np.arange(len(labels)), np.concatenate(drop) if drop else np.arange(0))
        take("train", "train", keep)

    for split in SPLITS:
        if len(parts[split][1]) == 0 and split != "val":
            raise DataError(f"the {split} split of '{spec}' is empty; add images or change the split fractions")

    def per_class(labels: np.ndarray) -> list[int]:
        return [int(n) for n in np.bincount(labels, minlength=len(classes))]

    class_counts = per_class(parts["train"][1])
    for c in critical_idx:
        if class_counts[c] == 0:
            raise DataError(f"critical class '{classes[c]}' has no training images left; raise its imbalance fraction")
    datasets = {s: pool.make(*parts[s], augment and s == "train") for s in SPLITS}
    info = {
        "source": spec,
        **pool.info,
        "seed": seed,
        "fractions": {"val": val_fraction, "test": test_fraction},
        "split_sizes": {s: dict(zip(classes, per_class(parts[s][1]))) for s in SPLITS},
        "imbalance": applied,
        "augment": bool(augment),
        "max_per_class": max_per_class,
    }
    return DataBundle(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], classes=list(classes),
        critical=critical_idx, class_counts=class_counts, preprocessing=pool.preprocessing, info=info,
        meta={
            split: {k: v[origin[split][1]] for k, v in pool.meta[origin[split][0]].items()}
            for split in SPLITS if origin[split][0] in pool.meta
        },
    )


def load_data_from_recipe(section: "DataSection", preprocessing: Preprocessing, *, seed: int) -> DataBundle:
    """:func:`load_data` configured by a recipe's ``data`` section (batch size is for the loaders)."""
    bundle = load_data(
        section.dataset,
        preprocessing=preprocessing,
        image_size=section.image_size,
        critical=list(section.critical),
        imbalance=dict(section.imbalance) or None,
        val_fraction=section.val_fraction,
        test_fraction=section.test_fraction,
        seed=seed,
        augment=section.augment,
        options=section.elpv,
    )
    bundle.num_workers = section.num_workers
    return bundle


# -- arrays for export, validation and profiling --------------------------------------------------------------------


def split_arrays(data: DataBundle, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as ``(inputs, labels)`` numpy arrays (float32 NCHW, int64), in dataset order."""
    xs, ys = [], []
    for x, y in data.loader(split, batch_size=64, shuffle=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def calibration_arrays(data: DataBundle, n: int, batch_size: int = 32) -> list[np.ndarray]:
    """Up to ``n`` preprocessed training images (seeded order) as float32 NCHW numpy batches, for INT8 calibration."""
    from .quantize import calibration_batches

    return calibration_batches(data.loader("train", batch_size=batch_size, shuffle=True, seed=1234), n,
                               batch_size=batch_size)


def recorded_data(manifest: Any) -> tuple[DataBundle, Any] | None:
    """The data an artifact was made with, re-created from the recipe in its manifest, and that recipe.

    Returns ``None`` when the manifest records no recipe.
    """
    from ..recipe import parse_recipe

    if not manifest.recipe:
        return None
    recipe = parse_recipe(manifest.recipe)
    return load_data_from_recipe(recipe.data, manifest.preprocessing, seed=recipe.seed), recipe
