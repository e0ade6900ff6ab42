"""Accuracy in the field: ground-truth feedback and label-free drift, per served model.

Both protocols call :meth:`FieldMonitor.record_soon` once per answered inference request (REST and gRPC share
:func:`edgeslim.server.infer.run_request`); on the answer's path it costs an id, and the rest (a copy of the
request's logits, two reductions over its input: mean and standard deviation,
:func:`edgeslim.field_reference.input_statistics`) runs in the event loop's next turn, after the answer has left.
Everything else runs later: the feedback endpoint (:mod:`edgeslim.server.feedback`), the statistics and
``/metrics`` reads, and the drift test, which runs every ``drift_every`` items in a worker thread.

**Feedback.** Every answered request gets an id (the client's v2 ``id``, else one generated here and returned in the
answer). Its logits wait in a bounded ring of ``pending`` requests keyed by id. Feedback
(``{"id", "label"}``) decides the stored logits under the file's deployed thresholds and adds (truth, decision) to a
window of the last ``window`` judged items; the window's counts come from :func:`edgeslim.compress.metrics.evaluate`,
the function the offline reports use, so the same logits give the same counts. Live critical recall is tested
against the model file's val recall stored in its manifest (:class:`~edgeslim.artifact.FieldReference`) with a
one-sided exact binomial test (``scipy.stats.binomtest``, H0: recall >= the val recall), at level ``alpha`` divided
by the number of critical classes (Bonferroni).

**Drift.** The window of the last ``drift_window`` items (their critical-class probabilities and the per-image mean
and standard deviation of the input) is compared with the file's val reference by the two-sample
Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``), one test per critical class and per input statistic, every
``drift_every`` items. The model is flagged when a p-value falls below ``alpha / (tests * ceil(drift_window /
drift_every))``: Bonferroni over the features of one check and over the overlapping checks that share an item, so
that in-distribution traffic raises a false alarm in at most a fraction ``alpha`` of every ``drift_window`` items
(with the default ``drift_every == drift_window`` the checks see disjoint windows).

Why not a library for the bookkeeping: Alibi Detect (what KServe uses) brings TensorFlow or PyTorch, which
``edgeslim[serve]`` must not; its KS detector is ``ks_2samp`` with a Bonferroni correction, which is what this
module calls directly.
"""

from __future__ import annotations

import asyncio
import collections
import math
import mmap
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..field_reference import input_statistics
from ..registry import did_you_mean
from .errors import DuplicateFeedbackError, NoFieldReferenceError, RequestIdGoneError, RequestIdNotFoundError

#: Defaults of :class:`~edgeslim.server.settings.ServerSettings` (the CLI's ``--feedback-*`` / ``--drift-*``).
PENDING = 10_000
WINDOW = 1_000
DRIFT_WINDOW = 200
ALPHA = 0.01


@dataclass
class _Prediction:
    logits: np.ndarray  # (items, K) float32, a copy
    judged: bool = False


def _softmax(logits: np.ndarray) -> np.ndarray:
    from ..runtime.predictor import softmax

    return softmax(logits)


def _views_mapping(x: np.ndarray) -> bool:
    """Whether ``x`` views a memory mapping (a shared-memory region, :mod:`edgeslim.server.sharedmem`)."""
    base: Any = x
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap) or (isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap))


