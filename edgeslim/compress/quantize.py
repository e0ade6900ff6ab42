"""INT8 post-training quantization with NNCF: moved to :mod:`edgeslim.quant.ptq`; this old import path re-exports it."""

from ..quant.ptq import FN_PENALTY as FN_PENALTY
from ..quant.ptq import _critical_fn as _critical_fn
from ..quant.ptq import _infer_fn as _infer_fn
from ..quant.ptq import _nncf_kwargs as _nncf_kwargs
from ..quant.ptq import _predict as _predict
from ..quant.ptq import _quiet_nncf as _quiet_nncf
from ..quant.ptq import _samples as _samples
from ..quant.ptq import accuracy_aware_onnx as accuracy_aware_onnx
from ..quant.ptq import accuracy_aware_openvino as accuracy_aware_openvino
from ..quant.ptq import calibration_batches as calibration_batches
from ..quant.ptq import first_conv_name as first_conv_name
from ..quant.ptq import ptq_onnx as ptq_onnx
from ..quant.ptq import ptq_openvino as ptq_openvino

__all__ = ["accuracy_aware_onnx", "accuracy_aware_openvino", "calibration_batches", "ptq_onnx", "ptq_openvino"]
