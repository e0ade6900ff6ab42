"""What a search says: the front, the ruled-out lines, the binding constraint, the progress bar and the report files.

Nothing here runs a candidate: :mod:`edgeslim.search.study` hands over the finished trials (as points, one plain dict
per fine-tuned candidate) and the study's measurements, and this module turns them into ``front.json``,
``ruled-out.txt``, ``report.json`` / ``report.md`` / ``report.html`` and the sentences of a :class:`SearchError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .._io import atomic_write_json, atomic_write_text
from .candidate import Candidate
from .config import SearchSection

__all__ = ["SearchResult", "point", "pareto", "ruled_out_lines", "binding", "write_outputs", "markdown", "Progress"]


@dataclass
class SearchResult:
    """What a search produced."""

    out_dir: Path
    target: dict[str, Any]
    front: list[dict[str, Any]]
    pick: dict[str, Any] | None
    ruled_out: list[str]
    dense: dict[str, Any]
    seconds: float
    trials: int
    predictor_error: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    sensitivity: dict[str, Any] | None = None  # per stage, measured on the dense reference (per-stage choices)
    latency_budget_ms: float | None = None  # the p90 budget as judged (a latency_fraction resolved)
    latency_reference: dict[str, Any] | None = None  # the anchor every latency is scaled to, when paired


def _constraints_of(t: Any) -> dict[str, float]:
    """A finished trial's constraint values by name (<= 0: feasible), as the objective recorded them."""
    return dict(zip(t.user_attrs.get("constraint_names", []), t.user_attrs.get("constraints", [])))


