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
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from ..errors import ConfigError, TrainingError
from ..recipe import QuantizeSection

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnx
    import openvino as ov

__all__ = ["calibration_batches", "ptq_onnx", "ptq_openvino"]


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


def _nncf_kwargs(nncf: Any, cfg: QuantizeSection, n_samples: int, *, per_tensor_activations: bool) -> dict[str, Any]:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    kwargs: dict[str, Any] = {"subset_size": max(1, min(cfg.calibration_size, n_samples)), "preset": presets[cfg.preset]}
    if cfg.ignored_scope:
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=list(cfg.ignored_scope))
    if per_tensor_activations:
        # NNCF's ONNX backend gives the input of a depthwise conv per-channel activation scales; onnxruntime's
        # QLinearConv (which the CPU provider fuses Q/DQ+Conv into) accepts only a scalar input zero point and
        # fails at run time ("input zero point must be a scalar"). Per-tensor activations run everywhere.
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(per_channel=False)
        )
    return kwargs


def _node_names(model: Any) -> list[str]:
    if hasattr(model, "graph"):  # onnx.ModelProto
        return [n.name for n in model.graph.node]
    return [op.get_friendly_name() for op in model.get_ops()]  # ov.Model


def _run_nncf(model: Any, samples: list[np.ndarray], transform: Any, cfg: QuantizeSection, *, what: str,
              per_tensor_activations: bool, verbose: bool) -> Any:
    if cfg.method == "none":
        raise ConfigError("quantize.method is 'none'; set it to 'ptq' to produce INT8 models, or drop 'int8'")
    try:
        import nncf
    except ImportError as exc:  # pragma: no cover - nncf is a hard dependency
        raise TrainingError(f"INT8 PTQ needs nncf ({exc}); fix: pip install nncf") from exc
    kwargs = _nncf_kwargs(nncf, cfg, len(samples), per_tensor_activations=per_tensor_activations)
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


def ptq_onnx(model: "onnx.ModelProto", calibration: Iterable[np.ndarray], cfg: QuantizeSection | None = None, *,
             verbose: bool = False) -> "onnx.ModelProto":
    """Quantize an FP32 ONNX model to INT8 with explicit QuantizeLinear/DequantizeLinear nodes.

    Args:
        model: the FP32 model (one float32 NCHW input).
        calibration: preprocessed float32 NCHW batches from the training split.
        cfg: calibration size, preset and ignored scope (default :class:`~edgeslim.recipe.QuantizeSection`).
        verbose: show NNCF's logs and progress bars.

    Raises:
        TrainingError: calibration is empty or NNCF failed (its message names the node when it says).
    """
    cfg = cfg or QuantizeSection()
    samples = _samples(calibration, cfg.calibration_size)
    if len(model.graph.input) != 1:
        raise TrainingError(f"ptq_onnx supports single-input models; this one has {len(model.graph.input)} inputs")
    name = model.graph.input[0].name
    return _run_nncf(model, samples, lambda x: {name: x}, cfg, what="ONNX", per_tensor_activations=True,
                     verbose=verbose)


def ptq_openvino(model: "ov.Model", calibration: Iterable[np.ndarray], cfg: QuantizeSection | None = None, *,
                 verbose: bool = False) -> "ov.Model":
    """Quantize an OpenVINO model to INT8 (FakeQuantize nodes the CPU plugin runs as INT8 kernels).

    Args:
        model: the FP32 ``openvino.Model`` (one input).
        calibration: preprocessed float32 NCHW batches from the training split.
        cfg: calibration size, preset and ignored scope (default :class:`~edgeslim.recipe.QuantizeSection`).
        verbose: show NNCF's logs and progress bars.

    Raises:
        TrainingError: calibration is empty or NNCF failed.
    """
    cfg = cfg or QuantizeSection()
    samples = _samples(calibration, cfg.calibration_size)
    if len(model.inputs) != 1:
        raise TrainingError(f"ptq_openvino supports single-input models; this one has {len(model.inputs)} inputs")
    return _run_nncf(model, samples, None, cfg, what="OpenVINO", per_tensor_activations=False, verbose=verbose)