class FieldMonitor:
    """Feedback counts and drift tests of one served model (see the module docstring).

    Args:
        manifest: the manifest as the model file is deployed (its own thresholds).
        model_file: the manifest entry being served (its ``extra["field_reference"]`` is the reference).
        input_name, output_name: the tensors recorded (the image input and the logits).
        pending: most answered requests whose feedback is awaited (oldest dropped first).
        window: most judged items the live counts cover (oldest dropped first).
        drift_window: items each drift test compares with the reference.
        drift_every: items between two drift tests.
        alpha: level of the recall test and of the drift test, before their corrections.
    """

    def __init__(self, manifest: Any, model_file: Any, *, input_name: str, output_name: str,
                 pending: int = PENDING, window: int = WINDOW, drift_window: int = DRIFT_WINDOW,
                 drift_every: int | None = None, alpha: float = ALPHA) -> None:
        self.classes = list(manifest.classes)
        self.critical = [int(c) for c in manifest.critical]
        self.thresholds = {int(k): float(v) for k, v in manifest.thresholds.items()}
        self.rule = manifest.decision_rule
        self.input_name = input_name
        self.output_name = output_name
        self.pending_size = int(pending)
        self.window_size = int(window)
        self.drift_window = int(drift_window)
        self.drift_every = int(drift_every or drift_window)
        self.alpha = float(alpha)
        self.reference, self.reference_note = manifest.field_reference(model_file)
        ref = self.reference
        self.validated_recall: dict[int, tuple[int, int]] = {}
        if ref is not None:
            for c in self.critical:
                r = ref.critical_recall.get(str(c))
                if r and r.get("positives"):
                    self.validated_recall[c] = (int(r["hits"]), int(r["positives"]))
        # drift: the reference samples, one per feature (critical class probabilities, input mean, input std)
        self._ref_features: list[tuple[str, np.ndarray]] = []
        if ref is not None:
            for c in self.critical:
                if ref.critical_scores.get(str(c)):
                    self._ref_features.append((f"p_{self.classes[c]}", np.asarray(ref.critical_scores[str(c)])))
            if ref.input_mean and ref.input_std:
                self._ref_features += [("input_mean", np.asarray(ref.input_mean)),
                                       ("input_std", np.asarray(ref.input_std))]
        self.drift_on = bool(self._ref_features) and self.drift_window > 1
        if ref is not None and not self._ref_features:
            self.reference_note = "the reference holds no critical scores (a model without critical classes)"

        # feedback state (touched on the event loop only)
        self._prefix = secrets.token_hex(4)
        self._seq = 0
        self._pending: collections.OrderedDict[str, _Prediction] = collections.OrderedDict()
        self._dropped: collections.OrderedDict[str, None] = collections.OrderedDict()  # client ids pushed out
        self._judged: collections.deque[tuple[np.ndarray, int]] = collections.deque(maxlen=self.window_size)
        self.counts = collections.Counter[str]()  # cumulative: judged, dropped_unjudged, id_reused, rejected_*
        self._report_cache: tuple[int, dict[str, Any]] | None = None
        self._version = 0

        # drift state: rings filled on the event loop, tests in a worker thread
        k = len(self.classes)
        self._ring_logits = np.zeros((self.drift_window, k), dtype=np.float32)
        self._ring_stats = np.zeros((self.drift_window, 2), dtype=np.float64)  # per item: input mean and std
        self._ring_pos = 0
        self._seen = 0  # items recorded since start
        self._since_check = 0
        self._lock = threading.Lock()  # serialises the tests' results
        self.drift: dict[str, Any] = {"checks": 0, "alarms": 0, "flag": False, "features": {}, "alarm_items": []}

    # -- the request path -----------------------------------------------------------------------------------------
    def record(self, request_id: str | None, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str:
        """Remember one answered request now; returns its id (``request_id``, or a new one when the client sent
        none). Tests and replays call this; the server calls :meth:`record_soon`."""
        request_id = self._answer_id(request_id)
        if self.reference is not None:  # else feedback is refused and drift is off for this file: nothing to keep
            self._record(request_id, feeds[self.input_name], outputs[self.output_name], None)
        return request_id

    def record_soon(self, request_id: str | None, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str:
        """:meth:`record`, with its work moved after the answer: returns the id the answer carries at once and
        keeps the request in the event loop's next turn (``loop.call_soon``), once the response is on its way.

        The order feedback relies on holds: a feedback request is read from a socket in a later turn of the same
        loop, after every callback queued before it, so it always finds the request it refers to. The one thing
        read now is an input the client may overwrite as soon as it has its answer, a view of a system
        shared-memory region: its statistics are taken before the answer. Every other input is the request's own
        (a body buffer allocated per request, JSON contents, gRPC raw contents) and waits.
        """
        request_id = self._answer_id(request_id)
        if self.reference is None:
            return request_id
        x, logits = feeds[self.input_name], outputs[self.output_name]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no server around it: record now
            self._record(request_id, x, logits, None)
            return request_id
        stats = input_statistics(x) if self.drift_on and _views_mapping(x) else None
        loop.call_soon(self._record, request_id, x, logits, stats)
        return request_id

    def _answer_id(self, request_id: str | None) -> str:
        if not request_id:
            self._seq += 1
            request_id = f"{self._prefix}-{self._seq}"
        return request_id

    def _record(self, request_id: str, x: np.ndarray, logits: np.ndarray, stats: np.ndarray | None) -> None:
        rows = logits.copy() if logits.ndim == 2 else np.array(logits, dtype=np.float32).reshape(-1, logits.shape[-1])
        pending = self._pending
        if request_id in pending:  # a client that reuses ids: the newest answer is the one feedback refers to
            del pending[request_id]
            self.counts["id_reused"] += 1
        pending[request_id] = _Prediction(rows)
        if len(pending) > self.pending_size:
            old, rec = pending.popitem(last=False)
            if not rec.judged:
                self.counts["dropped_unjudged"] += 1
            if not old.startswith(self._prefix + "-"):  # generated ids are told apart by their sequence number
                dropped = self._dropped
                dropped[old] = None
                if len(dropped) > self.pending_size:
                    dropped.popitem(last=False)
        if self.drift_on:
            self._push(rows, x if stats is None else None, stats)

    def _push(self, rows: np.ndarray, x: np.ndarray | None, stats: np.ndarray | None = None) -> None:
        if rows.shape[1] != self._ring_logits.shape[1]:
            return  # not the model's logits: nothing to compare with the reference
        if stats is None:
            stats = input_statistics(x)
        w = self.drift_window
        for i in range(rows.shape[0]):  # the request's batch: 1 for most clients
            pos = self._ring_pos
            self._ring_logits[pos] = rows[i]
            self._ring_stats[pos] = stats[i]
            self._ring_pos = (pos + 1) % w
        n = rows.shape[0]
        self._seen += n
        self._since_check += n
        if self._since_check >= self.drift_every and self._seen >= w:
            self._since_check = 0
            logits, stats_copy, seen = self._ring_logits.copy(), self._ring_stats.copy(), self._seen
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside a server (tests, replays): test now
                self.check(logits, stats_copy, seen)
            else:
                loop.run_in_executor(None, self.check, logits, stats_copy, seen)

    # -- drift --------------------------------------------------------------------------------------------------
    def check(self, logits: np.ndarray, stats: np.ndarray, seen: int) -> dict[str, Any]:
        """One drift test of a window (the ``logits`` and :func:`input_statistics` of its items) against the
        reference."""
        from scipy.stats import ks_2samp

        probs = _softmax(logits)
        live = {f"p_{self.classes[c]}": probs[:, c] for c in self.critical}
        live["input_mean"], live["input_std"] = stats[:, 0], stats[:, 1]
        features = {}
        for name, ref in self._ref_features:
            r = ks_2samp(ref, live[name])
            features[name] = {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}
        level = self.level()
        flag = bool(features) and min(f["pvalue"] for f in features.values()) < level
        with self._lock:
            d = self.drift
            d["checks"] += 1
            d["features"] = features
            d["flag"] = flag
            d["last_check_item"] = seen
            if flag:
                d["alarms"] += 1
                d["alarm_items"] = (d["alarm_items"] + [seen])[-100:]
        return {"features": features, "flag": flag, "level": level, "item": seen}

    def level(self) -> float:
        """The per-test level of the drift test: ``alpha`` over the tests of one check and the checks an item is in."""
        overlap = math.ceil(self.drift_window / self.drift_every)
        return self.alpha / (max(len(self._ref_features), 1) * overlap)

    # -- feedback -----------------------------------------------------------------------------------------------
    def _class(self, value: Any) -> int:
        if isinstance(value, str):
            if value in self.classes:
                return self.classes.index(value)
            if value.strip().isdigit() and int(value) < len(self.classes):
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.classes):
            return value
        shown = ", ".join(self.classes[:20]) + (" ..." if len(self.classes) > 20 else "")
        self.counts["rejected_label"] += 1
        raise InputError(
            f"label {value!r} is not a class of this model.{did_you_mean(str(value), self.classes)} Send a class name"
            f" or index (0..{len(self.classes) - 1}): {shown}"
        )

    def feedback(self, request_id: Any, label: Any) -> dict[str, Any]:
        """Count the true class(es) of an answered request.

        ``label`` is a class name or index, or a list of them, one per item of the request's batch.

        Raises:
            RequestIdNotFoundError: no answered request has this id (404).
            RequestIdGoneError: the request was answered but has left the pending ring (410).
            DuplicateFeedbackError: this request was already judged (409).
            NoFieldReferenceError: the model file carries no val reference, so live counts have no validated recall
                to be tested against (422); nothing is recorded.
            InputError: a label that is not a class, or a count that does not match the batch (400).
        """
        if self.reference is None:
            self.counts["rejected_no_reference"] += 1
            raise NoFieldReferenceError(
                f"this model file keeps no feedback: it carries no val reference ({self.reference_note}), so live"
                " recall has no validated figure to be tested against. Re-export it with a val split (`edgeslim"
                " export ARTIFACT`) to store one, then reload the model"
            )
        if not isinstance(request_id, str) or not request_id:
            self.counts["rejected_id"] += 1
            raise InputError(f"'id' must be the non-empty string the infer response carried, got {request_id!r}")
        rec = self._pending.get(request_id)
        if rec is None:
            self.counts["rejected_id"] += 1
            if request_id in self._dropped or self._generated_and_old(request_id):
                raise RequestIdGoneError(
                    f"request '{request_id}' was answered but its prediction has left the feedback ring (it keeps the"
                    f" last {self.pending_size} requests); send feedback sooner, or start the server with a larger"
                    " --feedback-pending"
                )
            raise RequestIdNotFoundError(
                f"no answered request of this model has id '{request_id}'; send the 'id' of the infer response (the"
                " server generates one when the request has none), to the model that answered it"
            )
        if rec.judged:
            self.counts["rejected_duplicate"] += 1
            raise DuplicateFeedbackError(
                f"request '{request_id}' already has feedback; each answered request is counted once (send the id of"
                " another request)"
            )
        n = rec.logits.shape[0]
        values = label if isinstance(label, list) else [label]
        if len(values) != n:
            self.counts["rejected_label"] += 1
            raise InputError(
                f"request '{request_id}' held {n} item(s); send {n} label(s) ('label': a class, or a list of {n})"
            )
        truth = [self._class(v) for v in values]  # all checked before anything is counted
        from ..decision import predict

        decided = predict(_softmax(rec.logits), self.thresholds, self.rule)
        rec.judged = True
        for i, t in enumerate(truth):
            self._judged.append((rec.logits[i], t))
        self.counts["judged"] += n
        self._version += 1
        return {
            "id": request_id,
            "label": [self.classes[t] for t in truth],
            "predicted": [self.classes[int(p)] for p in decided],
            "correct": [bool(int(p) == t) for p, t in zip(decided, truth)],
            "window_items": len(self._judged),
            "drift": "on" if self.drift_on else f"off: {self.reference_note}",
        }

    def _generated_and_old(self, request_id: str) -> bool:
        """An id this monitor generated that is no longer pending: it was dropped (the ring forgets old ids)."""
        head, _, seq = request_id.rpartition("-")
        return head == self._prefix and seq.isdigit() and 0 < int(seq) <= self._seq

    # -- reports --------------------------------------------------------------------------------------------------
    def feedback_report(self) -> dict[str, Any]:
        """The live counts over the judged window, the recall test, and the cumulative counters."""
        counts = dict(self.counts)
        return {
            "pending": len(self._pending), "judged_total": counts.get("judged", 0),
            "dropped_unjudged": counts.get("dropped_unjudged", 0), "id_reused": counts.get("id_reused", 0),
            "rejected": {k[len("rejected_"):]: v for k, v in counts.items() if k.startswith("rejected_")},
            **self._window_report(),
        }

    def _window_report(self) -> dict[str, Any]:
        """The window's counts and recall test, recomputed only after new feedback."""
        cached = self._report_cache
        if cached is not None and cached[0] == self._version:
            return cached[1]
        version = self._version
        judged = list(self._judged)  # one C-level copy: /metrics reads from a worker thread
        out: dict[str, Any] = {
            "window": self.window_size, "window_items": len(judged), "classes": self.classes, "alpha": self.alpha,
            "test": "one-sided exact binomial test (scipy.stats.binomtest, H0: live recall >= val recall), level"
                    " alpha / critical classes",
        }
        crit: dict[str, Any] = {}
        flagged = False
        if judged:
            from scipy.stats import binomtest

            from ..compress.metrics import evaluate

            logits = np.stack([r[0] for r in judged])
            y = np.array([r[1] for r in judged], dtype=np.int64)
            m = evaluate(logits, y, self.classes, self.critical, thresholds=self.thresholds, rule=self.rule)
            out["confusion"] = np.asarray(m.confusion).tolist()
            out["accuracy"] = m.accuracy
            out["per_class_recall"] = {self.classes[c]: row["recall"] for c, row in enumerate(m.per_class)}
            level = self.alpha / max(len(self.critical), 1)
            for c in self.critical:
                row = m.per_class[c]
                hits, positives = int(row["tp"]), int(row["tp"] + row["fn"])
                entry: dict[str, Any] = {
                    "recall": hits / positives if positives else None, "hits": hits, "positives": positives,
                    "missed": int(row["fn"]), "false_alarms": int(row["fp"]),
                }
                val = self.validated_recall.get(c)
                if val is not None:
                    entry["validated_recall"] = val[0] / val[1]
                    if positives:
                        p = float(binomtest(hits, positives, val[0] / val[1], alternative="less").pvalue)
                        entry["pvalue"] = p
                        entry["flag"] = p < level
                        flagged = flagged or entry["flag"]
                crit[self.classes[c]] = entry
        else:
            for c in self.critical:
                val = self.validated_recall.get(c)
                crit[self.classes[c]] = {"recall": None, "hits": 0, "positives": 0, "missed": 0, "false_alarms": 0,
                                         **({"validated_recall": val[0] / val[1]} if val else {})}
        out["critical"] = crit
        out["flag"] = flagged
        if not self.validated_recall:
            out["recall_test"] = f"off: {self.reference_note or 'the reference holds no val recall'}"
        self._report_cache = (version, out)
        return out

    def drift_report(self) -> dict[str, Any]:
        """The last drift test (statistic and p-value per feature), the flag and the counters."""
        if not self.drift_on:
            return {"on": False, "reason": self.reference_note or "drift_window < 2", "flag": False}
        with self._lock:
            d = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                 for k, v in self.drift.items()}
        return {"on": True, "test": "two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp) per feature vs the val"
                " reference, Bonferroni over features and overlapping checks", "alpha": self.alpha,
                "level": self.level(), "window": self.drift_window, "every": self.drift_every,
                "items_seen": self._seen, "reference_samples": self.reference.samples if self.reference else 0, **d}

    def report(self) -> dict[str, Any]:
        """What the model's statistics carry: ``{"feedback": ..., "drift": ...}``."""
        return {"feedback": self.feedback_report(), "drift": self.drift_report()}


