"""edgeslim.runtime.load() and Predictor on small hand-written artifacts."""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest
from backend_conformance import CLASSES
from PIL import Image

from edgeslim.errors import (
    ArtifactError,
    BackendError,
    ConfigError,
    InputError,
    IntegrityError,
    MissingDependencyError,
    UnknownNameError,
)
from edgeslim.preprocess import preprocess
from edgeslim.runtime import Prediction, Predictor, load
from edgeslim.runtime.predictor import decide, softmax


@pytest.fixture(scope="module")
def artifact(make_artifact):
    return make_artifact("plain")


@pytest.fixture(scope="module")
def images():
    """Six RGB uint8 images of mixed sizes (preprocessing resizes and crops them to 16x16)."""
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(16, 16), (20, 24), (32, 18)] * 2]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _reference_probs(tiny_models, manifest_pre, imgs) -> np.ndarray:
    return softmax(tiny_models.reference(preprocess(imgs, manifest_pre)))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_predict_matches_reference_on_every_backend(artifact, tiny_models, images, backend):
    with load(artifact, backend=backend, threads=1) as model:
        preds = model.predict(images)
        ref = _reference_probs(tiny_models, model.manifest.preprocessing, images)
    assert isinstance(preds, list) and len(preds) == len(images)
    got = np.stack([p.probabilities for p in preds])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_prediction_fields(artifact, images):
    with load(artifact, threads=1) as model:
        p = model.predict(images[0], top_k=3)
    assert isinstance(p, Prediction)
    order = np.argsort(-p.probabilities)
    assert [i for i, _, _ in p.top_k] == order[:3].tolist()
    assert [n for _, n, _ in p.top_k] == [CLASSES[i] for i in order[:3]]
    assert p.top_k[0][2] == pytest.approx(float(p.probabilities.max()))
    assert p.name == CLASSES[p.label] and p.score == pytest.approx(float(p.probabilities[p.label]))
    d = p.to_dict()
    json.dumps(d)  # JSON-ready
    assert d["label"] == p.label and len(d["probabilities"]) == len(CLASSES)


def test_top_k_is_capped_and_validated(artifact, images):
    with load(artifact, threads=1) as model:
        assert len(model.predict(images[0], top_k=100).top_k) == len(CLASSES)
        with pytest.raises(InputError, match="top_k"):
            model.predict(images[0], top_k=0)


def test_image_forms_give_the_same_answer(artifact, images, tmp_path):
    arr = images[1]
    path = tmp_path / "img.png"
    path.write_bytes(_png(arr))
    with load(artifact, threads=1) as model:
        forms = [arr, _png(arr), path, str(path), Image.fromarray(arr)]
        probs = [model.predict(f).probabilities for f in forms]
    for p in probs[1:]:
        np.testing.assert_array_equal(p, probs[0])


def test_unreadable_image_is_an_input_error(artifact, tmp_path):
    with load(artifact, threads=1) as model:
        with pytest.raises(InputError, match="not a readable image"):
            model.predict(b"definitely not a png")
        with pytest.raises(InputError, match="does not exist"):
            model.predict(tmp_path / "missing.png")
        with pytest.raises(InputError, match="no images"):
            model.predict([])


def test_batching_does_not_change_results(artifact, images):
    with load(artifact, threads=1) as model:
        assert model.batch_size == 8
        whole = np.stack([p.probabilities for p in model.predict(images)])
        model.batch_size = 4  # 6 images -> chunks of 4 and 2
        chunked = np.stack([p.probabilities for p in model.predict(images)])
        one = np.stack([model.predict(im).probabilities for im in images])
        with pytest.raises(ConfigError, match="positive integer"):
            model.batch_size = 0
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    np.testing.assert_allclose(one, whole, atol=1e-6)


def test_static_batch_model_runs_one_at_a_time(make_artifact, artifact, images, tiny_models):
    static = make_artifact("static", static=True)
    with load(static, threads=1) as model:
        assert model.backend.inputs[0].shape[0] == 1
        assert model.batch_size == 1
        with pytest.raises(ConfigError, match="static batch of 1"):
            model.batch_size = 4
        got = np.stack([p.probabilities for p in model.predict(images)])
        x = preprocess(images, model.manifest.preprocessing)
        logits = model.infer(x)
    np.testing.assert_allclose(got, _reference_probs(tiny_models, model.manifest.preprocessing, images), atol=1e-5)
    np.testing.assert_allclose(logits, tiny_models.reference(x), atol=1e-4)


def test_infer_returns_logits_for_any_batch(artifact, tiny_models, batch):
    with load(artifact, threads=1) as model:
        model.batch_size = 2
        logits = model.infer(batch)
        with pytest.raises(InputError, match="NCHW"):
            model.infer(batch[0])
        with pytest.raises(InputError, match="float64"):
            model.infer(batch.astype(np.float64))
    np.testing.assert_allclose(logits, tiny_models.reference(batch), atol=1e-4)


