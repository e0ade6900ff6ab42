"""Feedback with ground truth (edgeslim.server.monitor), in process on real digits through the real ONNX file.

The live counts must equal the offline counts of the same file on the same inputs, the recall test must follow the
manifest's val figure, and bad feedback must be refused with the right error without losing anything counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from field_helpers import CRITICAL, N_VAL, DigitsModel

from edgeslim.errors import InputError
from edgeslim.field_reference import REFERENCE_VERSION
from edgeslim.server.errors import (
    DuplicateFeedbackError,
    RequestIdGoneError,
    RequestIdNotFoundError,
    http_status,
)
from edgeslim.server.monitor import FieldMonitor


def _logits_one_by_one(predictor, x: np.ndarray) -> np.ndarray:
    return np.concatenate([predictor.backend.infer(x[i : i + 1])["logits"] for i in range(len(x))])


def _monitor(predictor, **kw) -> FieldMonitor:
    return FieldMonitor(predictor.manifest, predictor.model_file, input_name="input", output_name="logits", **kw)


def test_export_stores_each_file_its_val_reference(digits_model: DigitsModel, predictor) -> None:
    from edgeslim.artifact import load_manifest
    from edgeslim.compress.metrics import evaluate

    m = load_manifest(digits_model.artifact)
    vx, vy = digits_model.val
    for mf in m.models:
        ref, note = m.field_reference(mf)
        assert ref is not None, (mf.path, note)
        assert ref.version == REFERENCE_VERSION and ref.split == "val" and ref.samples == N_VAL
        assert len(ref.critical_scores[str(CRITICAL)]) == N_VAL and len(ref.input_mean) == N_VAL
        assert ref.critical_recall[str(CRITICAL)]["positives"] == int((vy == CRITICAL).sum())
    # the ONNX file's val recall at its deployed threshold, recounted offline through the runtime
    off = evaluate(predictor.backend.infer(vx)["logits"], vy, m.classes, m.critical,
                   thresholds={int(k): v for k, v in predictor.manifest.thresholds.items()})
    ref, _ = m.field_reference(predictor.model_file)
    assert ref.critical_recall[str(CRITICAL)]["hits"] == off.per_class[CRITICAL]["tp"]


def test_live_counts_equal_the_offline_counts_of_the_same_file(digits_model: DigitsModel, predictor) -> None:
    from edgeslim.compress.metrics import evaluate

    x, y = digits_model.test
    logits = _logits_one_by_one(predictor, x)
    mon = _monitor(predictor, window=len(x))
    ids = [mon.record(None, {"input": x[i : i + 1]}, {"logits": logits[i : i + 1]}) for i in range(len(x))]
    assert len(set(ids)) == len(x)
    for i, rid in enumerate(ids):
        answer = mon.feedback(rid, str(y[i]) if i % 2 else int(y[i]))  # class names and indices both work
        assert answer["label"] == [str(y[i])]
    rep = mon.feedback_report()
    m = predictor.manifest
    off = evaluate(logits, y, m.classes, m.critical, thresholds={int(k): v for k, v in m.thresholds.items()},
                   rule=m.decision_rule)
    assert rep["confusion"] == np.asarray(off.confusion).tolist()
    crit = rep["critical"][str(CRITICAL)]
    assert crit["missed"] == off.per_class[CRITICAL]["fn"]
    assert crit["false_alarms"] == off.per_class[CRITICAL]["fp"]
    assert crit["positives"] == int((y == CRITICAL).sum())
    # the runtime's own decision rule (what /v1/.../classify answers) gives the same confusion matrix
    from edgeslim.runtime.predictor import decide, softmax

    confusion = np.zeros((10, 10), dtype=np.int64)
    for row, t in zip(softmax(logits), y):
        confusion[t, decide(row, m.critical, m.thresholds, m.decision_rule)[0]] += 1
    assert rep["confusion"] == confusion.tolist()
    assert rep["judged_total"] == len(x) and rep["window_items"] == len(x)


def test_recall_test_flags_a_real_drop_and_not_the_test_split(digits_model: DigitsModel, predictor) -> None:
    x, y = digits_model.test
    ok = _monitor(predictor, window=len(x))
    for i in range(len(x)):
        ok.feedback(ok.record(None, {"input": x[i : i + 1]}, {"logits": _logits_one_by_one(predictor, x[i : i + 1])}),
                    int(y[i]))
    rep = ok.feedback_report()
    assert rep["critical"][str(CRITICAL)]["validated_recall"] is not None
    assert rep["flag"] is False, rep["critical"]
    # the same digits at 40 % contrast (an under-exposed camera): the critical class is mostly missed
    bad = _monitor(predictor, window=len(x))
    dim = x * 0.4 - 0.6
    for i in range(len(x)):
        bad.feedback(bad.record(None, {"input": dim[i : i + 1]},
                                {"logits": _logits_one_by_one(predictor, dim[i : i + 1])}), int(y[i]))
    rep = bad.feedback_report()
    crit = rep["critical"][str(CRITICAL)]
    assert crit["recall"] < crit["validated_recall"] - 0.3, crit  # the drop the test must see
    assert rep["flag"] is True and crit["pvalue"] < 0.01, crit


def test_bad_feedback_is_refused_and_loses_nothing(digits_model: DigitsModel, predictor) -> None:
    x, y = digits_model.test
    logits = _logits_one_by_one(predictor, x[:20])
    mon = _monitor(predictor, pending=8)
    ids = [mon.record(None, {"input": x[i : i + 1]}, {"logits": logits[i : i + 1]}) for i in range(12)]
    client = mon.record("cell-0042", {"input": x[12:13]}, {"logits": logits[12:13]})
    assert client == "cell-0042"
    for i in range(8, 12):
        mon.feedback(ids[i], int(y[i]))
    before = mon.feedback_report()

    cases = [
        (lambda: mon.feedback("no-such-id", 1), RequestIdNotFoundError, 404, "no answered request"),
        (lambda: mon.feedback(ids[0], int(y[0])), RequestIdGoneError, 410, "--feedback-pending"),
        (lambda: mon.feedback(ids[9], int(y[9])), DuplicateFeedbackError, 409, "already has feedback"),
        (lambda: mon.feedback("cell-0042", "eight"), InputError, 400, "not a class"),
        (lambda: mon.feedback("cell-0042", 10), InputError, 400, "0..9"),
        (lambda: mon.feedback("cell-0042", [1, 2]), InputError, 400, "1 label"),
        (lambda: mon.feedback("", 1), InputError, 400, "non-empty string"),
    ]
    for call, cls, status, words in cases:
        with pytest.raises(cls, match=words) as info:
            call()
        assert http_status(info.value) == status
        after = mon.feedback_report()
        assert after["confusion"] == before["confusion"] and after["judged_total"] == before["judged_total"]
    # a client id pushed out of the ring is 'gone', not 'unknown'
    for i in range(8):
        mon.record(f"later-{i}", {"input": x[i : i + 1]}, {"logits": logits[i : i + 1]})
    with pytest.raises(RequestIdGoneError):
        mon.feedback("cell-0042", int(y[12]))
    # a did-you-mean for a misspelt class name
    mon2 = _monitor(predictor)
    rid = mon2.record(None, {"input": x[:1]}, {"logits": logits[:1]})
    mon2.classes = ["cat", "dog"] + mon2.classes[2:]
    with pytest.raises(InputError, match="Did you mean 'dog'"):
        mon2.feedback(rid, "dgo")
    assert mon.feedback_report()["rejected"] == {"id": 4, "duplicate": 1, "label": 3}


def test_feedback_for_a_file_without_reference_is_refused_and_reported(tmp_path: Path) -> None:
    from server_helpers import CLASSES, batch, build_tiny_artifact

    from edgeslim import runtime
    from edgeslim.server.errors import NoFieldReferenceError, http_status

    art = build_tiny_artifact(tmp_path / "tiny")
    with runtime.load(art, threads=1) as p:
        mon = FieldMonitor(p.manifest, p.model_file, input_name="input", output_name="logits")
        x = batch(3)
        rid = mon.record(None, {"input": x}, p.backend.infer(x))
        with pytest.raises(NoFieldReferenceError, match="no val reference.*edgeslim export") as info:
            mon.feedback(rid, [CLASSES[0], 1, "person"])
    assert http_status(info.value) == 422
    rep = mon.report()
    # nothing was counted; the refusal is, by reason
    assert rep["feedback"]["judged_total"] == 0 and rep["feedback"]["window_items"] == 0
    assert rep["feedback"]["rejected"] == {"no_reference": 1}
    assert rep["feedback"]["recall_test"].startswith("off: no reference")
    assert rep["drift"]["on"] is False and "no reference" in rep["drift"]["reason"]


def test_the_server_records_after_the_answer_and_feedback_still_finds_it(digits_model: DigitsModel, predictor) -> None:
    """record_soon answers with the id at once and keeps the request in the loop's next turn: the same counts as
    record, feedback sent in a later turn finds it, and an input in memory the client may overwrite once it has its
    answer (a writable view: shared memory) has its statistics taken before the answer."""
    import asyncio

    x, y = digits_model.test
    n = 40
    logits = _logits_one_by_one(predictor, x[:n])
    now, soon = _monitor(predictor, window=n, drift_window=10), _monitor(predictor, window=n, drift_window=10)
    import mmap

    mapping = mmap.mmap(-1, x[:1].nbytes)  # a client's shared-memory region, reused every request
    region = view = np.frombuffer(memoryview(mapping), dtype=np.float32).reshape(1, *x.shape[1:])

    async def serve() -> list[str]:
        ids = []
        for i in range(n):
            if i % 2:
                region[:] = x[i : i + 1]
                feeds = {"input": view}
            else:  # a body buffer of its own, as the server allocates one per request
                feeds = {"input": np.frombuffer(memoryview(bytearray(x[i : i + 1].tobytes())),
                                                dtype=np.float32).reshape(region.shape)}
            rid = soon.record_soon(None, feeds, {"logits": logits[i : i + 1]})
            assert rid not in soon._pending  # not yet kept: the answer goes first
            region[:] = 0.0  # the client reuses its region once answered
            await asyncio.sleep(0)  # a later turn, as any feedback request is
            soon.feedback(rid, int(y[i]))
            ids.append(rid)
        return ids

    ids = asyncio.run(serve())
    for i in range(n):
        now.feedback(now.record(None, {"input": x[i : i + 1]}, {"logits": logits[i : i + 1]}), int(y[i]))
    assert len(set(ids)) == n
    assert soon.feedback_report()["confusion"] == now.feedback_report()["confusion"]
    np.testing.assert_array_equal(soon._ring_stats, now._ring_stats)  # the shared-memory inputs read before reuse
    np.testing.assert_array_equal(soon._ring_logits, now._ring_logits)
