import io

import numpy as np
import pytest
from PIL import Image

from edgeslim.artifact import Preprocessing
from edgeslim.errors import InputError
from edgeslim.preprocess import open_image, preprocess


PRE = Preprocessing(resize=8, crop=8, mean=(127.5,) * 3, std=(127.5,) * 3)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_all_input_kinds_give_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(_png(arr))
    outs = [preprocess(x, PRE) for x in (arr, _png(arr), str(path), path, Image.fromarray(arr))]
    for o in outs:
        assert o.shape == (1, 3, 8, 8) and o.dtype == np.float32
        np.testing.assert_array_equal(o, outs[0])
    assert -1.0 <= outs[0].min() and outs[0].max() <= 1.0
    assert preprocess([arr, arr], PRE).shape == (2, 3, 8, 8)


def test_normalisation_values():
    white = np.full((8, 8, 3), 255, np.uint8)
    np.testing.assert_allclose(preprocess(white, PRE), 1.0)
    grey = np.full((8, 8), 0, np.uint8)
    np.testing.assert_allclose(preprocess(grey, PRE), -1.0)


def test_bad_images_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not a readable image"):
        open_image(b"definitely not a png")
    good = _png(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="not a readable image"):
        open_image(good[: len(good) // 2])
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="uint8"):
        open_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="no images"):
        preprocess([], PRE)


def test_decompression_bomb_is_refused(monkeypatch):
    import edgeslim.preprocess as pp

    monkeypatch.setattr(pp, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="exceeds the limit"):
        open_image(_png(np.zeros((20, 20, 3), np.uint8)))
