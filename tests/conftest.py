"""Shared fixtures and honest hardware skips.

Tests marked ``gpu``, ``tensorrt`` or ``jetson`` are skipped with the reason when the capability is absent;
``--require gpu,tensorrt`` turns such a skip into a failure on a hardware runner, so a broken runner cannot
pass by skipping everything.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@functools.lru_cache(maxsize=None)
def _has_gpu() -> tuple[bool, str]:
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return False, "no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidia0)"
    try:
        import torch

        if torch.cuda.is_available():
            return True, ""
        return False, "torch.cuda.is_available() is False"
    except Exception as exc:  # pragma: no cover - depends on the machine
        return False, f"CUDA probe failed: {exc}"


@functools.lru_cache(maxsize=None)
def _has_tensorrt() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed (pip install 'edgeslim[tensorrt]' on a GPU host)"
    return _has_gpu()


@functools.lru_cache(maxsize=None)
def _is_jetson() -> tuple[bool, str]:
    if Path("/etc/nv_tegra_release").exists():
        return True, ""
    return False, "not a Jetson board (no /etc/nv_tegra_release)"


PROBES = {"gpu": _has_gpu, "tensorrt": _has_tensorrt, "jetson": _is_jetson}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require",
        default="",
        help="comma-separated capabilities (gpu,tensorrt,jetson) whose absence fails instead of skipping",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    required = {r.strip() for r in config.getoption("--require").split(",") if r.strip()}
    unknown = required - set(PROBES)
    if unknown:
        raise pytest.UsageError(f"--require: unknown capability {sorted(unknown)}; known: {sorted(PROBES)}")
    for item in items:
        for name, probe in PROBES.items():
            if name in item.keywords:
                ok, why = probe()
                if not ok and name not in required:
                    item.add_marker(pytest.mark.skip(reason=why))


def pytest_runtest_setup(item: pytest.Item) -> None:
    required = {r.strip() for r in item.config.getoption("--require").split(",") if r.strip()}
    for name in required & set(item.keywords):
        ok, why = PROBES[name]()
        if not ok:
            pytest.fail(f"--require {name}, but {why}", pytrace=False)
