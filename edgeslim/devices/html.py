"""A self-contained ``report.html``: the markdown tables plus matplotlib plots embedded as base64 PNGs.

Plots: the latency distribution per backend / precision (box plot of the per-call samples), accuracy against
median latency across artifacts and backends, and the false negatives per class with the critical classes marked.
No external assets, scripts or fonts: the file opens offline and can be attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Mapping, Sequence

from .markdown import _accuracy_entries, class_names, critical_set, render_markdown


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(e: Mapping[str, Any], with_artifact: bool = False) -> str:
    m = e.get("model") or {}
    base = f"{m.get('precision', '?')} {e.get('backend', {}).get('name', '?')} b{e.get('batch')}"
    prefix = ""
    if with_artifact:
        prefix = f"{e.get('_target') or e.get('artifact') or ''} "
    return (prefix + base).strip()


def plot_latency(entries: Sequence[Mapping[str, Any]], *, with_artifact: bool = False) -> str | None:
    """Box plot of per-call latency per (precision, backend, batch); base64 PNG, or None without samples."""
    ok = [e for e in entries if e.get("status") == "ok" and e.get("samples_ms")]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(ok) + 2), 3.6))
    ax.boxplot([e["samples_ms"] for e in ok], showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(ok) + 1), [_label(e, with_artifact) for e in ok], rotation=30, ha="right")
    # Log scale: rare scheduler stalls are 10-100x the median and would flatten the boxes on a linear axis.
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log scale)")
    ax.set_title("Latency distribution (compute only)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_accuracy_vs_latency(entries: Sequence[Mapping[str, Any]], *, with_artifact: bool = False) -> str | None:
    """Top-1 accuracy against median latency, one point per (model, backend) at its smallest batch."""
    pts = []
    for e in _accuracy_entries([e for e in entries if e.get("status") == "ok"]):
        pts.append((e["latency_ms"]["median"], e["accuracy"]["accuracy"], _label(e, with_artifact)))
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for x, y, label in pts:
        ax.scatter([x], [y], s=30)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_false_negatives(entries: Sequence[Mapping[str, Any]], classes: Sequence[str], critical: set[int],
                         *, with_artifact: bool = False) -> str | None:
    """Grouped bars of false negatives per class and (model, backend); critical classes hatched and labelled."""
    acc = [e for e in _accuracy_entries([e for e in entries if e.get("status") == "ok"])
           if isinstance(e["accuracy"].get("per_class"), list)]
    if not acc:
        return None
    n = len(classes) or len(acc[0]["accuracy"]["per_class"])
    names = list(classes) or [str(i) for i in range(n)]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * n + 2), 3.6))
    width = 0.8 / len(acc)
    for j, e in enumerate(acc):
        fns = [(pc.get("fn") or 0) if isinstance(pc, Mapping) else 0 for pc in e["accuracy"]["per_class"][:n]]
        xs = [i + j * width - 0.4 + width / 2 for i in range(len(fns))]
        bars = ax.bar(xs, fns, width, label=_label(e, with_artifact))
        for i, bar in enumerate(bars):
            if i in critical:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
    ax.set_xticks(range(n), [f"{nm} (critical)" if i in critical else nm for i, nm in enumerate(names)],
                  rotation=30, ha="right")
    for i, tick in enumerate(ax.get_xticklabels()):
        if i in critical:
            tick.set_color("#b00020")
            tick.set_fontweight("bold")
    ax.set_ylabel("false negatives")
    ax.set_title("False negatives per class (critical classes hatched)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_pareto_front(candidates: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], *,
                      pick: Mapping[str, Any] | None = None) -> str | None:
    """A budget search's candidates: p90 latency against critical FNR at the FPR, colour = top-1, the Pareto
    front joined by a line, infeasible candidates hollow, the pick circled; base64 PNG, or None without any."""
    if not candidates:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    top1 = [c["top1"] for c in candidates]
    lo, hi = min(top1), max(top1)
    cmap = plt.get_cmap("viridis")
    for c in candidates:
        colour = cmap(0.5 if hi == lo else (c["top1"] - lo) / (hi - lo))
        ax.scatter([c["latency_ms"]], [c["critical_fnr"]], s=40, facecolors=colour if c.get("feasible") else "none",
                   edgecolors=colour)
    f = sorted(front, key=lambda p: p["latency_ms"])
    if f:
        ax.plot([p["latency_ms"] for p in f], [p["critical_fnr"] for p in f], "--", color="grey", lw=1)
        for p in f:
            ax.annotate(p.get("label", ""), (p["latency_ms"], p["critical_fnr"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    if pick is not None:
        ax.scatter([pick["latency_ms"]], [pick["critical_fnr"]], s=180, facecolors="none", edgecolors="red", lw=1.5)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label="val top-1")
    ax.set_xlabel("p90 latency on the target (ms)")
    ax.set_ylabel("critical FNR at the FPR (val)")
    ax.set_title("Budget search: candidates (hollow = infeasible), front, pick (red)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _md_to_html(md: str) -> str:
    """The small markdown subset :func:`render_markdown` emits (headings, tables, code blocks, paragraphs)."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
            continue
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{html.escape(ln[level:].strip())}</h{level}>")
        elif ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1

            def cells(row: str) -> list[str]:
                parts, cur, k = [], "", 1
                while k < len(row):
                    c = row[k]
                    if c == "\\" and k + 1 < len(row) and row[k + 1] == "|":
                        cur += "|"
                        k += 2
                        continue
                    if c == "|":
                        parts.append(cur.strip())
                        cur = ""
                    else:
                        cur += c
                    k += 1
                return parts

            head = cells(rows[0])
            body = [cells(r) for r in rows[2:]]
            t = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
            for r in body:
                cls = ' class="critical"' if any("(critical)" in c for c in r) else ""
                t.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            t.append("</tbody></table>")
            out.append("".join(t))
            continue
        elif ln.strip():
            out.append(f"<p>{html.escape(ln)}</p>")
        i += 1
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d1d1f;max-width:1400px}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.critical td{background:#fff0f0;font-weight:600}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}
img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem}
"""


def render_html(report: Mapping[str, Any], *, markdown: str | None = None) -> str:
    """Render a report (or a merged fleet report) as one self-contained HTML page.

    Args:
        report: a report dict (``schema`` ``edgeslim.report/1``) or a merged one from ``compare_reports``.
        markdown: the tables to show (default: :func:`render_markdown` of ``report``).
    """
    entries = list(report.get("entries") or [])
    fleet = bool(report.get("fleet"))
    classes = class_names(report)
    critical = critical_set(report)
    figures = [
        ("Latency distribution per backend, precision and batch", plot_latency(entries, with_artifact=fleet)),
        ("Top-1 accuracy against median latency", plot_accuracy_vs_latency(entries, with_artifact=fleet)),
        ("False negatives per class; critical classes are hatched and labelled in red",
         plot_false_negatives(entries, classes, critical, with_artifact=fleet)),
    ]
    found = report.get("search")
    if isinstance(found, Mapping):
        figures.insert(0, ("Pareto front: p90 latency against critical FNR at the FPR (colour: val top-1)",
                           plot_pareto_front(found.get("candidates") or [], found.get("front") or [],
                                             pick=found.get("pick"))))
    body = _md_to_html(markdown if markdown is not None else render_markdown(report))
    figs = "\n".join(
        f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,{png}"><figcaption>{html.escape(cap)}'
        "</figcaption></figure>"
        for cap, png in figures
        if png
    )
    title = html.escape(str(report.get("title") or "edgeslim profile"))
    raw = html.escape(json.dumps({k: v for k, v in report.items() if k != "entries"}, indent=1, default=str))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n<h2>Plots</h2>\n{figs or '<p>No measurements to plot.</p>'}\n"
        f"<details><summary>Report metadata (JSON)</summary><pre>{raw}</pre></details>\n</body></html>\n"
    )
