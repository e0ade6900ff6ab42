"""``edgeslim profile ARTIFACT --layers``: the runner's per-layer times, their sum against end to end, by op type."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeslim.cli import app


@pytest.fixture(scope="module")
def profiled(tiny_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("layers")
    res = CliRunner().invoke(app, [
        "profile", str(tiny_artifact), "--backends", "onnxruntime,openvino", "--layers", "--top", "3",
        "--duration", "0.05s", "--iterations", "10", "--warmup", "2", "--threads", "1", "--no-html", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    return res.output, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_every_measured_file_has_its_layers_and_their_sum_against_end_to_end(profiled):
    _, report, _ = profiled
    ok = [e for e in report["entries"] if e["status"] == "ok"]
    # the fixture's three files: ONNX FP32 and INT8 on onnxruntime, the IR on openvino
    assert {(e["model"]["path"], e["backend"]["name"]) for e in ok} == {
        ("model.onnx", "onnxruntime"), ("model.int8.onnx", "onnxruntime"), ("model.xml", "openvino")}
    for e in ok:
        prof = e["layer_profile"]
        rows = prof["layers"]
        assert rows and [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
        assert prof["sum_ms"] == pytest.approx(sum(r["ms"] for r in rows)) and prof["sum_ms"] > 0
        assert prof["end_to_end_ms"] == e["latency_ms"]["median"]
        assert prof["sum_over_end_to_end"] == pytest.approx(prof["sum_ms"] / prof["end_to_end_ms"])
        # grouped by op type: every layer counted once, the groups add up to the same sum and to 100 %
        assert sum(g["layers"] for g in prof["by_type"]) == len(rows)
        assert sum(g["ms"] for g in prof["by_type"]) == pytest.approx(prof["sum_ms"])
        assert sum(g["share"] for g in prof["by_type"]) == pytest.approx(1.0)
        assert any("conv" in g["type"].lower() for g in prof["by_type"])


def test_the_int8_file_runs_quantized_kernels(profiled):
    _, report, _ = profiled
    int8 = next(e for e in report["entries"] if e["model"]["path"] == "model.int8.onnx")
    # onnxruntime fuses the QDQ pairs into integer kernels: the per-layer view is where a user sees that it did
    assert any(g["type"].startswith(("QLinear", "ConvInteger", "MatMulInteger", "DynamicQuantize", "QuantizeLinear"))
               for g in int8["layer_profile"]["by_type"])


def test_the_table_is_printed_and_written_to_report_md(profiled):
    output, report, md = profiled
    assert "## Per-layer times" in md and "op type" in md and "end to end (median)" in md
    slowest = next(e for e in report["entries"] if e["backend"]["name"] == "openvino")["layer_profile"]["layers"]
    assert slowest[0]["name"] in md
    assert "Per-layer times" in output and "op type" in output
    assert "more lay" in output  # --top 3: the console shows the three slowest, the rest in one row


def test_a_backend_without_a_layer_profiler_says_so(tmp_path):
    from edgeslim.devices.layers import layer_profile
    from edgeslim.runtime import load
    from edgeslim.testing import build_tiny_artifact

    art = build_tiny_artifact(tmp_path / "t", files=("torch",), arch="tiny")
    with load(art, backend="torch") as pred:
        prof = layer_profile(pred.backend, [1, 3, 16, 16], "float32", end_to_end_ms=1.0, runs=2)
    assert set(prof) == {"error"} and "not supported by the torch backend" in prof["error"]


def test_layers_with_remote_is_refused_before_anything_runs(tmp_path):
    res = CliRunner().invoke(app, ["profile", "m", "--remote", "http://127.0.0.1:9", "--layers", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "--layers" in res.output and "server does not expose" in res.output
    assert not (tmp_path / "report.json").exists()
