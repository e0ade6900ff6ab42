"""INT8 PTQ with NNCF: calibration drawing, both formats, clear errors, quiet by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeslim.compress.quantize import calibration_batches, ptq_onnx, ptq_openvino
from edgeslim.errors import ConfigError, TrainingError
from edgeslim.recipe import QuantizeSection
from edgeslim.testing import TinyNet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def onnx_model():
    """A TinyNet with non-trivial BatchNorm statistics, exported with the TorchScript exporter (fast)."""
    import io
    import warnings

    import onnx

    torch.manual_seed(0)
    model = TinyNet()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    return onnx.load_from_string(buf.getvalue()), model


def _batches(n=40, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, 16, 16)).astype(np.float32) for _ in range(n // batch)]


def test_calibration_batches_from_a_loader_and_a_dataset():
    x = torch.randn(50, 3, 16, 16)
    y = torch.randint(0, 10, (50,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    out = calibration_batches(loader, 40, batch_size=32)
    assert [b.shape for b in out] == [(32, 3, 16, 16), (8, 3, 16, 16)]
    assert all(b.dtype == np.float32 for b in out)
    np.testing.assert_array_equal(np.concatenate(out), x[:40].numpy())  # the first 40 in loader order
    # A Dataset of (CHW image, label) samples; fewer samples than asked: all of them.
    ds = torch.utils.data.TensorDataset(x[:5], y[:5])
    (b,) = calibration_batches(ds, 300)
    np.testing.assert_array_equal(b, x[:5].numpy())


def test_calibration_errors_are_clear():
    with pytest.raises(TrainingError, match="no samples"):
        calibration_batches([], 10)
    with pytest.raises(TrainingError, match="NCHW"):
        calibration_batches([np.zeros((4, 16, 16), np.float32)[None, None]], 10)
    with pytest.raises(ConfigError, match="positive"):
        calibration_batches([np.zeros((1, 3, 4, 4), np.float32)], 0)


def test_ptq_onnx_inserts_qdq_and_runs_in_onnxruntime(onnx_model):
    import onnxruntime as ort

    model, torch_model = onnx_model
    q = ptq_onnx(model, _batches(), QuantizeSection(calibration_size=40))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    # Every activation quantizer is per-tensor: onnxruntime's QLinearConv rejects per-channel input zero points.
    inits = {i.name: i for i in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            assert list(inits[n.input[1]].dims) in ([], [1]), n.name
    x = _batches(16, 16, seed=1)[0]
    got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.inference_mode():
        ref = torch_model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape and 0 < np.abs(got - ref).max() < 0.5 * np.abs(ref).max()


def test_ptq_openvino_inserts_fake_quantize(onnx_model, tmp_path):
    import onnx
    import openvino as ov

    model, _ = onnx_model
    onnx.save(model, str(tmp_path / "m.onnx"))
    fp32 = ov.convert_model(str(tmp_path / "m.onnx"))
    q = ptq_openvino(fp32, _batches(), QuantizeSection(calibration_size=40))
    assert sum(op.get_type_name() == "FakeQuantize" for op in q.get_ops()) > 0
    assert sum(op.get_type_name() == "FakeQuantize" for op in fp32.get_ops()) == 0  # the input is not modified
    out = ov.Core().compile_model(q, "CPU")(_batches(8, 8)[0])[0]
    assert out.shape == (8, 10) and np.isfinite(out).all()


def test_ignored_scope_and_preset_reach_nncf(onnx_model):
    model, _ = onnx_model
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    q = ptq_onnx(model, _batches(8), QuantizeSection(calibration_size=8, ignored_scope=[convs[0]], preset="mixed"))
    consumers = {i for n in q.graph.node if n.name == convs[0] for i in n.input}
    assert not any(name.startswith("dq_output") for name in consumers)  # the ignored conv kept FP32 inputs
    full = ptq_onnx(model, _batches(8), QuantizeSection(calibration_size=8))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) < sum(
        n.op_type == "QuantizeLinear" for n in full.graph.node)


def test_first_conv_alias_keeps_the_stem_in_float_in_every_export(onnx_model, tmp_path):
    """'@first_conv' names the first convolution of whichever graph is quantized: node names differ between
    exports of one model, so a name taken from one export would miss in another."""
    import onnx
    import openvino as ov

    from edgeslim.compress.quantize import first_conv_name

    model, _ = onnx_model
    first = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert first_conv_name(model) == first
    q = ptq_onnx(model, _batches(8), QuantizeSection(calibration_size=8, ignored_scope=["@first_conv"]))
    assert not any(i.startswith("dq_output") for n in q.graph.node if n.name == first for i in n.input)
    onnx.save(model, str(tmp_path / "m.onnx"))
    fp32 = ov.convert_model(str(tmp_path / "m.onnx"))
    convs = [op for op in fp32.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    assert first_conv_name(fp32) == convs[0].get_friendly_name()
    qv = ptq_openvino(fp32, _batches(8), QuantizeSection(calibration_size=8, ignored_scope=["@first_conv"]))
    qconvs = [op for op in qv.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    # the stem's weights stay a float constant; the next convolution's are dequantized INT8
    assert qconvs[0].input_value(1).get_node().get_type_name() == "Constant"
    assert qconvs[1].input_value(1).get_node().get_type_name() != "Constant"
    with pytest.raises(ConfigError, match="for QAT name the layer"):
        first_conv_name(torch.nn.Conv2d(3, 3, 1))


def test_failures_are_training_errors_that_say_why(onnx_model, capsys):
    model, _ = onnx_model
    with pytest.raises(TrainingError, match="calibration is empty"):
        ptq_onnx(model, [], QuantizeSection())
    with pytest.raises(TrainingError, match="no_such_node.*ignored_scope"):
        ptq_onnx(model, _batches(8), QuantizeSection(calibration_size=8, ignored_scope=["no_such_node"]))
    with pytest.raises(ConfigError, match="method is 'none'"):
        ptq_onnx(model, _batches(8), QuantizeSection(method="none"))
    ptq_onnx(model, _batches(8), QuantizeSection(calibration_size=8))
    assert "Statistics collection" not in capsys.readouterr().out  # NNCF's progress bars are silenced


# -- PTQ options that must reach NNCF, and accuracy-aware INT8 ---------------------------------------------------


def _scales(model):
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer if "scale" in t.name}


def test_calibration_size_and_bias_correction_change_what_nncf_computes(onnx_model):
    model, _ = onnx_model
    batches = _batches(64, 8, seed=3)
    one = _scales(ptq_onnx(model, batches, QuantizeSection(calibration_size=1)))
    many = _scales(ptq_onnx(model, batches, QuantizeSection(calibration_size=64)))
    assert one.keys() == many.keys()
    assert any(not np.allclose(one[k], many[k]) for k in one)  # ranges come from 1 vs 64 samples

    def biases(q):
        from onnx import numpy_helper

        return np.concatenate([numpy_helper.to_array(t).ravel() for t in q.graph.initializer
                               if t.name.endswith("bias") or "bias" in t.name])

    fast = ptq_onnx(model, batches, QuantizeSection(calibration_size=16, fast_bias_correction=True))
    full = ptq_onnx(model, batches, QuantizeSection(calibration_size=16, fast_bias_correction=False))
    assert not np.allclose(biases(fast), biases(full))


@pytest.fixture(scope="module")
def trained_digits_onnx(tmp_path_factory):
    """TinyNet fine-tuned 2 epochs on 16x16 digits (critical 8), its FP32 ONNX and the val/train arrays."""
    import io
    import sys
    import warnings
    from pathlib import Path

    import onnx

    sys.path.insert(0, str(Path(__file__).parent))
    from _digits import CRITICAL, digits, recipe

    from edgeslim.compress.api import compress

    data = digits()
    torch.manual_seed(0)
    res = compress(TinyNet(10), data, recipe({"method": "none"}, epochs=2, final_epochs=2),
                   run_dir=tmp_path_factory.mktemp("aa"), progress=False)
    model = res.model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})

    def arrays(split):
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in data.loader(split, batch_size=64)])
        return np.concatenate(xs), np.concatenate(ys)

    return onnx.load_from_string(buf.getvalue()), arrays("val"), arrays("train")[0], [CRITICAL]


@pytest.mark.slow
def test_accuracy_aware_reverts_harmful_layers_until_top1_and_critical_fn_hold(trained_digits_onnx):
    from edgeslim.compress.quantize import _critical_fn, _predict, accuracy_aware_onnx

    model, (xv, yv), xt, critical = trained_digits_onnx
    # calibrating on inputs 40x too large gives activation ranges so wide that plain PTQ loses accuracy
    bad = [xt[i : i + 16] * 40 for i in range(0, 64, 16)]
    plain = _predict(ptq_onnx(model, bad, QuantizeSection(calibration_size=64)), xv).argmax(1)
    fp32 = _predict(model, xv).argmax(1)
    assert (plain == yv).mean() < (fp32 == yv).mean() - 0.02  # the situation accuracy control is for

    cfg = QuantizeSection(method="accuracy_aware", calibration_size=64, max_drop=0.01, max_extra_critical_fn=0)
    q, report = accuracy_aware_onnx(model, bad, (xv, yv), critical, cfg)
    pred = _predict(q, xv).argmax(1)
    assert report["reverted_to_fp32"], report  # layers were kept in FP32 ...
    assert "critical FN" in report["why"] and report["split"] == "val"
    assert report["within_budget"]  # ... until both budgets held on val
    assert (pred == yv).mean() >= (fp32 == yv).mean() - 0.01 - 1e-9
    assert _critical_fn(pred, yv, critical) <= _critical_fn(fp32, yv, critical)
    assert report["int8"]["top1"] == pytest.approx((pred == yv).mean())
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 0  # still an INT8 model


def test_accuracy_aware_counts_critical_misses_at_the_thresholds_the_export_gives_the_file(onnx_model):
    """The export calibrates a reduced-precision file's own threshold on val and judges it there; accuracy control
    must count critical misses at that threshold too, or it accepts a file the export then leaves out."""
    from edgeslim.compress.quantize import accuracy_aware_onnx

    model, _ = onnx_model
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((48, 3, 16, 16)).astype(np.float32)
    yv = np.arange(48) % 10
    seen = []

    def calibrate(probs, labels):  # a threshold no score reaches: every critical val sample is missed
        seen.append(len(labels))
        return {8: 1.01}

    cfg = QuantizeSection(method="accuracy_aware", calibration_size=16, max_drop=0.5, max_extra_critical_fn=0)
    _, report = accuracy_aware_onnx(model, _batches(16), (xv, yv), [8], cfg, thresholds={"8": 0.0},
                                    calibrate=calibrate)
    positives = int((yv == 8).sum())
    # at the artifact's threshold 0.0 nothing would be missed; at the file's own every positive is
    assert report["fp32"]["critical_fn"] == positives and report["int8"]["critical_fn"] == positives
    assert seen and set(seen) == {len(yv)}  # the full val split only, as the export calibrates
    assert "calibrated on val as the export" in report["critical_fn_at"]


def test_accuracy_aware_needs_a_val_split(onnx_model):
    from edgeslim.compress.quantize import accuracy_aware_onnx

    model, _ = onnx_model
    with pytest.raises(TrainingError, match="val split"):
        accuracy_aware_onnx(model, _batches(8), (np.zeros((0, 3, 16, 16), np.float32), np.zeros(0)), [8])
