"""The pipeline's summary rows as a user reads them: every row measured by the runtime that runs its file, under
the manifest's decision rule, on the same samples; a file no runtime here runs is shown as not measured; the
recommended file is the fastest that holds the budgets on val, and `edgeslim serve` without --backend serves it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeslim.artifact import load_manifest
from edgeslim.decision import predict
from edgeslim.pipeline import PipelineResult, measure_artifacts, record_recommendations
from edgeslim.recipe import parse_recipe
from edgeslim.runtime.predictor import softmax
from edgeslim.summary import (
    chance_warnings,
    recommend,
    recommendation_budgets,
    slower_files,
    summary_rows,
    write_pipeline_report,
)

CLASSES = [str(i) for i in range(10)]
CRITICAL = [8]
FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "openvino": "model.xml"}


def _recipe(backends):
    return parse_recipe({"name": "rows", "profile": {"backends": backends, "iterations": 5, "seconds": 0.0,
                                                      "warmup": 1}})


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, digits):
    """A dense and a 'compressed' TinyNet artifact (two trainings), each with ONNX FP32, ONNX INT8 and an OpenVINO
    FP32 IR, deployed at a critical threshold; val and test splits cut from the held-out digits."""
    from edgeslim.testing import build_tiny_artifact, train_tiny

    xtr, ytr, xte, yte = digits
    root = tmp_path_factory.mktemp("pipe")
    arts = {}
    for key, epochs in (("dense", 4), ("compressed", 2)):
        model = train_tiny(xtr, ytr, epochs=epochs, shuffle=True)
        arts[key] = build_tiny_artifact(root / key, model, name=f"rows-{key}", classes=CLASSES, critical=CRITICAL,
                                        thresholds={"8": 0.3}, files=FILES, calibration=xtr[:256], opset=17)
    splits = {"val": (xte[:150], yte[:150]), "test": (xte[150:], yte[150:])}
    return root, arts, splits


def _result(root: Path, arts: dict, backends) -> PipelineResult:
    result = PipelineResult(out_dir=root, recipe=_recipe(backends))
    for key, path in arts.items():
        result.artifacts[key] = path
        result.manifests[key] = load_manifest(path)
        result.metrics[key] = {"params": 1000, "nonzero_params": 900}
    return result


def _own_figures(path: Path, file: str, fmt: str, x: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Top-1, critical FN and decision margins of one file run on its runtime and decided here by the manifest's
    rule at the file's own thresholds: what its row must say."""
    manifest = load_manifest(path)
    mf = next(m for m in manifest.models if m.path == file)
    import edgeslim.runtime  # noqa: F401 - registers the backends
    from edgeslim.runtime.base import BACKENDS, BackendOptions

    # the runner edgeslim deploys the format with (OpenVINO's own default would run FP32 IRs in BF16 on AMX hosts)
    with BACKENDS.get({"onnx": "onnxruntime", "openvino": "openvino"}[fmt])(path / file, BackendOptions()) as b:
        z = b.infer({"input": x})["logits"]
    p = softmax(np.asarray(z, dtype=np.float64))
    pred = predict(p, manifest.thresholds_for(mf), manifest.decision_rule)
    top2 = np.sort(p, axis=1)[:, -2:]
    thr = np.array([abs(p[:, int(c)] - t) for c, t in manifest.thresholds_for(mf).items()]).min(axis=0)
    margin = np.minimum(top2[:, 1] - top2[:, 0], thr)
    return float((pred == y).mean()), int(((y == 8) & (pred != 8)).sum()), margin


