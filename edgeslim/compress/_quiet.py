"""NNCF's CUDA-noise filter: moved to :mod:`edgeslim.quant._quiet`; this old import path re-exports it."""

from ..quant._quiet import quiet_cuda_home_on_cpu as quiet_cuda_home_on_cpu

__all__ = ["quiet_cuda_home_on_cpu"]