def point(t: Any) -> dict[str, Any]:
    """One fine-tuned candidate (a finished trial) as a row of the front and of ``front.json``."""
    c = Candidate.from_trial(t)
    cons = _constraints_of(t)
    return {
        "trial": t.number, "candidate": c.to_dict(), "label": c.label, "latency_ms": float(t.values[0]),
        "critical_fnr": float(t.values[1]), "top1": float(t.values[2]),
        "critical_fn": t.user_attrs["val"]["critical_fn"], "size_mb": t.user_attrs["latency"]["size_mb"],
        "feasible": all(v <= 0 for v in cons.values()), "violations": {k: v for k, v in cons.items() if v > 0},
        "dir": t.user_attrs["val"]["dir"],
    }


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated points (lower latency, lower critical FNR, higher top-1), feasible or not, by latency.

    Not ``study.best_trials``: for a study with constraints, Optuna (5.x, the version the ``search`` extra
    requires) returns the front of the *feasible* trials only, and an empty list when none is feasible. The report's
    front is the trade-off the budgets cut through: its infeasible points, with what they miss by, show how far a
    budget is from reachable, and they are what a search that found no pick has to show. The pick is the fastest
    feasible candidate (on Optuna's feasible front); an infeasible point can dominate it, so it may be off this front
    and is reported on its own.
    """
    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ka = (a["latency_ms"], a["critical_fnr"], -a["top1"])
        kb = (b["latency_ms"], b["critical_fnr"], -b["top1"])
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb

    return sorted([p for p in points if not any(dominates(q, p) for q in points)], key=lambda p: p["latency_ms"])


def ruled_out_lines(section: SearchSection, before: Iterable[str], pruned: Iterable[str | None],
                    archs: Iterable[dict[str, Any]], complete: list[dict[str, Any]],
                    dense: dict[str, Any]) -> list[str]:
    """Every region and candidate left out, each with why: ``before`` (the space's lines), the reasons of the
    trials pruned before training, the fine-tuned candidates that missed a budget (by how much), and the precisions
    the architecture measurements (``archs``, the study's cache) show to be no faster."""
    lines = list(before)
    seen = set()
    for why in pruned:
        if why and why not in seen:
            seen.add(why)
            lines.append(why)
    for p in complete:
        if p["feasible"]:
            continue
        bits = []
        for k, v in p["violations"].items():
            if k == "critical_fn":
                bits.append(f"+{p['critical_fn'] - dense.get('critical_fn', 0)} critical FN against dense"
                            f" ({p['critical_fn']} > budget {section.max_critical_fn})")
            elif k == "critical_fnr":
                bits.append(f"critical FNR {p['critical_fnr']:.3f} at FPR {section.at_fpr} > budget"
                            f" {section.max_critical_fnr}")
            elif k == "extra_critical_fn":
                bits.append(f"{p['critical_fn']} critical FN, {p['critical_fn'] - dense['critical_fn']:+d} against"
                            f" dense's {dense['critical_fn']} (> max extra {section.max_extra_critical_fn})")
            elif k == "extra_critical_fnr":
                ref = dense.get("critical_fnr_at_fpr") or 0.0
                bits.append(f"critical FNR {p['critical_fnr']:.3f} at FPR {section.at_fpr}, "
                            f"{p['critical_fnr'] - ref:+.3f} against dense's {ref:.3f} (> max extra"
                            f" {section.max_extra_critical_fnr})")
            elif k == "top1_drop":
                bits.append(f"top-1 {p['top1']:.4f}, {dense['top1'] - p['top1']:+.4f} below dense (> max drop"
                            f" {section.max_top1_drop})")
            else:
                bits.append(f"{k} over budget by {v:.3f}")
        lines.append(f"{p['label']}: " + "; ".join(bits))
    # precision regions the measurements rule out: INT8 slower than FP32 for the same architecture
    by: dict[tuple[Any, int | None], dict[tuple[str, str | None], float]] = {}
    for v in archs:
        c = Candidate.from_params(v["candidate"])
        by.setdefault((c.prune, c.image_size), {})[(c.precision, c.float_layers)] = v["p90_ms"]
    for (prune, size), d in by.items():
        # every INT8 variant of it (stem in float or not) at least as slow as FP32: the fastest one decides
        fp32 = d.get(("fp32", None))
        int8 = min((ms for (p, _), ms in d.items() if p == "int8"), default=None)
        if fp32 is not None and int8 is not None and int8 >= fp32:
            lines.append(f"INT8 slower than FP32 on this target for {prune.short} {size}px:"
                         f" p90 {int8:.3f} ms vs {fp32:.3f} ms")
    return lines


def pick_measured(feasible: list[dict[str, Any]], budget_ms: float | None,
                  measure: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """The fastest feasible candidate whose trained file holds the latency budget.

    A candidate is admitted on its architecture's latency (random weights); the pick is what a user deploys, so its
    budget is judged on its trained, exported file (``measure(p)`` sets ``p["measured_p90_ms"]``). Side by side the
    two differ by about a tenth on the VNNI host (the same kernels run slower on the random weights there). Feasible
    candidates are tried in order of their estimate; one whose file misses the budget is marked infeasible with
    ``violations["latency_measured"]`` (ms over), and the next is measured.
    """
    for p in sorted(feasible, key=lambda p: (p["latency_ms"], p["critical_fnr"], -p["top1"])):
        if budget_ms is None:
            return p
        measure(p)
        if p["measured_p90_ms"] <= budget_ms:
            return p
        p["feasible"] = False
        p["violations"]["latency_measured"] = p["measured_p90_ms"] - budget_ms
    return None


def binding(section: SearchSection, complete: list[dict[str, Any]]) -> str:
    """The sentence a search without a pick ends on: the constraint most candidates fail, and the nearest point."""
    counts: dict[str, int] = {}
    for p in complete:
        for k in p["violations"]:
            counts[k] = counts.get(k, 0) + 1
    if not complete:
        return "every candidate was ruled out before training (see the lines above)"
    # the nearest point: the smallest total violation, each normalised by its budget
    s = section
    scale = {"latency": s.latency_budget_ms or 1, "latency_measured": s.latency_budget_ms or 1, "size": s.max_size_mb or 1,
             "critical_fn": max(1, s.max_critical_fn or 1), "critical_fnr": max(0.01, s.max_critical_fnr or 0.01),
             "extra_critical_fn": max(1, s.max_extra_critical_fn or 1),
             "extra_critical_fnr": max(0.01, s.max_extra_critical_fnr or 0.01),
             "top1_drop": max(0.001, s.max_top1_drop)}
    near = min(complete, key=lambda p: sum(v / scale.get(k, 1) for k, v in p["violations"].items()))
    binds = max(counts, key=lambda k: counts[k]) if counts else "none"
    return (f"the binding constraint is {binds} ({counts.get(binds, 0)} of {len(complete)} fine-tuned candidates"
            f" fail it); nearest point: {near['label']} (p90 {near['latency_ms']:.3f} ms, top-1 {near['top1']:.4f},"
            f" critical FN {near['critical_fn']}, FNR@FPR {near['critical_fnr']:.3f}; over by "
            + ", ".join(f"{k} {v:.3g}" for k, v in near["violations"].items()) + ")")


class Progress:
    """A rich progress bar: trials done of the budget, the current best feasible latency, the time left."""

    def __init__(self, enabled: bool, total: int, done: int, budget_s: float, t0: float) -> None:
        self.enabled, self.total, self.done, self.budget_s, self.t0 = enabled, total, done, budget_s, t0
        self.progress: Any = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.description}"), transient=False)
            self.progress.start()
            self.task = self.progress.add_task(self._text(None), total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _text(self, study: Any) -> str:
        left = max(0.0, self.budget_s - (time.perf_counter() - self.t0))
        best = "no feasible candidate yet"
        if study is not None:
            feas = study.best_trials  # in a study with constraints: the front of the feasible trials (see pareto)
            if feas:
                b = min(feas, key=lambda t: t.values[0])
                best = (f"best {b.values[0]:.3f} ms, top-1 {b.values[2]:.4f}, crit FN "
                        f"{b.user_attrs['val']['critical_fn']}")
        return f"{best} | {left:.0f} s of budget left"

    def update(self, study: Any, trial: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=self._text(study))


def write_outputs(out_dir: Path, title: str, doc: dict[str, Any]) -> dict[str, str]:
    """``front.json`` (``doc``), ``ruled-out.txt``, and the report as JSON, markdown and HTML; returns their paths."""
    from ..devices.html import render_html
    from ..devices.report import make_report

    files = {"front": str(atomic_write_json(out_dir / "front.json", doc)),
             "ruled_out": str(atomic_write_text(out_dir / "ruled-out.txt", "\n".join(doc["ruled_out"]) + "\n"))}
    report = make_report([], title=title, extra={"search": doc})
    md = markdown(doc)
    files["json"] = str(atomic_write_json(out_dir / "report.json", report))
    files["md"] = str(atomic_write_text(out_dir / "report.md", md))
    # render_html draws the Pareto front from report["search"] (latency vs critical FNR, coloured by top-1)
    files["html"] = str(atomic_write_text(out_dir / "report.html", render_html(report, markdown=md)))
    return files


def markdown(doc: dict[str, Any]) -> str:
    """``report.md``: the target, the dense reference, the front table, the pick, the stage sensitivity, the
    latency model's error, the ruled-out lines and the registered methods."""
    t = doc["target"]
    lines = [f"# edgeslim search on {t['name']} ({t['backend']}, CPU {t.get('cpu')}, ISA "
             f"{', '.join(t.get('cpu_isa') or []) or '-'}"
             + (f", capped at {t['isa_cap']}" if t.get("isa_cap") else "") + ")", ""]
    d = doc["dense"]
    lines += [f"Dense reference (val): top-1 {d['top1']:.4f}, critical FN {d['critical_fn']}, p90 {d['latency']:.3f} ms",
              "", "## Pareto front (val; latency p90 on the target)", "",
              "| candidate | p90 ms (search) | p90 ms (profiler, trained file) | top-1 | crit FN | crit FNR@FPR | size MB"
              " | feasible |",
              "|---|---|---|---|---|---|---|---|"]
    for p in doc["front"]:
        lines.append(f"| {p['label']} | {p['latency_ms']:.3f} | {p.get('measured_p90_ms', float('nan')):.3f} | "
                     f"{p['top1']:.4f} | {p['critical_fn']} | {p['critical_fnr']:.3f} | {p['size_mb']:.2f} | "
                     f"{'yes' if p['feasible'] else 'no: ' + ', '.join(p['violations'])} |")
    if doc["pick"]:
        p = doc["pick"]
        te = p.get("test") or {}
        lines += ["", f"**Pick:** {p['label']}: p90 {p['latency_ms']:.3f} ms; test (exported file): top-1 "
                  f"{te.get('top1', float('nan')):.4f}, critical FN {te.get('critical_fn')}, per-class recall "
                  + ", ".join("-" if r is None else f"{r:.3f}" for r in te.get("per_class_recall", []))]
        stages = Candidate.from_params(p["candidate"]).stage_ratio_map
        if stages:
            lines += ["", "Its per-stage channel ratios: " + ", ".join(f"{k} {v:g}" for k, v in stages.items())]
    sens = doc.get("sensitivity")
    if sens:
        used = sens.get("signal", "mean")
        lines += ["", f"## Stage sensitivity (dense reference, each stage alone at ratio {sens['probe_ratio']:g},"
                  f" no fine-tune; the allocation follows the {used} loss)", "",
                  "| stage | critical-class val loss increase | mean val loss increase | prunable conv params |"
                  " largest safe ratio |", "|---|---|---|---|---|"]

        def _inc(v: Any) -> str:
            return "-" if v is None else f"{v:+.4f}"

        for k, v in sens["stages"].items():
            mean = v.get("mean_loss_increase", v["loss_increase"] if used == "mean" else None)
            lines.append(f"| {k} | {_inc(v.get('critical_loss_increase'))} | {_inc(mean)} | {v['params']} |"
                         f" {v['max_ratio']:g} |")
    lines += ["", "## Latency model (leave-one-out error against measurement)", ""]
    for prec, e in doc["predictor_error"].items():
        mape = ("n/a (fewer than 3 points)" if e["mape"] is None
                else f"{100 * e['mape']:.1f} % mean, {100 * e['max']:.1f} % max")
        lines.append(f"- {prec}: {e['n']} architectures, {mape}")
    lines += ["", "## Ruled out", ""] + [f"- {x}" for x in doc["ruled_out"]]
    methods = (doc.get("space") or {}).get("methods") or {}
    if methods:
        lines += ["", "## Registered pruning methods on this target", ""]
        lines += [f"- {name}: {note}" for name, note in methods.items()]
    lines += ["", f"Search wall time {doc['seconds']:.1f} s, {doc['trials']} trials; storage {doc['storage']}", ""]
    return "\n".join(lines)