def test_a_backend_left_out_never_lends_its_rows_another_files_figures(two_models):
    root, arts, splits = two_models
    result = _result(root, arts, ["openvino"])  # onnxruntime left out of the profile, as in the issue
    measure_artifacts(result, splits, result.recipe.profile)
    rows = [r for r in summary_rows(result) if not r.get("left_out")]
    assert {(r["model"], r["format"], r["precision"]) for r in rows} == {
        (k, f, p) for k in arts for f, p in (("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"))}
    xt, yt = splits["test"]
    for r in rows:
        # labelled with what measured it: the runtime of its own format, never torch
        assert r["measured_by"] == {"onnx": "onnxruntime", "openvino": "openvino"}[r["format"]], r
        # timed only where the profile asked: the ONNX files are scored but carry no latency
        assert set(r["latency_ms"]) == ({"openvino"} if r["format"] == "openvino" else set())
        # its figures are its own file's, under the manifest's rule at its own thresholds, on the test samples
        acc, fn, _ = _own_figures(arts[r["model"]], r["file"], r["format"], xt, yt)
        assert (r["accuracy"], r["critical_fn"], r["samples"]) == (pytest.approx(acc), fn, len(yt)), (r["model"], r["file"])
        assert r["val"]["samples"] == len(splits["val"][1])
        # per-class recall by class name, beside the critical FN
        assert set(r["per_class_recall"]) == set(CLASSES)
    for key in arts:
        fp32 = {r["format"]: r for r in rows if r["model"] == key and r["precision"] == "fp32"}
        # both FP32 conversions of one model agree on every sample but those whose decision sits within a hair
        # of a tie or of the threshold (the bound comes from the fixture's own margins, not one CPU's rounding)
        _, _, margin = _own_figures(arts[key], "model.onnx", "onnx", xt, yt)
        close = int((margin < 1e-4).sum())
        assert abs(fp32["onnx"]["accuracy"] - fp32["openvino"]["accuracy"]) * len(yt) <= close
        assert abs(fp32["onnx"]["critical_fn"] - fp32["openvino"]["critical_fn"]) <= close
        assert fp32["onnx"]["thresholds"] == fp32["openvino"]["thresholds"] == {"8": 0.3}
    # the profile entries carry the same scores the rows show (computed once)
    timed = [e for e in result.profile if e["status"] == "ok"]
    assert timed and all(e["accuracy"]["accuracy"] == next(
        r["accuracy"] for r in rows if f"{r['model']}/{r['file']}" == e["model"]["path"]) for e in timed)


