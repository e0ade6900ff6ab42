"""Data sources: the registered datasets (:data:`DATASETS`), each turning a spec into a pool of labelled images
before any splitting.

A dataset spec is ``name`` or ``name:arg``; an entry is ``fn(arg, *, preprocessing, image_size) -> _Pool`` (one that
takes options also has the keyword ``options``: a mapping from the recipe's data section). Built in: ``digits``
(scikit-learn's handwritten digits, in memory), ``imagefolder:<dir>`` (torchvision's ImageFolder layout, decoded
lazily) and ``elpv`` (the ELPV solar cells of the ``elpv-dataset`` package, read from the installed package and never
copied into this project). :mod:`edgeslim.compress.data` splits the pools and re-exports the public names.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from ..artifact import Preprocessing
from ..errors import ConfigError, DataError
from ..registry import Registry
from .data_tensors import _ArrayDataset, _DihedralAugment, _FileDataset

__all__ = ["DATASETS", "ELPV_BINARY", "ELPV_GRADES", "IMAGE_EXTENSIONS", "SPLITS"]

#: Datasets by name; an entry is ``fn(arg, *, preprocessing, image_size) -> _Pool`` (an entry that takes options
#: also has the keyword ``options``: a mapping from the recipe's data section).
DATASETS: Registry[Callable[..., "_Pool"]] = Registry("dataset")

#: File endings read by ``imagefolder`` (torchvision's ImageFolder list); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

SPLITS = ("train", "val", "test")

Items = Union[np.ndarray, list]  # uint8 NxHxWx3 images in memory, or a list of file paths


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
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
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
