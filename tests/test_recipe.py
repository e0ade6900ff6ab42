import pytest

from edgeslim.errors import ConfigError
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
    with pytest.raises(ConfigError, match="version"):
        parse_recipe({"version": 2})


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
