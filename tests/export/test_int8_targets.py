"""INT8 made for a target: the scheme is chosen by the target, recorded per file, checked on load, and an INT8 file
that misses the validate budget falls back to accuracy control instead of being given up.

Both x86 schemes run here on any host: the target is forced, so a VNNI Xeon runs the AVX2 path and an AVX2-only
EPYC runs the VNNI one. Accuracy is asserted only for the scheme made for this host (``auto``), where it holds.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeslim.artifact import load_manifest
from edgeslim.errors import ExportError
from edgeslim.export import export_artifact
from edgeslim.hardware import Int8TargetWarning, host_target
from edgeslim.recipe import QuantizeSection, ValidateSection
from edgeslim.runtime import load
from export_testlib import CRITICAL, tiny_manifest

torch.set_num_threads(1)

QUANT = QuantizeSection(calibration_size=32)


def _int8_weight_max(path) -> list[int]:
    """max |q| of every INT8 weight initializer behind a DequantizeLinear, in graph order."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        a = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if a is not None and a.dtype == np.int8 and a.ndim >= 2:
            out.append(int(np.abs(a.astype(np.int32)).max()))
    return out


FPR = 0.02  # the recipe's decision target in the forced artifacts' manifest


@pytest.fixture(scope="module")
def forced(trained, tmp_path_factory):
    """The same model quantized for the two x86 targets, whatever this host is; its manifest carries a critical
    threshold calibrated on val to ``FPR``, as the pipeline writes it."""
    from edgeslim.compress.thresholds import calibrate_thresholds, manifest_thresholds
    from edgeslim.runtime.predictor import softmax

    val = (trained.train_x[1000:1200], trained.train_y[1000:1200])
    fp32_thr = calibrate_thresholds(softmax(trained.reference(val[0])), val[1], [CRITICAL], target_fpr=FPR)
    manifest = tiny_manifest().model_copy(update={"thresholds": manifest_thresholds(fp32_thr),
                                                  "recipe": {"decision": {"target_fpr": FPR}}})
    out = {}
    for target in ("x86-avx2", "x86-vnni"):
        d = tmp_path_factory.mktemp(target) / "a"
        out[target] = (d, export_artifact(trained.model, d, manifest, formats=("onnx", "openvino"),
                                          precisions=("fp32", "int8"), calibration=trained.calibration(32),
                                          quantize_cfg=QUANT, target=target, strict=True, val_split=val))
    return out


def test_each_int8_file_records_the_target_it_was_made_for(forced):
    for target, (_, m) in forced.items():
        for fmt, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
            scheme = m.model(fmt, "int8").extra["int8_scheme"]
            assert scheme["target"] == target and scheme["runtime"] == runtime
        assert m.model("onnx", "int8").extra["int8_scheme"]["overflow_fix"] == (
            "enable" if target == "x86-avx2" else "first_layer")


def test_the_avx2_scheme_quantizes_weights_to_7_bits(forced):
    # without VNNI, u8 x s8 pairs are summed in 16-bit lanes: 7-bit weights (|q| <= 64) cannot saturate them
    avx2 = _int8_weight_max(forced["x86-avx2"][0] / "model_int8.onnx")
    vnni = _int8_weight_max(forced["x86-vnni"][0] / "model_int8.onnx")
    assert avx2 and len(avx2) == len(vnni)
    assert avx2[0] <= 64 and vnni[0] <= 64  # NNCF's default fixes the first layer on every target
    assert sum(w > 64 for w in avx2) < sum(w > 64 for w in vnni)  # the VNNI scheme uses the full 8 bits beyond it


