"""The search space follows the target: nothing the target cannot run is proposed; an empty space is an error."""

from __future__ import annotations

import pytest

from edgeslim.errors import ConfigError
from edgeslim.recipe import parse_recipe
from edgeslim.search.config import SearchSection
from edgeslim.search.space import arch_key, build_space, candidate_key, candidate_recipe
from edgeslim.search.target import SearchTarget, resolve_target


def _cpu() -> SearchTarget:
    return SearchTarget(name="x86-cpu", kind="cpu", backend="openvino", precisions=("fp32", "int8"))


def _orin() -> SearchTarget:
    return SearchTarget(name="jetson-agx-orin", kind="jetson", backend="tensorrt",
                        precisions=("fp32", "fp16", "int8"), sparse_2_4=True)


def test_this_host_never_gets_2_4_or_unstructured_sparsity(tiny_base):
    base = parse_recipe(tiny_base)
    target = resolve_target("auto")  # this host is a CPU: no 2:4 kernels, no zero-skipping convolutions
    assert target.kind == "cpu" and not target.sparse_2_4
    space = build_space(base, SearchSection(ratios=[0.0, 0.5], sparsities=[0.5]), target)
    prune = space.dim("prune").values  # the choices as the study stores them: their labels
    # uniform ratios, and the same ratios spread over the stages by measured sensitivity
    assert prune == ["structured:0", "structured:0.5", "structured:0.5:sens"]
    assert not any(p.startswith(("nm:", "one_shot:")) for p in prune)
    assert any("2:4" in line and "TensorRT" in line for line in space.ruled_out)
    assert any("unstructured" in line for line in space.ruled_out)


def test_fp16_only_where_the_cpu_has_fp16_kernels(tiny_base):
    target = resolve_target("auto")
    isa = (target.info.get("cpu") or {}).get("isa") or {}
    has_fp16 = bool(isa.get("avx512_fp16") or isa.get("amx_fp16"))
    space = build_space(parse_recipe(tiny_base), SearchSection(), target)
    assert ("fp16" in space.dim("precision").choices) == has_fp16
    if not has_fp16:
        assert any(line.startswith("FP16") for line in space.ruled_out)


def test_2_4_is_proposed_on_an_ampere_tensorrt_target(tiny_base):
    space = build_space(parse_recipe(tiny_base), SearchSection(ratios=[0.0, 0.3]), _orin())
    assert "nm:2:4" in space.dim("prune").values
    assert space.dim("precision").choices == ["fp32", "fp16", "int8"]


def test_empty_space_is_a_clear_error(tiny_base):
    with pytest.raises(ConfigError, match="search space is empty for target x86-cpu.*fp16.*runs fp32, int8"):
        build_space(parse_recipe(tiny_base), SearchSection(precisions=["fp16"]), _cpu())
    with pytest.raises(ConfigError, match="no pruning choice"):
        build_space(parse_recipe(tiny_base), SearchSection(ratios=[]), _cpu())


def test_candidate_is_an_ordinary_recipe(tiny_base):
    from edgeslim.compress.prune import OneShot, Structured
    from edgeslim.compress.quant import PTQ, NoQuantization

    base = parse_recipe({**tiny_base, "prune": {"method": "lottery_ticket", "rounds": 3, "rate": 0.5,
                                                 "prune_first_conv": True, "exclude": ["blocks.0.*"]},
                         "quantize": {"method": "qat", "calibration_size": 64, "qat_epochs": 2}})
    section = SearchSection(ratios=[0.0, 0.6], gammas=[2.0, 5.0])
    space = build_space(base, section, _cpu())
    c = {"prune": "structured:0.6", "precision": "int8", "float_layers": "stem", "image_size": 16, "gamma": 2.0}
    r = candidate_recipe(base, c, section, _cpu(), space)
    assert isinstance(r.prune, Structured) and r.prune.ratio == 0.6 and r.version == 2
    # the layer choice carries over; the lottery ticket's own fields do not exist on a Structured config
    assert r.prune.prune_first_conv is True and r.prune.exclude == ["blocks.0.*"]
    assert "rounds" not in type(r.prune).model_fields and r.prune.round_to == 8  # Structured's default
    # QAT in the base: the short fine-tunes score its post-training form, with the base's calibration options
    # the stem kept in float by an alias the quantizer resolves on each exported graph
    assert isinstance(r.quantize, PTQ) and r.quantize.ignored_scope == ["@first_conv"]
    assert r.quantize.calibration_size == 64
    assert r.target == "x86-cpu"  # the searched target: the chosen recipe re-runs with the same INT8 scheme
    assert r.loss.gamma == 2.0 and r.train.final_epochs == section.fine_tune_epochs
    assert r.export.formats == ["onnx", "openvino"] and r.profile.backends == ["openvino"]
    assert r.search is None  # the chosen recipe re-runs with `edgeslim pipeline`, not another search
    fp32 = candidate_recipe(base, {**c, "precision": "fp32", "float_layers": None}, section, _cpu(), space)
    assert isinstance(fp32.quantize, NoQuantization) and fp32.quantize.calibration_size == 64
    # the recipe round-trips through YAML as version 2 (what chosen-recipe.yaml holds)
    import yaml

    again = parse_recipe(yaml.safe_load(r.to_yaml()))
    assert again.prune == r.prune and again.quantize == r.quantize and again.target == "x86-cpu"
    # latency does not depend on the loss weight: one measurement serves both gammas
    assert arch_key(c) == arch_key({**c, "gamma": 5.0}) and candidate_key(c) != candidate_key({**c, "gamma": 5.0})
    # a sparse candidate is the method's own config
    sparse = candidate_recipe(base, {**c, "prune": "one_shot:0.75"}, section, _cpu(), space)
    assert isinstance(sparse.prune, OneShot) and sparse.prune.sparsity == 0.75 and sparse.prune.exclude == ["blocks.0.*"]