def test_a_file_no_runtime_here_can_run_is_shown_as_not_measured(tmp_path, digits):
    from edgeslim.testing import build_tiny_artifact

    _, _, xte, yte = digits
    art = build_tiny_artifact(tmp_path / "a", name="broken", classes=CLASSES, critical=CRITICAL,
                              files={"onnx": "model.onnx", "openvino": "model.xml"})
    # the ONNX file is corrupt but consistently hashed: its runtime refuses it
    (art / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = load_manifest(art, verify=False)
    from edgeslim.artifact import finalize

    finalize(art, manifest)
    result = _result(tmp_path, {"dense": art}, ["openvino"])
    measure_artifacts(result, {"test": (xte, yte)}, result.recipe.profile)
    rows = {r["format"]: r for r in summary_rows(result)}
    assert rows["onnx"]["accuracy"] is None and rows["onnx"]["measured_by"] is None
    assert "onnxruntime" in rows["onnx"]["not_measured"]
    assert rows["openvino"]["accuracy"] is not None and rows["openvino"]["measured_by"] == "openvino"
    # the table and report.md say so instead of showing figures
    write_pipeline_report(result)
    md = (tmp_path / "report.md").read_text()
    assert "| dense | onnx | fp32 | not measured |" in md and "not measured: dense/model.onnx" in md


def test_the_recommended_file_is_the_fastest_that_holds_the_budgets_on_val_and_is_served(two_models, tmp_path):
    import shutil

    root, arts, splits = two_models
    copies = {k: Path(shutil.copytree(p, tmp_path / k)) for k, p in arts.items()}
    result = _result(tmp_path, copies, ["onnxruntime", "openvino"])
    measure_artifacts(result, splits, result.recipe.profile)
    record_recommendations(result)
    write_pipeline_report(result)
    rows = summary_rows(result)
    report = json.loads((tmp_path / "report.json").read_text())
    rec = report["pipeline"]["recommended"]
    budgets = recommendation_budgets(result.recipe)
    dense_val = min(r["val"]["accuracy"] for r in rows if r["model"] == "dense" and r["precision"] == "fp32")
    dense_fn = next(r["val"]["critical_fn"] for r in rows if r["model"] == "dense" and r["precision"] == "fp32"
                    and r["val"]["accuracy"] == dense_val)
    extra = rec["budgets"]["extra_critical_fn"]
    assert extra >= 1 and budgets["max_top1_drop"] == 0.01
    # under an emulated ISA cap (ONEDNN_MAX_CPU_ISA), a runner that ignores the cap is not ranked
    holding = [(ms, r, b) for r in rows for b, ms in r["latency_ms"].items()
               if b not in r.get("outside_isa_cap", ())
               and r["val"]["accuracy"] >= dense_val - budgets["max_top1_drop"]
               and r["val"]["critical_fn"] <= dense_fn + extra]
    assert holding  # the dense FP32 files hold by construction
    ms, best, backend = min(holding, key=lambda h: h[0])
    assert (rec["file"], rec["backend"], rec["latency_ms"]) == (f"{best['model']}/{best['file']}", backend, ms)
    assert "val top-1" in rec["reason"] and rec["test"]["accuracy"] == best["accuracy"]
    # one line under the table names it
    md = (tmp_path / "report.md").read_text()
    assert f"recommended: {rec['file']} on {rec['backend']}" in md
    # each artifact carries its own pick in its manifest (written atomically, hashes still verify)
    for key, path in copies.items():
        m = load_manifest(path)
        assert m.recommended and m.recommended["measured_on"]["target"]
        if key == rec["model"]:
            assert (m.recommended["path"], m.recommended["backend"]) == (rec["path"], rec["backend"])
    # `edgeslim serve ARTIFACT` without --backend serves it
    from edgeslim.server.repository import recommended_choice
    from edgeslim.server.settings import RECOMMENDED, ServerSettings

    art = copies[rec["model"]]
    assert ServerSettings(models=(art,)).backend == RECOMMENDED
    assert recommended_choice(art, RECOMMENDED, None) == (rec["backend"], rec["precision"])
    assert recommended_choice(art, "onnxruntime", None) == ("onnxruntime", None)  # --backend wins
    from edgeslim.server.repository import ModelRepository

    # the server loads that very file (the other artifact its own pick)
    repo = ModelRepository(ServerSettings(models=tuple(copies.values())))
    repo.load()
    try:
        for key, path in copies.items():
            rec_k = load_manifest(path).recommended
            served = repo.models[f"rows-{key}"].backend
            if rec_k["path"] is None:  # none of its files holds the budgets: said, and served as before
                assert rec_k["reason"].startswith("nothing recommended")
                assert (served.name, served.path) == ("onnxruntime", path / "model.onnx")
            else:
                assert (served.name, served.path) == (rec_k["backend"], path / rec_k["path"])
    finally:
        repo.release()


def _row(model, precision, backend, median, p90, val_acc, val_fn, fmt="onnx"):
    return {"model": model, "file": f"m.{precision}.{fmt}", "format": fmt, "precision": precision,
            "critical_names": ["defective"], "latency_ms": {backend: median}, "latency_p90_ms": {backend: p90},
            "val": {"accuracy": val_acc, "critical_fn": val_fn, "samples": 400}, "accuracy": val_acc,
            "critical_fn": val_fn, "samples": 600}


def test_budgets_decide_on_val_and_a_slower_int8_file_is_named():
    budgets = {"max_top1_drop": 0.01, "max_extra_critical_fn": 1, "max_extra_critical_fnr": None,
               "max_critical_fn": None}
    rows = [
        _row("dense", "fp32", "onnxruntime", 2.0, 2.1, 0.80, 20),
        _row("compressed", "fp32", "onnxruntime", 0.81, 0.85, 0.795, 21),
        _row("compressed", "int8", "onnxruntime", 1.38, 1.5, 0.80, 20),  # INT8 slower than FP32 on this runtime
        _row("compressed", "int8", "openvino", 0.5, 0.6, 0.80, 23, fmt="xml"),  # fastest, but misses 3 more
    ]
    rec = recommend(rows, budgets)
    assert (rec["file"], rec["backend"]) == ("compressed/m.fp32.onnx", "onnxruntime")
    assert any("missed defective 23 > 21" in r["why"] for r in rec["rejected"])
    notes = slower_files(rows)
    assert len(notes) == 1 and "compressed/m.int8.onnx (int8) is slower than compressed/m.fp32.onnx" in notes[0]
    # within the faster file's own spread it is not called slower
    rows[2]["latency_ms"]["onnxruntime"] = 0.84
    assert slower_files(rows) == []
    # "no more missed defective cells than dense" (the search's relative budget) rules the FP32 file out too
    strict = recommendation_budgets(parse_recipe({"search": {"latency_ms": 1.0, "max_extra_critical_fn": 0}}))
    assert recommend(rows, strict)["file"] == "compressed/m.int8.onnx"
    # no val split: nothing is chosen on test
    for r in rows:
        r["val"] = {}
    assert recommend(rows, budgets)["file"] is None and "val" in recommend(rows, budgets)["reason"]


def test_chance_level_is_called_from_the_splits_size():
    base = {"model": "dense", "precision": "fp32", "samples": 400, "critical_support": 100}
    # 10 balanced classes and top-1 0.11: within noise of the majority share (0.1); AUC 0.52 near 0.5
    at_chance = {**base, "accuracy": 0.11, "majority": 0.1, "critical_auc": [0.52]}
    warn = chance_warnings([at_chance])
    assert len(warn) == 1 and "majority class" in warn[0] and "AUC 0.520" in warn[0] and "Usually" in warn[0]
    # well above both bounds: nothing to say
    assert chance_warnings([{**base, "accuracy": 0.9, "majority": 0.1, "critical_auc": [0.95]}]) == []
    # the cause is named when the recipe trains nothing
    recipe = parse_recipe({"prune": {"method": "none"}, "train": {"epochs": 3, "final_epochs": 0}})
    assert "final_epochs (0), not train.epochs (3)" in chance_warnings([at_chance], recipe)[0]


def test_the_reports_accuracy_tables_name_the_classes():
    from edgeslim.compress.metrics import evaluate
    from edgeslim.devices.report import make_report, render_markdown

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    z = rng.standard_normal((200, 2)) + np.eye(2)[y] * 2
    acc = {**evaluate(z, y, ["functional", "defective"], [1]).to_dict(), "samples": 200}
    entry = {"status": "ok", "model": {"path": "dense/model.xml", "format": "openvino", "precision": "fp32"},
             "backend": {"name": "openvino"}, "batch": 1, "latency_ms": {"median": 1.0}, "accuracy": acc,
             "variant": "dense"}
    md = render_markdown(make_report([entry], title="t"))  # no artifact section: names come from the scores
    assert "1 defective: FN" in md and "| 0 functional |" in md and "| 1 defective (critical) |" in md


def test_a_recommendation_naming_a_file_the_artifact_no_longer_has_is_not_followed(tmp_path):
    from edgeslim._io import atomic_write_json
    from edgeslim.artifact import MANIFEST
    from edgeslim.server.repository import recommended_choice
    from edgeslim.server.settings import RECOMMENDED
    from edgeslim.testing import build_tiny_artifact

    art = build_tiny_artifact(tmp_path / "a", name="stale", files=("onnx",))
    m = load_manifest(art)
    stale = m.model_copy(update={"recommended": {"path": "openvino/model.xml", "backend": "openvino",
                                                 "precision": "int8", "reason": "measured before a re-export"}})
    atomic_write_json(art / MANIFEST, stale.model_dump(mode="json"))
    assert recommended_choice(art, RECOMMENDED, None) == ("onnxruntime", None)


def test_under_an_isa_cap_a_runner_that_ignores_it_is_not_ranked_against_those_it_holds():
    """ONEDNN_MAX_CPU_ISA emulates an older x86 kind for OpenVINO and PyTorch; ONNX Runtime's MLAS ignores it. On the
    emulated AVX2 kind the summary recommended ONNX Runtime FP32 for a time measured with AVX-512."""
    budgets = {"max_top1_drop": 0.01, "max_extra_critical_fn": 1, "max_extra_critical_fnr": None,
               "max_critical_fn": None}
    rows = [
        _row("dense", "fp32", "openvino", 5.2, 5.9, 0.80, 20, fmt="xml"),
        _row("compressed", "fp32", "onnxruntime", 1.7, 1.9, 0.80, 20),
        _row("compressed", "int8", "openvino", 1.9, 2.1, 0.80, 20, fmt="xml"),
    ]
    assert recommend(rows, budgets)["backend"] == "onnxruntime"  # no cap: the fastest
    rows[1]["outside_isa_cap"] = ["onnxruntime"]
    rec = recommend(rows, budgets)
    assert (rec["file"], rec["backend"]) == ("compressed/m.int8.xml", "openvino")
    assert any(r["backend"] == "onnxruntime" and "ONEDNN_MAX_CPU_ISA" in r["why"] for r in rec["rejected"])


def test_the_profiler_records_which_runner_an_isa_cap_held(two_models, tmp_path):
    import os
    import subprocess
    import sys

    root, arts, _ = two_models
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}  # its own process: the cap sticks
    cmd = [sys.executable, "-m", "edgeslim.cli", "profile", str(arts["dense"]), "--backends", "onnxruntime,openvino",
           "--iterations", "3", "--duration", "0s", "--warmup", "1", "--no-html", "-o", str(tmp_path)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    entries = [e for e in json.loads((tmp_path / "report.json").read_text())["entries"] if e["status"] == "ok"]
    held = {e["backend"]["name"]: e["conditions"]["isa_cap"] for e in entries}
    assert held["onnxruntime"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "held": False}
    assert held["openvino"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "held": True}
