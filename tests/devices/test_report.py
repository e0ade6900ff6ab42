"""report.json schema, the markdown renderer (pure) and atomic writing."""

from __future__ import annotations

import json

import pytest

from edgeslim.devices.profiler import ProfileConfig, profile_artifact
from edgeslim.devices.report import SCHEMA, load_report, make_report, render_markdown, write_report
from edgeslim.errors import ArtifactError, ConfigError


def _entry(precision: str, backend: str, median: float, acc: float, fn3: int, recalls: list[float]) -> dict:
    return {
        "artifact": "a",
        "status": "ok",
        "model": {"path": f"m.{precision}.onnx", "format": "onnx", "precision": precision, "sha256": "ab"},
        "backend": {"name": backend, "version": "1.0"},
        "batch": 1,
        "conditions": {"threads": 2, "config": ProfileConfig().to_dict()},
        "latency_ms": {"min": median / 2, "mean": median, "median": median, "p90": median * 1.1, "p95": median * 1.2,
                       "p99": median * 1.5, "max": median * 3},
        "throughput": {"items_per_s": 1000 / median},
        "measured": {"iterations": 100, "seconds": 2.0},
        "memory": {"peak_rss_mb": 123.4},
        "power": {"available": False, "reason": "no RAPL: /sys/class/powercap does not exist"},
        "accuracy": {"accuracy": acc, "per_class": recalls, "critical_stats": {"1": {"fn": fn3, "fnr": 0.1, "auc": 0.99}}},
    }


REPORT = {
    "schema": SCHEMA,
    "title": "fleet",
    "artifact": {"name": "a", "classes": ["cat", "dog", "fox"], "critical": [1]},
    "host": {"cpu": {"model": "Xeon", "isa": {"avx2": True, "amx_int8": False}}},
    "entries": [
        _entry("fp32", "onnxruntime", 4.0, 0.90, 2, [0.9, 0.8, 1.0]),
        _entry("int8", "onnxruntime", 2.0, 0.88, 3, [0.85, 0.7, 1.0]),
        {"status": "skipped", "model": {"path": "m.plan"}, "backend": {"name": "tensorrt"}, "batch": 1,
         "error": "install edgeslim[tensorrt]"},
    ],
}


def test_markdown_has_latency_accuracy_recall_and_failures():
    from edgeslim.devices.profiler import add_accuracy_deltas

    report = json.loads(json.dumps(REPORT))
    # the INT8 file was made for a VNNI host and is profiled on another one: the table says so, with a note
    report["entries"][1]["model"].update(
        made_for="x86-vnni", foreign_target="m.int8.onnx was quantized for x86-vnni; this host is x86-avx2"
    )
    add_accuracy_deltas(report["entries"])
    md = render_markdown(report)
    assert md.startswith("# fleet\n")
    lat_row = next(ln for ln in md.splitlines() if ln.startswith("| m.int8.onnx | int8 | onnxruntime 1.0 | 1 |"))
    assert "| 2.000 | - | 2.000 | 2.200 |" in lat_row and "| 500.0 |" in lat_row and "| 123.4 |" in lat_row
    assert "Power not available: no RAPL" in md
    # the int8 row shows its delta against fp32 on the same backend
    acc_row = next(ln for ln in md.splitlines()
                   if ln.startswith("| m.int8.onnx | int8 | x86-vnni (not this host) | onnxruntime | - | 0.8800 |"))
    assert "-0.0200" in acc_row and "1 dog: FN 3" in acc_row and "ΔFN +1" in acc_row
    assert "| m.fp32.onnx | fp32 | - | onnxruntime |" in md
    assert "Note: m.int8.onnx was quantized for x86-vnni; this host is x86-avx2" in md
    assert "| 1 dog (critical) | 0.800 | 0.700 |" in md
    assert "| m.plan | tensorrt | 1 | skipped | install edgeslim[tensorrt] |" in md
    assert render_markdown(report) == md  # pure: same input, same output


def test_markdown_escapes_pipes_in_cells():
    report = {**REPORT, "entries": [{**REPORT["entries"][2], "error": "a | b"}]}
    assert "a \\| b" in render_markdown(report)


def test_write_and_load_roundtrip(tmp_path, tiny_artifact):
    entries = profile_artifact(
        tiny_artifact, backends=("onnxruntime",), precisions=["fp32"],
        cfg=ProfileConfig(warmup=1, iterations=5, seconds=0), progress=False,
    )
    report = make_report(entries, artifact_dir=tiny_artifact)
    assert report["schema"] == SCHEMA and report["artifact"]["critical"] == [3, 8]
    paths = write_report(tmp_path / "out", report, html=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]  # no temp files left
    back = load_report(paths["json"])
    assert back["entries"][0]["latency_ms"] == entries[0]["latency_ms"]
    assert "| model.onnx | fp32 | onnxruntime" in paths["md"].read_text()


def test_load_report_rejects_foreign_and_newer_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ArtifactError, match="not an edgeslim report"):
        load_report(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"schema": "edgeslim.report/99"}))
    with pytest.raises(ArtifactError, match="upgrade"):
        load_report(tmp_path / "y.json")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_report(tmp_path / "missing")
    with pytest.raises(ConfigError, match="make_report"):
        write_report(tmp_path / "o", {"schema": "nope"}, html=False)


def test_class_rows_name_a_class_once_when_its_name_is_its_index():
    """digits-style class names ("0".."9") label rows "8 (critical)", not "8 8 (critical)"; others keep index + name."""
    from edgeslim.devices.report import class_label

    digits = [str(i) for i in range(3)]
    report = json.loads(json.dumps({**REPORT, "artifact": {"name": "d", "classes": digits, "critical": [1]},
                                    "entries": REPORT["entries"][:1]}))
    md = render_markdown(report)
    assert "| 0 | 0.900 |" in md and "| 1 (critical) | 0.800 |" in md and "| 2 | 1.000 |" in md
    assert "1: FN 2" in md
    assert not any(f"| {i} {i}" in md or f"{i} {i}:" in md for i in range(3)), md
    unnamed = json.loads(json.dumps({**REPORT, "artifact": {}, "entries": REPORT["entries"][:1]}))
    assert "| 1 | 0.800 |" in render_markdown(unnamed)
    assert [class_label(i, ["cat", "1", "fox"]) for i in range(4)] == ["0 cat", "1", "2 fox", "3"]


def test_report_html_and_markdown_import_no_cycle():
    """markdown.py is below both: html.py draws on it without importing report.py, which writes the files."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import edgeslim.devices.markdown\n"
        "assert not {'edgeslim.devices.report', 'edgeslim.devices.html'} & set(sys.modules)\n"
        "import edgeslim.devices.html\n"
        "assert 'edgeslim.devices.report' not in sys.modules\n"
        "from edgeslim.devices.report import render_markdown\n"
        "assert render_markdown is edgeslim.devices.markdown.render_markdown\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
