"""validate_exports: every file runs through its runtime backend and is judged against PyTorch per precision."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeslim.artifact import ModelFile
from edgeslim.errors import ConfigError, ValidationError
from edgeslim.export import EXPORTERS, validate_exports
from edgeslim.export.validate import critical_fn_limit
from edgeslim.export.base import write_torch_weights
from edgeslim.recipe import QuantizeSection, ValidateSection
from export_testlib import CRITICAL, context, tiny_manifest

torch.set_num_threads(1)

# TinyNet's INT8 top-1 agreement with FP32 is 0.90-0.94 on these digits (calibration 32-512 samples, the same in
# onnxruntime and OpenVINO): a 10k-parameter net has small margins. The recipe default of 0.95 is for real models.
# The extra-critical-FN limit is the default rule's, derived from the split's own critical count (critical_fn_limit).
CFG = ValidateSection(int8_min_agreement=0.85)


@pytest.fixture(scope="module")
def artifact(trained, tmp_path_factory):
    """A directory with torch weights, ONNX FP32/INT8 and OpenVINO FP32 of the trained TinyNet, and its manifest."""
    d = tmp_path_factory.mktemp("validate")
    ctx = context(trained.model, d, precisions=("fp32", "int8"), calibration=trained.calibration(32),
                  quantize=QuantizeSection(calibration_size=32))
    ctx.written.append(write_torch_weights(trained.model, d / "model.safetensors"))
    ctx.written += EXPORTERS.get("onnx")().export(ctx)
    ctx.precisions = ("fp32",)
    ctx.written += EXPORTERS.get("openvino")().export(ctx)
    assert not ctx.errors
    manifest = tiny_manifest().model_copy(update={"models": list(ctx.written)})
    return d, manifest, trained.reference(trained.test_x)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_initializer(path, name, fn):
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init).copy()), name))
    onnx.save(model, str(path))


def test_good_exports_pass_with_a_report_per_file(trained, artifact):
    d, manifest, ref = artifact
    report = validate_exports(d, manifest, ref, trained.test_x, trained.test_y, CFG)
    assert report["passed"] and report["problems"] == []
    assert set(report["models"]) == {"model.onnx", "model_int8.onnx", "openvino/model.xml"}
    assert "model.safetensors" in report["skipped"]
    fp32 = report["models"]["model.onnx"]
    assert fp32["backend"] == "onnxruntime" and fp32["max_abs_diff"] < 1e-4 and fp32["top1_agreement"] == 1.0
    assert report["models"]["openvino/model.xml"]["max_abs_diff"] < 1e-4
    int8 = report["models"]["model_int8.onnx"]
    # judged on the split given (no val here), by the limit this split's critical count allows
    n_crit = int((trained.test_y == CRITICAL).sum())
    rule = int8["critical_fn_limit"]
    assert int8["decided_on"] == report["decided_on"] == "test" and rule["critical_samples"] == n_crit
    assert int8["limits"] == {"top1_agreement": 0.85, "extra_critical_fn": rule["limit"]}
    assert rule["limit"] >= max(1, int(0.025 * n_crit)) and int8["extra_critical_fn"] <= rule["limit"]
    d = int8["discordant_critical"]
    assert d["file_only_missed"] - d["reference_only_missed"] == int8["extra_critical_fn"]
    assert 0.85 <= int8["top1_agreement"] < 1.0 and int8["max_abs_diff"] > 1e-3
    # The reference's own numbers are there to compare with, and they are the real ones.
    pred = ref.argmax(1)
    assert report["reference"]["accuracy"] == pytest.approx((pred == trained.test_y).mean(), abs=1e-6)
    fn = int(((trained.test_y == CRITICAL) & (pred != CRITICAL)).sum())
    assert report["reference"]["critical_fn"] == {str(CRITICAL): fn}
    assert fp32["critical_fn"] == {str(CRITICAL): fn} and fp32["extra_critical_fn"] == 0
    import json

    json.dumps(report)  # goes into manifest.validation as is


def test_every_broken_file_is_listed_in_one_error(trained, artifact, tmp_path):
    d, manifest, ref = artifact
    bad = _copy(d, tmp_path / "bad")
    _edit_initializer(bad / "model.onnx", "blocks.6.weight", lambda w: w * 1.5)
    (bad / "openvino" / "model.xml").write_text("<net>truncated")
    with pytest.raises(ValidationError) as info:
        validate_exports(bad, manifest, ref, trained.test_x, trained.test_y, CFG)
    msg = str(info.value)
    assert "model.onnx: max_abs_diff" in msg and "(limit <= 0.001)" in msg
    assert "openvino/model.xml: runs" in msg
    assert "model_int8.onnx" not in msg  # the untouched file is not blamed
    problems = info.value.report["problems"]
    assert {(p["file"], p["metric"]) for p in problems} >= {("model.onnx", "max_abs_diff"), ("openvino/model.xml", "runs")}
    assert info.value.report["models"]["model_int8.onnx"]["passed"]


def test_int8_is_judged_on_agreement_and_critical_misses_not_on_logits(trained, artifact, tmp_path):
    d, manifest, ref = artifact
    strict_atol = CFG.model_copy(update={"fp32_atol": 1e-9})
    with pytest.raises(ValidationError) as info:
        validate_exports(d, manifest, ref, trained.test_x, trained.test_y, strict_atol)
    blamed = {(p["file"], p["metric"]) for p in info.value.report["problems"]}
    # FP32 files break a 1e-9 atol; the INT8 file differs far more but is not held to atol.
    assert ("model.onnx", "max_abs_diff") in blamed and not any(f == "model_int8.onnx" for f, _ in blamed)

    bad = _critical_bias_cut(d, tmp_path)
    with pytest.raises(ValidationError) as info:
        validate_exports(bad, manifest, ref, trained.test_x, trained.test_y, CFG)
    result = info.value.report["models"]["model_int8.onnx"]
    assert result["extra_critical_fn"] == int((trained.test_y == CRITICAL).sum()) - sum(
        info.value.report["reference"]["critical_fn"].values())
    assert "model_int8.onnx: extra_critical_fn" in str(info.value)


def test_without_labels_only_logits_are_compared(trained, artifact):
    d, manifest, ref = artifact
    report = validate_exports(d, manifest, ref, trained.test_x, None, CFG)
    assert report["passed"] and report["reference"] == {}
    assert "accuracy" not in report["models"]["model.onnx"]


def test_formats_without_a_runnable_backend_are_skipped_with_the_reason(trained, artifact, tmp_path):
    d, manifest, ref = artifact
    extra = _copy(d, tmp_path / "trt")
    (extra / "model.engine").write_bytes(b"not an engine")
    m = manifest.model_copy(update={"models": [*manifest.models, ModelFile(format="tensorrt", precision="fp16",
                                                                                  path="model.engine")]})
    report = validate_exports(extra, m, ref[:20], trained.test_x[:20], trained.test_y[:20], CFG,
                              backend_for={"tensorrt": "no_such_backend"})
    assert "no runtime backend" in report["skipped"]["model.engine"]


def test_mismatched_inputs_are_refused(trained, artifact):
    d, manifest, ref = artifact
    with pytest.raises(ConfigError, match="reference logits"):
        validate_exports(d, manifest, ref[:10], trained.test_x, trained.test_y)
    with pytest.raises(ConfigError, match="labels"):
        validate_exports(d, manifest, ref, trained.test_x, trained.test_y[:5])


def _critical_bias_cut(d, tmp_path):
    """A copy of the artifact whose INT8 file never calls the critical class (its logit lowered by 50)."""
    bad = _copy(d, tmp_path / "bias")
    _edit_initializer(bad / "model_int8.onnx", "classifier.bias",
                      lambda b: np.where(np.arange(len(b)) == CRITICAL, b - 50.0, b).astype(b.dtype))
    return bad


def test_reduced_precision_files_are_judged_on_val_and_their_test_figures_only_reported(trained, artifact, tmp_path):
    d, manifest, ref = artifact
    bad = _critical_bias_cut(d, tmp_path)
    x, y = trained.test_x, trained.test_y
    only_agreement = CFG.model_copy(update={"int8_min_agreement": 0.0})  # this test is about the critical FN
    # val without critical samples: the broken file loses nothing there, so it passes, though test shows the loss
    keep = (y != CRITICAL) & (ref.argmax(1) != CRITICAL)
    report = validate_exports(bad, manifest, ref, x, y, only_agreement, val=(x[keep], y[keep], ref[keep]))
    int8 = report["models"]["model_int8.onnx"]
    assert report["passed"] and report["decided_on"] == int8["decided_on"] == "val"
    assert report["val"]["samples"] == int(keep.sum()) and int8["val"]["extra_critical_fn"] == 0
    assert int8["extra_critical_fn"] == int((y == CRITICAL).sum()) - report["reference"]["critical_fn"][str(CRITICAL)]
    assert int8["test_discordant_critical"]["p_value"] < 1e-3  # reported, not acted on
    # the same loss on val is what leaves the file out; the problem names the split that decided
    with pytest.raises(ValidationError, match=r"model_int8.onnx: extra_critical_fn on val = \d+") as info:
        validate_exports(bad, manifest, ref, x, y, only_agreement, val=(x, y, ref))
    assert {(p["file"], p.get("split")) for p in info.value.report["problems"]} == {("model_int8.onnx", "val")}
    # FP32 parity is still checked on the test inputs
    assert info.value.report["models"]["model.onnx"]["max_abs_diff"] < 1e-4 and "val" not in info.value.report[
        "models"]["model.onnx"]
    with pytest.raises(ConfigError, match="val split"):
        validate_exports(d, manifest, ref, x, y, CFG, val=(x, y[:5], ref))


def test_the_extra_critical_fn_limit_scales_with_the_critical_samples():
    cfg = ValidateSection()  # 2.5 % of the critical samples (at least 1), or not significantly worse at 0.2
    budget = {n: critical_fn_limit(cfg.model_copy(update={"critical_fn_alpha": None}), n, n, 0)["limit"]
              for n in (10, 40, 80, 205, 2000)}
    assert budget == {10: 1, 40: 1, 80: 2, 205: 5, 2000: 50}
    # the case: 2 more misses than FP32 out of 80 critical samples is within the budget
    assert critical_fn_limit(cfg, 80, 60, 0)["limit"] >= 2
    # on a small split McNemar's exact test decides: with no discordant sample in the file's favour, k misses of
    # the file alone have p = 0.5^k, so 2 (p 0.25) are noise at 0.2 and 3 (p 0.125) are not
    small = critical_fn_limit(cfg, 20, 15, 0)
    assert small["budget"] == 1 and small["noise"] == 2 and small["limit"] == 2
    # each sample the file catches and the reference misses makes one more file-only miss noise
    assert critical_fn_limit(cfg, 20, 15, 2)["limit"] == 3
    assert critical_fn_limit(cfg.model_copy(update={"critical_fn_alpha": 0.05}), 20, 15, 0)["limit"] == 4
    # too few critical samples for the test to ever reject: the budget alone decides
    tiny = critical_fn_limit(cfg, 3, 2, 0)
    assert tiny["limit"] == 1 and "too few" in tiny["noise"]
    # a fixed count overrides the rule (recipes that set max_extra_critical_fn keep their meaning)
    assert critical_fn_limit(cfg.model_copy(update={"max_extra_critical_fn": 0}), 2000, 1500, 9) == {
        "critical_samples": 2000, "rule": "fixed", "limit": 0}


def test_int8_agreement_is_that_of_the_decisions_each_file_ships_with():
    """A file whose argmax flips near the boundary but whose own calibrated threshold gives the same calls as the
    reference at its threshold agrees fully: the gate judges what a user of either file receives."""
    import numpy as np

    from edgeslim.export.validate import _reduced_figures
    from edgeslim.recipe import ValidateSection

    # class 1 critical; the reference calls 1 iff p1 >= 0.3, the INT8 file (scores shifted down) iff p1 >= 0.2
    p_ref = np.array([0.10, 0.35, 0.45, 0.55, 0.90])
    p_int8 = p_ref - 0.1  # argmax: 0.45 -> 0.35 and 0.55 -> 0.45 flip to class 0
    logit = lambda p: np.log(np.stack([1 - p, p], 1))
    labels = np.array([0, 1, 1, 1, 1])
    out = _reduced_figures(logit(p_int8), logit(p_ref), labels, [1], ValidateSection(), {"1": 0.2}, {"1": 0.3},
                           "threshold")
    assert out["agreement_of"] == "deployed decisions"
    assert out["top1_agreement"] == 1.0
    assert (logit(p_int8).argmax(1) == logit(p_ref).argmax(1)).mean() < 1.0  # the argmax would have disagreed
    assert out["extra_critical_fn"] == 0