def test_accuracy_controlled_int8_of_the_base_is_kept(tiny_base):
    from edgeslim.compress.quant import AccuracyControlledPTQ

    base = parse_recipe({**tiny_base, "quantize": {"method": "accuracy_aware", "max_drop": 0.02}})
    section = SearchSection(ratios=[0.5])
    space = build_space(base, section, _cpu())
    c = {"prune": "structured:0.5", "precision": "int8", "float_layers": "none", "image_size": 16, "gamma": 1.0}
    r = candidate_recipe(base, c, section, _cpu(), space)
    assert isinstance(r.quantize, AccuracyControlledPTQ) and r.quantize.max_drop == 0.02
    # the base's structured options are kept for its own method
    assert r.prune.round_to == 4


def test_the_space_walks_the_registered_methods(tiny_base):
    from edgeslim.methods import PRUNE_METHODS

    base = parse_recipe(tiny_base)
    cpu = build_space(base, SearchSection(ratios=[0.0, 0.5], sparsities=[0.5]), _cpu())
    assert set(cpu.methods) == set(PRUNE_METHODS.names())  # every registered method is accounted for
    assert cpu.methods["structured"].startswith("proposed") and cpu.methods["nm"].startswith("not proposed")
    assert all(cpu.methods[m].startswith("not proposed") for m in ("one_shot", "gradual", "lottery_ticket"))
    # a target whose kernels skip zeros gets the one-shot sparsities (the cheapest way to reach them)
    sparse = SearchTarget(name="x", kind="gpu", backend="tensorrt", precisions=("fp32",), sparse_unstructured=True)
    s = build_space(base, SearchSection(ratios=[0.5], sparsities=[0.5, 0.75]), sparse)
    assert set(s.dim("prune").values) == {"structured:0.5", "structured:0.5:sens", "one_shot:0.5", "one_shot:0.75"}
    uniform = build_space(base, SearchSection(ratios=[0.0, 0.5], allocations=["uniform"]), _cpu())
    assert uniform.dim("prune").values == ["structured:0", "structured:0.5"]
    staged = build_space(base, SearchSection(ratios=[0.0, 0.5], allocations=["sensitivity"]), _cpu())
    assert staged.dim("prune").values == ["structured:0", "structured:0.5:sens"]  # 0 stays: the dense reference
    assert s.methods["one_shot"].startswith("proposed") and s.methods["gradual"].startswith("not proposed")


def test_a_plugin_method_the_search_cannot_model_is_listed_not_proposed(tiny_base):
    from typing import Literal

    from edgeslim.compress.prune import PRUNE_METHODS, LayerPruneConfig

    class Mystery(LayerPruneConfig):
        method: Literal["mystery_test"] = "mystery_test"

    PRUNE_METHODS.register(Mystery)(lambda cfg, ctx: None)
    try:
        space = build_space(parse_recipe(tiny_base), SearchSection(ratios=[0.5]), _cpu())
        assert space.methods["mystery_test"].startswith("not proposed")
        assert not any(p.method == "mystery_test" for p in space.dim("prune").choices)
    finally:
        PRUNE_METHODS.unregister("mystery_test")


def test_section_validation():
    with pytest.raises(ValueError, match="give one latency budget, not latency_ms and throughput"):
        SearchSection(latency_ms=2, throughput=100)
    with pytest.raises(ValueError, match="ratios"):
        SearchSection(ratios=[1.0])
    assert SearchSection(throughput=250).latency_budget_ms == pytest.approx(4.0)


