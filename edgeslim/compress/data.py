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


The datasets themselves live in :mod:`edgeslim.compress.data_sources` (the :data:`DATASETS` registry and its
entries) and :mod:`edgeslim.compress.data_tensors` (the tensor datasets and augmentations); this module splits,
bundles and hands out arrays, and re-exports their public names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..artifact import Preprocessing
from ..errors import ConfigError, DataError
from ..registry import did_you_mean
from .data_sources import DATASETS, ELPV_BINARY, ELPV_GRADES, IMAGE_EXTENSIONS, SPLITS, _Pool, _take
from .data_sources import _elpv_labels as _elpv_labels  # re-exported: tests clear its cache through this module
from .data_tensors import _DihedralAugment as _DihedralAugment  # re-exported: compress.train augments with it

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is imported lazily
    from torch.utils.data import DataLoader, Dataset

    from ..recipe import DataSection

__all__ = ["DATASETS", "DataBundle", "ELPV_BINARY", "ELPV_GRADES", "IMAGE_EXTENSIONS", "load_data", "load_data_from_recipe"]


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
