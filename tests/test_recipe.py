import pytest

from edgeslim.errors import ConfigError, UnknownNameError
from edgeslim.recipe import Recipe, builtin_recipes, load_recipe, parse_recipe


def test_default_recipe_is_the_elpv_job():
    r = load_recipe(None, check_names=False)
    assert "default" in builtin_recipes()
    assert r.model.source == "efficientnet_lite0" and r.data.dataset == "elpv" and r.data.critical == ["defective"]
    assert r.decision.target_fpr is not None  # the summary reads at a calibrated threshold


def test_digits_recipe_is_embedded_and_resolves():
    r = load_recipe("digits", check_names=False)
    assert "digits" in builtin_recipes()
    assert r.model.source == "efficientnet_lite0" and r.data.dataset == "digits"
    assert r.data.critical == [8] and r.data.imbalance == {"8": 0.25}
    assert r.loss.rank_weight == 5.0
    # the resolved recipe round-trips through YAML unchanged
    import yaml

    again = parse_recipe(yaml.safe_load(r.to_yaml()))
    assert again.digest() == r.digest()


def test_typo_in_key_gets_did_you_mean_and_valid_keys():
    with pytest.raises(ConfigError) as exc:
        parse_recipe({"prune": {"methd": "lottery_ticket"}})
    msg = str(exc.value)
    assert "unknown key 'prune.methd'" in msg and "Did you mean 'method'?" in msg and "rounds" in msg
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        parse_recipe({"trian": {}})


def test_out_of_range_values_are_rejected_before_any_work():
    with pytest.raises(ConfigError, match="prune.rate"):
        parse_recipe({"prune": {"rate": 1.0}})
    with pytest.raises(ConfigError, match="imbalance"):
        parse_recipe({"data": {"imbalance": {"8": 0}}})
    with pytest.raises(ConfigError, match="val_fraction"):
        parse_recipe({"data": {"val_fraction": 0.6, "test_fraction": 0.5}})
    with pytest.raises(ConfigError, match="recipe version 3 is not supported"):
        parse_recipe({"version": 3})


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="Did you mean 'default'"):
        load_recipe("defualt")


def test_lambda_alias():
    r = parse_recipe({"loss": {"lambda": 2.5}})
    assert r.loss.rank_weight == 2.5
    assert r.to_dict()["loss"]["lambda"] == 2.5
    assert isinstance(r, Recipe)


def test_decision_targets_are_exclusive():
    assert parse_recipe({"decision": {"target_fnr": 0.05}}).decision.target_fnr == 0.05
    with pytest.raises(ConfigError, match="not both"):
        parse_recipe({"decision": {"target_fnr": 0.05, "target_fpr": 0.01}})


# -- version 2: the prune section is the method's own config; version 1 converts ----------------------------------


def test_v2_prune_section_is_the_methods_config():
    from edgeslim.compress.prune import NM, LotteryTicket, NoPruning, OneShot, Structured

    r = parse_recipe({"version": 2, "prune": {"method": "oneshot", "sparsity": 0.8, "scope": "global"}})
    assert r.version == 2 and r.prune == OneShot(sparsity=0.8, scope="global")  # the alias resolves to the name
    assert isinstance(parse_recipe({}).prune, LotteryTicket)  # the default method
    assert parse_recipe({"version": 2, "prune": {"method": "dense"}}).prune == NoPruning()
    # the resolved recipe holds only the chosen method's keys, method first, and round-trips
    d = parse_recipe({"version": 2, "prune": {"method": "structured", "ratio": 0.5}}).to_dict()
    assert list(d["prune"]) == ["method", "ratio", "scope", "round_to", "iterative_steps", "importance",
                                "stage_ratios", "frozen_ratio", "frozen_samples", "prune_first_conv", "prune_classifier",
                                "exclude"]
    assert parse_recipe(d).prune == Structured(ratio=0.5)
    # Python callers may give a config object directly
    assert Recipe(prune=NM(n=1, m=4)).prune.n == 1
    assert Recipe(prune={"method": "nm", "n": 1}).prune == NM(n=1)


