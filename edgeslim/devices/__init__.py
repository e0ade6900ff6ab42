"""Hardware targets, power readers, the profiler and its reports.

Functions the CLI calls: :func:`detect`, :func:`list_targets`, :func:`profile_artifact`, :func:`write_report`,
:func:`compare_reports`. Importing this package is light: numpy is the heaviest import; runtimes, matplotlib,
LoadGen and tritonclient are imported when used.
"""

from __future__ import annotations

from typing import Any

from .cpu import cpu_info as cpu_info
from .targets import TARGETS as TARGETS
from .targets import TargetProfile as TargetProfile
from .targets import detect as detect
from .targets import get_target as get_target
from .targets import list_targets as list_targets

_LAZY = {
    "ProfileConfig": "profiler",
    "profile_backend": "profiler",
    "paired_latency": "measure",
    "profile_artifact": "profiler",
    "make_report": "report",
    "write_report": "report",
    "load_report": "report",
    "compare_reports": "report",
    "run_loadgen": "loadgen",
    "LoadGenConfig": "loadgen",
    "profile_remote": "remote",
    "auto_power": "power",
}


def __getattr__(name: str) -> Any:
    # The profiler pulls in numpy; keep `import edgeslim.devices` (and `edgeslim devices`) instant.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TARGETS", "TargetProfile", "cpu_info", "detect", "get_target", "list_targets", *_LAZY]
