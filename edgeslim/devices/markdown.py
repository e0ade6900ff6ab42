"""The pure renderings of a report as markdown tables: one target (:func:`render_markdown`) or a fleet of them
(:func:`render_fleet_markdown`), and the small readers both :mod:`~edgeslim.devices.report` and
:mod:`~edgeslim.devices.html` share (class names and labels, critical classes, per-class recall, accuracy entries).

It imports neither of them: ``report`` writes files and ``html`` draws plots on top of these tables.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def _signed(v: Any, digits: int = 4) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v:+.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _scored(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first accuracy dict of a report's entries ({} when none): it names the classes it was scored on."""
    for e in report.get("entries") or []:
        acc = e.get("accuracy") if isinstance(e, Mapping) else None
        if isinstance(acc, Mapping) and acc.get("classes"):
            return acc
    return {}


def class_names(report: Mapping[str, Any]) -> list[str]:
    """The class names of a report's artifact, else those its accuracy was scored with (empty when unknown)."""
    return list((report.get("artifact") or {}).get("classes") or _scored(report).get("classes") or [])


def critical_set(report: Mapping[str, Any]) -> set[int]:
    """The critical classes of a report's artifact, else those its accuracy was scored with."""
    return {int(c) for c in (report.get("artifact") or {}).get("critical") or _scored(report).get("critical") or []}


def per_class_recall(acc: Mapping[str, Any], classes: Sequence[str]) -> list[float | None]:
    """Per-class recall from an accuracy dict, in class-index order (accepts list or dict forms)."""
    pc = acc.get("per_class")
    n = len(classes)
    if isinstance(pc, list):
        vals = [v.get("recall") if isinstance(v, Mapping) else v for v in pc]
        return vals + [None] * (n - len(vals)) if n > len(vals) else vals
    if isinstance(pc, Mapping):
        out: list[float | None] = []
        for i in range(n or len(pc)):
            v = pc.get(str(i), pc.get(i, pc.get(classes[i]) if i < n else None))  # type: ignore[call-overload]
            out.append(v.get("recall") if isinstance(v, Mapping) else v)
        return out
    return [None] * n


def _entry_label(e: Mapping[str, Any]) -> str:
    m = e.get("model") or {}
    label = f"{m.get('precision', '?')} {e.get('backend', {}).get('name', '?')}"
    # entries of several artifacts in one report (the pipeline's dense and compressed) carry their variant
    return f"{e['variant']} {label}" if e.get("variant") else label


