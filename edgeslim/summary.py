"""The pipeline's summary: one row per exported model file (accuracy, critical FN/FNR/FPR/AUC, sparsity, size,
latency), written into report.json / report.md and printed as a table by ``edgeslim pipeline``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_text
from .artifact import Manifest

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import PipelineResult


def _file_mb(artifact: Path, manifest: Manifest, path: str) -> float:
    """Size of a model file (an OpenVINO IR counts its .bin too)."""
    p = artifact / path
    size = p.stat().st_size
    if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
        size += p.with_suffix(".bin").stat().st_size
    return size / 1e6


def summary_rows(result: "PipelineResult") -> list[dict[str, Any]]:
    """One row per (artifact, model file): accuracy and critical FN / FNR / AUC measured on the test split by
    the exported model itself, sparsity, parameters, file size and median latency per backend."""
    rows = []
    for key, manifest in result.manifests.items():
        art = result.artifacts[key]
        m = result.metrics[key]
        for mf in manifest.models:
            if mf.format == "torch":
                continue
            entries = [e for e in result.profile if e["model"]["path"] == f"{key}/{mf.path}"]
            ok = [e for e in entries if e.get("status") == "ok"]
            acc = next((e["accuracy"] for e in ok if isinstance(e.get("accuracy"), dict) and "accuracy" in e["accuracy"]), None)
            src = acc or m
            crit = {int(k): v for k, v in (src.get("critical_stats") or {}).items()}
            rows.append(
                {
                    "model": key,
                    "critical_names": [manifest.classes[c] for c in crit if 0 <= c < len(manifest.classes)],
                    "critical_recall": [None if v.get("fnr") is None else 1.0 - v["fnr"] for v in crit.values()],
                    "thresholds": dict(manifest.thresholds),
                    "file": mf.path,
                    "format": mf.format,
                    "precision": mf.precision,
                    "accuracy": src.get("accuracy"),
                    "critical_fn": sum(v["fn"] for v in crit.values()),
                    "critical_fnr": [v.get("fnr") for v in crit.values()],
                    "critical_fpr": [v.get("fpr") for v in crit.values()],
                    "critical_auc": [v.get("auc") for v in crit.values()],
                    "measured_by": (f"{ok[0]['backend']['name']}" if acc else "torch"),
                    "weight_sparsity": m.get("weight_sparsity"),
                    "params": m["params"],
                    "nonzero_params": m["nonzero_params"],
                    "size_mb": _file_mb(art, manifest, mf.path),
                    "latency_ms": {
                        e["backend"]["name"]: e["latency_ms"]["median"] for e in ok if e.get("batch") == 1
                    },
                }
            )
        for f in (manifest.validation or {}).get("failed", []):
            rows.append({"model": key, "file": f.get("file"), "format": f["format"], "precision": f["precision"],
                         "left_out": f["reason"], "latency_ms": {}})
    return rows


def write_pipeline_report(result: "PipelineResult") -> dict[str, Path]:
    """Write report.json and report.md (the profiler's report plus the pipeline summary) into the output dir."""
    from .devices.report import make_report, render_markdown

    for key, m in result.metrics.items():
        man = result.manifests.get(key)
        if man is not None and man.sparsity:
            m["weight_sparsity"] = (man.sparsity.get("torch") or {}).get("ratio")
    rows = summary_rows(result)
    report = make_report(
        result.profile,
        title=f"edgeslim pipeline: {result.recipe.name}",
        extra={
            "pipeline": {
                "recipe": result.recipe.to_dict(),
                "recipe_sha256": result.recipe.digest(),
                "artifacts": {k: str(v) for k, v in result.artifacts.items()},
                "metrics": result.metrics,
                "summary": rows,
                "seconds": result.seconds,
                "notes": list(getattr(result, "notes", [])),
            }
        },
    )
    result.report = report
    from ._io import atomic_write_json

    md = render_markdown(report) + "\n" + _summary_markdown(rows, result)
    return {
        "json": atomic_write_json(result.out_dir / "report.json", {k: v for k, v in report.items() if not k.startswith("_")}),
        "md": atomic_write_text(result.out_dir / "report.md", md),
    }


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
            f"{names} AUC", "sparsity", "params (nonzero)", "size MB"] + [f"{b} ms" for b in backends]
    return head, backends


def _summary_title(result: Any, rows: list[dict[str, Any]]) -> str:
    at = "at the calibrated threshold" if any(r.get("thresholds") for r in rows) else "at argmax"
    return f"edgeslim pipeline: {result.recipe.name} (test split {at}, batch 1 median latency)"


def _summary_cells(r: dict[str, Any], backends: list[str]) -> list[str]:
    if r.get("left_out"):  # a format or precision the artifact was written without: the row says so, the lines below why
        return [r["model"], r["format"], r["precision"], "left out"] + ["-"] * (7 + len(backends))
    return [
        r["model"], r["format"], r["precision"], _f(r["accuracy"]), _f(r.get("critical_recall"), ".3f"),
        str(r["critical_fn"]), _f(r["critical_fpr"], ".3f"), _f(r["critical_auc"], ".4f"),
        "-" if r["weight_sparsity"] is None else f"{100 * r['weight_sparsity']:.1f}%",
        f"{r['params'] / 1e6:.2f}M ({r['nonzero_params'] / 1e6:.2f}M)", f"{r['size_mb']:.2f}",
    ] + [_f(r["latency_ms"].get(b), ".2f") for b in backends]


def _summary_markdown(rows: list[dict[str, Any]], result: "PipelineResult") -> str:
    head, backends = _summary_header(rows)
    lines = ["## Dense vs compressed", "", _summary_title(result, rows), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_summary_cells(r, backends)) + " |" for r in rows]
    lines += [""] + [f"- left out: {r['model']}/{r['format']}/{r['precision']}: {r['left_out']}" for r in rows
                     if r.get("left_out")]
    lines += [f"- note: {n}" for n in getattr(result, "notes", [])]
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

    for r in rows:
        if r.get("left_out"):
            console.print(Text(f"left out: {r['model']}/{r['format']}/{r['precision']}: {r['left_out']}",
                               style="yellow"), soft_wrap=True)
    for n in getattr(result, "notes", []):
        console.print(Text(f"note: {n}", style="yellow"), soft_wrap=True)
    console.print(
        "wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        + f"; outputs in {result.out_dir} (report.json, report.md, recipe.yaml, "
        + ", ".join(f"{k}/" for k in result.artifacts) + ")"
    )