def test_v2_a_key_the_method_does_not_have_names_its_keys_and_its_owner():
    with pytest.raises(ConfigError) as exc:
        parse_recipe({"version": 2, "prune": {"method": "one_shot", "ratio": 0.3}})
    msg = str(exc.value)
    assert "unknown key 'prune.ratio' for method 'one_shot'" in msg and "sparsity" in msg
    assert "ratio belongs to method 'structured'" in msg
    # in version 2 there is no "unused field at its default": every key must be the method's
    with pytest.raises(ConfigError, match="unknown key 'prune.rounds' for method 'none'"):
        parse_recipe({"version": 2, "prune": {"method": "none", "rounds": 2}})
    with pytest.raises(UnknownNameError, match=r"prune.method: unknown pruning method 'lotery_ticket'.*'lottery_ticket'"):
        parse_recipe({"version": 2, "prune": {"method": "lotery_ticket"}})
    with pytest.raises(ConfigError, match="n must be < m"):
        parse_recipe({"version": 2, "prune": {"method": "nm", "n": 4, "m": 4}})
    with pytest.raises(ConfigError, match="initial_sparsity 0.6 > sparsity 0.5"):
        parse_recipe({"version": 2, "prune": {"method": "gradual", "initial_sparsity": 0.6}})


def test_v1_recipes_convert_to_v2():
    from edgeslim.recipe import upgrade_prune_v1, upgrade_recipe

    # the method's own fields are kept, other v1 fields at their v1 default are dropped (resolved v1 recipes)
    v1_resolved = {
        "method": "one_shot", "rounds": 2, "rate": 0.3, "scope": "global", "score": "magnitude", "rewind": "init",
        "sparsity": 0.8, "initial_sparsity": 0.0, "start_step": 0, "end_step": None, "frequency": 10, "n": 2,
        "m": 4, "ratio": 0.3, "round_to": 8, "iterative_steps": 1, "importance": "l2", "mode": "full",
        "prune_first_conv": True, "prune_classifier": False, "exclude": ["a*"],
    }
    assert upgrade_prune_v1(v1_resolved) == {"method": "one_shot", "scope": "global", "sparsity": 0.8,
                                             "prune_first_conv": True, "prune_classifier": False, "exclude": ["a*"]}
    # a v1 field the method does not use, at a non-default value, is refused as version 1 refused it
    with pytest.raises(ConfigError, match=r"ratio does not apply to method 'nm' \(it uses: .*n, .*\); remove it"):
        upgrade_prune_v1({"method": "nm", "ratio": 0.5})
    with pytest.raises(ConfigError, match="mode does not apply to method 'structured'"):
        parse_recipe({"version": 1, "prune": {"method": "structured", "mode": "linear_probe"}})
    # none ignored every pruning field in version 1
    assert upgrade_prune_v1({"method": "dense", "rounds": 5, "ratio": 0.9}) == {"method": "dense"}
    # no version = version 1; the result is version 2, other sections untouched
    up = upgrade_recipe({"name": "x", "prune": {"rounds": 1, "rate": 0.5, "sparsity": 0.5}})
    assert up == {"name": "x", "version": 2, "prune": {"rounds": 1, "rate": 0.5}}
    assert upgrade_recipe({"version": 2, "prune": {"method": "nm", "ratio": 0.9}})["prune"]["ratio"] == 0.9  # as is
    # unknown keys and methods are left for validation to name
    assert upgrade_prune_v1({"method": "lotery", "rat": 1}) == {"method": "lotery", "rat": 1}
    r = parse_recipe({"version": 1, "prune": {"method": "lth", "rounds": 1, "n": 2}})
    assert r.version == 2 and r.prune.method == "lottery_ticket" and r.prune.rounds == 1


def test_builtin_recipes_are_v2_and_every_v1_form_of_them_loads_the_same():
    import yaml

    from edgeslim.recipe import _V1_PRUNE_DEFAULTS

    for name in builtin_recipes():
        r = load_recipe(name, check_names=False)
        assert r.version == 2
        v1 = r.to_dict()
        v1["version"] = 1
        v1["prune"] = {**_V1_PRUNE_DEFAULTS, **v1["prune"]}  # the flat section a version-1 edgeslim wrote
        assert parse_recipe(yaml.safe_load(yaml.safe_dump(v1))).digest() == r.digest()


