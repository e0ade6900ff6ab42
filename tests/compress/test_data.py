"""Task data: digits in memory, image folders on disk, splits, imbalance, critical classes and bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeslim.artifact import Preprocessing
from edgeslim.compress.data import DATASETS, load_data, load_data_from_recipe
from edgeslim.errors import ConfigError, DataError, UnknownNameError
from edgeslim.preprocess import preprocess
from edgeslim.recipe import load_recipe

torch.set_num_threads(1)

LITE0 = Preprocessing(resize=256, crop=224, mean=(127.5,) * 3, std=(127.5,) * 3)
IMAGENET = Preprocessing(resize=256, crop=224, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", preprocessing=LITE0, seed=0)


def test_registered_datasets():
    assert {"digits", "imagefolder"} <= set(DATASETS.names())


def test_digits_shapes_normalisation_and_raw_images(digits):
    assert digits.classes == [str(i) for i in range(10)]
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797
    assert abs(sizes[2] - 0.25 * 1797) <= 10 and abs(sizes[1] - 0.15 * 1797) <= 10
    pre = digits.preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.std) == (64, 64, LITE0.mean, LITE0.std)
    x, y = digits.train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and isinstance(y, int)
    xb, yb = next(iter(digits.loader("train", batch_size=32)))
    assert xb.shape == (32, 3, 64, 64) and yb.dtype == torch.int64
    # Black background maps to -1, the brightest strokes near +1 with mean = std = 127.5.
    assert xb.min().item() == -1.0 and 0.9 < xb.max().item() <= 1.0
    assert torch.equal(xb[:, 0], xb[:, 1]) and torch.equal(xb[:, 0], xb[:, 2])  # grey replicated to RGB
    # Raw images go through edgeslim.preprocess to exactly the dataset's tensors (what the predictor sees).
    raw = digits.raw_images("test", 5)
    assert len(raw) == 5 and raw[0].dtype == np.uint8 and raw[0].shape == (64, 64, 3)
    assert torch.equal(torch.from_numpy(preprocess(raw, pre)), torch.stack([digits.test[i][0] for i in range(5)]))
    assert list(digits.labels("test")[:5]) == [digits.test[i][1] for i in range(5)]


def test_digits_uses_the_given_mean_std_and_image_size():
    b = load_data("digits", preprocessing=IMAGENET, image_size=32, seed=0)
    x, _ = b.test[0]
    assert x.shape == (3, 32, 32)
    assert b.preprocessing.mean == IMAGENET.mean and b.preprocessing.crop == 32
    # A black pixel becomes -mean/std per channel.
    for ch in range(3):
        assert x[ch].min().item() == pytest.approx(-IMAGENET.mean[ch] / IMAGENET.std[ch], abs=1e-6)


def test_digits_splits_are_stratified_and_deterministic_by_seed(digits):
    again = load_data("digits", preprocessing=LITE0, seed=0)
    other = load_data("digits", preprocessing=LITE0, seed=1)
    for split in ("train", "val", "test"):
        assert np.array_equal(digits.labels(split), again.labels(split))
    assert torch.equal(digits.test[7][0], again.test[7][0])
    assert not all(
        np.array_equal(a, b) for a, b in zip(digits.raw_images("test", 20), other.raw_images("test", 20))
    )
    total = np.bincount(np.concatenate([digits.labels(s) for s in ("train", "val", "test")]), minlength=10)
    test = np.bincount(digits.labels("test"), minlength=10)
    assert np.all(np.abs(test - 0.25 * total) <= 1.5)
    assert digits.class_counts == np.bincount(digits.labels("train"), minlength=10).tolist()
    assert digits.info["split_sizes"]["test"] == dict(zip(digits.classes, test.tolist()))


def test_imbalance_reduces_only_the_training_count_of_that_class(digits):
    b = load_data("digits", preprocessing=LITE0, seed=0, imbalance={"8": 0.25}, critical=["8"])
    before, after = digits.class_counts, b.class_counts
    assert after[8] == round(0.25 * before[8])
    assert [n for i, n in enumerate(after) if i != 8] == [n for i, n in enumerate(before) if i != 8]
    assert after == np.bincount(b.labels("train"), minlength=10).tolist()
    for split in ("val", "test"):  # held-out data keeps the natural distribution
        assert np.array_equal(b.labels(split), digits.labels(split))
    assert b.info["imbalance"] == {"8": {"fraction": 0.25, "before": before[8], "after": after[8]}}
    # Seeded: the same samples are kept on every run.
    again = load_data("digits", preprocessing=LITE0, seed=0, imbalance={"8": 0.25})
    assert np.array_equal(again.labels("train"), b.labels("train"))
    with pytest.raises(ConfigError, match="keep-fraction"):
        load_data("digits", preprocessing=LITE0, imbalance={"8": 0.0})


def test_critical_by_label_and_index():
    assert load_data("digits", preprocessing=LITE0, critical=["8"], max_per_class=20).critical == [8]
    assert load_data("digits", preprocessing=LITE0, critical=[8, 3], max_per_class=20).critical == [3, 8]
    with pytest.raises(DataError, match="out of range"):
        load_data("digits", preprocessing=LITE0, critical=[10], max_per_class=20)
    with pytest.raises(DataError, match="critical class 'eight'"):
        load_data("digits", preprocessing=LITE0, critical=["eight"], max_per_class=20)


def test_max_per_class_caps_every_class():
    b = load_data("digits", preprocessing=LITE0, max_per_class=20, seed=3)
    total = sum(np.bincount(b.labels(s), minlength=10) for s in ("train", "val", "test"))
    assert total.tolist() == [20] * 10
    no_val = load_data("digits", preprocessing=LITE0, max_per_class=20, val_fraction=0.0)
    assert len(no_val.val) == 0 and len(no_val.train) == 150
    assert list(no_val.loader("val", batch_size=4)) == []


def test_augmentation_is_training_only():
    b = load_data("digits", preprocessing=LITE0, image_size=32, augment=True, max_per_class=20, seed=0)
    torch.manual_seed(0)
    first, second = b.train[0][0], b.train[0][0]
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)
    assert torch.equal(b.test[0][0], b.test[0][0]) and torch.equal(b.val[0][0], b.val[0][0])
    plain = load_data("digits", preprocessing=LITE0, image_size=32, max_per_class=20, seed=0)
    assert torch.equal(b.test[0][0], plain.test[0][0])


def test_loader_shuffle_is_seeded_and_splits_are_checked(digits):
    a = next(iter(digits.loader("train", batch_size=16, shuffle=True, seed=5)))[1]
    b = next(iter(digits.loader("train", batch_size=16, shuffle=True, seed=5)))[1]
    c = next(iter(digits.loader("train", batch_size=16, shuffle=True, seed=6)))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="Did you mean 'test'"):
        digits.loader("tset", batch_size=4)


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'"):
        load_data("digit", preprocessing=LITE0)
    with pytest.raises(ConfigError, match="needs a directory"):
        load_data("imagefolder", preprocessing=LITE0)


def test_from_recipe_digits():
    section = load_recipe("digits", check_names=False).data
    b = load_data_from_recipe(section, LITE0, seed=0)
    assert b.critical == [8] and b.preprocessing.crop == 64
    assert b.info["imbalance"]["8"]["fraction"] == 0.25 and b.class_counts[8] == b.info["imbalance"]["8"]["after"]


# --------------------------------------------------------------------------------------------- image folders

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def _write_images(folder: Path, cls: str, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(n):
        pixels = np.clip(np.array(COLOURS[cls]) + rng.integers(-20, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{cls}_{start + i}.png")


def _single(root: Path, n: int = 12) -> Path:
    for cls in COLOURS:
        _write_images(root / cls, cls, n)
    return root


def test_imagefolder_single_folder_is_split_stratified(tmp_path):
    root = _single(tmp_path / "pets")
    b = load_data(f"imagefolder:{root}", preprocessing=LITE0, image_size=16, critical=["dog"], seed=0)
    assert b.classes == ["cat", "dog", "fox"] and b.critical == [1]
    assert b.info["layout"] == "single"
    assert [len(b.train), len(b.val), len(b.test)] == [21, 6, 9]
    for split, per_class in (("train", 7), ("val", 2), ("test", 3)):
        assert np.bincount(b.labels(split)).tolist() == [per_class] * 3
    assert (b.preprocessing.crop, b.preprocessing.resize) == (16, 18)  # the 256/224 ratio kept
    x, y = b.test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    path = b.raw_images("test", 1)[0]
    assert isinstance(path, str) and Path(path).parent.name == b.classes[y]
    assert torch.equal(x, torch.from_numpy(preprocess(path, b.preprocessing)[0]))
    # The colour of the class survives preprocessing: the dominant channel is the class's.
    assert int(x.mean(dim=(1, 2)).argmax()) == int(np.argmax(COLOURS[b.classes[y]]))
    seen = set()
    for split in ("train", "val", "test"):
        paths = set(b.raw_images(split))
        assert not paths & seen
        seen |= paths
    assert len(seen) == 36
    assert load_data(f"imagefolder:{root}", preprocessing=LITE0, critical=[2]).critical == [2]


def test_imagefolder_split_folders(tmp_path):
    root = tmp_path / "parts"
    for cls in COLOURS:
        _write_images(root / "train" / cls, cls, 8)
        _write_images(root / "val" / cls, cls, 2, start=100)
        _write_images(root / "test" / cls, cls, 3, start=200)
    b = load_data(f"imagefolder:{root}", preprocessing=LITE0, imbalance={"fox": 0.5}, seed=0)
    assert b.info["layout"] == "splits"
    assert np.bincount(b.labels("val")).tolist() == [2, 2, 2]
    assert np.bincount(b.labels("test")).tolist() == [3, 3, 3]
    assert b.class_counts == [8, 8, 4]
    assert all("/test/" in p for p in b.raw_images("test"))
    assert b.preprocessing == LITE0  # no image_size: the source's preprocessing as is
    assert b.train[0][0].shape == (3, 224, 224)


def test_imagefolder_missing_val_is_split_from_train(tmp_path):
    root = tmp_path / "parts"
    for cls in COLOURS:
        _write_images(root / "train" / cls, cls, 10)
        _write_images(root / "test" / cls, cls, 2, start=200)
    b = load_data(f"imagefolder:{root}", preprocessing=LITE0, image_size=16, val_fraction=0.2, seed=0)
    assert np.bincount(b.labels("test")).tolist() == [2, 2, 2]
    assert np.bincount(b.labels("val")).tolist() == [2, 2, 2]
    assert np.bincount(b.labels("train")).tolist() == [8, 8, 8]
    assert all("/train/" in p for p in b.raw_images("val"))


def test_imagefolder_bad_data_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nowhere'}", preprocessing=LITE0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_data(f"imagefolder:{tmp_path / 'empty'}", preprocessing=LITE0)

    root = _single(tmp_path / "a", n=4)
    (root / "owl").mkdir()
    (root / "owl" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"owl holds no images"):
        load_data(f"imagefolder:{root}", preprocessing=LITE0)

    root = _single(tmp_path / "b", n=4)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"1 unreadable image.*broken\.png"):
        load_data(f"imagefolder:{root}", preprocessing=LITE0)

    root = tmp_path / "c"
    for cls in ("cat", "dog"):
        _write_images(root / "train" / cls, cls, 4)
    for cls in ("cat", "fox"):
        _write_images(root / "val" / cls, cls, 2)
    with pytest.raises(DataError, match=r"val lacks \['dog'\]; val has extra \['fox'\]"):
        load_data(f"imagefolder:{root}", preprocessing=LITE0)

    root = _single(tmp_path / "d", n=8)
    with pytest.raises(DataError, match="Did you mean 'dog'"):
        load_data(f"imagefolder:{root}", preprocessing=LITE0, critical=["dgo"])
    with pytest.raises(DataError, match="imbalance class 'cow'"):
        load_data(f"imagefolder:{root}", preprocessing=LITE0, imbalance={"cow": 0.5})

    root = _single(tmp_path / "e", n=1)
    with pytest.raises(DataError, match="stratified test split.*has 1 image"):
        load_data(f"imagefolder:{root}", preprocessing=LITE0)
