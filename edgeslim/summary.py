"""The pipeline's summary: one row per exported model file (accuracy, critical FN/FNR/FPR/AUC, sparsity, size,
latency), written into report.json / report.md and printed as a table by ``edgeslim pipeline``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_text
from .artifact import Manifest

if TYPE_CHECKING:  # pragma: no cover
    from .recipe import Recipe


@dataclass
class PipelineResult:
    """What one pipeline run produced (paths, metrics, profile entries, timings); :func:`edgeslim.pipeline.run_pipeline`
    fills it and this module renders it (it lives here, beside its renderer, so that the summary imports nothing of
    the composer back; ``edgeslim.pipeline.PipelineResult`` is the same class)."""

    out_dir: Path
    recipe: Recipe
    artifacts: dict[str, Path] = field(default_factory=dict)  # "dense" / "compressed" -> directory
    manifests: dict[str, Manifest] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # "dense" / "compressed" -> test metrics dict
    profile: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: per artifact, per model file: its accuracy on val and test measured by the runtime that runs it
    #: (:func:`edgeslim.devices.profiler.score_artifact`); the summary's rows are read from here
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: model files left out of an artifact ({"model", "file", "format", "precision", "reason"}): a partial run
    failed: list[dict[str, Any]] = field(default_factory=list)
    #: what compression did other than asked, in words (e.g. layers channel pruning kept whole): the summary lists
    #: them and the compressed artifact's manifest keeps them
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Whether a format or precision was left out (the CLI then exits with :data:`edgeslim.pipeline.EXIT_PARTIAL`)."""
        return bool(self.failed)
    training: dict[str, Any] = field(default_factory=dict)  # e.g. "fpr_budget": whether the loss held it


def _file_mb(artifact: Path, manifest: Manifest, path: str) -> float:
    """Size of a model file (an OpenVINO IR counts its .bin too)."""
    p = artifact / path
    size = p.stat().st_size
    if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
        size += p.with_suffix(".bin").stat().st_size
    return size / 1e6


def _figures(acc: dict[str, Any] | None) -> dict[str, Any]:
    """The figures a summary row shows of one split, from a :meth:`ClassificationMetrics.to_dict` (or ``{}``)."""
    if not acc or "accuracy" not in acc:
        return {}
    crit = {int(k): v for k, v in (acc.get("critical_stats") or {}).items()}
    per_class = acc.get("per_class") or []
    return {
        "samples": acc.get("samples", acc.get("n")),
        "accuracy": acc.get("accuracy"),
        "per_class_recall": {str(p.get("class", i)): p.get("recall") for i, p in enumerate(per_class)},
        "majority": max((p.get("support", 0) for p in per_class), default=0) / max(1, acc.get("n") or 1),
        "critical_recall": [None if v.get("fnr") is None else 1.0 - v["fnr"] for v in crit.values()],
        "critical_fn": sum(v["fn"] for v in crit.values()),
        "critical_support": sum(per_class[c].get("support", 0) for c in crit if c < len(per_class)),
        "critical_fnr": [v.get("fnr") for v in crit.values()],
        "critical_fpr": [v.get("fpr") for v in crit.values()],
        "critical_auc": [v.get("auc") for v in crit.values()],
    }


