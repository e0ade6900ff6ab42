"""Profiling reports: a versioned ``report.json``, a ``report.md`` of tables and a self-contained ``report.html``.

The JSON is the record (schema ``edgeslim.report/1``); the markdown and HTML are pure renderings of it, so a
report can be re-rendered or merged with reports from other targets (:func:`compare_reports`) later.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .._io import atomic_write_json, atomic_write_text
from ..errors import ArtifactError, ConfigError

SCHEMA = "edgeslim.report/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def make_report(
    entries: Sequence[Mapping[str, Any]],
    *,
    artifact_dir: str | os.PathLike | None = None,
    target: Mapping[str, Any] | None = None,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Wrap profiler entries in a versioned report.

    Args:
        entries: what :func:`~edgeslim.devices.profiler.profile_artifact` returned (possibly from several calls).
        artifact_dir: the profiled artifact; its name, classes and critical classes are recorded.
        target: the detected device (``detect()``); default: this host's CPU.
        title: a heading for the rendered pages.
        extra: more top-level sections (e.g. ``{"loadgen": ...}``).
    """
    from .cpu import cpu_info

    artifact: dict[str, Any] = {}
    if artifact_dir is not None:
        from ..artifact import load_manifest

        m = load_manifest(artifact_dir, verify=False)
        artifact = {
            "name": m.name,
            "path": str(artifact_dir),
            "arch": m.arch,
            "classes": list(m.classes),
            "critical": list(m.critical),
        }
    from .. import __version__

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "title": title or (f"edgeslim profile: {artifact['name']}" if artifact else "edgeslim profile"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgeslim_version": __version__,
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": cpu_info(),
        },
        "target": dict(target) if target else None,
        "artifact": artifact,
        "entries": [dict(e) for e in entries],
    }
    if extra:
        report.update(dict(extra))
    return report


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``report.json`` (or a directory holding one) and check its schema.

    Raises:
        ArtifactError: missing or unreadable file, or not an edgeslim report / a newer schema.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise ArtifactError(f"report {path} does not exist; run `edgeslim profile` to create one")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"report {path} is unreadable: {exc}") from exc
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith("edgeslim.report/"):
        raise ArtifactError(f"{path} is not an edgeslim report (schema {schema!r}; expected {SCHEMA!r})")
    version = schema.rpartition("/")[2]
    if not version.isdigit() or int(version) > int(SCHEMA.rpartition("/")[2]):
        raise ArtifactError(f"{path} has schema {schema}; this edgeslim reads up to {SCHEMA}: upgrade edgeslim")
    data.setdefault("_path", str(path))
    return data


def write_report(
    path_dir: str | os.PathLike, report: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, html: bool = True
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and (with ``html``) ``report.html`` into ``path_dir``, atomically.

    Args:
        path_dir: output directory (created).
        report: a report from :func:`make_report`, or a list of profiler entries (wrapped with defaults).
        html: also render the self-contained HTML page with plots (needs matplotlib).

    Returns:
        ``{"json": path, "md": path, "html": path}`` of what was written.
    """
    if not isinstance(report, Mapping):
        report = make_report(list(report))
    if report.get("schema") != SCHEMA:
        raise ConfigError(f"report has schema {report.get('schema')!r}; build it with make_report() ({SCHEMA})")
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in report.items() if not k.startswith("_")}
    written = {"json": atomic_write_json(out / REPORT_JSON, clean), "md": atomic_write_text(out / REPORT_MD, render_markdown(clean))}
    if html:
        from .html import render_html

        written["html"] = atomic_write_text(out / REPORT_HTML, render_html(clean))
    return written


# -- markdown (pure) ----------------------------------------------------------------------------------------------
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


def class_names(report: Mapping[str, Any]) -> list[str]:
    """The class names of a report's artifact (empty when unknown)."""
    return list((report.get("artifact") or {}).get("classes") or [])


def critical_set(report: Mapping[str, Any]) -> set[int]:
    return {int(c) for c in (report.get("artifact") or {}).get("critical") or []}


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
            rows.append(
                (
                    e["model"]["path"], e["model"]["precision"], e["backend"]["name"], acc.get("samples", "-"),
                    _fmt(acc.get("accuracy"), 4), _signed(d.get("accuracy")), crit_txt or "-",
                )
            )
        parts += [
            "## Accuracy (against the FP32 reference on the same samples)",
            "",
            _table(("model", "precision", "backend", "samples", "top-1", "Δ top-1 vs fp32", "critical classes"), rows),
            "",
        ]
        n = len(classes) or max(len(per_class_recall(e["accuracy"], classes)) for e in acc_entries)
        names = classes or [str(i) for i in range(n)]
        recalls = [per_class_recall(e["accuracy"], names) for e in acc_entries]
        rows = []
        for i, name in enumerate(names):
            mark = " (critical)" if i in critical else ""
            rows.append((class_label(i, names) + mark, *[_fmt(r[i] if i < len(r) else None, 3) for r in recalls]))
        parts += [
            "## Per-class recall",
            "",
            _table(("class", *[f"{_entry_label(e)}" for e in acc_entries]), rows),
            "",
        ]
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
    for section in ("loadgen", "remote"):
        if report.get(section):
            parts += [f"## {section}", "", "```json", json.dumps(report[section], indent=2, default=str), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


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


# -- fleet view ---------------------------------------------------------------------------------------------------
def _source_label(report: Mapping[str, Any], index: int) -> str:
    target = report.get("target") or {}
    host = report.get("host") or {}
    name = target.get("name") or (host.get("cpu") or {}).get("model") or f"report {index + 1}"
    where = host.get("hostname")
    return f"{name} @ {where}" if where else str(name)


def compare_reports(
    reports: Sequence[str | os.PathLike | Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Merge reports from several targets (the fleet view: the same model on x86, a GPU and an Orin).

    Args:
        reports: ``report.json`` paths, directories holding one, or report dicts; at least two.
        out_dir: if given, write ``report.json`` / ``report.md`` / ``report.html`` of the merged report there.
        title: heading of the merged page.

    Returns:
        A report dict with ``fleet: True``, ``sources`` (one summary per input report) and every entry of every
        report, each labelled with its source in ``_target``.

    Raises:
        ArtifactError: a path is missing or not an edgeslim report.
        ConfigError: fewer than two reports.
    """
    loaded = [load_report(r) if not isinstance(r, Mapping) else dict(r) for r in reports]
    if len(loaded) < 2:
        raise ConfigError(f"compare_reports needs at least two reports, got {len(loaded)}")
    sources, entries = [], []
    class_sets = {tuple(class_names(r)) for r in loaded}
    for i, r in enumerate(loaded):
        label = _source_label(r, i)
        sources.append({
            "label": label,
            "path": r.get("_path"),
            "created": r.get("created"),
            "artifact": (r.get("artifact") or {}).get("name"),
            "target": (r.get("target") or {}).get("name"),
            "cpu": ((r.get("host") or {}).get("cpu") or {}).get("model"),
            "entries": len(r.get("entries") or []),
        })
        for e in r.get("entries") or []:
            entries.append({**e, "_target": label})
    first = loaded[0]
    merged = {
        "schema": SCHEMA,
        "fleet": True,
        "title": title or "edgeslim fleet comparison",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        # Per-class plots need one class list; keep it only when every report profiled the same classes.
        "artifact": dict(first.get("artifact") or {}) if len(class_sets) == 1 else {},
        "notes": [] if len(class_sets) == 1 else ["the reports profile models with different classes; "
                                                  "per-class views are omitted"],
        "entries": entries,
    }
    if out_dir is not None:
        write_report(out_dir, merged)
    return merged


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
