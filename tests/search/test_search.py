"""The budget search end to end on TinyNet + digits: bad budgets before training, outputs, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgeslim.cli import app
from edgeslim.errors import SearchError
from edgeslim.recipe import parse_recipe
from edgeslim.search.study import search

ROOT = Path(__file__).resolve().parents[2]


def test_unreachable_latency_budget_fails_before_training(tiny_base, tmp_path):
    tiny_base["search"]["latency_ms"] = 1e-4  # 0.1 microsecond: nothing runs that fast
    with pytest.raises(SearchError) as e:
        search(parse_recipe(tiny_base), tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "latency budget" in msg and "binds" in msg and "Nearest point" in msg and "ch 0.5 fp32" in msg
    assert not (tmp_path / "o" / "candidates").exists()  # nothing was trained


def test_a_fractional_budget_is_judged_against_the_dense_architecture_timed_beside_every_candidate(tiny_base, tmp_path):
    import optuna

    tiny_base["search"].update(latency_fraction=1e-3, study="frac")  # a thousandth of dense: nothing is that fast
    with pytest.raises(SearchError) as e:
        search(parse_recipe(tiny_base), tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "x the dense architecture's" in msg and "raise search.latency_fraction to >=" in msg
    assert not (tmp_path / "o" / "candidates").exists()  # nothing was trained
    study = optuna.load_study(study_name="frac", storage=f"sqlite:///{tmp_path / 'o' / 'search.db'}")
    anchor = study.user_attrs["latency_anchor"]["p90_ms"]
    archs = [v for k, v in study.user_attrs.items() if k.startswith("arch:")]
    assert archs and anchor > 0
    for m in archs:  # each timed beside the reference, then scaled to the reference's first timing
        assert m["reference_p90_ms"] > 0
        assert m["p90_ms"] == pytest.approx(m["raw_p90_ms"] * anchor / m["reference_p90_ms"])
    # the budget named in the message is the fraction of the anchor
    assert f"{1e-3 * anchor:.3f} ms" in msg


def test_one_latency_budget_at_a_time(tiny_base):
    from edgeslim.search.config import SearchSection

    with pytest.raises(ValueError, match="give one latency budget, not latency_ms and latency_fraction"):
        SearchSection(latency_ms=2.0, latency_fraction=0.5)
    s = SearchSection(latency_fraction=0.5).resolved(4.0)
    assert (s.latency_ms, s.latency_budget_ms, s.latency_fraction) == (2.0, 2.0, None)
    SearchSection.model_validate(s.model_dump())  # what front.json and a chosen recipe carry validates again


def test_cli_bad_target_is_one_line(tiny_base, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_base))
    r = CliRunner().invoke(app, ["search", str(p), "--target", "jetson-orin-nxx", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "Did you mean 'jetson-orin-nx'" in r.output
    r = CliRunner().invoke(app, ["search", str(p), "--latency-ms", "-1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "latency_ms" in r.output
    r = CliRunner().invoke(app, ["search", str(p), "--latency-fraction", "1.5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "latency_fraction" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_search_writes_front_pick_and_a_recipe_that_re_runs_to_the_same_model(tiny_base, tmp_path):
    from edgeslim.artifact import load_manifest
    from edgeslim.pipeline import run_pipeline
    from edgeslim.recipe import load_recipe
    from edgeslim.runtime import load

    tiny_base["search"].update(latency_ms=50.0, max_critical_fn=40)
    out = tmp_path / "s"
    res = search(parse_recipe(tiny_base), out, progress=False)
    for name in ("front.json", "report.html", "report.md", "chosen-recipe.yaml", "ruled-out.txt"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "front.json").read_text())
    assert doc["front"] and doc["pick"] and doc["target"]["name"] == res.target["name"]
    for p in doc["front"]:  # every front point measured end to end with the profiler on its trained file
        assert p["measured_p90_ms"] > 0
    assert doc["pick"]["test"]["n"] > 0 and "per_class_recall" in doc["pick"]["test"]
    html = (out / "report.html").read_text()
    assert "Pareto front" in html and "data:image/png;base64," in html
    ruled = (out / "ruled-out.txt").read_text()
    assert "2:4 sparsity" in ruled  # this host: no 2:4 kernels, said with the reason
    # the chosen recipe is an ordinary recipe: the pipeline re-runs it to the same model
    again = run_pipeline(load_recipe(out / "chosen-recipe.yaml"), tmp_path / "again", progress=False,
                         stages=("compress", "export"))
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with load(out / "artifact", backend="openvino", precision="fp32") as a, \
            load(again.artifacts["compressed"], backend="openvino", precision="fp32") as b:
        np.testing.assert_allclose(a.infer(x), b.infer(x), rtol=1e-4, atol=1e-4)
    assert load_manifest(out / "artifact").recipe["prune"] == load_manifest(again.artifacts["compressed"]).recipe["prune"]


def _measured(db: Path) -> dict[str, int]:
    """arch cache entries in the study storage -> pid of the process that measured them."""
    if not db.is_file():
        return {}
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute("SELECT key, value_json FROM study_user_attributes WHERE key LIKE 'arch:%'").fetchall()
        except sqlite3.OperationalError:
            return {}
    return {k: json.loads(v)["pid"] for k, v in rows}


@pytest.mark.slow
def test_kill_9_mid_search_then_rerun_resumes_without_remeasuring(tiny_base, tmp_path):
    tiny_base["search"].update(latency_ms=50.0, max_critical_fn=40, trials=3, ratios=[0.0, 0.25, 0.5])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_base))
    out = tmp_path / "s"
    cmd = [sys.executable, "-c", "from edgeslim.cli import main; main()", "search", str(recipe), "--out", str(out),
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "search.db"
    deadline = time.time() + 600
    while time.time() < deadline and len(_measured(db)) < 2:  # the pre-pass measured two corners: kill mid-search
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _measured(db)
    assert len(before) >= 2, "the search never got to measuring"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = _measured(db)
    assert set(before) <= set(after)
    assert all(after[k] == pid for k, pid in before.items()), "an architecture measured before the kill was re-measured"
    doc = json.loads((out / "front.json").read_text())
    keys = [json.dumps(c["candidate"], sort_keys=True) for c in doc["candidates"]]
    assert len(keys) == len(set(keys))  # no candidate fine-tuned twice
    assert doc["pick"] is not None


def test_relative_critical_budgets_are_judged_against_the_dense_reference_on_val(tiny_base):
    """--max-extra-critical-fn N: a candidate's val critical FN minus the dense reference's (both at their calibrated
    thresholds on val), at most N; --max-extra-critical-fnr: the same for the critical FNR at at_fpr."""
    from edgeslim.search.config import SearchSection
    from edgeslim.search.study import _Context, _constraints

    lat = {"p90_ms": 1.0, "size_mb": 1.0}
    dense = {"top1": 0.9, "critical_fn": 7, "critical_fnr_at_fpr": 0.20}

    def cons(**budget):
        ctx = _Context(base=None, section=SearchSection(max_top1_drop=1.0, **budget), target=None, space=None,
                       out_dir=Path("."), num_classes=10, say=print, site=None)  # type: ignore[arg-type]
        return lambda fn, fnr: _constraints(ctx, lat, {"top1": 0.9, "critical_fn": fn, "critical_fnr_at_fpr": fnr},
                                            dense)

    c = cons(max_extra_critical_fn=0)
    assert c(7, 0.2)["extra_critical_fn"] == 0 and c(6, 0.2)["extra_critical_fn"] == -1  # as many / fewer: feasible
    assert c(9, 0.2)["extra_critical_fn"] == 2  # two more missed than dense: over by two
    assert cons(max_extra_critical_fn=2)(9, 0.2)["extra_critical_fn"] == 0
    both = cons(max_extra_critical_fn=0, max_critical_fn=5)(7, 0.2)  # combinable with an absolute count
    assert both["extra_critical_fn"] == 0 and both["critical_fn"] == 2
    r = cons(max_extra_critical_fnr=0.05)
    assert r(7, 0.24)["extra_critical_fnr"] == pytest.approx(-0.01) and r(7, 0.30)["extra_critical_fnr"] > 0
    assert "extra_critical_fn" not in cons()(9, 0.2)  # no relative budget asked: no constraint
    with pytest.raises(ValueError, match="not both"):
        SearchSection(max_extra_critical_fn=0, max_extra_critical_fnr=0.01)


def test_cli_relative_critical_budget_is_checked_before_anything_runs(tiny_base, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_base))
    r = CliRunner().invoke(app, ["search", str(p), "--max-extra-critical-fn", "-1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "max_extra_critical_fn" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_search_with_no_more_missed_critical_cases_than_dense(tiny_base, tmp_path):
    tiny_base["train"]["epochs"] = 1
    tiny_base["search"].update(allocations=["uniform"], trials=2)  # the dense reference and one pruned candidate
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_base))
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["search", str(p), "--latency-ms", "50", "--max-extra-critical-fn", "0",
                                 "--out", str(out), "--no-progress"])
    doc = json.loads((out / "front.json").read_text())
    assert doc["budgets"]["max_extra_critical_fn"] == 0 and doc["budgets"]["max_critical_fn"] is None
    ref = doc["dense"]["critical_fn"]
    for c in doc["candidates"]:  # judged against the dense reference's val FN, nothing else
        extra = c["critical_fn"] - ref
        assert c["violations"].get("extra_critical_fn", 0) == pytest.approx(max(0, extra))
    # the dense candidate (ratio 0 is in the space) holds it by definition, so there is a pick
    assert r.exit_code == 0, r.output
    assert doc["pick"] is not None and doc["pick"]["critical_fn"] <= ref
