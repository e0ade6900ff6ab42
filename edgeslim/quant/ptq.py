"""INT8 post-training quantization (PTQ) with NNCF, calibrated on samples of the training split.

Two entry points, one per model format, share the same calibration handling and the same NNCF settings:

* :func:`ptq_onnx` returns an ONNX model with explicit ``QuantizeLinear``/``DequantizeLinear`` pairs (runs in
  onnxruntime CPU, TensorRT and OpenVINO);
* :func:`ptq_openvino` returns an OpenVINO model with ``FakeQuantize`` nodes (INT8 kernels on the CPU plugin).

Calibration batches are float32 NCHW arrays that already went through the model's preprocessing;
:func:`calibration_batches` draws them from a training loader or dataset. NNCF is fed one sample at a time: with
per-sample items its statistics are exact (NNCF warns that batch-wise statistics can be inaccurate) and a model
exported with a fixed batch of 1 calibrates as well as a dynamic one.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import ConfigError, EdgeslimError, TrainingError
from ..hardware import Int8Scheme, int8_scheme
from ..recipe import QuantizeSection
from ..scoring import critical_fn, decide, softmax
from .config import FIRST_CONV, QuantizeConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx
    import openvino as ov

__all__ = ["accuracy_aware_onnx", "accuracy_aware_openvino", "calibration_batches", "ptq_onnx", "ptq_openvino"]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; avoid importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _images_of(item: Any) -> Any:
    # Loaders yield (images, labels) tuples or dicts with an "image"/"input" key; datasets yield samples.
    if isinstance(item, dict):
        for key in ("input", "image", "images", "pixel_values"):
            if key in item:
                return item[key]
        raise TrainingError(f"calibration item is a dict with keys {sorted(item)}; expected an 'input' or 'image' key")
    if isinstance(item, (tuple, list)):
        if not item:
            raise TrainingError("calibration item is an empty tuple; expected (images, labels)")
        return item[0]
    return item


def _iter_items(source: Any) -> Iterator[Any]:
    # A torch Dataset has __getitem__/__len__ but may not be iterable in the right way; a DataLoader iterates.
    if hasattr(source, "__iter__"):
        yield from source
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        for i in range(len(source)):
            yield source[i]
    else:
        raise TrainingError(
            f"cannot draw calibration samples from {type(source).__name__}; pass a DataLoader, a Dataset of "
            "(image, label) samples, or an iterable of float32 NCHW arrays"
        )


def calibration_batches(source: Any, size: int, *, batch_size: int = 32) -> list[np.ndarray]:
    """Draw ``size`` preprocessed samples from a training loader or dataset as float32 NCHW batches.

    Calibration should come from the training split, never the test split the export is validated on.

    Args:
        source: a ``DataLoader`` (or any iterable) yielding ``(images, labels)`` batches, image batches, or
            dicts with an ``"input"``/``"image"`` key; or a ``Dataset`` of ``(image, label)`` samples with
            CHW images. Tensors or numpy arrays.
        size: number of samples to take (the first ``size`` in the source's order).
        batch_size: samples per returned batch.

    Returns:
        A list of float32 arrays of shape ``(n, C, H, W)`` holding ``min(size, available)`` samples in all.

    Raises:
        ConfigError: ``size`` or ``batch_size`` is not positive.
        TrainingError: the source is empty or yields something that is not an image batch.
    """
    if size < 1 or batch_size < 1:
        raise ConfigError(f"calibration size and batch_size must be positive, got size={size}, batch_size={batch_size}")
    samples: list[np.ndarray] = []
    taken = 0
    for item in _iter_items(source):
        arr = _to_numpy(_images_of(item)).astype(np.float32, copy=False)
        if arr.ndim == 3:  # a single CHW sample from a Dataset
            arr = arr[None]
        if arr.ndim != 4:
            raise TrainingError(f"calibration images must be NCHW (or CHW samples); got shape {list(arr.shape)}")
        arr = arr[: size - taken]
        samples.append(arr)
        taken += len(arr)
        if taken >= size:
            break
    if taken == 0:
        raise TrainingError("the calibration source yielded no samples; pass the (non-empty) training split")
    flat = np.concatenate(samples)
    return [np.ascontiguousarray(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)]


def _samples(calibration: Iterable[np.ndarray], limit: int) -> list[np.ndarray]:
    """Split calibration batches into single-sample ``(1, C, H, W)`` arrays, at most ``limit`` of them."""
    if calibration is None:
        raise TrainingError("INT8 PTQ needs calibration batches (float32 NCHW from the training split); got None")
    out: list[np.ndarray] = []
    for batch in calibration:
        arr = _to_numpy(batch)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise TrainingError(f"calibration batches must be float32 NCHW arrays; got shape {list(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TrainingError(f"calibration batches must be float32 (preprocessed), got dtype {arr.dtype}")
        for i in range(len(arr)):
            if len(out) >= limit:
                return out
            out.append(np.ascontiguousarray(arr[i : i + 1], dtype=np.float32))
    if not out:
        raise TrainingError("calibration is empty: INT8 PTQ needs at least one preprocessed training sample")
    return out


@contextlib.contextmanager
def _quiet_nncf(verbose: bool) -> Iterator[None]:
    """Silence NNCF's log lines and rich progress bars unless ``verbose``.

    NNCF has no switch for its progress bars; they are written to ``sys.stdout`` when drawn, so redirecting
    stdout for the duration of the call hides them without touching global logging configuration.
    """
    from ._quiet import quiet_cuda_home_on_cpu

    quiet_cuda_home_on_cpu()  # NNCF's torch backend imports torch.utils.cpp_extension: no CUDA noise on a CPU host
    if verbose:
        yield
        return
    logger = logging.getLogger("nncf")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(old)




def first_conv_name(model: Any) -> str:
    """The name of the first convolution of an ONNX ``ModelProto`` or an ``openvino.Model``, in execution order.

    Raises:
        ConfigError: the graph has no convolution, or is of another kind (a torch module: name the layer).
    """
    if hasattr(model, "graph"):  # ONNX keeps its nodes topologically sorted
        found = next((n.name for n in model.graph.node if n.op_type == "Conv"), None)
    elif hasattr(model, "get_ordered_ops"):
        found = next((op.get_friendly_name() for op in model.get_ordered_ops()
                      if op.get_type_name() in ("Convolution", "GroupConvolution")), None)
    else:
        raise ConfigError(f"quantize.ignored_scope '{FIRST_CONV}' is resolved on exported ONNX / OpenVINO graphs (PTQ,"
                          " accuracy control); for QAT name the layer's node instead")
    if found is None:
        raise ConfigError(f"quantize.ignored_scope '{FIRST_CONV}': the graph has no convolution")
    return found


def _scope_patterns(patterns: Iterable[str], model: Any) -> list[str]:
    import re

    return [f"^{re.escape(first_conv_name(model))}$" if p == FIRST_CONV else p for p in patterns]


def _nncf_kwargs(nncf: Any, cfg: QuantizeConfig, n_samples: int, scheme: Int8Scheme,
                 model: Any = None) -> dict[str, Any]:
    """``nncf.quantize`` keyword arguments for the recipe's options and the target's INT8 scheme (``model``: the
    graph being quantized, on which ``@first_conv`` in the ignored scope is resolved)."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )
    from nncf.quantization.advanced_parameters import QuantizationMode as Mode

    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    kwargs: dict[str, Any] = {
        "subset_size": max(1, min(cfg.calibration_size, n_samples)),
        "preset": presets[cfg.preset],
        "fast_bias_correction": cfg.fast_bias_correction,
    }
    if cfg.model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if cfg.ignored_scope:
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=_scope_patterns(cfg.ignored_scope, model))
    fixes = {"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}
    advanced: dict[str, Any] = {"overflow_fix": fixes[scheme.overflow_fix]}
    if scheme.signed_activations:
        # TensorRT: symmetric signed INT8 activations (zero point 0), one scale per tensor
        advanced["activations_quantization_params"] = QuantizationParameters(
            mode=Mode.SYMMETRIC, per_channel=False
        )
    elif scheme.per_tensor_activations:
        # NNCF's ONNX backend gives the input of a depthwise conv per-channel activation scales; onnxruntime's
        # QLinearConv (which the CPU provider fuses Q/DQ+Conv into) accepts only a scalar input zero point and
        # fails at run time ("input zero point must be a scalar"). Per-tensor activations run everywhere.
        advanced["activations_quantization_params"] = QuantizationParameters(per_channel=False)
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    return kwargs


def _node_names(model: Any) -> list[str]:
    if hasattr(model, "graph"):  # onnx.ModelProto
        return [n.name for n in model.graph.node]
    return [op.get_friendly_name() for op in model.get_ops()]  # ov.Model


def _run_nncf(model: Any, samples: list[np.ndarray], transform: Any, cfg: QuantizeConfig, *, what: str,
              scheme: Int8Scheme, verbose: bool) -> Any:
    if cfg.method == "none":
        raise ConfigError(
            "quantize.method is 'none'; set it to 'ptq', 'qat' or 'accuracy_aware' to produce INT8 models,"
            " or drop 'int8'"
        )
    try:
        import nncf
    except ImportError as exc:  # pragma: no cover - nncf is a hard dependency
        raise TrainingError(f"INT8 PTQ needs nncf ({exc}); fix: pip install nncf") from exc
    kwargs = _nncf_kwargs(nncf, cfg, len(samples), scheme, model)
    try:
        with _quiet_nncf(verbose):
            return nncf.quantize(model, nncf.Dataset(samples, transform), **kwargs)
    except Exception as exc:
        message = " ".join(str(exc).split())  # NNCF messages span lines; edgeslim errors are one line
        hint = ""
        if cfg.ignored_scope and "ignored" in message.lower():
            from ..registry import did_you_mean

            names = _node_names(model)
            close = "".join(did_you_mean(p, names) for p in cfg.ignored_scope)
            hint = (f" Check quantize.ignored_scope: every pattern must match a node name of the exported graph"
                    f" (e.g. {', '.join(names[:3])}).{close}")
        raise TrainingError(f"NNCF post-training quantization of the {what} model failed: {message}{hint}") from exc


def ptq_onnx(model: "onnx.ModelProto", calibration: Iterable[np.ndarray], cfg: QuantizeConfig | None = None, *,
             scheme: Int8Scheme | None = None, verbose: bool = False) -> "onnx.ModelProto":
    """Quantize an FP32 ONNX model to INT8 with explicit QuantizeLinear/DequantizeLinear nodes.

    Args:
        model: the FP32 model (one float32 NCHW input).
        calibration: preprocessed float32 NCHW batches from the training split.
        cfg: calibration size, preset and ignored scope (default :class:`~edgeslim.compress.quant.PTQ`).
        scheme: the target's INT8 scheme (default: this host's, :func:`edgeslim.hardware.int8_scheme`).
        verbose: show NNCF's logs and progress bars.

    Raises:
        TrainingError: calibration is empty or NNCF failed (its message names the node when it says).
    """
    cfg = cfg or QuantizeSection()
    samples = _samples(calibration, cfg.calibration_size)
    if len(model.graph.input) != 1:
        raise TrainingError(f"ptq_onnx supports single-input models; this one has {len(model.graph.input)} inputs")
    name = model.graph.input[0].name
    return _run_nncf(model, samples, lambda x: {name: x}, cfg, what="ONNX",
                     scheme=scheme or int8_scheme("auto", "onnx"), verbose=verbose)


def ptq_openvino(model: "ov.Model", calibration: Iterable[np.ndarray], cfg: QuantizeConfig | None = None, *,
                 scheme: Int8Scheme | None = None, verbose: bool = False) -> "ov.Model":
    """Quantize an OpenVINO model to INT8 (FakeQuantize nodes the CPU plugin runs as INT8 kernels).

    Args:
        model: the FP32 ``openvino.Model`` (one input).
        calibration: preprocessed float32 NCHW batches from the training split.
        cfg: calibration size, preset and ignored scope (default :class:`~edgeslim.compress.quant.PTQ`).
        scheme: the target's INT8 scheme (default: this host's, :func:`edgeslim.hardware.int8_scheme`).
        verbose: show NNCF's logs and progress bars.

    Raises:
        TrainingError: calibration is empty or NNCF failed.
    """
    cfg = cfg or QuantizeSection()
    samples = _samples(calibration, cfg.calibration_size)
    if len(model.inputs) != 1:
        raise TrainingError(f"ptq_openvino supports single-input models; this one has {len(model.inputs)} inputs")
    return _run_nncf(model, samples, None, cfg, what="OpenVINO", scheme=scheme or int8_scheme("auto", "openvino"),
                     verbose=verbose)


# -- accuracy-aware INT8 --------------------------------------------------------------------------------------------

#: metric penalty per critical FN over the budget; larger than any top-1 difference, so one extra FN always fails
FN_PENALTY = 1.0


def _critical_fn(pred: np.ndarray, labels: np.ndarray, critical: list[int]) -> int:
    return sum(critical_fn(pred, labels, critical).values())


#: runner options of the accuracy-control runs: onnxruntime's warnings off; OpenVINO float layers in f32 (the
#: runner's CPU default), as NNCF compiles the models it hands the validation function and as the file is deployed.
#: At the plugin's own default an AMX CPU ran the FP32 reference in bf16 against f32 candidates, and under an AVX2
#: cap (ONEDNN_MAX_CPU_ISA) it had no bf16 kernels at all.
_EVAL_RUNNER_OPTIONS: dict[str, dict[str, Any]] = {"onnxruntime": {"log_severity_level": 3}}


def _infer_fn(model: Any) -> Any:
    """``f(x) -> logits`` running an ``onnx.ModelProto`` in onnxruntime CPU or an ``ov.Model`` on the OpenVINO CPU,
    through the runtime's runner for it (:func:`edgeslim.runtime.from_model`).

    NNCF's accuracy control hands validation functions what its backend runs: an OpenVINO ``CompiledModel`` or an
    onnxruntime ``InferenceSession``; the runners run both as they are.
    """
    from ..runtime import BackendOptions, from_model

    runner = from_model(model, BackendOptions(device="cpu"), **_EVAL_RUNNER_OPTIONS)
    name = runner.outputs[0].name
    return lambda x: runner.infer(x)[name]


def _predict(model: Any, xs: np.ndarray, batch: int = 1) -> np.ndarray:
    f = _infer_fn(model)
    # batch 1 works for models exported with a fixed batch too
    return np.concatenate([np.asarray(f(np.ascontiguousarray(xs[i : i + batch]))) for i in range(0, len(xs), batch)])


def _accuracy_aware(model: Any, samples: list[np.ndarray], transform: Any, validation: tuple[np.ndarray, np.ndarray],
                    critical: list[int], cfg: QuantizeConfig, *, what: str, scheme: Int8Scheme,
                    thresholds: dict[str, float] | None, rule: str, verbose: bool,
                    calibrate: Callable[[np.ndarray, np.ndarray], dict[int, float]] | None = None
                    ) -> tuple[Any, dict[str, Any]]:
    import nncf

    xs, ys = np.asarray(validation[0], dtype=np.float32), np.asarray(validation[1]).astype(np.int64)
    if xs.ndim != 4 or len(xs) == 0 or ys.shape != (len(xs),):
        raise TrainingError(
            f"accuracy-aware INT8 needs a non-empty val split (inputs NCHW, one label each); got inputs"
            f" {list(xs.shape)}, labels {list(ys.shape)}. Set data.val_fraction > 0"
        )

    def fn_as_deployed(logits: np.ndarray, y: np.ndarray) -> int:
        # at the thresholds the file will be deployed and judged with: its own, calibrated on val as the export
        # calibrates every reduced-precision file (``calibrate``), else the artifact's. At the FP32 model's
        # thresholds a quantized model runs at another operating point, and the budget would judge the shift: an
        # INT8 file that missed 7 more val cells at its own threshold was accepted here with no layer reverted
        thr: Any = thresholds
        if calibrate is not None and rule == "threshold":
            try:
                thr = calibrate(softmax(logits), y)
            except EdgeslimError:  # no threshold reaches the target: the export then keeps the artifact's too
                thr = thresholds
        return _critical_fn(decide(logits, thr, rule), y, critical)

    fp32_logits = _predict(model, xs)
    fp32_top1 = float((fp32_logits.argmax(1) == ys).mean())
    fp32_fn = fn_as_deployed(fp32_logits, ys)
    budget = fp32_fn + cfg.max_extra_critical_fn
    seen: list[dict[str, Any]] = []

    def validate(m: Any, items: Iterable[Any]) -> float:
        items = list(items)
        x = np.concatenate([i[0] for i in items])
        y = np.asarray([i[1] for i in items])
        logits = _predict(m, x)
        top1 = float((logits.argmax(1) == y).mean())
        # one number for NNCF's drop test: top-1, minus FN_PENALTY per critical FN over the budget, so "drop <=
        # max_drop" holds only when both the top-1 drop and the FN budget hold (full val split only: NNCF also
        # validates subsets while ranking, where the FN budget does not apply)
        full = len(y) == len(ys)
        # critical misses as deployed: at the calibrated threshold, not at the argmax
        fn = fn_as_deployed(logits, y) if full else _critical_fn(decide(logits, thresholds, rule), y, critical)
        over = max(0, fn - budget) if full else 0
        seen.append({"top1": top1, "critical_fn": fn, "samples": len(y)})
        return top1 - FN_PENALTY * over

    kwargs = _nncf_kwargs(nncf, cfg, len(samples), scheme, model)
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    val_items = [(xs[i : i + 1], int(ys[i])) for i in range(len(xs))]
    logs: list[str] = []
    handler = _ListHandler(logs)
    logger = logging.getLogger("nncf")
    old_handlers, old_level = list(logger.handlers), logger.level
    try:
        # NNCF reports the reverted layers only in its log; capture it (and keep it off the console)
        for h in old_handlers:
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        with contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext():
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(samples, transform), nncf.Dataset(val_items, lambda item: transform(item[0])
                                                                      if transform else item[0]),
                validate, max_drop=cfg.max_drop, drop_type=nncf.DropType.ABSOLUTE, **kwargs,
            )
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise TrainingError(f"NNCF accuracy-aware quantization of the {what} model failed: {message}") from exc
    finally:
        logger.removeHandler(handler)
        for h in old_handlers:
            logger.addHandler(h)
        logger.setLevel(old_level)
    q_logits = _predict(quantized, xs)
    q_top1, q_fn = float((q_logits.argmax(1) == ys).mean()), fn_as_deployed(q_logits, ys)
    report = {
        "quantizer": "nncf.accuracy_control",
        "split": "val",
        "val_samples": len(xs),
        "max_drop": cfg.max_drop,
        "max_extra_critical_fn": cfg.max_extra_critical_fn,
        "fp32": {"top1": fp32_top1, "critical_fn": fp32_fn},
        "int8": {"top1": q_top1, "critical_fn": q_fn},
        "critical_fn_at": ("each model's own thresholds, calibrated on val as the export calibrates the file"
                           if calibrate is not None and rule == "threshold" else
                           "calibrated thresholds" if thresholds else "argmax"),
        "reverted_to_fp32": _reverted(logs),
        "why": (f"reverted (most harmful first, NNCF ranking) until val top-1 drop <= {cfg.max_drop} and val critical"
                f" FN <= {budget} (FP32's {fp32_fn} + {cfg.max_extra_critical_fn})"),
        "reached": next((ln for ln in logs if ln.startswith("Algorithm completed") or "could not achieve" in ln), None),
        "validations": len(seen),
    }
    report["within_budget"] = (report["int8"]["critical_fn"] <= budget
                               and fp32_top1 - report["int8"]["top1"] <= cfg.max_drop + 1e-9)
    return quantized, report


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def _reverted(logs: list[str]) -> list[str]:
    """Operation names from NNCF's "Reverted N operations to the floating-point precision" log lines, in order."""
    names: list[str] = []
    for ln in logs:
        if ln.startswith("Reverted ") and "floating-point" in ln:
            names += [n.strip() for n in ln.splitlines()[1:] if n.strip()]
    return list(dict.fromkeys(names))


