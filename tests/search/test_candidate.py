"""The typed candidate: a trial's choices read back, mapped onto a recipe, named in reports; older study records
still read; a bad candidate is a clear error."""

from __future__ import annotations

import json

import pytest

from edgeslim.errors import ConfigError
from edgeslim.recipe import parse_recipe
from edgeslim.search.candidate import Candidate, PruneChoice
from edgeslim.search.config import SearchSection
from edgeslim.search.space import build_space
from edgeslim.search.target import SearchTarget


def _cpu() -> SearchTarget:
    return SearchTarget(name="x86-cpu", kind="cpu", backend="openvino", precisions=("fp32", "int8"))


@pytest.mark.parametrize("label, choice", [
    ("structured:0", PruneChoice("structured", ratio=0.0)),
    ("structured:0.5", PruneChoice("structured", ratio=0.5)),
    ("structured:0.5:sens", PruneChoice("structured", ratio=0.5, per_stage=True)),
    ("nm:2:4", PruneChoice("nm", nm=(2, 4))),
    ("one_shot:0.75", PruneChoice("one_shot", ratio=0.75)),
])
def test_a_prune_choice_reads_back_from_its_label(label, choice):
    assert PruneChoice.parse(label) == choice and choice.label == label


def test_trial_params_to_recipe_give_the_recipe_fields(tiny_base):
    from edgeslim.compress.prune import Structured
    from edgeslim.compress.quant import PTQ

    base = parse_recipe(tiny_base)
    section = SearchSection(ratios=[0.0, 0.5], precisions=["fp32", "int8"], gammas=[1.0, 3.0])
    space = build_space(base, section, _cpu())
    # what an Optuna trial of this space holds, plus the per-stage ratios the search allocates
    params = {"prune": "structured:0.5:sens", "precision": "int8", "float_layers": "stem", "image_size": 16,
              "gamma": 3.0, "stage_ratios": {"blocks.3": 0.25, "blocks.6": 0.75}}
    c = Candidate.from_params(params)
    assert c.prune == PruneChoice("structured", ratio=0.5, per_stage=True) and c.precision == "int8"
    assert c.to_dict() == params and Candidate.from_params(c.to_dict()) == c
    assert c.label == "ch 0.5 per-stage int8 float stem 16px gamma 3"
    r = c.to_recipe(base, section, _cpu(), space, name="tiny-x")
    assert isinstance(r.prune, Structured) and r.prune.ratio == 0.5
    assert r.prune.stage_ratios == {"blocks.3": 0.25, "blocks.6": 0.75}
    assert isinstance(r.quantize, PTQ) and r.quantize.ignored_scope == ["@first_conv"]
    assert r.data.image_size == 16 and r.loss.gamma == 3.0 and r.target == "x86-cpu" and r.name == "tiny-x"
    # the loss weight is no part of the architecture: one latency measurement serves every gamma
    other = Candidate.from_params({**params, "gamma": 1.0})
    assert other.arch_key == c.arch_key and other.key != c.key and "gamma" not in c.arch().to_dict()


def test_bad_candidates_are_clear_errors(tiny_base):
    ok = {"prune": "structured:0.5", "precision": "fp32", "image_size": 16, "gamma": 1.0}
    with pytest.raises(ConfigError, match="prune choice 'structured:half': expected <method>:<ratio>"):
        Candidate.from_params({**ok, "prune": "structured:half"})
    with pytest.raises(ConfigError, match="missing precision"):
        Candidate.from_params({k: v for k, v in ok.items() if k != "precision"})
    with pytest.raises(ConfigError, match="unknown ratio"):
        Candidate.from_params({**ok, "ratio": 0.5})
    with pytest.raises(ConfigError, match="precision 'int4' is not one of fp32, fp16, int8"):
        Candidate.from_params({**ok, "precision": "int4"})
    with pytest.raises(ConfigError, match="float_layers 'stem' only applies to int8"):
        Candidate.from_params({**ok, "float_layers": "stem"})
    with pytest.raises(ConfigError, match="stage_ratios need a per-stage choice"):
        Candidate.from_params({**ok, "stage_ratios": {"blocks.3": 0.2}})
    base = parse_recipe(tiny_base)
    section = SearchSection(ratios=[0.5])
    space = build_space(base, section, _cpu())
    with pytest.raises(ConfigError, match="needs the per-stage ratios"):
        Candidate.from_params({**ok, "prune": "structured:0.5:sens"}).to_recipe(base, section, _cpu(), space)
    with pytest.raises(ConfigError, match="expected <method>:<ratio>, nm:<n>:<m>"):
        Candidate.from_params({**ok, "prune": "nm:0.5"}).to_recipe(base, section, _cpu(), space)


