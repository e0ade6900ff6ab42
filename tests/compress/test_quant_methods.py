"""Quantization methods as typed configs: parsed from recipes (typed or flat), registered beside their handler."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest
import torch

from edgeslim.compress.quant import PTQ, QAT, QUANT_METHODS, AccuracyControlledPTQ, Int8Job, QuantizeConfig, with_method
from edgeslim.errors import ConfigError, UnknownNameError
from edgeslim.recipe import QuantizeSection, parse_recipe


def test_each_method_has_only_its_own_keys():
    assert isinstance(parse_recipe({}).quantize, PTQ)
    r = parse_recipe({"version": 2, "quantize": {"method": "accuracy_aware", "max_drop": 0.02}})
    assert isinstance(r.quantize, AccuracyControlledPTQ) and r.quantize.max_drop == 0.02
    assert r.to_dict()["quantize"] == {"method": "accuracy_aware", "max_drop": 0.02, "max_extra_critical_fn": 0,
                                       "calibration_size": 300, "preset": "performance", "ignored_scope": [],
                                       "fast_bias_correction": True, "model_type": "cnn"}
    with pytest.raises(ConfigError, match="max_drop does not apply to method 'qat'.*qat_epochs"):
        parse_recipe({"version": 2, "quantize": {"method": "qat", "max_drop": 0.5}})
    with pytest.raises(UnknownNameError, match="Did you mean 'ptq'"):
        parse_recipe({"quantize": {"method": "ptqq"}})


def test_flat_sections_of_older_recipes_still_load():
    # a resolved version-1 recipe wrote every method's fields; those at their defaults are dropped
    flat = {"method": "qat", "calibration_size": 64, "qat_epochs": 2, "qat_lr": None, "max_drop": 0.01,
            "max_extra_critical_fn": 0}
    cfg = parse_recipe({"version": 1, "quantize": flat}).quantize
    assert isinstance(cfg, QAT) and cfg.qat_epochs == 2 and cfg.calibration_size == 64
    # ... and one that would silently do nothing is refused
    with pytest.raises(ConfigError, match="max_drop does not apply to method 'ptq'"):
        parse_recipe({"quantize": {"method": "ptq", "max_drop": 0.2}})
    assert isinstance(QuantizeSection(method="qat", qat_epochs=3), QAT)  # the version-1 name, for Python callers


def test_with_method_keeps_the_calibration_options():
    cfg = with_method(PTQ(calibration_size=17, ignored_scope=["head"]), "accuracy_aware", max_extra_critical_fn=1)
    assert isinstance(cfg, AccuracyControlledPTQ)
    assert (cfg.calibration_size, cfg.ignored_scope, cfg.max_extra_critical_fn) == (17, ["head"], 1)


def test_a_new_quantization_method_is_one_config_and_one_function(tmp_path):
    """Registered from outside the package, it is chosen by a recipe and run by the exporters."""
    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
    from edgeslim.export import export_artifact
    from edgeslim.testing import TinyNet

    manifest = Manifest(name="tiny", arch="tiny", classes=[str(i) for i in range(10)], critical=[8],
                        input=TensorInfo(name="input", shape=[-1, 3, 16, 16]),
                        outputs=[TensorInfo(name="logits", shape=[-1, 10])], preprocessing=Preprocessing(resize=16, crop=16))

    class RoundTripInt8(QuantizeConfig):
        method: Literal["test_roundtrip"] = "test_roundtrip"

    seen: dict[str, Any] = {}

    @QUANT_METHODS.register(RoundTripInt8)
    def roundtrip(cfg: RoundTripInt8, job: Int8Job, fmt: str, graph: Any) -> tuple[Any, dict[str, Any]]:
        from edgeslim.compress.quantize import ptq_onnx, ptq_openvino

        seen[fmt] = job.scheme.target
        q = (ptq_onnx if fmt == "onnx" else ptq_openvino)(graph, job.calibration, cfg, scheme=job.scheme)
        return q, {"quantizer": "test.roundtrip"}

    try:
        cfg = parse_recipe({"quantize": {"method": "test_roundtrip", "calibration_size": 8}}).quantize
        assert isinstance(cfg, RoundTripInt8)
        torch.manual_seed(0)
        model = TinyNet(10).eval()
        cal = [np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)]
        m = export_artifact(model, tmp_path / "a", manifest, formats=("onnx", "openvino"),
                            precisions=("fp32", "int8"), calibration=cal, quantize_cfg=cfg, target="x86-avx2",
                            strict=True)
        assert {m.model(f, "int8").extra["quantizer"] for f in ("onnx", "openvino")} == {"test.roundtrip"}
        assert seen == {"onnx": "x86-avx2", "openvino": "x86-avx2"}
    finally:
        QUANT_METHODS.unregister("test_roundtrip")
