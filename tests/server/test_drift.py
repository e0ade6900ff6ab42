"""Drift without labels (edgeslim.server.monitor): KS tests of recent items against the file's val reference.

Real digits through the real ONNX file: a stream of held-out test digits raises at most the false alarms the
test's level allows, and a switch to the same digits at 40 % contrast (an under-exposed camera) is flagged within
two windows of the switch.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from edgeslim.server.monitor import FieldMonitor

WINDOW = 200


def _stream(mon: FieldMonitor, predictor, x: np.ndarray) -> list[int]:
    """Send ``x`` one image per request; returns the item counts at which a drift test flagged."""
    logits = predictor.backend.infer(x)["logits"]  # one batch: the monitor sees the same logits either way
    for i in range(len(x)):
        mon.record(None, {"input": x[i : i + 1]}, {"logits": logits[i : i + 1]})
    return list(mon.drift["alarm_items"])


def _monitor(predictor) -> FieldMonitor:
    return FieldMonitor(predictor.manifest, predictor.model_file, input_name="input", output_name="logits",
                        drift_window=WINDOW, alpha=0.01)


def test_in_distribution_stream_raises_at_most_the_false_alarms_of_the_level(digits_model, predictor) -> None:
    x, _ = digits_model.test
    mon = _monitor(predictor)
    assert mon.drift_on and len(mon._ref_features) == 3  # p_8, input mean, input std
    order = np.random.default_rng(0).integers(0, len(x), 4000)
    alarms = _stream(mon, predictor, x[order])
    checks = mon.drift["checks"]
    assert checks == 4000 // WINDOW
    # disjoint windows, each flagging with probability <= alpha under no drift: the count is at most Binomial
    assert len(alarms) <= binom.ppf(0.999, checks, 0.01), mon.drift_report()
    rep = mon.drift_report()
    assert set(rep["features"]) == {"p_8", "input_mean", "input_std"}
    assert rep["level"] == pytest.approx(0.01 / 3)


def test_a_shifted_stream_is_flagged_within_two_windows(digits_model, predictor) -> None:
    x, _ = digits_model.test
    rng = np.random.default_rng(1)
    before = x[rng.integers(0, len(x), 1000)]
    after = x[rng.integers(0, len(x), 1000)] * 0.4 - 0.6  # the same digits at 40 % contrast
    mon = _monitor(predictor)
    alarms = _stream(mon, predictor, np.concatenate([before, after]))
    pre = [a for a in alarms if a <= 1000]
    post = [a for a in alarms if a > 1000]
    assert len(pre) <= binom.ppf(0.999, 1000 // WINDOW, 0.01)
    assert post and post[0] <= 1000 + 2 * WINDOW, alarms
    assert mon.drift_report()["flag"] is True
    assert mon.drift_report()["features"]["input_mean"]["pvalue"] < mon.level()


def test_input_statistics_do_not_change_under_flips_and_turns(digits_model) -> None:
    """A model trained with flips and quarter turns sees those as in distribution; so must the drift test."""
    from edgeslim.field_reference import input_statistics

    x, _ = digits_model.test
    base = input_statistics(x[:50])
    for k in range(1, 4):
        turned = np.ascontiguousarray(np.rot90(x[:50], k, axes=(2, 3)))
        np.testing.assert_allclose(input_statistics(turned), base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_statistics(np.ascontiguousarray(x[:50, ..., ::-1])), base, rtol=1e-5, atol=1e-6)
    # one image at a time (the server's path) measures what the batched export measured
    one = np.concatenate([input_statistics(x[i : i + 1]) for i in range(50)])
    np.testing.assert_allclose(one, base, rtol=1e-5, atol=1e-6)


def test_a_reference_of_another_version_turns_drift_off_and_says_why(digits_model, predictor) -> None:
    mf = predictor.model_file.model_copy(deep=True)
    mf.extra["field_reference"]["version"] = 1
    mon = FieldMonitor(predictor.manifest, mf, input_name="input", output_name="logits")
    assert not mon.drift_on and "version 1" in mon.drift_report()["reason"]
