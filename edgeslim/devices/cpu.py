"""CPU identification: model, vendor, cores and the ISA features that decide which kernels a backend can use.

The parser is a pure function over the text of ``/proc/cpuinfo`` so it can be tested on samples from machines
we do not have (ARM boards print ``Features`` with ``asimd``; x86 prints ``flags``).
"""

# The parser lives below the stages (compression and export pick their INT8 scheme from it); devices re-exports it.
from ..hardware import ISA_OF_INTEREST as ISA_OF_INTEREST
from ..hardware import cpu_info as cpu_info
from ..hardware import parse_cpuinfo as parse_cpuinfo

__all__ = ["ISA_OF_INTEREST", "cpu_info", "parse_cpuinfo"]