def test_a_study_written_before_the_typed_candidate_resumes(tiny_base):
    """A study stores each choice as a categorical value and each candidate as a plain dict with its JSON key; the
    space samples the same values, and the candidate reads the old records back with the same key."""
    import optuna

    from edgeslim.search.report import point

    base = parse_recipe(tiny_base)
    space = build_space(base, SearchSection(ratios=[0.0, 0.5]), _cpu())
    old = {"prune": "structured:0.5:sens", "precision": "fp32", "image_size": 16, "gamma": 1.0,
           "stage_ratios": {"blocks.3": 0.4}}
    dists = {"prune": optuna.distributions.CategoricalDistribution(["structured:0", "structured:0.5",
                                                                     "structured:0.5:sens"]),
             "precision": optuna.distributions.CategoricalDistribution(["fp32"]),
             "image_size": optuna.distributions.CategoricalDistribution([16]),
             "gamma": optuna.distributions.CategoricalDistribution([1.0])}
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    study.add_trial(optuna.trial.create_trial(
        values=[1.0, 0.2, 0.9], params={k: v for k, v in old.items() if k != "stage_ratios"}, distributions=dists,
        user_attrs={"candidate": old, "key": json.dumps(old, sort_keys=True), "val": {"critical_fn": 3, "dir": "d"},
                    "latency": {"size_mb": 1.0}, "constraint_names": ["latency"], "constraints": [-1.0]}))
    t = study.trials[0]
    c = Candidate.from_trial(t)
    assert c.key == t.user_attrs["key"]  # the duplicate check finds the old candidate; its folder is the same
    assert point(t)["label"] == "ch 0.5 per-stage fp32 16px gamma 1" and point(t)["feasible"]
    # a new trial samples the same distributions: Optuna refuses a changed one in a resumed study
    new = space.suggest(study.ask())
    assert new.prune in space.dim("prune").choices


def test_the_pick_is_the_fastest_feasible_candidate_whose_trained_file_holds_the_budget():
    from edgeslim.search.report import pick_measured

    def pt(label, estimate):
        return {"label": label, "latency_ms": estimate, "critical_fnr": 0.1, "top1": 0.9, "feasible": True,
                "violations": {}}

    files = {"a": 1.6, "b": 1.3, "c": 1.1}  # what each trained file measures
    measured = []

    def measure(p):
        measured.append(p["label"])
        p["measured_p90_ms"] = files[p["label"]]

    a, b, c = pt("a", 1.0), pt("b", 1.2), pt("c", 1.35)
    assert pick_measured([c, a, b], 1.4, measure) is b  # a's estimate admitted it, its file does not hold 1.4 ms
    assert measured == ["a", "b"]  # in order of the estimate; c is not measured
    assert a["feasible"] is False and a["violations"]["latency_measured"] == pytest.approx(0.2)
    assert pick_measured([pt("a", 1.0)], None, measure) is not None  # no latency budget: nothing to confirm
    assert pick_measured([pt("a", 1.0)], 1.2, measure) is None  # every file over: no pick


def test_the_front_keeps_infeasible_trade_offs_that_optunas_best_trials_leave_out():
    """study.best_trials of a constrained study is the front of the feasible trials only; the report's front keeps
    an infeasible point nothing dominates (how far a budget is from reachable), marked infeasible."""
    import optuna

    from edgeslim.search.report import pareto, point

    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    for n, (values, over) in enumerate([([2.0, 0.1, 0.9], -1.0), ([1.0, 0.1, 0.95], 2.0), ([3.0, 0.2, 0.8], -1.0)]):
        c = {"prune": f"structured:0.{n + 1}", "precision": "fp32", "image_size": 16, "gamma": 1.0}
        study.add_trial(optuna.trial.create_trial(
            values=values, constraints={"critical_fn": over},
            user_attrs={"candidate": c, "val": {"critical_fn": 3, "dir": "d"}, "latency": {"size_mb": 1.0},
                        "constraint_names": ["critical_fn"], "constraints": [over]}))
    front = pareto([point(t) for t in study.trials])
    assert [p["trial"] for p in front] == [1]  # the infeasible fast one dominates both feasible ones
    assert not front[0]["feasible"] and front[0]["violations"] == {"critical_fn": 2.0}
    assert [t.number for t in study.best_trials] == [0]  # Optuna's: the feasible front only
