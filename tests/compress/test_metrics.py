"""Metrics on hand-made confusion cases, thresholds and their precedence, AUC edge cases, predict_logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from edgeslim.compress.metrics import ClassificationMetrics, evaluate, predict, predict_logits
from edgeslim.errors import ConfigError, DataError

torch.set_num_threads(1)

CLASSES = ["zero", "one", "two"]
#                  0  1  2  3  4  5  6  7
LABELS = np.array([0, 0, 1, 1, 2, 2, 2, 0])
PREDS = np.array([0, 1, 1, 1, 2, 0, 2, 2])


def _logits(preds, k=3, scale=5.0):
    return np.eye(k)[preds] * scale


def test_hand_made_confusion_counts_and_rates():
    m = evaluate(_logits(PREDS), LABELS, CLASSES, [2])
    assert isinstance(m, ClassificationMetrics)
    assert m.confusion == [[1, 1, 1], [0, 2, 0], [1, 0, 2]]
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.n == 8
    two = m.per_class[2]
    assert (two["tp"], two["fn"], two["fp"], two["tn"], two["support"]) == (2, 1, 1, 4, 3)
    assert two["recall"] == pytest.approx(2 / 3)
    assert two["fnr"] == pytest.approx(1 / 3)
    assert two["fpr"] == pytest.approx(1 / 5)
    assert two["precision"] == pytest.approx(2 / 3)
    zero = m.per_class[0]
    assert (zero["tp"], zero["fn"], zero["fp"], zero["tn"]) == (1, 2, 1, 4)
    assert m.per_class[1]["recall"] == 1.0 and m.per_class[1]["fp"] == 1
    # positives of class 2 score (hi, lo, hi), negatives (lo, lo, lo, lo, hi): (8 wins + 3 ties / 2) / 15
    stats = m.critical_stats[2]
    assert stats["auc"] == pytest.approx(11 / 15)
    assert (stats["fn"], stats["threshold"]) == (1, None)
    assert stats["fpr"] == pytest.approx(0.2) and stats["recall"] == pytest.approx(2 / 3)
    assert m.critical_fn() == 1
    assert m.critical_recall() == pytest.approx(2 / 3)


def test_critical_fn_sums_over_critical_classes_and_to_dict_is_json():
    m = evaluate(_logits(PREDS), LABELS, CLASSES, [0, 2])
    assert m.critical_fn() == 2 + 1
    d = json.loads(json.dumps(m.to_dict()))
    assert d["critical_fn"] == 3
    assert d["critical_stats"]["2"]["fn"] == 1
    assert d["confusion"][2] == [1, 0, 2]
    assert d["per_class"][0]["class"] == "zero"


def test_auc_matches_sklearn_on_soft_scores_and_binary_uses_the_positive_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    y = rng.integers(0, 3, 50)
    m = evaluate(logits, y, CLASSES, [1])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m.critical_stats[1]["auc"] == pytest.approx(roc_auc_score(y == 1, p[:, 1]))

    binary = rng.normal(size=(40, 2))
    yb = rng.integers(0, 2, 40)
    mb = evaluate(binary, yb, ["benign", "melanoma"], [1])
    assert mb.critical_stats[1]["auc"] == pytest.approx(roc_auc_score(yb, binary[:, 1] - binary[:, 0]))


def test_auc_is_none_when_labels_hold_one_side_only():
    m = evaluate(_logits(np.array([0, 1, 1])), np.array([0, 1, 1]), CLASSES, [2])
    assert m.critical_stats[2]["auc"] is None
    assert m.critical_stats[2]["recall"] is None  # no positives: recall undefined, not 0 or a crash
    assert m.critical_stats[2]["fpr"] == 0.0
    assert m.critical_auc() is None and m.critical_recall() is None
    all_two = evaluate(_logits(np.array([2, 0])), np.array([2, 2]), CLASSES, [2])
    assert all_two.critical_stats[2]["auc"] is None and all_two.critical_stats[2]["fpr"] is None


def test_thresholds_override_argmax_with_highest_fired_probability_winning():
    probs = np.array(
        [
            [0.60, 0.30, 0.10],  # only 1 fires -> 1
            [0.50, 0.25, 0.25],  # only 2 fires -> 2
            [0.20, 0.35, 0.45],  # both fire, 2 higher -> 2
            [0.10, 0.50, 0.40],  # both fire, 1 higher -> 1
            [0.70, 0.20, 0.10],  # none fires -> argmax 0
        ]
    )
    thr = {1: 0.3, 2: 0.2}
    assert predict(probs, thr).tolist() == [1, 2, 2, 1, 0]
    assert predict(probs).tolist() == [0, 0, 2, 1, 0]
    y = np.array([1, 2, 2, 1, 0])
    m = evaluate(probs, y, CLASSES, [1, 2], thresholds={"1": 0.3, "2": 0.2}, from_logits=False)  # manifest keys
    assert m.accuracy == 1.0 and m.critical_fn() == 0
    assert m.critical_stats[1]["threshold"] == 0.3
    at_argmax = evaluate(probs, y, CLASSES, [1, 2], from_logits=False)
    assert at_argmax.critical_fn() == 2
    # AUC does not depend on the threshold
    assert m.critical_stats[2]["auc"] == at_argmax.critical_stats[2]["auc"]


@pytest.mark.parametrize(
    "kwargs, err, words",
    [
        ({"logits_or_probs": np.zeros((3, 2))}, DataError, "3 classes"),
        ({"labels": np.array([0, 1])}, DataError, "labels of shape"),
        ({"logits_or_probs": np.zeros((0, 3)), "labels": np.array([], dtype=int)}, DataError, "empty"),
        ({"labels": np.array([0, 3, 1])}, DataError, "outside"),
        ({"labels": np.array([0.0, 1.0, 1.0])}, DataError, "integer"),
        ({"logits_or_probs": np.array([[0, np.nan, 0]] * 3)}, DataError, "NaN"),
        ({"critical": [5]}, ConfigError, "critical class 5"),
        ({"thresholds": {2: 1.5}}, ConfigError, "[0, 1]"),
        ({"thresholds": {"x": 0.5}}, ConfigError, "not a class index"),
        ({"from_logits": False}, DataError, "sum to 1"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(kwargs, err, words):
    args = {"logits_or_probs": np.ones((3, 3)) * 2, "labels": np.array([0, 1, 2]), "classes": CLASSES, "critical": [2]}
    args.update(kwargs)
    with pytest.raises(err) as info:
        evaluate(**args)
    assert words in str(info.value)


class _Noisy(torch.nn.Module):
    """Dropout makes train mode visible in the output."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.9)

    def forward(self, x):
        return self.lin(self.drop(x))


