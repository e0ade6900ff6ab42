"""Profiling reports: a versioned ``report.json``, a ``report.md`` of tables and a self-contained ``report.html``.

The JSON is the record (schema ``edgeslim.report/1``); the markdown (:mod:`~edgeslim.devices.markdown`) and HTML
(:mod:`~edgeslim.devices.html`) are pure renderings of it, so a report can be re-rendered or merged with reports
from other targets (:func:`compare_reports`) later. The renderings are re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import atomic_write_json, atomic_write_text
from ..errors import ArtifactError, ConfigError
from .markdown import class_label as class_label
from .markdown import class_names as class_names
from .markdown import critical_set as critical_set
from .markdown import per_class_recall as per_class_recall
from .markdown import render_fleet_markdown as render_fleet_markdown
from .markdown import render_markdown as render_markdown

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
    from .._version import __version__

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