def summary_rows(result: "PipelineResult") -> list[dict[str, Any]]:
    """One row per (artifact, model file): the file's accuracy, per-class recall and critical FN / FNR / FPR / AUC
    on the test split (and on val, where the recommendation is judged), each measured by the runtime that runs
    that file at its deployed thresholds (``measured_by``; ``None`` with ``not_measured`` when no runtime here
    runs it), sparsity, parameters, file size and batch-1 median latency per backend that timed it."""
    rows = []
    for key, manifest in result.manifests.items():
        art = result.artifacts[key]
        m = result.metrics[key]
        scores = result.scores.get(key) or {}
        for mf in manifest.models:
            if mf.format == "torch":
                continue
            entries = [e for e in result.profile if e["model"]["path"] == f"{key}/{mf.path}"]
            ok = [e for e in entries if e.get("status") == "ok"]
            score = scores.get(mf.path) or {}
            test = _figures((score.get("splits") or {}).get("test"))
            row: dict[str, Any] = {
                "model": key,
                "critical_names": [manifest.classes[c] for c in manifest.critical if 0 <= c < len(manifest.classes)],
                "thresholds": manifest.thresholds_for(mf),
                "decision_rule": manifest.decision_rule,
                "file": mf.path,
                "format": mf.format,
                "precision": mf.precision,
                "measured_by": score.get("measured_by"),
                "accuracy": None, "critical_fn": None, "critical_recall": None, "critical_fnr": None,
                "critical_fpr": None, "critical_auc": None,
                **{k: v for k, v in test.items() if k != "majority"},
                "val": _figures((score.get("splits") or {}).get("val")),
                "weight_sparsity": m.get("weight_sparsity"),
                "params": m["params"],
                "nonzero_params": m["nonzero_params"],
                "size_mb": _file_mb(art, manifest, mf.path),
                "latency_ms": {e["backend"]["name"]: e["latency_ms"]["median"] for e in ok if e.get("batch") == 1},
                "latency_p90_ms": {e["backend"]["name"]: e["latency_ms"]["p90"] for e in ok if e.get("batch") == 1},
                # backends timed at the host's full ISA while an ISA cap emulated an older kind for the others
                "outside_isa_cap": sorted({e["backend"]["name"] for e in ok if e.get("batch") == 1
                                           and ((e.get("conditions") or {}).get("isa_cap") or {}).get("held") is False}),
            }
            row["majority"] = test.get("majority")
            if not test:
                row["not_measured"] = score.get("error") or (
                    "not scored (the pipeline ran without the export stage)" if not scores else "not scored")
            rows.append(row)
        for f in (manifest.validation or {}).get("failed", []):
            rows.append({"model": key, "file": f.get("file"), "format": f["format"], "precision": f["precision"],
                         "left_out": f["reason"], "latency_ms": {}})
    return rows


# -- the deployable file ----------------------------------------------------------------------------------------------
def recommendation_budgets(recipe: Any) -> dict[str, Any]:
    """What a file must hold on val to be recommended, against the dense FP32 file on the same val samples: top-1
    at most ``max_top1_drop`` below it (the search section's, else its default) and no more extra missed critical
    samples than the validate section's budget (``max_extra_critical_fn``, else ``max_extra_critical_fnr`` of the
    val split's critical samples, at least 1: :func:`edgeslim.export.validate.critical_fn_limit`); with a search
    section, its ``max_extra_critical_fn`` instead when given, and its absolute ``max_critical_fn``."""
    from .search.config import SearchSection

    s = recipe.search if recipe.search is not None else SearchSection()
    v = recipe.validate_
    fixed = getattr(s, "max_extra_critical_fn", None)  # the search's own relative count, when the recipe gives one
    return {"max_top1_drop": s.max_top1_drop,
            "max_extra_critical_fn": fixed if fixed is not None else v.max_extra_critical_fn,
            "max_extra_critical_fnr": getattr(v, "max_extra_critical_fnr", None), "max_critical_fn": s.max_critical_fn}


def _extra_fn_limit(budgets: dict[str, Any], critical_samples: int) -> int:
    """The validate section's extra-critical-FN budget on a split of ``critical_samples`` (the budget rule alone:
    the summary holds no paired decisions for the export's McNemar term)."""
    from .export.validate import critical_fn_limit
    from .recipe import ValidateSection

    fields = {"max_extra_critical_fn": budgets.get("max_extra_critical_fn"), "critical_fn_alpha": None}
    if budgets.get("max_extra_critical_fnr") is not None:
        fields["max_extra_critical_fnr"] = budgets["max_extra_critical_fnr"]
    return int(critical_fn_limit(ValidateSection(**fields), critical_samples, 0, 0)["limit"])


