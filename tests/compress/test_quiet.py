"""A CPU host prints no CUDA noise on the INT8 path (NNCF's torch backend imports torch.utils.cpp_extension)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from edgeslim.compress._quiet import quiet_cuda_home_on_cpu

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="torch logs the CUDA_HOME line only without CUDA")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_cuda_home_line_is_what_torch_logs_here_and_the_filter_drops_only_it(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    # torch's loggers have their own stderr handler (no propagation), so listen on the logger itself
    logger = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setattr(logger, "filters", [])
    records = _Records()
    monkeypatch.setattr(logger, "handlers", [records])
    # the line torch logs at import of cpp_extension whenever CUDA_HOME is set (or nvcc is on PATH) without a runtime
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    cpp_extension._find_cuda_home()
    assert [m[:24] for m in records.messages] == ["No CUDA runtime is found"]
    records.messages.clear()
    quiet_cuda_home_on_cpu()
    quiet_cuda_home_on_cpu()  # idempotent
    assert len(logger.filters) == 1
    cpp_extension._find_cuda_home()
    logger.warning("another warning")
    assert records.messages == ["another warning"]


def test_importing_nncf_torch_the_way_int8_does_prints_no_cuda_line(tmp_path):
    code = (
        "import sys\n"
        "from edgeslim.compress.qat import _nncf\n"
        "_nncf()\n"
        "from nncf.torch.quantization.layers import BaseQuantizer\n"
        "assert 'torch.utils.cpp_extension' in sys.modules\n"
    )
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}  # the condition on every CPU host, nvcc or not
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cuda" not in proc.stderr.lower(), proc.stderr
