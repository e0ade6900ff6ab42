"""Feedback and drift through a live server (uvicorn in a subprocess), replaying the digits test split."""

from __future__ import annotations

import numpy as np
import pytest
from field_helpers import CRITICAL, build_digits_model
from server_helpers import batch, build_tiny_artifact, live_server

pytestmark = pytest.mark.live


def _infer(client, url: str, x: np.ndarray, rid: str | None = None) -> tuple[str, np.ndarray]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if rid is not None:
        body["id"] = rid
    r = client.post(f"{url}/v2/models/digits-field/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["id"], np.asarray(out["outputs"][0]["data"], dtype=np.float32)


def test_replayed_split_gives_the_offline_counts_and_bad_feedback_loses_nothing(tmp_path) -> None:
    import httpx

    from edgeslim import runtime
    from edgeslim.compress.metrics import evaluate

    model = build_digits_model(tmp_path)
    x, y = model.test
    with runtime.load(model.artifact, backend="onnxruntime", threads=1) as p:
        logits = np.concatenate([p.backend.infer(x[i : i + 1])["logits"] for i in range(len(x))])
        m = p.manifest
    off = evaluate(logits, y, m.classes, m.critical, thresholds={int(k): v for k, v in m.thresholds.items()},
                   rule=m.decision_rule)

    tiny = build_tiny_artifact(tmp_path / "tiny")  # exported without a val reference
    with live_server(tmp_path, [model.artifact, tiny], backend="onnxruntime", feedback_pending=len(x) + 5,
                     feedback_window=len(x)) as s, httpx.Client(timeout=30) as c:
        url = f"http://{s.url}"
        ids = []
        for i in range(len(x)):
            rid, _ = _infer(c, url, x[i : i + 1])
            ids.append(rid)
            r = c.post(f"{url}/v2/models/digits-field/feedback", json={"id": rid, "label": str(y[i])})
            assert r.status_code == 200, r.text
        assert len(set(ids)) == len(x)
        stats = c.get(f"{url}/v2/models/digits-field/stats").json()["model_stats"][0]
        fb = stats["feedback"]
        assert fb["confusion"] == np.asarray(off.confusion).tolist()
        crit = fb["critical"][str(CRITICAL)]
        assert (crit["missed"], crit["false_alarms"]) == (off.per_class[CRITICAL]["fn"], off.per_class[CRITICAL]["fp"])
        assert stats["drift"]["on"] is True and stats["drift"]["checks"] >= len(x) // 200 - 1

        # the client's own id is echoed and can be judged; bad feedback is refused and loses nothing
        rid, _ = _infer(c, url, x[:1], rid="line-7/cell-42")
        assert rid == "line-7/cell-42"
        for i in range(10):  # pushes the first answers out of the pending ring
            _infer(c, url, x[i : i + 1])
        post = lambda body: c.post(f"{url}/v2/models/digits-field/feedback", json=body)  # noqa: E731
        cases = [({"id": "nope", "label": 1}, 404), ({"id": ids[0], "label": 1}, 410),
                 ({"id": ids[-1], "label": 1}, 409), ({"id": rid, "label": "eigth"}, 400),
                 ({"id": rid, "label": True}, 400), ({"label": 1}, 400),
                 ({"id": rid, "label": 1}, None)]
        for body, status in cases[:-1]:
            r = post(body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]
        assert "Send a class name or index (0..9)" in post({"id": rid, "label": "eigth"}).json()["error"]
        after = c.get(f"{url}/v2/models/digits-field/feedback").json()["feedback"]
        assert after["confusion"] == fb["confusion"] and after["judged_total"] == len(x)
        assert post({"id": rid, "label": 0}).status_code == 200

        # a model file without a stored reference: its feedback is refused with the fix, nothing else changes
        xt = batch(1)
        r = c.post(f"{url}/v2/models/tiny/infer", json={"inputs": [
            {"name": "input", "shape": list(xt.shape), "datatype": "FP32", "data": xt.ravel().tolist()}]})
        assert r.status_code == 200, r.text
        r = c.post(f"{url}/v2/models/tiny/feedback", json={"id": r.json()["id"], "label": "cat"})
        assert r.status_code == 422 and "edgeslim export" in r.json()["error"], r.text
        assert c.get(f"{url}/v2/models/digits-field/feedback").json()["feedback"]["judged_total"] == len(x) + 1

        text = c.get(f"{url}/metrics").text
        for name in ("edgeslim_feedback_judged_total", "edgeslim_feedback_confusion", "edgeslim_feedback_critical_recall",
                     "edgeslim_feedback_critical_missed", "edgeslim_feedback_false_alarms",
                     "edgeslim_feedback_recall_flag", "edgeslim_drift_statistic", "edgeslim_drift_pvalue",
                     "edgeslim_drift_flag"):
            assert f"\n{name}{{" in text, name
        assert s.proc.poll() is None
