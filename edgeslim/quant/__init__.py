"""INT8: the quantization methods, their handlers by (method, format), and the one verb that runs them.

::

    from edgeslim.quant import PTQ, quantize

    int8_graph, extra = quantize(fp32_onnx, PTQ(calibration_size=300), scheme="x86-avx512-vnni",
                                 calibration=batches)

Layout (the package sits below compress and export, which both use it; it imports neither):

- :mod:`~edgeslim.quant.config`: one pydantic config per method (``ptq``, ``accuracy_aware``, ``qat``, ``none``),
  registered in :data:`~edgeslim.methods.QUANT_METHODS`, with the method's spec as class attributes
  (``makes_int8``, ``calibrates_graph``, ``needs_training`` / ``training_hook``, ``fallback()``); :class:`Int8Job`.
- :mod:`~edgeslim.quant.handlers`: the INT8 handlers by ``"<method>:<format>"`` (:data:`HANDLERS`).
- :mod:`~edgeslim.quant.api`: :func:`quantize`, the verb.
- :mod:`~edgeslim.quant.ptq`: NNCF post-training quantization and accuracy control (ONNX, OpenVINO), calibration.
- :mod:`~edgeslim.quant.qat`: NNCF fake-quant on the torch model and its ONNX / OpenVINO exports (the QAT training
  loop is :func:`edgeslim.compress.qat.quantize_aware_train`, the method's training hook).
- :mod:`~edgeslim.quant.qdq`: Q/DQ ONNX graph transforms (weight folding, signed activations).

A new method is a :class:`QuantizeConfig` subclass plus either one ``@QUANT_METHODS.register(Config)`` handler
``(cfg, job, fmt, graph)`` for every format, or ``QUANT_METHODS.register(Config)(by_format)`` and one
``@handles(Config, fmt)`` handler per format. Importing this package stays light (no torch, nncf, onnx).
"""

from __future__ import annotations

from .api import graph_format as graph_format
from .api import quantize as quantize
from .config import FIRST_CONV as FIRST_CONV
from .config import PTQ as PTQ
from .config import QAT as QAT
from .config import QUANT_METHODS as QUANT_METHODS
from .config import AccuracyControlledPTQ as AccuracyControlledPTQ
from .config import Int8Job as Int8Job
from .config import NoQuantization as NoQuantization
from .config import QuantizeConfig as QuantizeConfig
from .config import no_int8 as no_int8
from .config import parse_quantize as parse_quantize
from .config import post_training as post_training
from .config import with_method as with_method
from .handlers import HANDLERS as HANDLERS
from .handlers import by_format as by_format
from .handlers import handler_for as handler_for
from .handlers import handles as handles

__all__ = ["FIRST_CONV", "HANDLERS", "PTQ", "QAT", "QUANT_METHODS", "AccuracyControlledPTQ", "Int8Job",
           "NoQuantization", "QuantizeConfig", "by_format", "graph_format", "handler_for", "handles", "no_int8",
           "parse_quantize", "post_training", "quantize", "with_method"]