# --------------------------------------------------------------------------------------------- /metrics


def _family(name: str, doc: str, kind: str = "gauge") -> Any:
    from prometheus_client.core import Metric

    return Metric(name, doc, kind)


class MonitorCollector:
    """The monitors' figures on ``/metrics``: names with ``feedback`` and ``drift``, labels ``model``, ``version``.

    Counters carry Prometheus' ``_total`` suffix (these are edgeslim's own names, not Triton's)."""

    def __init__(self, repository: Any) -> None:
        self.repository = repository

    def collect(self) -> Iterator[Any]:
        models = [m for m in list(self.repository.models.values()) if getattr(m, "monitor", None) is not None]
        fams = {n: _family(n, d, k) for n, d, k in _FAMILIES}
        for model in models:
            mon: FieldMonitor = model.monitor
            base = {"model": model.name, "version": model.version}
            fb = mon.feedback_report()
            fams["edgeslim_feedback_judged"].add_sample("edgeslim_feedback_judged_total", base, float(fb["judged_total"]))
            fams["edgeslim_feedback_window_items"].add_sample("edgeslim_feedback_window_items", base,
                                                                float(fb["window_items"]))
            fams["edgeslim_feedback_pending"].add_sample("edgeslim_feedback_pending", base, float(fb["pending"]))
            for reason, v in sorted(fb["rejected"].items()):
                fams["edgeslim_feedback_rejected"].add_sample("edgeslim_feedback_rejected_total",
                                                              {**base, "reason": reason}, float(v))
            for t, row in enumerate(fb.get("confusion", [])):
                for p, v in enumerate(row):
                    fams["edgeslim_feedback_confusion"].add_sample(
                        "edgeslim_feedback_confusion", {**base, "true": mon.classes[t], "predicted": mon.classes[p]},
                        float(v))
            for cls, e in fb["critical"].items():
                lab = {**base, "class": cls}
                for key, name in (("recall", "edgeslim_feedback_critical_recall"),
                                  ("validated_recall", "edgeslim_feedback_validated_recall"),
                                  ("missed", "edgeslim_feedback_critical_missed"),
                                  ("false_alarms", "edgeslim_feedback_false_alarms"),
                                  ("pvalue", "edgeslim_feedback_recall_pvalue")):
                    if e.get(key) is not None:
                        fams[name].add_sample(name, lab, float(e[key]))
            fams["edgeslim_feedback_recall_flag"].add_sample("edgeslim_feedback_recall_flag", base,
                                                             float(fb["flag"]))
            dr = mon.drift_report()
            fams["edgeslim_drift_reference"].add_sample("edgeslim_drift_reference", base, float(dr["on"]))
            fams["edgeslim_drift_flag"].add_sample("edgeslim_drift_flag", base, float(dr["flag"]))
            if dr["on"]:
                fams["edgeslim_drift_checks"].add_sample("edgeslim_drift_checks_total", base, float(dr["checks"]))
                fams["edgeslim_drift_alarms"].add_sample("edgeslim_drift_alarms_total", base, float(dr["alarms"]))
                for feat, f in sorted(dr["features"].items()):
                    lab = {**base, "feature": feat}
                    fams["edgeslim_drift_statistic"].add_sample("edgeslim_drift_statistic", lab, f["statistic"])
                    fams["edgeslim_drift_pvalue"].add_sample("edgeslim_drift_pvalue", lab, f["pvalue"])
        yield from fams.values()