def test_predict_logits_runs_in_eval_mode_fresh_each_call_and_restores_mode():
    torch.manual_seed(0)
    x = torch.randn(20, 4)
    y = torch.arange(20) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    model = _Noisy().train()
    logits, labels = predict_logits(model, loader)
    assert logits.shape == (20, 3) and logits.dtype == np.float32
    assert labels.tolist() == y.tolist() and labels.dtype == np.int64
    with torch.no_grad():
        expected = model.lin(x).numpy()  # dropout off in eval mode
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    assert model.training  # mode restored
    with torch.no_grad():
        model.lin.bias += 1.0
    again, _ = predict_logits(model, loader)
    np.testing.assert_allclose(again, expected + 1.0, rtol=1e-5, atol=1e-5)


def test_predict_logits_rejects_an_empty_loader():
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(DataError, match="empty"):
        predict_logits(_Noisy(), empty)


def test_split_logits_runs_a_model_once_per_split_and_state():
    """The pipeline scores, calibrates and validates against the same torch logits: split_logits runs each split
    once per model state, and runs again once the model's numbers change."""
    from _digits import digits

    from edgeslim.compress.data import split_arrays
    from edgeslim.compress.metrics import split_logits
    from edgeslim.testing import TinyNet

    data = digits()
    torch.manual_seed(0)
    model = TinyNet(num_classes=len(data.classes)).eval()
    x, y = split_arrays(data, "val")
    runs = []
    original = data.loader

    def counting(split, **kw):
        runs.append(split)
        return original(split, **kw)

    data.loader = counting
    logits, labels = split_logits(model, data, "val")
    again, _ = split_logits(model, data, "val", batch_size=7)
    assert runs == ["val"] and np.array_equal(logits, again)
    again[:] = 0  # a copy: the caller cannot corrupt what the next one gets
    assert np.array_equal(split_logits(model, data, "val")[0], logits)
    # the same numbers as a torch pass over the split's arrays, which the export would otherwise run
    with torch.inference_mode():
        direct = model(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
    assert np.array_equal(labels, y)
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)
    split_logits(model, data, "test")
    assert runs == ["val", "test"]
    with torch.no_grad():  # an in-place change of one weight: run again
        next(model.parameters()).mul_(0.5)
    changed, _ = split_logits(model, data, "val")
    assert runs == ["val", "test", "val"] and not np.allclose(changed, logits)
    model.train()(torch.from_numpy(np.asarray(x[:8], dtype=np.float32)))  # BatchNorm statistics move
    split_logits(model.eval(), data, "val")
    assert runs == ["val", "test", "val", "val"]