def test_printing_a_recipe_imports_no_stage_and_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgeslim.recipe import load_recipe, parse_recipe\n"
        "load_recipe('lite0-fast-int8', check_names=False).to_yaml()\n"
        "parse_recipe({'prune': {'method': 'nm', 'n': 1}}).to_yaml()\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'openvino', 'nncf', 'torch_pruning') if m in sys.modules]\n"
        "stages = [m for m in sys.modules if m.startswith(('edgeslim.export', 'edgeslim.runtime', "
        "'edgeslim.devices', 'edgeslim.server', 'edgeslim.pipeline', 'edgeslim.cli'))]\n"
        "print(heavy, stages)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


@pytest.mark.parametrize("text", ["{}\n", "", "# nothing yet\n"])
def test_an_empty_recipe_file_is_refused_with_the_defaults_it_would_run_on_and_the_fix(tmp_path, text):
    from edgeslim.errors import ConfigError

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    msg = str(err.value)
    schema, builtin = Recipe(), load_recipe("default")
    # it names both sets of defaults, which differ, and how to get the one the user probably meant
    assert f"data {schema.data.dataset}" in msg and f"data {builtin.data.dataset}" in msg
    assert schema.data.dataset != builtin.data.dataset
    assert "edgeslim pipeline default" in msg and f"edgeslim recipes default > {path}" in msg


def test_a_method_that_trains_once_says_which_epochs_it_uses():
    from edgeslim.recipe import recipe_warnings

    for method in ("none", "sparse_transfer"):
        r = parse_recipe({"prune": {"method": method}, "train": {"epochs": 5, "final_epochs": 0}})
        (w,) = recipe_warnings(r)
        assert "train.final_epochs (0), not train.epochs (5)" in w and "trains nothing" in w
    # methods with a dense round train on epochs: no warning; nor when final_epochs is left to default
    assert recipe_warnings(parse_recipe({"prune": {"method": "one_shot"}, "train": {"epochs": 5, "final_epochs": 0}})) == []
    assert recipe_warnings(parse_recipe({"prune": {"method": "none"}, "train": {"epochs": 5}})) == []


@pytest.mark.parametrize("section, data, message", [
    ("model", {"source": "timmm:resnet18"}, r"unknown pretrained source 'timmm'.*Did you mean 'timm'"),
    ("data", {"dataset": "digts"}, r"unknown dataset 'digts'.*Did you mean 'digits'"),
    ("prune", {"method": "one_shott"}, r"unknown pruning method"),
    ("export", {"formats": ["onnxx"]}, r"unknown exporter 'onnxx'.*Did you mean 'onnx'"),
    ("profile", {"backends": ["openvno"]}, r"unknown runtime backend 'openvno'.*Did you mean 'openvino'"),
])
def test_each_sections_names_are_checked_by_the_stage_that_owns_them(section, data, message):
    from edgeslim.recipe import CHECKED_SECTIONS, RECIPE_CHECKS

    if section == "prune":  # parsing already refuses an unknown method: the check sees a registered one
        with pytest.raises(UnknownNameError, match=message):
            parse_recipe({"prune": data})
        parse_recipe({}).check_names()
        return
    r = parse_recipe({section: data})
    with pytest.raises(UnknownNameError, match=message):
        r.check_names()
    assert set(RECIPE_CHECKS.names()) == set(CHECKED_SECTIONS)  # every checked section has its stage's check


def test_checking_names_imports_the_stages_only_when_asked():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgeslim.recipe import RECIPE_CHECKS, parse_recipe\n"
        "r = parse_recipe({'data': {'dataset': 'digits'}})\n"
        "before = [m for m in sys.modules if m.startswith(('edgeslim.compress.data', 'edgeslim.export'))]\n"
        "r.check_names()\n"
        "after = sorted(m for m in ('edgeslim.compress.data', 'edgeslim.export', 'edgeslim.runtime') if m in sys.modules)\n"
        "print(before, after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['edgeslim.compress.data', 'edgeslim.export', 'edgeslim.runtime']"
