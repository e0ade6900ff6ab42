"""One way to score: softmax, the deployed decision and critical FN live in edgeslim.scoring, and every stage's
figure of the same logits is the same number."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edgeslim.decision import predict
from edgeslim.errors import ConfigError
from edgeslim.scoring import critical_fn, critical_missed, decide, score, softmax

PACKAGE = Path(__file__).resolve().parents[1] / "edgeslim"
CLASSES = [str(i) for i in range(5)]
CRITICAL = [1, 3]


@pytest.fixture
def logits_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    logits = rng.standard_normal((400, 5)).astype(np.float32)
    logits[np.arange(400), labels] += rng.uniform(-1, 3, 400).astype(np.float32)  # right most of the time
    return logits, labels


def test_softmax_is_stable_and_keeps_the_dtype_asked_for():
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    p32, p64 = softmax(x), softmax(x, dtype=np.float64)
    assert p32.dtype == np.float32 and p64.dtype == np.float64 and np.isfinite(p32).all()
    np.testing.assert_allclose(p64.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p32, p64, atol=1e-6)
    assert (p64.argmax(-1) == x.argmax(-1)).all()
    np.testing.assert_allclose(softmax(x[0]), p32[0])  # the last axis of any rank (one vector, as served)


@pytest.mark.parametrize("rule", ["threshold", "argmax_or_threshold"])
def test_decide_is_the_manifests_rule_over_the_float64_softmax(logits_labels, rule):
    logits, _ = logits_labels
    thr = {"1": 0.2, "3": 0.6}
    np.testing.assert_array_equal(decide(logits, thr, rule), predict(softmax(logits, dtype=np.float64), thr, rule))
    np.testing.assert_array_equal(decide(logits, None, rule), logits.argmax(1))
    assert (decide(logits, thr, rule) != logits.argmax(1)).any()  # the thresholds do change decisions here


def test_critical_fn_counts_the_misses_of_each_critical_class():
    labels = np.array([1, 1, 1, 3, 3, 0, 0])
    pred = np.array([1, 0, 3, 3, 1, 1, 3])  # class 1: two missed; class 3: one missed; false alarms are not FN
    assert critical_fn(pred, labels, [1, 3]) == {1: 2, 3: 1}
    np.testing.assert_array_equal(critical_missed(pred, labels, [1, 3]), [0, 1, 1, 0, 1, 0, 0])


def test_score_of_a_manifest_is_the_file_as_deployed(logits_labels):
    logits, labels = logits_labels

    class Manifest:  # the four fields score reads from an artifact.Manifest
        classes, critical, thresholds, decision_rule = CLASSES, CRITICAL, {"1": 0.2}, "threshold"

    m = score(logits, labels, Manifest())
    explicit = score(logits, labels, CLASSES, CRITICAL, thresholds={"1": 0.2}, rule="threshold")
    assert m.to_dict() == explicit.to_dict()
    argmax = score(logits, labels, Manifest(), thresholds={})  # what is given here wins over the manifest
    assert argmax.critical_stats[1]["fn"] >= m.critical_stats[1]["fn"]  # a lower threshold misses no more
    fn = critical_fn(decide(logits, {"1": 0.2}), labels, CRITICAL)
    assert {c: m.critical_stats[c]["fn"] for c in CRITICAL} == fn and m.critical_fn() == sum(fn.values())
    with pytest.raises(ConfigError, match="critical"):
        score(logits, labels, CLASSES)


def test_validation_and_accuracy_control_count_the_same_critical_fn(logits_labels):
    from edgeslim.compress.quantize import _critical_fn
    from edgeslim.export.validate import _missed, classification_summary

    logits, labels = logits_labels
    thr = {"1": 0.2, "3": 0.7}
    m = score(logits, labels, CLASSES, CRITICAL, thresholds=thr)
    summary = classification_summary(logits, labels, CRITICAL, thresholds=thr)
    assert summary["critical_fn"] == {str(c): m.critical_stats[c]["fn"] for c in CRITICAL}
    # one accuracy per file in every report: the export's validation counts the deployed decisions, as the profile
    # and the summary do (it reported the argmax before: 0.867 against the profile's 0.870 for one ELPV INT8 file)
    assert summary["accuracy"] == pytest.approx(m.accuracy, abs=1e-6)
    assert summary["argmax_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()), abs=1e-6)
    assert int(_missed(logits, labels, CRITICAL, thr, "threshold").sum()) == m.critical_fn()
    assert _critical_fn(decide(logits, thr), labels, CRITICAL) == m.critical_fn()


def test_no_other_module_computes_a_softmax():
    """A second softmax would round differently at a threshold: ``np.exp`` appears only in scoring.py (the training
    losses work on torch tensors and are not scoring)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "scoring.py" or path.parent.name == "compress" and path.name in ("loss.py", "distill.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exp" \
                    and getattr(node.func.value, "id", None) in ("np", "numpy"):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, "softmax outside edgeslim/scoring.py: " + ", ".join(found)
