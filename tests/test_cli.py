"""The CLI as a user meets it: help, one-line errors, and a small end-to-end pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeslim.artifact import load_manifest
from edgeslim.cli import app

runner = CliRunner()

TINY = {
    "version": 1,
    "name": "tiny",
    "seed": 0,
    "model": {"source": "tiny"},
    "data": {"dataset": "digits", "image_size": 16, "critical": ["8"], "imbalance": {"8": 0.25}, "batch_size": 64},
    "train": {"epochs": 2, "lr": 0.05, "threads": 2},
    "prune": {"rounds": 1, "rate": 0.5},
    "quantize": {"calibration_size": 64},
    "profile": {"iterations": 10, "seconds": 0.05, "warmup": 2},
    "decision": {"target_fnr": 0.1},
    # a 2-epoch TinyNet is a plumbing check, not a model worth INT8 parity (tests/export covers the tolerances)
    "validate": {"int8_min_agreement": 0.3, "max_extra_critical_fn": 100},
}


def _write(tmp_path: Path, recipe: dict) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


@pytest.mark.parametrize("cmd", [[], ["pipeline"], ["compress"], ["export"], ["profile"], ["serve"], ["devices"],
                                 ["recipes"], ["report", "compare"]])
def test_every_command_has_help(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def _one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    text = r.output.strip()
    assert "Traceback" not in text
    return text


def test_typo_in_recipe_key_is_one_line_with_did_you_mean(tmp_path):
    bad = dict(TINY, prune={"rounds": 1, "rat": 0.5})
    text = _one_line_error(runner.invoke(app, ["pipeline", str(_write(tmp_path, bad)), "--out", str(tmp_path / "o")]))
    assert "unknown key 'prune.rat'" in text and "Did you mean 'rate'" in text
    assert not (tmp_path / "o").exists()  # rejected before any work


def test_unknown_method_lists_valid_names(tmp_path):
    bad = dict(TINY, prune={"method": "lotery_ticket"})
    text = _one_line_error(runner.invoke(app, ["pipeline", str(_write(tmp_path, bad)), "--out", str(tmp_path / "o")]))
    assert "unknown pruning method 'lotery_ticket'" in text and "Did you mean 'lottery_ticket'" in text


def test_unknown_builtin_recipe_and_debug_traceback(tmp_path):
    text = _one_line_error(runner.invoke(app, ["pipeline", "defualt"]))
    assert "Did you mean 'default'" in text
    r = runner.invoke(app, ["--debug", "pipeline", "defualt"])
    assert r.exit_code == 1 and "Traceback" in r.output


def test_recipes_lists_and_prints_default():
    r = runner.invoke(app, ["recipes"])
    assert r.exit_code == 0 and "default" in r.output.split()
    r = runner.invoke(app, ["recipes", "default"])
    assert r.exit_code == 0 and yaml.safe_load(r.output)["model"]["source"] == "efficientnet_lite0"
    # version 2: the prune section holds the chosen method's keys only, method first
    printed = yaml.safe_load(r.output)
    assert printed["version"] == 2
    # the default (ELPV) job prunes channels: the structured method's keys, none of the other methods'
    assert list(printed["prune"]) == ["method", "ratio", "scope", "round_to", "iterative_steps", "importance",
                                      "stage_ratios", "frozen_ratio", "frozen_samples", "prune_first_conv",
                                      "prune_classifier", "exclude"]
    assert printed["data"]["dataset"] == "elpv" and printed["quantize"]["method"] == "ptq"
    r = runner.invoke(app, ["recipes", "digits"])  # a lottery-ticket recipe prints the lottery ticket's keys
    assert list(yaml.safe_load(r.output)["prune"]) == ["method", "rounds", "rate", "scope", "score", "rewind",
                                                       "prune_first_conv", "prune_classifier", "exclude"]
    r = runner.invoke(app, ["recipes", "lite0-fast-int8"])
    assert r.exit_code == 0 and "ratio" in yaml.safe_load(r.output)["prune"]
    assert "rounds" not in yaml.safe_load(r.output)["prune"]


def test_pipeline_end_to_end_on_tiny_model(tmp_path):
    """compress -> export -> validate -> profile through the CLI; everything a user opens afterwards exists."""
    out = tmp_path / "out"
    r = runner.invoke(app, ["pipeline", str(_write(tmp_path, TINY)), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    # the summary reads in the task's words, at the deployed (calibrated) decision rule
    assert "missed 8 (FN)" in r.output and "false alarms (FPR)" in r.output and "compressed" in r.output
    assert "at the calibrated threshold" in r.output
    for name in ("recipe.yaml", "report.json", "report.md"):
        assert (out / name).is_file()
    dense, comp = load_manifest(out / "dense"), load_manifest(out / "compressed")  # hashes verified
    assert {(m.format, m.precision) for m in comp.models} >= {
        ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8"), ("torch", "fp32")
    }
    assert comp.critical == [8] and comp.classes[8] == "8"
    # the deployment threshold calibrated on val travels in the manifest (runtime and server apply it)
    assert set(comp.thresholds) == {"8"} and 0 <= comp.thresholds["8"] <= 1
    # pruning really happened and survived export: half the prunable weights are exact zeros in the ONNX
    assert comp.sparsity["onnx"]["zeros"] >= comp.sparsity["torch"]["zeros"] > 0
    assert dense.sparsity["torch"]["zeros"] == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["pipeline"]["summary"]
    assert {(r["model"], r["format"], r["precision"]) for r in rows} >= {
        ("dense", "onnx", "fp32"), ("compressed", "openvino", "int8")
    }
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["critical_fn"] >= 0 and row["latency_ms"]
    ok = [e for e in report["entries"] if e["status"] == "ok"]
    assert {e["backend"]["name"] for e in ok} == {"onnxruntime", "openvino"}
    # each row is its own file measured by the runtime that runs it; the summary names the file to deploy, judged
    # on val, in report.json, in one line under the table and in each artifact's manifest
    assert all(row["measured_by"] == {"onnx": "onnxruntime", "openvino": "openvino"}[row["format"]] for row in rows)
    rec = report["pipeline"]["recommended"]
    assert (f"recommended: {rec['file']} on {rec['backend']}" if rec["file"] else rec["reason"][:40]) in r.output
    assert all(load_manifest(out / k).recommended["reason"] for k in ("dense", "compressed"))
    assert all(e["latency_ms"]["p90"] >= e["latency_ms"]["median"] > 0 for e in ok)
    # the resolved recipe repeats the run
    again = yaml.safe_load((out / "recipe.yaml").read_text())
    assert again["prune"]["rate"] == 0.5 and again["loss"]["name"] == "class_dependent"
    # a second run into the same directory refuses to clobber checkpoints without --resume
    r2 = runner.invoke(app, ["pipeline", str(_write(tmp_path, TINY)), "--out", str(out)])
    assert r2.exit_code == 1 and "--resume" in r2.output


def test_serve_bad_path_and_backend_option_errors_are_one_line(tmp_path):
    text = _one_line_error(runner.invoke(app, ["serve", str(tmp_path / "missing")]))
    assert "missing" in text
    text = _one_line_error(runner.invoke(app, ["serve", str(tmp_path), "-O", "novalue"]))
    assert "KEY=VALUE" in text or "novalue" in text
    text = _one_line_error(runner.invoke(app, ["serve", str(tmp_path), "--inference-cpus", "0,x"]))
    assert "--inference-cpus '0,x': give CPU indices like 0,1 or 2-3" in text
    text = _one_line_error(runner.invoke(app, ["serve", str(tmp_path), "--inference-cpus", "0-999"]))
    assert "inference_cpus must be CPU indices" in text  # parsed, then refused by the settings with the valid range
    text = _one_line_error(runner.invoke(app, ["serve", str(tmp_path), "--busy-poll-us", "-5"]))
    assert "busy_poll_us must be a number >= 0" in text


def test_inference_cpu_lists_parse_ranges():
    from edgeslim.cli import _cpu_list

    assert _cpu_list("0,2-3") == (0, 2, 3) and _cpu_list(None) is None


def test_a_partial_run_keeps_what_passed_says_why_in_one_line_and_exits_3(tmp_path):
    """A failed precision never takes the others with it: the artifacts are written without it, the summary and
    the manifest say why, and the exit code tells a script the job was partial."""
    out = tmp_path / "out"
    recipe = {**TINY, "quantize": {"calibration_size": 64, "ignored_scope": ["no_such_layer"]}}
    r = runner.invoke(app, ["pipeline", str(_write(tmp_path, recipe)), "--out", str(out), "--no-progress"])
    assert r.exit_code == 3, r.output
    partial = [ln for ln in r.output.splitlines() if ln.startswith("partial:")]
    assert len(partial) == 1 and "compressed/onnx/int8" in partial[0] and "compressed/openvino/int8" in partial[0]
    comp = load_manifest(out / "compressed")
    assert {(m.format, m.precision) for m in comp.models} == {("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32")}
    assert comp.validation["partial"] and all("no_such_layer" in f["reason"] for f in comp.validation["failed"])
    rows = json.loads((out / "report.json").read_text())["pipeline"]["summary"]
    left = [row for row in rows if row.get("left_out")]
    assert {(row["format"], row["precision"]) for row in left} == {("onnx", "int8"), ("openvino", "int8")}
    assert "left out" in (out / "report.md").read_text()
    # (strict, all or nothing, is the export's strict=True: tests/export/test_artifact_failures.py)


def test_serve_backend_options_need_a_backend_since_the_default_is_each_artifacts_recommendation(tmp_path):
    text = _one_line_error(runner.invoke(app, ["serve", str(tmp_path), "-O", "hint=THROUGHPUT"]))
    assert "--backend-option needs --backend" in text