def _dev(report: Mapping[str, Any]) -> str:
    t = report.get("target") or {}
    if t.get("name"):
        return str(t.get("name"))
    cpu = (report.get("host") or {}).get("cpu") or {}
    return str(cpu.get("model") or "host")


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render a report as markdown: conditions, latency / throughput / memory / power, end to end,
    accuracy with deltas against FP32, per-class recall and the critical classes' false negatives, failures.

    Pure: depends only on ``report``. A merged report from :func:`compare_reports` renders as the fleet table.
    """
    if report.get("fleet"):
        return render_fleet_markdown(report)
    entries = list(report.get("entries") or [])
    ok = [e for e in entries if e.get("status") == "ok"]
    classes = class_names(report)
    critical = critical_set(report)
    parts = [f"# {report.get('title') or 'edgeslim profile'}", ""]

    host = report.get("host") or {}
    cpu = host.get("cpu") or {}
    isa = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v) or "-"
    cond_rows = [
        ("schema", report.get("schema")),
        ("created", report.get("created")),
        ("edgeslim", report.get("edgeslim_version")),
        ("artifact", (report.get("artifact") or {}).get("name") or "-"),
        ("device", _dev(report)),
        ("CPU", f"{cpu.get('model', '-')} ({cpu.get('physical_cores') or '?'} cores / {cpu.get('logical_cores') or '?'} threads)"),
        ("ISA", isa),
    ]
    target = report.get("target") or {}
    for key in ("power_mode", "clocks", "l4t", "jetpack", "gpu"):
        if target.get(key):
            cond_rows.append((key, target[key] if not isinstance(target[key], Mapping) else json.dumps(target[key])))
    if ok:
        c = ok[0].get("conditions") or {}
        cfg = c.get("config") or {}
        cond_rows += [
            ("threads", c.get("threads") if c.get("threads") is not None else "backend default"),
            ("warm-up", f"{cfg.get('warmup')} calls, >= {cfg.get('warmup_seconds')} s"),
            ("window", f">= {cfg.get('iterations')} calls and >= {cfg.get('seconds')} s"),
        ]
    parts += ["## Conditions", "", _table(("", ""), cond_rows), ""]

    if ok:
        rows = []
        for e in ok:
            lat = e.get("latency_ms") or {}
            mem = e.get("memory") or {}
            pw = e.get("power") or {}
            tm = e.get("throughput_mode") or {}
            rows.append(
                (
                    e["model"]["path"],
                    e["model"]["precision"],
                    f"{e['backend']['name']} {e['backend'].get('version') or ''}".strip(),
                    e.get("batch"),
                    _fmt(lat.get("median")),
                    _fmt((e.get("runtime_latency_ms") or {}).get("median")) if e.get("runtime_latency_ms") else "-",
                    _fmt(lat.get("mean")),
                    _fmt(lat.get("p90")),
                    _fmt(lat.get("p95")),
                    _fmt(lat.get("p99")),
                    _fmt(lat.get("min")),
                    _fmt(lat.get("max")),
                    _fmt((e.get("throughput") or {}).get("items_per_s"), 1),
                    _fmt(tm.get("items_per_s"), 1) if "items_per_s" in tm else "-",
                    _fmt(e.get("first_inference_ms")),
                    _fmt(e.get("load_s")),
                    _fmt(mem.get("peak_rss_mb"), 1),
                    _fmt(pw.get("mean_w"), 2) if pw.get("available") else "n/a",
                    _fmt(pw.get("j_per_inference"), 4) if pw.get("available") else "n/a",
                    (e.get("measured") or {}).get("iterations"),
                    _fmt((e.get("measured") or {}).get("seconds"), 2),
                )
            )
        parts += [
            "## Latency (compute only, ms) and throughput",
            "",
            "Wall time of each `infer` call; *runtime clock*: the same calls timed by the runtime itself where it"
            " does (OpenVINO's request latency, what benchmark_app reports), without edgeslim's input check and copies.",
            "",
            _table(
                (
                    "model", "precision", "backend", "batch", "median", "median (runtime clock)", "mean", "p90",
                    "p95", "p99", "min", "max",
                    "items/s (sync)", "items/s (throughput mode)", "first inference ms", "load s", "peak RSS MB",
                    "mean W", "J/inference", "calls", "window s",
                ),
                rows,
            ),
            "",
        ]
        reasons = sorted({str((e.get("power") or {}).get("reason")) for e in ok if (e.get("power") or {}).get("available") is False})
        if reasons:
            parts += ["Power not available: " + "; ".join(reasons), ""]

        e2e = [e for e in ok if e.get("end_to_end_ms")]
        if e2e:
            rows = [
                (
                    e["model"]["path"], e["backend"]["name"], e.get("batch"),
                    _fmt(e["end_to_end_ms"]["median"]), _fmt(e["end_to_end_ms"]["p90"]),
                    _fmt(e["preprocess_ms"]["median"]), _fmt(e["compute_in_end_to_end_ms"]["median"]),
                    _fmt(e["latency_ms"]["median"]),
                    _fmt((e.get("end_to_end_throughput") or {}).get("items_per_s"), 1),
                )
                for e in e2e
            ]
            parts += [
                "## End to end (decode + preprocess + infer, ms)",
                "",
                _table(
                    ("model", "backend", "batch", "e2e median", "e2e p90", "preprocess median", "compute median (in e2e)",
                     "compute median (alone)", "items/s"),
                    rows,
                ),
                "",
            ]

    acc_entries = _accuracy_entries(ok)
    if acc_entries:
        rows = []
        for e in acc_entries:
            acc = e["accuracy"]
            d = e.get("accuracy_delta") or {}
            crit = acc.get("critical_stats") or {}
            crit_txt = "; ".join(
                f"{_cls_name(k, classes)}: FN {_fmt(v.get('fn'), 0)}, FNR {_fmt(v.get('fnr'))}, AUC {_fmt(v.get('auc'))}"
                + (
                    f" (ΔFN {_signed((d.get('critical') or {}).get(str(k), {}).get('fn'), 0)})"
                    if (d.get("critical") or {}).get(str(k)) else ""
                )
                for k, v in crit.items()
            )
            made_for = e["model"].get("made_for")
            if made_for and e["model"].get("foreign_target"):
                made_for += " (not this host)"
            rows.append(
                (
                    e["model"]["path"], e["model"]["precision"], made_for or "-", e["backend"]["name"],
                    acc.get("samples", "-"), _fmt(acc.get("accuracy"), 4), _signed(d.get("accuracy")), crit_txt or "-",
                )
            )
        foreign = sorted({e["model"]["foreign_target"] for e in acc_entries if e["model"].get("foreign_target")})
        parts += [
            "## Accuracy (against the FP32 reference on the same samples)",
            "",
            _table(("model", "precision", "INT8 made for", "backend", "samples", "top-1", "Δ top-1 vs fp32",
                    "critical classes"), rows),
            "",
            *[f"Note: {f}" for f in foreign],
            *([""] if foreign else []),
        ]
        n = len(classes) or max(len(per_class_recall(e["accuracy"], classes)) for e in acc_entries)
        names = classes or [str(i) for i in range(n)]
        recalls = [per_class_recall(e["accuracy"], names) for e in acc_entries]
        rows = []
        for i in range(len(names)):
            mark = " (critical)" if i in critical else ""
            rows.append((class_label(i, names) + mark, *[_fmt(r[i] if i < len(r) else None, 3) for r in recalls]))
        parts += [
            "## Per-class recall",
            "",
            _table(("class", *[f"{_entry_label(e)}" for e in acc_entries]), rows),
            "",
        ]
    for note in report.get("notes") or []:
        parts += [str(note), ""]
    errors = [e.get("accuracy", {}).get("error") for e in ok if isinstance(e.get("accuracy"), Mapping) and e["accuracy"].get("error")]
    for err in sorted(set(errors)):
        parts += [f"Accuracy not measured: {err}", ""]

    failed = [e for e in entries if e.get("status") != "ok"]
    if failed:
        rows = [
            (e.get("model", {}).get("path"), e.get("backend", {}).get("name"), e.get("batch"), e.get("status"), e.get("error"))
            for e in failed
        ]
        parts += ["## Not measured", "", _table(("model", "backend", "batch", "status", "why"), rows), ""]
    layers = render_layers(entries)
    if layers:
        parts += [layers, ""]
    for section in ("loadgen", "remote"):
        if report.get(section):
            parts += [f"## {section}", "", "```json", json.dumps(report[section], indent=2, default=str), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


def render_layers(entries: Sequence[Mapping[str, Any]], top: int = 15) -> str:
    """The per-layer section (``profile --layers``, :func:`edgeslim.devices.layers.layer_profile`): for each
    entry with a layer profile, the layers' sum against the end-to-end median, the ``top`` slowest layers and the
    time per op type; ``""`` when no entry has one."""
    parts: list[str] = []
    for e in entries:
        prof = e.get("layer_profile")
        if not prof:
            continue
        m = e.get("model") or {}
        parts += [f"### {m.get('path')} ({m.get('precision')}) on {(e.get('backend') or {}).get('name')},"
                  f" batch {e.get('batch')}", ""]
        if "error" in prof:
            parts += [f"Per-layer times not measured: {prof['error']}", ""]
            continue
        e2e, ratio = prof.get("end_to_end_ms"), prof.get("sum_over_end_to_end")
        line = f"{len(prof['layers'])} layers, each the median of {prof['runs']} runs; their sum {prof['sum_ms']:.3f} ms"
        if e2e and ratio is not None:
            line += f" against {e2e:.3f} ms end to end (median): {ratio:.0%} of it"
            line += ("; the rest is the call's overhead and the gaps between kernels" if ratio <= 1 else
                     "; above it, the profiler's own cost per layer (large against layers of microseconds) or a busy"
                     " host: read the shares, not the sum")
        rows = [(r["name"], r["type"], r["exec"], _fmt(r["ms"], 4), _pct(r["share"])) for r in prof["layers"][:top]]
        rest = prof["layers"][top:]
        if rest:
            rows.append((f"({len(rest)} more layers)", "", "", _fmt(sum(r["ms"] for r in rest), 4),
                         _pct(sum(r["share"] or 0.0 for r in rest))))
        parts += [line, "", _table(("layer", "op type", "kernel", "ms", "share"), rows), "",
                  _table(("op type", "layers", "ms", "share"),
                         [(g["type"], g["layers"], _fmt(g["ms"], 4), _pct(g["share"])) for g in prof["by_type"]]), ""]
    return "\n".join(["## Per-layer times", "", *parts]).rstrip() if parts else ""


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def class_label(i: int, classes: Sequence[str]) -> str:
    """A class as a table row names it: ``"3 cat"``, or just ``"3"`` when the name is the index (digits) or unknown."""
    name = classes[i] if 0 <= i < len(classes) else None
    return str(i) if name is None or str(name) == str(i) else f"{i} {name}"


def _cls_name(k: Any, classes: Sequence[str]) -> str:
    try:
        return class_label(int(k), classes)
    except (TypeError, ValueError):
        return str(k)


def _accuracy_entries(ok: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One entry per (model, backend) with accuracy (accuracy does not depend on the batch size)."""
    seen, out = set(), []
    for e in ok:
        acc = e.get("accuracy")
        if not isinstance(acc, Mapping) or "accuracy" not in acc:
            continue
        key = (e["model"]["path"], e["backend"]["name"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def render_fleet_markdown(report: Mapping[str, Any]) -> str:
    """The fleet table: one row per (target, model, backend, batch), plus accuracy per target (pure)."""
    parts = [f"# {report.get('title') or 'edgeslim fleet comparison'}", ""]
    src_rows = [(s["label"], s.get("artifact") or "-", s.get("created") or "-", s.get("entries")) for s in
                report.get("sources") or []]
    parts += ["## Reports", "", _table(("target", "artifact", "created", "entries"), src_rows), ""]
    for note in report.get("notes") or []:
        parts += [f"Note: {note}", ""]
    ok = [e for e in report.get("entries") or [] if e.get("status") == "ok"]
    rows = []
    for e in ok:
        lat = e.get("latency_ms") or {}
        pw = e.get("power") or {}
        tm = e.get("throughput_mode") or {}
        acc = e.get("accuracy") if isinstance(e.get("accuracy"), Mapping) else {}
        rows.append((
            e.get("_target"), e.get("artifact") or "-", e["model"]["path"], e["model"]["precision"],
            e["backend"]["name"], e.get("batch"), _fmt(lat.get("median")), _fmt(lat.get("p90")), _fmt(lat.get("p99")),
            _fmt((e.get("throughput") or {}).get("items_per_s"), 1),
            _fmt(tm.get("items_per_s"), 1) if "items_per_s" in tm else "-",
            _fmt(pw.get("mean_w"), 2) if pw.get("available") else "n/a",
            _fmt(pw.get("j_per_inference"), 4) if pw.get("available") else "n/a",
            _fmt(acc.get("accuracy"), 4) if acc else "-",
            _fmt(acc.get("critical_fn"), 0) if acc and acc.get("critical_fn") is not None else "-",
        ))
    parts += [
        "## Latency, throughput, power and accuracy per target",
        "",
        _table(("target", "artifact", "model", "precision", "backend", "batch", "median ms", "p90 ms", "p99 ms",
                "items/s (sync)", "items/s (throughput mode)", "mean W", "J/inference", "top-1", "critical FN"), rows),
        "",
    ]
    failed = [e for e in report.get("entries") or [] if e.get("status") != "ok"]
    if failed:
        parts += ["## Not measured", "", _table(("target", "model", "backend", "batch", "why"), [
            (e.get("_target"), (e.get("model") or {}).get("path"), (e.get("backend") or {}).get("name"), e.get("batch"),
             e.get("error")) for e in failed]), ""]
    return "\n".join(parts).rstrip() + "\n"
