"""Keep a CPU host free of CUDA noise from NNCF's torch backend.

``import nncf.torch`` imports ``torch.utils.cpp_extension`` (NNCF builds a C++ extension on first use), which, with
a CUDA build of torch on a host whose PATH has ``nvcc`` (or that sets ``CUDA_HOME``) but no CUDA runtime, logs
``No CUDA runtime is found, using CUDA_HOME=...`` once at import. On a CPU host that says nothing the user can act
on. The filter drops that one record of that one logger (torch logs it only when no CUDA runtime is usable):
everything else torch logs still shows.
"""

from __future__ import annotations

import logging

_LOGGER = "torch.utils.cpp_extension"
_MESSAGE = "No CUDA runtime is found"


class _NoCudaRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_MESSAGE)


_FILTER = _NoCudaRuntimeFilter()


def quiet_cuda_home_on_cpu() -> None:
    """Install the filter (idempotent); call it before anything imports ``nncf.torch``."""
    logger = logging.getLogger(_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