def test_loading_a_file_made_for_another_target_says_so_once(forced):
    host = host_target().name
    foreign = "x86-vnni" if host != "x86-vnni" else None
    native = "x86-avx2"  # 7-bit weights hold on every x86 host: never a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with load(forced[native][0], backend="onnxruntime", precision="int8"):
            pass
    assert not [w for w in caught if issubclass(w.category, Int8TargetWarning)]
    if foreign is None:
        pytest.skip("this host has VNNI: a file made for x86-vnni is native here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with load(forced[foreign][0], backend="openvino", precision="int8"):
                pass
    found = [w for w in caught if issubclass(w.category, Int8TargetWarning)]
    assert len(found) == 1 and "made for x86-vnni" in str(found[0].message) and host in str(found[0].message)


def test_int8_for_this_host_holds_the_validate_budget(trained, tmp_path):
    # the scheme made for this host (auto) keeps INT8 within the limit the val split's own critical count allows
    # (the default rule), on every x86 host kind; what is decided on val is recorded beside the test figures
    val = (trained.train_x[1000:1200], trained.train_y[1000:1200])
    m = export_artifact(trained.model, tmp_path / "a", tiny_manifest(), formats=("onnx", "openvino"),
                        precisions=("fp32", "int8"), calibration=trained.calibration(32), quantize_cfg=QUANT,
                        validation=(trained.test_x, trained.test_y), val_split=val,
                        validate_cfg=ValidateSection(int8_min_agreement=0.85), strict=True)
    n_crit = int((val[1] == CRITICAL).sum())
    assert m.validation["decided_on"] == "val" and m.validation["val"]["samples"] == len(val[1])
    for f in ("model_int8.onnx", "openvino_int8/model.xml"):
        r = m.validation["models"][f]
        judged = r["val"]
        assert r["passed"] and r["decided_on"] == "val" and judged["critical_fn_limit"]["critical_samples"] == n_crit
        assert judged["extra_critical_fn"] <= r["limits"]["extra_critical_fn"] == judged["critical_fn_limit"]["limit"]
        assert r["limits"]["extra_critical_fn"] >= max(1, int(0.025 * n_crit))
        assert judged["top1_agreement"] >= 0.85 and "accuracy" in r and "critical_fn" in r  # test: reported
    assert m.model("openvino", "int8").extra["int8_scheme"]["target"] == host_target().name


def test_tensorrt_scheme_writes_signed_symmetric_qdq(trained, tmp_path):
    m = export_artifact(trained.model, tmp_path / "a", tiny_manifest(), formats=("onnx",), precisions=("fp32", "int8"),
                        calibration=trained.calibration(32), quantize_cfg=QUANT, target="jetson-orin-nx", strict=True)
    assert m.model("onnx", "int8").extra["int8_scheme"]["runtime"] == "tensorrt"
    proto = onnx.load(str(tmp_path / "a" / "model_int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zps = [inits[n.input[2]] for n in proto.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # TensorRT: signed INT8, zero point 0


def test_an_int8_file_that_misses_the_budget_falls_back_to_accuracy_control(trained, tmp_path):
    # a calibration at 5 % of the data's range clips every activation: plain PTQ fails validation on any host
    bad_calibration = [trained.train_x[:16] * 0.05]
    val = (trained.train_x[1000:1200], trained.train_y[1000:1200])
    m = export_artifact(trained.model, tmp_path / "a", tiny_manifest(), formats=("onnx", "openvino"),
                        precisions=("fp32", "int8"), calibration=bad_calibration, quantize_cfg=QUANT,
                        validation=(trained.test_x, trained.test_y),
                        validate_cfg=ValidateSection(int8_min_agreement=0.85), val_split=val)
    loaded = load_manifest(tmp_path / "a")
    assert loaded.validation["failed"] == [] and not loaded.validation["partial"]
    for entry in loaded.validation["int8_fallback"]:
        assert entry["failed"] and entry["failed"][0]["metric"] == "top1_agreement"
        assert entry["result"] == "passed" and entry["kept_in_float"]
        assert set(entry["latency_ms"]) == {"fp32", "int8_failed", "int8_accuracy_control"}
    assert {e["format"] for e in loaded.validation["int8_fallback"]} == {"onnx", "openvino"}
    for fmt in ("onnx", "openvino"):
        mf = m.model(fmt, "int8")
        assert mf.extra["accuracy_control"]["kept_in_float"] and mf.extra["quantizer"] == "nncf.accuracy_control"
        assert loaded.validation["models"][mf.path]["passed"]


def test_int8_is_left_out_only_when_accuracy_control_fails_too(trained, tmp_path):
    bad_calibration = [trained.train_x[:16] * 0.05]
    # no val split: the fallback cannot run, so the failed INT8 files are left out and the FP32 ones kept
    m = export_artifact(trained.model, tmp_path / "a", tiny_manifest(), formats=("onnx", "openvino"),
                        precisions=("fp32", "int8"), calibration=bad_calibration, quantize_cfg=QUANT,
                        validation=(trained.test_x, trained.test_y),
                        validate_cfg=ValidateSection(int8_min_agreement=0.85))
    assert [(x.format, x.precision) for x in load_manifest(tmp_path / "a").models] == [
        ("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32")]
    assert not (tmp_path / "a" / "model_int8.onnx").exists() and not (tmp_path / "a" / "openvino_int8").exists()
    assert m.validation["partial"]
    assert {f["file"] for f in m.validation["failed"]} == {"model_int8.onnx", "openvino_int8/model.xml"}
    assert all("top1_agreement" in f["reason"] for f in m.validation["failed"])
    assert all("needs the val split" in e["result"] for e in m.validation["int8_fallback"])
    # a search candidate on this file is ruled out with the export's reason; the search goes on (it stopped before)
    from edgeslim.search.engine import _raise_if_left_out

    with pytest.raises(ExportError, match=r"left the int8 openvino file out \(openvino_int8/model.xml: .*top1_agr"):
        _raise_if_left_out(tmp_path / "a", "openvino", "int8")
    with pytest.raises(ExportError, match=r"left the int8 onnxruntime file out \(model_int8.onnx"):
        _raise_if_left_out(tmp_path / "a", "onnxruntime", "int8")
    _raise_if_left_out(tmp_path / "a", "openvino", "fp32")  # what passed is there


def test_an_int8_file_is_deployed_at_its_own_threshold_calibrated_to_the_recipes_fpr(forced, trained):
    # quantization shifts the scores: at the FP32 file's threshold the INT8 file would run at another operating
    # point. Each reduced-precision file is calibrated on val to the recipe's decision target, and the runtime and
    # the validation deploy it there; the FP32 files keep the manifest's threshold.
    from edgeslim.runtime.predictor import softmax

    directory, _ = forced["x86-avx2"]
    val_x, val_y = trained.train_x[1000:1200], trained.train_y[1000:1200]
    loaded = load_manifest(directory)
    for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        fp32, int8 = loaded.model(fmt, "fp32"), loaded.model(fmt, "int8")
        own = int8.extra["thresholds"]
        assert "thresholds" not in fp32.extra and set(own) == {str(CRITICAL)}
        assert int8.extra["thresholds_calibrated_on"] == {"split": "val", "samples": 200, "target_fpr": FPR}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Int8TargetWarning)
            with load(directory, backend=backend, precision="int8") as pred:
                assert pred.thresholds == own and pred.manifest.thresholds == own
                p = softmax(pred.infer(val_x))[:, CRITICAL]
        assert (p[val_y != CRITICAL] >= own[str(CRITICAL)]).mean() <= FPR  # the recipe's FPR holds on val for INT8
        with load(directory, backend=backend, precision="fp32") as pred:
            assert pred.thresholds == loaded.thresholds