def _options(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (file, backend) that was both scored and timed at batch 1: what can be deployed and compared."""
    return [{"row": r, "backend": b, "median": ms, "p90": (r.get("latency_p90_ms") or {}).get(b, ms)}
            for r in rows if not r.get("left_out") for b, ms in sorted(r["latency_ms"].items())]


def _where(r: dict[str, Any]) -> str:
    return f"{r['model']}/{r['file']}"


def recommend(rows: list[dict[str, Any]], budgets: dict[str, Any], *, only: str | None = None,
              reference: str = "dense") -> dict[str, Any]:
    """The file to deploy on the host that measured ``rows``: the fastest (batch-1 median) file and backend that
    holds ``budgets`` on val (:func:`recommendation_budgets`) against the ``reference`` model's FP32 file, with the
    reason; its test figures are reported, never used to choose. ``only`` restricts the choice to one model
    (an artifact's own recommendation). ``{"file": None, "reason": ...}`` when nothing can be recommended."""
    crit = next((r["critical_names"] for r in rows if r.get("critical_names")), []) or ["critical"]
    name = "/".join(crit)
    refs = [r for r in rows if r["model"] == reference and r.get("precision") == "fp32" and r.get("val")]
    if not refs:
        why = ("no val figures: the recipe has no val split (data.val_fraction 0), and a deployment decision is not"
               " made on test" if not any(r.get("val") for r in rows if not r.get("left_out"))
               else f"no {reference} FP32 file was scored on val to judge the others against")
        return {"file": None, "reason": f"nothing recommended: {why}"}
    ref = min(refs, key=lambda r: r["val"]["accuracy"])  # the FP32 files agree; the weaker one is the bar
    min_top1 = ref["val"]["accuracy"] - budgets["max_top1_drop"]
    extra = _extra_fn_limit(budgets, ref["val"].get("critical_support") or 0)
    max_fn = ref["val"]["critical_fn"] + extra
    if budgets.get("max_critical_fn") is not None:
        max_fn = min(max_fn, budgets["max_critical_fn"])
    held, rejected = [], []
    for o in _options([r for r in rows if only is None or r["model"] == only]):
        v = o["row"].get("val") or {}
        if o["backend"] in (o["row"].get("outside_isa_cap") or ()):
            rejected.append({"file": _where(o["row"]), "backend": o["backend"], "why": (
                "timed at this CPU's full instruction set while ONEDNN_MAX_CPU_ISA emulated an older kind for the"
                f" other runners ({o['backend']}'s kernels ignore that cap): not the emulated host's time")})
        elif not v:
            rejected.append({"file": _where(o["row"]), "backend": o["backend"], "why": "not scored on val"})
        elif v["accuracy"] < min_top1 - 1e-12:
            rejected.append({"file": _where(o["row"]), "backend": o["backend"],
                             "why": f"val top-1 {v['accuracy']:.4f} < {min_top1:.4f}"})
        elif v["critical_fn"] > max_fn:
            rejected.append({"file": _where(o["row"]), "backend": o["backend"],
                             "why": f"val missed {name} {v['critical_fn']} > {max_fn}"})
        else:
            held.append(o)
    untimed = sorted({_where(r) for r in rows if not r.get("left_out") and not r["latency_ms"]
                      and (only is None or r["model"] == only)})
    bar = (f"val top-1 >= {min_top1:.4f} ({reference} FP32 {ref['val']['accuracy']:.4f} - "
           f"{budgets['max_top1_drop']:g}) and val missed {name} <= {max_fn} ({reference} FP32 "
           f"{ref['val']['critical_fn']} + {extra}"
           + (f", at most {budgets['max_critical_fn']}" if budgets.get("max_critical_fn") is not None else "") + ")")
    out: dict[str, Any] = {"budgets": {**budgets, "min_val_top1": min_top1, "max_val_critical_fn": max_fn,
                                       "extra_critical_fn": extra},
                           "rejected": rejected, "untimed": untimed}
    if not held:
        out.update(file=None, reason=f"nothing recommended: no timed file holds {bar}")
        return out
    best = min(held, key=lambda o: o["median"])
    r = best["row"]
    out.update(
        model=r["model"], file=_where(r), path=r["file"], format=r["format"], precision=r["precision"],
        backend=best["backend"], latency_ms=best["median"], latency_p90_ms=best["p90"],
        val={k: r["val"].get(k) for k in ("samples", "accuracy", "critical_fn", "critical_fpr")},
        test={k: r.get(k) for k in ("samples", "accuracy", "critical_fn", "critical_fpr")},
        reason=(f"the fastest of {len(held)} file/backend pairs that hold {bar}: {best['median']:.3f} ms median at"
                f" batch 1 on {best['backend']}; val top-1 {r['val']['accuracy']:.4f}, missed {name}"
                f" {r['val']['critical_fn']}" + (f"; not timed, so not compared: {', '.join(untimed)}" if untimed else "")),
    )
    return out


_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def slower_files(rows: list[dict[str, Any]]) -> list[str]:
    """Where a reduced-precision file of a model is slower than a more precise file of the same model on the same
    backend (ONNX Runtime INT8 against ONNX Runtime FP32 on many CPUs): its batch-1 median is above the other's
    p90, beyond the other's own call-to-call spread."""
    notes = []
    opts = _options(rows)
    for a in opts:
        for b in opts:
            ra, rb = a["row"], b["row"]
            if (ra["model"] == rb["model"] and a["backend"] == b["backend"]
                    and _PRECISION_ORDER.get(ra["precision"], 0) > _PRECISION_ORDER.get(rb["precision"], 0)
                    and a["median"] > b["p90"]):
                notes.append(f"{_where(ra)} ({ra['precision']}) is slower than {_where(rb)} ({rb['precision']}) on"
                             f" {a['backend']}: {a['median']:.3f} ms against {b['median']:.3f} ms median at batch 1;"
                             f" {ra['precision'].upper()} buys nothing here on {a['backend']}")
    return notes


# -- chance level ---------------------------------------------------------------------------------------------------
def chance_warnings(rows: list[dict[str, Any]], recipe: Any = None) -> list[str]:
    """A warning per model whose test top-1 is within noise of always answering the majority class, or whose
    critical AUC is near 0.5, with what usually causes it.

    "Within noise" is derived from the split's size: top-1 below the majority share plus 1.96 binomial standard
    errors of that share; an AUC within 1.96 standard errors of 0.5 for the split's critical / other counts
    (Hanley & McNeil's SE at AUC 0.5, sqrt((n1 + n0 + 1) / (12 n1 n0)))."""
    import math

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        r = next((x for x in rows if x["model"] == model and x.get("accuracy") is not None
                  and x.get("precision") == "fp32"), None)
        if r is None:
            continue
        n, acc, maj = r.get("samples") or 0, r["accuracy"], r.get("majority") or 0.0
        found = []
        if n and acc < maj + 1.96 * math.sqrt(maj * (1 - maj) / n):
            found.append(f"test top-1 {acc:.4f} is within noise of always answering the majority class"
                         f" ({maj:.4f} of {n} samples)")
        n1 = r.get("critical_support") or 0
        n0 = n - n1
        aucs = [a for a in (r.get("critical_auc") or []) if a is not None]
        if aucs and n1 and n0:
            se = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))
            near = [a for a in aucs if abs(a - 0.5) < 1.96 * se]
            if near:
                found.append(f"the critical AUC {'/'.join(f'{a:.3f}' for a in near)} is within noise of 0.5"
                             f" (+-{1.96 * se:.3f} for {n1} critical and {n0} other samples)")
        if found:
            out.append(f"{model}: {' and '.join(found)}: the model is at chance level. {_chance_cause(recipe)}")
    return out