# -- critical classes and thresholds --------------------------------------------------------------------------
def test_decide_rule():
    p = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
    assert decide(p, [], {}) == (0, [])
    assert decide(p, [1], {}) == (0, [])  # no threshold: fires only as argmax
    assert decide(p, [0], {}) == (0, [0])
    assert decide(p, [1], {"1": 0.3}) == (1, [1])  # reaches its threshold: predicted over the argmax
    assert decide(p, [1], {"1": 0.31}) == (0, [])
    assert decide(p, [1, 2], {"1": 0.2, "2": 0.1}) == (1, [1, 2])  # most probable fired class wins
    # one-vs-rest: the argmax class below its threshold is not called; the best class without a threshold is
    assert decide(p, [0], {"0": 0.6}) == (1, [])
    assert decide(p, [0], {"0": 0.6}, "argmax_or_threshold") == (0, [])  # format 1: the argmax always stands


def test_threshold_makes_a_critical_class_fire(make_artifact, artifact, images):
    with load(artifact, threads=1) as model:
        probs = model.predict(images[0]).probabilities
    # the least likely class becomes critical with a threshold just below its probability
    c = int(np.argmin(probs))
    below = make_artifact("fires", critical=[c], thresholds={str(c): float(probs[c]) * 0.99})
    above = make_artifact("quiet", critical=[c], thresholds={str(c): float(probs[c]) * 1.01 + 1e-6})
    with load(below, threads=1) as model:
        assert model.critical == [c] and model.thresholds == {str(c): pytest.approx(float(probs[c]) * 0.99)}
        p = model.predict(images[0])
        assert p.critical == [c] and p.label == c and p.name == CLASSES[c]
    with load(above, threads=1) as model:
        p = model.predict(images[0])
        assert p.critical == [] and p.label == int(np.argmax(probs))


# -- loading errors -------------------------------------------------------------------------------------------
def test_metadata_and_repr(artifact):
    with load(artifact, backend="openvino", threads=1) as model:
        meta = model.metadata()
        assert (meta["artifact"], meta["format"], meta["precision"], meta["backend"]) == (
            "plain", "openvino", "fp32", "openvino",
        )
        assert model.classes == CLASSES
        assert isinstance(model, Predictor) and "openvino/fp32" in repr(model)


def test_unknown_backend_suggests(artifact):
    with pytest.raises(UnknownNameError, match="Did you mean 'onnxruntime'"):
        load(artifact, backend="onnxruntim")


def test_wrong_precision_lists_what_the_artifact_has(artifact):
    with pytest.raises(ArtifactError, match="onnx/fp32, openvino/fp32, torch/fp32"):
        load(artifact, precision="int8")
    with pytest.raises(ConfigError, match="precision 'fp64'"):
        load(artifact, precision="fp64")


def test_missing_format_lists_what_the_artifact_has(artifact):
    with pytest.raises(ArtifactError, match=r"no tensorrt model .*\(it has: onnx/fp32"):
        load(artifact, backend="tensorrt", device="cuda")


def test_tampered_file_is_refused_unless_verify_is_off(make_artifact, images):
    art = make_artifact("tampered")
    with open(art / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(IntegrityError, match="model.safetensors: sha256 mismatch"):
        load(art)
    # verify=False skips the hash check: the untouched onnx file still loads
    with load(art, verify=False, threads=1) as model:
        assert model.predict(images[0]).probabilities.shape == (len(CLASSES),)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load(tmp_path)


def test_backend_options_are_passed_through(artifact):
    with load(artifact, backend="onnxruntime", providers=["CPUExecutionProvider"], graph_optimization="basic") as m:
        assert m.backend.providers == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="unknown option 'hnt'"):
        load(artifact, backend="openvino", hnt="THROUGHPUT")


def test_closed_predictor_refuses(artifact, images):
    model = load(artifact, threads=1)
    model.close()
    with pytest.raises(BackendError, match="closed"):
        model.predict(images[0])


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_backend_without_the_package_names_the_extra(make_artifact, tmp_path):
    import shutil

    from edgeslim.artifact import ModelFile, finalize, load_manifest

    art = tmp_path / "with_plan"
    shutil.copytree(make_artifact("for_trt"), art)
    (art / "tensorrt").mkdir()
    (art / "tensorrt" / "model.plan").write_bytes(b"\0" * 64)
    manifest = load_manifest(art, verify=False)
    manifest.models.append(ModelFile(format="tensorrt", precision="fp16", path="tensorrt/model.plan"))
    finalize(art, manifest)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeslim\[tensorrt\]'"):
        load(art, backend="tensorrt", device="cuda")