def accuracy_aware_onnx(model: "onnx.ModelProto", calibration: Iterable[np.ndarray],
                        validation: tuple[np.ndarray, np.ndarray], critical: list[int],
                        cfg: QuantizeConfig | None = None, *, scheme: Int8Scheme | None = None,
                        thresholds: dict[str, float] | None = None, rule: str = "threshold", verbose: bool = False,
                        calibrate: Callable[[np.ndarray, np.ndarray], dict[int, float]] | None = None,
                        ) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """PTQ INT8 (Q/DQ) with layers reverted to FP32 until the val top-1 drop and critical-FN budget hold.

    Args:
        model: the FP32 ONNX model.
        calibration: float32 NCHW training batches.
        validation: ``(inputs, labels)`` of the val split.
        critical: critical class indices.
        cfg: ``max_drop`` (absolute top-1), ``max_extra_critical_fn`` (k) and the PTQ options.
        scheme: the target's INT8 scheme (default: this host's).
        thresholds: the artifact's calibrated critical thresholds; critical FN are counted as deployed, under
            ``rule`` (:mod:`edgeslim.decision`). None: at the argmax.
        calibrate: ``f(val probabilities, val labels) -> thresholds``: each model's own thresholds on the full val
            split (as the export calibrates a reduced-precision file), used instead of ``thresholds`` to count the
            critical FN the budget judges.

    Returns:
        ``(model, report)``; ``report["reverted_to_fp32"]`` names the layers kept in FP32, ``report["why"]`` the
        budget, ``report["within_budget"]`` whether it was met on val.
    """
    cfg = cfg or QuantizeSection(method="accuracy_aware")
    samples = _samples(calibration, cfg.calibration_size)
    name = model.graph.input[0].name
    return _accuracy_aware(model, samples, lambda x: {name: x}, validation, list(critical), cfg, what="ONNX",
                           scheme=scheme or int8_scheme("auto", "onnx"), thresholds=thresholds, rule=rule,
                           verbose=verbose, calibrate=calibrate)


def accuracy_aware_openvino(model: "ov.Model", calibration: Iterable[np.ndarray],
                            validation: tuple[np.ndarray, np.ndarray], critical: list[int],
                            cfg: QuantizeConfig | None = None, *, scheme: Int8Scheme | None = None,
                            thresholds: dict[str, float] | None = None, rule: str = "threshold",
                            verbose: bool = False,
                            calibrate: Callable[[np.ndarray, np.ndarray], dict[int, float]] | None = None,
                            ) -> tuple["ov.Model", dict[str, Any]]:
    """The OpenVINO counterpart of :func:`accuracy_aware_onnx` (FakeQuantize nodes; reverted layers stay FP32)."""
    cfg = cfg or QuantizeSection(method="accuracy_aware")
    samples = _samples(calibration, cfg.calibration_size)
    return _accuracy_aware(model, samples, None, validation, list(critical), cfg, what="OpenVINO",
                           scheme=scheme or int8_scheme("auto", "openvino"), thresholds=thresholds, rule=rule,
                           verbose=verbose, calibrate=calibrate)
