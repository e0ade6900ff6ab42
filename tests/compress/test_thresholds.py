"""Decision-threshold calibration and FNR at matched FPR, checked against the deployed decision rule."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeslim.compress.metrics import evaluate, predict
from edgeslim.compress.thresholds import calibrate_thresholds, fnr_at_fpr, manifest_thresholds
from edgeslim.errors import ConfigError, DataError, EdgeslimError


def _two_class(p1: list[float], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1.0 - p1, p1], axis=1), np.asarray(labels, dtype=np.int64)


def _rates(probs, labels, c, thresholds):
    pred = predict(probs, thresholds)
    pos, neg = labels == c, labels != c
    return float((pred[pos] != c).mean()), float((pred[neg] == c).mean())


def test_target_fpr_picks_the_lowest_threshold_within_budget():
    # negatives' p1 (descending): .45 .40 .30 .20 .10 ...; positives: .48 .42 .35 .05
    negs = [0.45, 0.40, 0.30, 0.20, 0.10, 0.09, 0.08, 0.07, 0.06, 0.05]
    probs, y = _two_class(negs + [0.48, 0.42, 0.35, 0.05], [0] * 10 + [1] * 4)
    # 20% of 10 negatives -> 2 may fire: t just above the 3rd highest negative (.30), below the next score .35
    thr = calibrate_thresholds(probs, y, [1], target_fpr=0.2)
    assert set(thr) == {1} and 0.30 < thr[1] <= 0.35
    assert thr[1] == pytest.approx(0.325)  # halfway: max-margin within the admissible interval
    fnr, fpr = _rates(probs, y, 1, thr)
    assert fpr == pytest.approx(0.2) and fnr == pytest.approx(0.25)
    # a tighter budget never exceeds the target
    for target in (0.0, 0.05, 0.1, 0.15, 0.3, 0.55):
        t = calibrate_thresholds(probs, y, [1], target_fpr=target)
        assert _rates(probs, y, 1, t)[1] <= target + 1e-12


def test_target_fnr_picks_the_highest_threshold_that_reaches_it():
    probs, y = _two_class([0.45, 0.40, 0.30, 0.20, 0.48, 0.42, 0.35, 0.05], [0] * 4 + [1] * 4)
    thr = calibrate_thresholds(probs, y, [1], target_fnr=0.25)  # one miss allowed: keep .35 and up
    assert 0.30 < thr[1] <= 0.35
    fnr, fpr = _rates(probs, y, 1, thr)
    assert fnr == pytest.approx(0.25) and fpr == pytest.approx(0.5)
    zero = calibrate_thresholds(probs, y, [1], target_fnr=0.0)  # catch the .05 positive too
    assert zero[1] <= 0.05
    assert _rates(probs, y, 1, zero)[0] == 0.0


def test_ties_fall_on_one_side_and_the_target_is_never_exceeded():
    # four negatives tied at .3: allowing 1 FP of 5 cannot split the tie, so none of them may fire
    probs, y = _two_class([0.3, 0.3, 0.3, 0.3, 0.1, 0.3, 0.6], [0, 0, 0, 0, 0, 1, 1])
    thr = calibrate_thresholds(probs, y, [1], target_fpr=0.2)
    fnr, fpr = _rates(probs, y, 1, thr)
    assert fpr == 0.0 and fnr == 0.5  # the tied positive goes with the tied negatives
    assert fnr_at_fpr(probs, y, 1, 0.2) == 0.5


def test_calibration_respects_argmax_in_ten_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 10))
    y = rng.integers(0, 10, 400)
    logits[np.arange(400), y] += 1.5
    logits[y == 8, 8] -= 1.0  # make class 8 under-predicted at argmax
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    base_fnr, base_fpr = _rates(probs, y, 8, None)
    thr = calibrate_thresholds(probs, y, [8], target_fnr=base_fnr / 2)
    fnr, fpr = _rates(probs, y, 8, thr)
    assert fnr <= base_fnr / 2 and fpr >= base_fpr
    m = evaluate(probs, y, [str(i) for i in range(10)], [8], thresholds=thr, from_logits=False)
    assert m.critical_stats[8]["fnr"] == pytest.approx(fnr)
    # a budget above argmax's FPR is met with the most recall that fits
    thr2 = calibrate_thresholds(probs, y, [8], target_fpr=base_fpr + 0.05)
    fnr2, fpr2 = _rates(probs, y, 8, thr2)
    assert base_fpr <= fpr2 <= base_fpr + 0.05 and fnr2 < base_fnr
    # below argmax's FPR too: the threshold rises above the least confident argmax-8 calls and removes them, and
    # the deployed rate is the calibrated one (an over-eager critical class can still ship at its FPR target)
    assert base_fpr > 0
    thr3 = calibrate_thresholds(probs, y, [8], target_fpr=base_fpr / 3)
    fnr3, fpr3 = _rates(probs, y, 8, thr3)
    assert fpr3 <= base_fpr / 3 and fnr3 > base_fnr
    m3 = evaluate(probs, y, [str(i) for i in range(10)], [8], thresholds=thr3, from_logits=False)
    assert m3.critical_stats[8]["fpr"] == pytest.approx(fpr3)
    assert manifest_thresholds(thr) == {"8": thr[8]}


def test_an_over_eager_class_is_calibrated_down_and_its_removed_calls_go_to_the_runner_up():
    # class 1 is the argmax of every row; two negatives beat one positive, so no argmax-adding rule reaches FPR 0
    probs = np.array([[0.2, 0.5, 0.3], [0.35, 0.4, 0.25], [0.1, 0.8, 0.1], [0.3, 0.45, 0.25]])
    y = np.array([2, 0, 1, 1])
    thr = calibrate_thresholds(probs, y, [1], target_fpr=0.0)
    assert 0.5 < thr[1] <= 0.8  # just above the highest negative score .5
    # the rows that lost their critical call get the best remaining class: 2 and 0, both correct here
    assert predict(probs, thr).tolist() == [2, 0, 1, 0]
    # format 1 artifacts keep their rule: a threshold only adds calls to the argmax
    assert predict(probs, thr, "argmax_or_threshold").tolist() == [1, 1, 1, 1]


def test_fnr_at_fpr_is_the_empirical_roc_point():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])  # 4 positives, 6 negatives
    assert fnr_at_fpr(scores, labels, 1, 0.0) == pytest.approx(0.75)  # only 0.9 beats the top negative .8
    assert fnr_at_fpr(scores, labels, 1, 1 / 6) == pytest.approx(0.25)  # cut above .5: .9 .7 .6 kept
    assert fnr_at_fpr(scores, labels, 1, 0.5) == pytest.approx(0.0)
    assert fnr_at_fpr(scores, labels, 1, 1.0) == 0.0
    two_col = np.stack([1 - scores, scores], axis=1)
    assert fnr_at_fpr(two_col, labels, 1, 1 / 6) == pytest.approx(0.25)
    assert fnr_at_fpr(scores, np.zeros(10, dtype=int), 1, 0.1) is None


@pytest.mark.parametrize(
    "call, err, words",
    [
        (lambda p, y: calibrate_thresholds(p, y, [1]), ConfigError, "exactly one"),
        (lambda p, y: calibrate_thresholds(p, y, [1], target_fnr=0.1, target_fpr=0.1), ConfigError, "exactly one"),
        (lambda p, y: calibrate_thresholds(p, y, [1], target_fpr=1.5), ConfigError, "target_fpr"),
        (lambda p, y: calibrate_thresholds(p, y, [2], target_fpr=0.1), ConfigError, "critical class 2"),
        (lambda p, y: calibrate_thresholds(p * 3, y, [1], target_fpr=0.1), DataError, "sum to 1"),
        (lambda p, y: calibrate_thresholds(p, y[:-1], [1], target_fpr=0.1), DataError, "labels"),
        (lambda p, y: calibrate_thresholds(p, np.zeros_like(y), [1], target_fnr=0.1), DataError, "no samples"),
        (lambda p, y: calibrate_thresholds(p, np.ones_like(y), [1], target_fpr=0.1), DataError, "only class"),
        (lambda p, y: fnr_at_fpr(p, y, 1, -0.1), ConfigError, "fpr"),
    ],
)
def test_bad_input_raises_clear_errors(call, err, words):
    probs, y = _two_class([0.2, 0.7, 0.4, 0.9], [0, 1, 0, 1])
    with pytest.raises(err) as info:
        call(probs, y)
    assert isinstance(info.value, EdgeslimError) and words in str(info.value)


@pytest.mark.slow
def test_class_dependent_bench_quick_run_writes_consistent_tables(tmp_path, monkeypatch):
    """bench/class_dependent.py --quick end to end: every arm and sparsity scored, (c) matched on val, cache reused."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "class_dependent.py"
    spec = importlib.util.spec_from_file_location("class_dependent_bench", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    argv = ["--quick", "--variant", "binary", "--out", str(tmp_path), "--epochs", "3"]
    assert bench.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())["results"]
    (table,) = res.values()
    assert [round(e["sparsity"], 4) for e in table] == [0.0, 0.5, 0.75]  # rate 0.5 per round, 2 rounds
    for e in table:
        assert set(e["arms"]) == {"a", "b", "b+budget", "c", "c+budget", "b+thr", "c+thr"}
        for s in e["arms"].values():
            assert s["pos"] == 174  # every critical digit scored once (1 seed)
            assert 0 <= s["fnr"] <= 1 and 0 <= s["fpr"] <= 1
            assert s["fn_ci"][0] <= s["fn"] <= s["fn_ci"][1]
        # the re-thresholded arms keep their model's ranking: same AUC and FNR at matched FPR as the model itself
        for derived, model in (("c", "a"), ("c+budget", "a"), ("c+thr", "a"), ("b+thr", "b")):
            assert e["arms"][derived]["auc"] == e["arms"][model]["auc"]
            assert e["arms"][derived]["fnr@5"] == e["arms"][model]["fnr@5"]
        # b+thr and c+thr are calibrated on val to the same FPR budget (1 %): on test they land near it
        assert e["arms"]["b+thr"]["fpr"] < 0.05 and e["arms"]["c+thr"]["fpr"] < 0.05
    assert (tmp_path / "critical_fnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "results.md").read_text()
    assert "b vs c" in md and "FNR@FPR1%" in md
    # a second run reuses the per-fold results and reports the same numbers
    before = (tmp_path / "results.json").read_text()
    assert bench.main(argv) == 0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == json.loads(before)["results"]


def test_pipeline_tightens_an_eager_model_and_keeps_argmax_only_when_scores_saturate():
    """A model whose argmax flags more than target_fpr of the val non-critical images gets a threshold above its
    argmax calls, and deploys at the target; one whose critical scores saturate at 1.0 cannot be separated by any
    threshold: the pipeline warns and deploys it at argmax instead of failing after the training."""
    import torch

    from edgeslim.compress.metrics import predict_logits
    from edgeslim.pipeline import _calibrate
    from edgeslim.recipe import parse_recipe
    from edgeslim.runtime.predictor import softmax
    from edgeslim.testing import TinyNet

    from _digits import CRITICAL, digits

    data = digits()
    torch.manual_seed(0)
    calm, keen, eager = TinyNet(10).eval(), TinyNet(10).eval(), TinyNet(10).eval()
    with torch.no_grad():
        calm.classifier.bias[CRITICAL] = -50.0  # never the argmax
        keen.classifier.bias[CRITICAL] = 0.5  # the argmax of many non-critical images
        eager.classifier.bias[CRITICAL] = 50.0  # p = 1.0 for every image
    said = []
    out = _calibrate({"calm": (calm, None, None), "keen": (keen, None, None), "eager": (eager, None, None)}, data,
                     parse_recipe({"decision": {"target_fpr": 0.02}}), said.append)
    assert out["eager"] == {} and set(out["calm"]) == set(out["keen"]) == {str(CRITICAL)}
    assert any("eager: no critical threshold, argmax kept" in s and "saturated" in s for s in said)
    z, y = predict_logits(keen, data.loader("val", batch_size=256))
    probs = softmax(z)
    neg = y != CRITICAL
    assert (probs[neg].argmax(1) == CRITICAL).mean() > 0.02  # argmax alone misses the target ...
    assert (predict(probs, {CRITICAL: out["keen"][str(CRITICAL)]})[neg] == CRITICAL).mean() <= 0.02  # ... this not
