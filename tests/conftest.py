"""Shared fixtures and honest hardware skips.

Tests marked ``gpu``, ``tensorrt`` or ``jetson`` are skipped with the reason when the capability is absent;
``--require gpu,tensorrt`` turns such a skip into a failure on a hardware runner, so a broken runner cannot
pass by skipping everything.

The session header names this host's x86 kind and the older kinds the INT8 tests emulate on it
(``tests/host_kinds.py``); the summary at the end says which kinds ran for real, which were emulated (and checked
by the kernels that ran), and which were not covered.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

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


def pytest_report_header(config: pytest.Config) -> list[str]:
    from host_kinds import describe_plan

    return [describe_plan()]


_KIND_TEST = "test_host_kinds.py::test_int8_export_holds_on_each_host_kind["
_kind_outcomes: dict[str, tuple[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _KIND_TEST not in report.nodeid or (report.when != "call" and not report.skipped and not report.failed):
        return
    kind = report.nodeid.split("[", 1)[1].rstrip("]")
    if report.skipped:
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _kind_outcomes[kind] = ("skipped", why.removeprefix("Skipped: "))
    elif report.failed:
        _kind_outcomes[kind] = ("FAILED", f"{report.when} failed")
    else:
        _kind_outcomes[kind] = ("passed", dict(report.user_properties).get("kernels", ""))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from host_kinds import plan, session_cap

    p = plan()
    cap = session_cap()
    lines = [cap] if cap else []
    for k in p["real"]:
        lines.append(f"{k.name} ({k.describe}): ran for real (every INT8 test in this session{', onnxruntime only' if cap else ''})")
    not_run = [k.name for k in p["emulated"] if k.name not in _kind_outcomes]
    if not_run:
        lines.append(f"{', '.join(not_run)}: could be emulated here, not run in this session"
                     " (tests/export/test_host_kinds.py not selected)")
    for k in p["emulated"]:
        if k.name in _kind_outcomes:
            outcome, detail = _kind_outcomes[k.name]
            label = "emulated" if outcome == "passed" else f"emulation {outcome}"
            lines.append(f"{k.name} ({k.describe}): {label} (ONEDNN_MAX_CPU_ISA={k.isa_cap}): {detail}")
    for k in p["not_covered"]:
        lines.append(f"{k.name} ({k.describe}): not covered (this CPU cannot stand in for it)")
    terminalreporter.write_sep("-", "x86 host kinds (INT8)")
    for line in lines:
        terminalreporter.write_line(line)
