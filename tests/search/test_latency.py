"""Architecture latency measured without training, with the runtimes' own per-layer counters."""

from __future__ import annotations

import math

import pytest

from edgeslim.recipe import parse_recipe
from edgeslim.search.latency import LatencyModel, build_candidate_model, macs_by_kind, measure_architecture

C = {"prune": "structured:0", "precision": "fp32", "image_size": 16, "gamma": 1.0}


@pytest.fixture(scope="module")
def base():
    return parse_recipe({"model": {"source": "tiny"}, "data": {"image_size": 16},
                         "prune": {"method": "structured", "round_to": 4}})


def test_channel_ratio_shrinks_the_random_weight_copy(base):
    dense = macs_by_kind(*build_candidate_model(base, C, 10))
    half = macs_by_kind(*build_candidate_model(base, {**C, "prune": "structured:0.5"}, 10))
    assert dense["dw"] > 0 and dense["pw"] > 0 and dense["conv"] > 0
    # the stem is kept (prune_first_conv false); the convs after it lose half their channels
    assert half["pw"] == pytest.approx(dense["pw"] / 2) and half["conv"] < 0.6 * dense["conv"]
    big = macs_by_kind(*build_candidate_model(base, {**C, "image_size": 32}, 10))
    assert big["conv"] == pytest.approx(4 * dense["conv"])


def test_layers_frozen_by_the_base_are_kept_whole_as_training_keeps_them(base):
    """The architecture the search times is the one it trains: structured pruning leaves the layers before the
    base's train.freeze boundary whole (it measured 1.2 ms architectures for 1.9 ms trained files before)."""
    frozen = parse_recipe({**base.to_dict(), "train": {**base.to_dict()["train"], "freeze": "blocks.5"}})
    c = {**C, "prune": "structured:0.5"}
    loose, _ = build_candidate_model(base, c, 10)
    kept, _ = build_candidate_model(frozen, c, 10)
    assert loose.blocks[3].out_channels == 16 and kept.blocks[3].out_channels == 32  # before the boundary: whole
    assert kept.blocks[6].out_channels == loose.blocks[6].out_channels == 16  # after it: pruned alike


def test_the_frozen_layers_hidden_widths_are_cut_as_frozen_ratio_cuts_them_in_training():
    """With prune.frozen_ratio the base's training refits narrower frozen expansions; the search times that
    architecture, not one with the frozen layers whole."""
    def lite0(**prune):
        return parse_recipe({"model": {"source": "efficientnet_lite0"}, "data": {"image_size": 32},
                             "train": {"freeze": "blocks.4"},
                             "prune": {"method": "structured", "round_to": 8, **prune}})

    c = {**C, "image_size": 32, "prune": "structured:0.5"}
    whole, _ = build_candidate_model(lite0(), c, 2)
    cut, _ = build_candidate_model(lite0(frozen_ratio=0.5), c, 2)
    for i in range(1, 5):  # the frozen stages' expansions: half as wide, in the consumer too
        for a, b in zip(whole.blocks[i], cut.blocks[i]):
            assert b.conv_pw.out_channels == b.conv_pwl.in_channels == a.conv_pw.out_channels // 2
            assert b.conv_pwl.out_channels == a.conv_pwl.out_channels  # block outputs: whole
    assert cut.conv_stem.out_channels == 32  # the stem: only with prune_first_conv
    for a, b in zip(whole.blocks[5], cut.blocks[5]):  # the trained stages: pruned alike
        assert b.conv_pw.out_channels == a.conv_pw.out_channels


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_per_layer_counters_add_up_to_about_the_end_to_end_time(base, backend):
    m = measure_architecture(base, C, backend=backend, num_classes=10, iterations=20, seconds=0.05, threads=1)
    assert m.p90_ms >= m.median_ms > 0 and m.size_mb > 0
    kinds = {r["kind"] for r in m.layers}
    assert {"pw", "dw", "conv"} <= kinds if backend == "openvino" else "conv" in kinds
    # counters time the layers only; the call adds its overhead, so the sum is below the end-to-end figure
    assert 0 < m.layer_sum_ms < 3 * m.p90_ms


def test_latency_model_is_fitted_on_measurements_and_reports_its_error(base):
    lm = LatencyModel()
    ms = {}
    for r in ("0", "0.25", "0.5"):
        c = {**C, "prune": f"structured:{r}"}
        ms[r] = measure_architecture(base, c, backend="openvino", num_classes=10, iterations=20, seconds=0.05,
                                     threads=1)
        lm.add("fp32", ms[r])
    err = lm.error()["fp32"]
    assert err["n"] == 3 and math.isfinite(err["mape"]) and err["max"] >= err["mape"] >= 0
    pred = lm.predict("fp32", ms["0.25"].macs)
    assert pred is not None and pred > 0
    assert lm.predict("int8", ms["0"].macs) is None  # no int8 measurements: no prediction


def test_tensorrt_layer_names_give_the_kind_the_model_fits():
    from edgeslim.search.latency import _tensorrt_kind

    assert _tensorrt_kind("/features/features.0/Conv + /features/features.0/Relu") == "conv"
    assert _tensorrt_kind("/classifier/Gemm") == "fc" and _tensorrt_kind("MatMul_12 + Add") == "fc"
    assert _tensorrt_kind("/pool/GlobalAveragePool") == "other" and _tensorrt_kind("17") == "other"


@pytest.mark.tensorrt
def test_tensorrt_per_layer_times_come_from_its_profiler(base):
    m = measure_architecture(base, C, backend="tensorrt", num_classes=10, iterations=20, seconds=0.05,
                             device="cuda:0")
    assert m.p90_ms >= m.median_ms > 0
    assert "conv" in {r["kind"] for r in m.layers} and m.layer_sum_ms > 0


def test_architecture_measurements_are_keyed_by_the_bases_frozen_layers_and_their_refit():
    """A stored measurement belongs to the base's frozen layers as they are built: whole, or refit to other widths."""
    from edgeslim.search.study import _arch_scope

    def lite0(**prune):
        return parse_recipe({"model": {"source": "efficientnet_lite0"}, "train": {"freeze": "blocks.4"},
                             "prune": {"method": "structured", **prune}})

    assert _arch_scope(lite0()) == "blocks.4"  # frozen and whole: the key the stored measurements already have
    scopes = {_arch_scope(lite0(frozen_ratio=0.5)), _arch_scope(lite0(frozen_ratio=0.6)),
              _arch_scope(lite0(frozen_ratio=0.5, prune_first_conv=True)), "blocks.4"}
    assert len(scopes) == 4
    assert _arch_scope(parse_recipe({"prune": {"method": "structured", "frozen_ratio": 0.5}})) is None  # no freeze