def _chance_cause(recipe: Any) -> str:
    if recipe is not None:
        from .recipe import recipe_warnings

        for w in recipe_warnings(recipe):
            if "trains nothing" in w or "trains for 0" in w:
                return f"Here: {w}"
    return ("Usually no training reached the model (train.epochs or train.final_epochs 0, or the method's one"
            " training at 0 epochs), a backbone without pretrained weights trained for a few epochs, a learning"
            " rate far off, or labels that do not match the images.")


def verdict(result: "PipelineResult", rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the summary says under its table: the recommended file (judged on val), files slower than a more
    precise file of the same model, chance-level models and the recipe's own warnings."""
    from .recipe import recipe_warnings

    rows = summary_rows(result) if rows is None else rows
    return {
        "recommended": recommend(rows, recommendation_budgets(result.recipe)),
        "slower": slower_files(rows),
        "warnings": recipe_warnings(result.recipe) + chance_warnings(rows, result.recipe),
    }


def write_pipeline_report(result: "PipelineResult") -> dict[str, Path]:
    """Write report.json and report.md (the profiler's report plus the pipeline summary) into the output dir."""
    from .devices.report import make_report, render_markdown

    for key, m in result.metrics.items():
        man = result.manifests.get(key)
        if man is not None and man.sparsity:
            m["weight_sparsity"] = (man.sparsity.get("torch") or {}).get("ratio")
    rows = summary_rows(result)
    said = verdict(result, rows)
    report = make_report(
        result.profile,
        # the artifacts' class names and critical classes label the accuracy and per-class recall tables
        artifact_dir=next(iter(result.artifacts.values()), None),
        title=f"edgeslim pipeline: {result.recipe.name}",
        extra={
            "pipeline": {
                "recipe": result.recipe.to_dict(),
                "recipe_sha256": result.recipe.digest(),
                "artifacts": {k: str(v) for k, v in result.artifacts.items()},
                "metrics": result.metrics,
                "metrics_measured_by": "torch, at argmax, before the thresholds were calibrated (the summary's rows"
                " are the exported files, each measured by its runtime at its deployed thresholds)",
                "summary": rows,
                "recommended": said["recommended"],
                "slower": said["slower"],
                "warnings": said["warnings"],
                "seconds": result.seconds,
                "notes": list(getattr(result, "notes", [])),
            }
        },
    )
    result.report = report
    from ._io import atomic_write_json

    md = render_markdown(report) + "\n" + _summary_markdown(rows, result, said)
    return {
        "json": atomic_write_json(result.out_dir / "report.json", {k: v for k, v in report.items() if not k.startswith("_")}),
        "md": atomic_write_text(result.out_dir / "report.md", md),
    }


def recommendation_line(rec: dict[str, Any]) -> str:
    """The one line under the summary table."""
    if not rec.get("file"):
        return str(rec.get("reason"))
    return f"recommended: {rec['file']} on {rec['backend']}: {rec['reason']}"


def _f(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(_f(x, spec) for x in v) or "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def _summary_header(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Columns in the task's words: the critical class by name (``defective recall``, ``missed defective (FN)``)
    and its false positives as ``false alarms (FPR)``, measured where the deployed decision rule puts them."""
    backends = sorted({b for r in rows for b in r["latency_ms"]})
    names = next(("/".join(r["critical_names"]) for r in rows if r.get("critical_names")), "critical")
    head = ["model", "format", "prec", "accuracy", f"{names} recall", f"missed {names} (FN)", "false alarms (FPR)",
            f"{names} AUC", "measured by", "sparsity", "params (nonzero)", "size MB"] + [f"{b} ms" for b in backends]
    return head, backends


def _summary_title(result: Any, rows: list[dict[str, Any]]) -> str:
    at = "at the calibrated threshold" if any(r.get("thresholds") for r in rows) else "at argmax"
    return f"edgeslim pipeline: {result.recipe.name} (test split {at}, batch 1 median latency)"


def _summary_cells(r: dict[str, Any], backends: list[str]) -> list[str]:
    if r.get("left_out"):  # a format or precision the artifact was written without: the row says so, the lines below why
        return [r["model"], r["format"], r["precision"], "left out"] + ["-"] * (8 + len(backends))
    measured = r.get("accuracy") is not None
    return [
        r["model"], r["format"], r["precision"], _f(r["accuracy"]) if measured else "not measured",
        _f(r.get("critical_recall"), ".3f"), _f(r.get("critical_fn")), _f(r.get("critical_fpr"), ".3f"),
        _f(r.get("critical_auc"), ".4f"), r.get("measured_by") or "-",
        "-" if r["weight_sparsity"] is None else f"{100 * r['weight_sparsity']:.1f}%",
        f"{r['params'] / 1e6:.2f}M ({r['nonzero_params'] / 1e6:.2f}M)", f"{r['size_mb']:.2f}",
    ] + [_f(r["latency_ms"].get(b), ".2f") for b in backends]


def _lines_under(rows: list[dict[str, Any]], said: dict[str, Any], notes: Any = ()) -> list[tuple[str, str]]:
    """(style, text) lines under the table: the recommendation first, then what the reader must know."""
    lines = [("bold", recommendation_line(said["recommended"]))]
    lines += [("yellow", f"left out: {r['model']}/{r['format']}/{r['precision']}: {r['left_out']}")
              for r in rows if r.get("left_out")]
    lines += [("yellow", f"not measured: {r['model']}/{r['file']}: {r['not_measured']}")
              for r in rows if r.get("not_measured")]
    lines += [("yellow", f"slower: {s}") for s in said["slower"]]
    lines += [("yellow", f"warning: {w}") for w in said["warnings"]]
    lines += [("yellow", f"note: {n}") for n in notes]
    return lines


def _summary_markdown(rows: list[dict[str, Any]], result: "PipelineResult", said: dict[str, Any]) -> str:
    head, backends = _summary_header(rows)
    lines = ["## Dense vs compressed", "", _summary_title(result, rows), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_summary_cells(r, backends)) + " |" for r in rows]
    lines += [""] + [f"- {text}" for _, text in _lines_under(rows, said, getattr(result, "notes", []))]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()), ""]
    return "\n".join(lines)


def print_summary(result: "PipelineResult", *, console=None) -> None:
    """Print the dense-vs-compressed table with rich."""
    from rich.console import Console
    from rich.table import Table

    from .compress import distributed as dist

    if not dist.is_main():  # under torchrun only rank 0 has the artifacts and prints
        return
    console = console or Console()
    rows = summary_rows(result)
    head, backends = _summary_header(rows)
    table = Table(title=_summary_title(result, rows))
    for h in head:
        table.add_column(h, justify="left" if h in ("model", "format", "prec") else "right", no_wrap=True)
    for r in rows:
        table.add_row(*_summary_cells(r, backends))
    if console.width < 200:  # a narrow or non-terminal console would squeeze 14 columns into ellipses
        from rich.console import Console as _C

        console = _C(file=console.file, width=200, force_terminal=console.is_terminal, no_color=console.no_color)
    console.print(table)
    from rich.text import Text

    for style, text in _lines_under(rows, verdict(result, rows), getattr(result, "notes", [])):
        console.print(Text(text, style=style), soft_wrap=True)
    console.print(
        "wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        + f"; outputs in {result.out_dir} (report.json, report.md, recipe.yaml, "
        + ", ".join(f"{k}/" for k in result.artifacts) + ")"
    )
