"""Quantization methods: moved to the INT8 package, :mod:`edgeslim.quant` (configs in :mod:`edgeslim.quant.config`,
handlers by (method, format) in :mod:`edgeslim.quant.handlers`); this old import path re-exports them."""

from ..quant.config import _FLAT_DEFAULTS as _FLAT_DEFAULTS
from ..quant.config import FIRST_CONV as FIRST_CONV
from ..quant.config import PTQ as PTQ
from ..quant.config import QAT as QAT
from ..quant.config import QUANT_METHODS as QUANT_METHODS
from ..quant.config import AccuracyControlledPTQ as AccuracyControlledPTQ
from ..quant.config import Int8Job as Int8Job
from ..quant.config import NoQuantization as NoQuantization
from ..quant.config import QuantizeConfig as QuantizeConfig
from ..quant.config import parse_quantize as parse_quantize
from ..quant.config import upgrade_flat as upgrade_flat
from ..quant.config import with_method as with_method
from ..quant.handlers import no_quantization as no_quantization

__all__ = ["AccuracyControlledPTQ", "Int8Job", "NoQuantization", "PTQ", "QAT", "QUANT_METHODS", "QuantizeConfig"]