_FAMILIES: Sequence[tuple[str, str, str]] = (
    ("edgeslim_feedback_judged", "Items with ground-truth feedback since start", "counter"),
    ("edgeslim_feedback_window_items", "Judged items in the live window", "gauge"),
    ("edgeslim_feedback_pending", "Answered requests awaiting feedback (the pending ring)", "gauge"),
    ("edgeslim_feedback_rejected", "Feedback refused, by reason, since start", "counter"),
    ("edgeslim_feedback_confusion", "Live confusion matrix over the window (true x predicted)", "gauge"),
    ("edgeslim_feedback_critical_recall", "Live recall of a critical class over the window", "gauge"),
    ("edgeslim_feedback_validated_recall", "The model file's val recall of a critical class (its manifest)", "gauge"),
    ("edgeslim_feedback_critical_missed", "Missed critical cases (false negatives) in the window", "gauge"),
    ("edgeslim_feedback_false_alarms", "False alarms of a critical class (false positives) in the window", "gauge"),
    ("edgeslim_feedback_recall_pvalue", "One-sided exact binomial p-value of live vs val critical recall", "gauge"),
    ("edgeslim_feedback_recall_flag", "1 when live critical recall is below the val recall beyond chance", "gauge"),
    ("edgeslim_drift_reference", "1 when the model file has a val reference (drift tests on), else 0", "gauge"),
    ("edgeslim_drift_flag", "1 when the last drift test rejected the val distribution", "gauge"),
    ("edgeslim_drift_checks", "Drift tests run since start", "counter"),
    ("edgeslim_drift_alarms", "Drift tests that flagged since start", "counter"),
    ("edgeslim_drift_statistic", "Kolmogorov-Smirnov statistic of the last drift test, per feature", "gauge"),
    ("edgeslim_drift_pvalue", "Kolmogorov-Smirnov p-value of the last drift test, per feature", "gauge"),
)
