"""The built-in ELPV solar-cell dataset, on the real images of the installed elpv-dataset package.

Kept fast by decoding only a stratified subset of the cells at a small size (the images are CC BY-NC-SA 4.0 and
are read from the package, never copied into the repository).
"""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch

from edgeslim.artifact import Preprocessing
from edgeslim.compress.data import _DihedralAugment, load_data, load_data_from_recipe
from edgeslim.errors import ConfigError, DataError
from edgeslim.preprocess import preprocess
from edgeslim.recipe import load_recipe, parse_recipe

pytest.importorskip("elpv_dataset", reason="the elpv tests read the real images of the elpv-dataset package")

PRE = Preprocessing(resize=224, crop=224)


def _load(**options):
    kw = {k: options.pop(k) for k in ("critical", "seed", "test_fraction", "val_fraction", "augment") if k in options}
    options.setdefault("subset", 400)
    return load_data("elpv", preprocessing=PRE, image_size=32, options=options, **kw)


def test_binary_classes_and_the_papers_split_stratified_by_probability_and_type():
    b = _load(critical=["defective"], seed=3)
    assert b.classes == ["functional", "defective"] and b.critical == [1]
    meta = {s: b.metadata(s) for s in ("train", "val", "test")}
    # defective means probability >= 0.5
    for s, m in meta.items():
        assert np.array_equal(b.labels(s), (m["probability"] >= 0.5).astype(np.int64))
    # the splits are disjoint and together the whole subset
    cells = [set(m["cell"].tolist()) for m in meta.values()]
    assert not (cells[0] & cells[1]) and not (cells[0] & cells[2]) and not (cells[1] & cells[2])
    assert sum(map(len, cells)) == 400
    # test is 25 % of every (probability, type) stratum, within the rounding of one cell
    def strata(m):
        return Counter(zip(np.rint(m["probability"] * 3).astype(int).tolist(), m["type"].tolist()))
    whole = strata({k: np.concatenate([m[k] for m in meta.values()]) for k in ("probability", "type")})
    test = strata(meta["test"])
    assert len(whole) == 8
    for key, n in whole.items():
        assert abs(test.get(key, 0) - 0.25 * n) <= 1.0, (key, test.get(key, 0), n)
    # seeded: the same seed gives the same split, another seed another one
    again = _load(critical=["defective"], seed=3)
    assert np.array_equal(again.metadata("test")["cell"], meta["test"]["cell"])
    assert not np.array_equal(_load(seed=4).metadata("test")["cell"], meta["test"]["cell"])


def test_grades_mono_filter_and_domain_shift():
    g = _load(labels="grades")
    assert g.classes == ["0", "1/3", "2/3", "1"]
    for s in ("train", "test"):
        assert np.array_equal(g.labels(s), np.rint(g.metadata(s)["probability"] * 3).astype(np.int64))
    mono = _load(modules="mono", subset=200)
    assert all(set(mono.metadata(s)["type"]) == {"mono"} for s in ("train", "val", "test"))
    shift = _load(domain_shift="mono->poly", subset=300)
    assert set(shift.metadata("train")["type"]) == {"mono"} and set(shift.metadata("val")["type"]) == {"mono"}
    assert set(shift.metadata("test")["type"]) == {"poly"}
    assert shift.info["domain_shift"] == "mono->poly"


def test_grey_cells_reach_the_model_as_three_equal_channels_like_the_runtime_sees_them():
    b = _load(subset=200)
    x, _ = b.test[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    # the same pixels edgeslim.preprocess gives for the package's 300x300 grey PNG (runtime and server path)
    from edgeslim.compress.data import _elpv_labels

    path = _elpv_labels()[0][int(b.metadata("test")["cell"][0])]
    assert np.allclose(preprocess(str(path), b.preprocessing)[0], x.numpy(), atol=1e-6)


def test_cell_augmentation_is_a_symmetry_of_the_square():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    symmetries = [torch.rot90(f, k, dims=(-2, -1)) for f in (x, torch.flip(x, dims=(-1,))) for k in range(4)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        y = _DihedralAugment()(x)
        hits = [i for i, s in enumerate(symmetries) if torch.equal(y, s)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == set(range(8))
    b = _load(subset=200, augment=True)
    assert isinstance(b.train.augment, _DihedralAugment) and b.test.augment is None


def test_bad_input_is_refused_before_any_training(monkeypatch):
    with pytest.raises(DataError, match="leaves class"):
        _load(labels="grades", modules="mono", subset=5)
    # a class that does not exist: from the recipe alone, without reading an image
    r = parse_recipe({"data": {"dataset": "elpv", "critical": ["defectve"]}})
    with pytest.raises(DataError, match="Did you mean 'defective'"):
        r.check_names()
    with pytest.raises(DataError, match="'2/3' is not a class.*Classes: functional, defective"):
        parse_recipe({"data": {"dataset": "elpv", "critical": ["2/3"], "elpv": {"labels": "binary"}}}).check_names()
    with pytest.raises(ConfigError, match="configures the elpv dataset"):
        parse_recipe({"data": {"dataset": "digits", "elpv": {"labels": "grades"}}})
    with pytest.raises(ConfigError, match="domain_shift"):
        parse_recipe({"data": {"dataset": "elpv", "elpv": {"modules": "poly", "domain_shift": "mono->poly"}}})
    with pytest.raises(ConfigError, match="takes no options"):
        load_data("digits", preprocessing=PRE, options={"labels": "grades"})
    # the package is absent: the message names the install
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "elpv_dataset" else real(name, *a))
    from edgeslim.compress import data

    data._elpv_labels.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install elpv-dataset"):
            _load()
    finally:
        data._elpv_labels.cache_clear()


def test_options_come_from_the_recipes_data_section():
    r = parse_recipe({"data": {"dataset": "elpv", "image_size": 32, "critical": ["defective"],
                               "elpv": {"subset": 120, "modules": "poly"}}})
    b = load_data_from_recipe(r.data, PRE, seed=0)
    assert set(b.metadata("train")["type"]) == {"poly"} and b.critical == [1]
    assert sum(sum(v.values()) for v in b.info["split_sizes"].values()) == 120
    # the resolved recipe round-trips with its elpv options
    assert parse_recipe(r.to_dict()).data.elpv.subset == 120
    assert load_recipe("default", check_names=False).data.dataset == "elpv"