def test_a_ratio_that_empties_a_layer_is_dropped_with_its_reason(tiny_base, tmp_path):
    from edgeslim.search.study import _Context, _drop_refused_ratios, make_site

    base = parse_recipe(tiny_base)
    section = SearchSection(ratios=[0.0, 0.5, 0.95], precisions=["fp32"])
    target = resolve_target("auto")
    space = build_space(base, section, target)
    ctx = _Context(base=base, section=section, target=target, space=space, out_dir=tmp_path, num_classes=10,
                   say=lambda m: None, site=make_site(target, None))
    _drop_refused_ratios(ctx)
    # a per-stage choice is capped stage by stage (sensitivity.allocate), so it is never refused
    assert space.dim("prune").values == ["structured:0", "structured:0.5", "structured:0.5:sens", "structured:0.95:sens"]
    assert any(line.startswith("ch 0.95: structured ratio 0.95") and "would remove every channel" in line
               for line in space.ruled_out)


def test_squeeze_excitation_layers_kept_whole_rule_out_no_ratio_of_mobilenet_v3(tiny_base, tmp_path):
    """MobileNetV3-small's first SE reduction has 8 channels: round_to 8 keeps it whole at every ratio, so the search
    keeps its ratios (it used to drop them all, leaving the space empty)."""
    from edgeslim.search.study import _Context, _drop_refused_ratios, make_site

    tiny_base["model"] = {"source": "torchvision:mobilenet_v3_small", "pretrained": False}
    tiny_base["data"]["image_size"] = 32
    tiny_base["prune"]["round_to"] = 8
    base = parse_recipe(tiny_base)
    section = SearchSection(ratios=[0.0, 0.3, 0.9], precisions=["fp32"], allocations=["uniform"])
    target = resolve_target("auto")
    space = build_space(base, section, target)
    ctx = _Context(base=base, section=section, target=target, space=space, out_dir=tmp_path, num_classes=10,
                   say=lambda m: None, site=make_site(target, None))
    _drop_refused_ratios(ctx)
    assert space.dim("prune").values == ["structured:0", "structured:0.3"]
    # 0.9 would empty layers wider than round_to: dropped, with the layers named
    assert any(line.startswith("ch 0.9: structured ratio 0.9") and "would remove every channel" in line
               and "features.1.block.1.fc1" not in line for line in space.ruled_out)


def test_a_per_stage_candidate_carries_its_ratios_into_the_recipe_and_the_model(tiny_base):
    import yaml

    from edgeslim.compress.prune import Structured
    from edgeslim.search.latency import build_candidate_model, macs_by_kind
    from edgeslim.search.space import prune_config

    base = parse_recipe(tiny_base)
    section = SearchSection(ratios=[0.0, 0.5])
    space = build_space(base, section, _cpu())
    c = {"prune": "structured:0.5:sens", "precision": "fp32", "image_size": 16, "gamma": 2.0,
         "stage_ratios": {"blocks.3": 0.25, "blocks.6": 0.75}}
    r = candidate_recipe(base, c, section, _cpu(), space)
    assert isinstance(r.prune, Structured) and r.prune.ratio == 0.5
    assert r.prune.stage_ratios == {"blocks.3": 0.25, "blocks.6": 0.75}
    assert parse_recipe(yaml.safe_load(r.to_yaml())).prune == r.prune  # chosen-recipe.yaml re-runs the same ratios
    with pytest.raises(ConfigError, match="needs the per-stage ratios"):
        prune_config("structured:0.5:sens", base)
    model, shape = build_candidate_model(base, c, 10)
    assert model.blocks[3].out_channels == 24 and model.blocks[6].out_channels == 8  # 32 -> 24, 32 -> 8
    uniform = macs_by_kind(*build_candidate_model(base, {**c, "prune": "structured:0.5", "stage_ratios": None}, 10))
    assert macs_by_kind(model, shape) != uniform


def test_the_dense_reference_prunes_nothing_while_candidates_keep_the_bases_frozen_refit():
    """A base that refits its frozen layers (prune.frozen_ratio) passes that to every channel candidate, but the
    ratio-0 reference the candidates are judged against is dense: with the refit it missed 41 val cells, dense 33."""
    from edgeslim.search.space import prune_config

    base = parse_recipe({"train": {"freeze": "blocks.4"},
                         "prune": {"method": "structured", "ratio": 0.5, "frozen_ratio": 0.5, "prune_first_conv": True}})
    assert prune_config("structured:0", base).frozen_ratio == 0.0
    cand = prune_config("structured:0.6", base)
    assert cand.ratio == 0.6 and cand.frozen_ratio == 0.5 and cand.prune_first_conv
