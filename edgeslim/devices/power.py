"""Power and energy readers: Intel RAPL, NVIDIA NVML and Jetson ``tegrastats``.

Every reader has ``start()`` and ``stop() -> dict``. The dict has ``available``; when True it has ``mean_w``,
``energy_j`` and ``seconds`` for the window between the two calls (the profiler divides the energy by the items
inferred to give J per inference); when False it has ``reason``, and the profile carries on without power.
Nothing here raises for an unreadable counter: a permission error is a reason, not a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ..errors import MissingDependencyError, require


class PowerReader(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


class Unavailable:
    """A reader that measures nothing and says why (the report prints the reason)."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> None:
        return None

    def stop(self) -> dict[str, Any]:
        return {"available": False, "source": self.name, "reason": self.reason}


# -- Intel RAPL -------------------------------------------------------------------------------------------------
class RaplReader:
    """Package energy from Intel RAPL (``/sys/class/powercap/intel-rapl:N/energy_uj``).

    Sums the top-level package domains (``intel-rapl:N``; their ``core``/``uncore``/``dram`` sub-domains are
    parts of the package and would double-count). The counter wraps at ``max_energy_range_uj``; a wrap between
    start and stop is undone. Since Linux 5.10 ``energy_uj`` is readable by root only (the PLATYPUS side channel,
    CVE-2020-8694): then the reader is unavailable and says so.

    Args:
        root: the powercap directory (a different root is used by tests with a copied sysfs tree).
    """

    name = "rapl"

    def __init__(self, root: str | os.PathLike = "/sys/class/powercap") -> None:
        self.root = Path(root)
        self._start: dict[Path, int] = {}
        self._t0 = 0.0
        self.reason: str | None = None
        self.domains = self._discover()

    def _discover(self) -> list[Path]:
        if not self.root.is_dir():
            self.reason = f"no Intel RAPL: {self.root} does not exist (not an Intel/AMD host, or a VM without powercap)"
            return []
        domains = sorted(p for p in self.root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", p.name))
        if not domains:
            self.reason = f"no Intel RAPL package domains under {self.root}"
            return []
        for d in domains:
            try:
                int((d / "energy_uj").read_text())
            except PermissionError:
                self.reason = (
                    f"Intel RAPL is present but {d / 'energy_uj'} is readable by root only (Linux >= 5.10); run as root"
                    f" or `sudo chmod o+r {self.root}/intel-rapl:*/energy_uj` to measure energy"
                )
                return []
            except (OSError, ValueError) as exc:
                self.reason = f"cannot read {d / 'energy_uj'}: {exc}"
                return []
        return domains

    @property
    def available(self) -> bool:
        return bool(self.domains)

    def _read(self) -> dict[Path, int]:
        return {d: int((d / "energy_uj").read_text()) for d in self.domains}

    def start(self) -> None:
        if self.domains:
            self._start = self._read()
            self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        if not self.domains:
            return {"available": False, "source": self.name, "reason": self.reason}
        try:
            end = self._read()
        except OSError as exc:
            return {"available": False, "source": self.name, "reason": f"RAPL read failed: {exc}"}
        seconds = time.perf_counter() - self._t0
        total_uj = 0
        for d, e1 in end.items():
            e0 = self._start[d]
            if e1 < e0:  # wrapped once: the counter restarted from 0 after max_energy_range_uj
                e1 += int((d / "max_energy_range_uj").read_text())
            total_uj += e1 - e0
        energy_j = total_uj / 1e6
        return {
            "available": True,
            "source": self.name,
            "domains": [self._domain_name(d) for d in self.domains],
            "energy_j": energy_j,
            "seconds": seconds,
            "mean_w": energy_j / seconds if seconds > 0 else None,
            "scope": "CPU package(s)",
        }

    @staticmethod
    def _domain_name(d: Path) -> str:
        try:
            return (d / "name").read_text().strip()
        except OSError:
            return d.name


# -- NVIDIA NVML -------------------------------------------------------------------------------------------------
class NvmlReader:
    """GPU board energy from NVML (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer), else the mean of
    ``nvmlDeviceGetPowerUsage`` sampled every ``interval_s``.

    Args:
        index: GPU index.
        interval_s: sampling period of the power fallback.
    """

    name = "nvml"

    def __init__(self, index: int = 0, *, interval_s: float = 0.02) -> None:
        self.index = index
        self.interval_s = interval_s
        self.reason: str | None = None
        self._nvml: Any = None
        self._handle: Any = None
        try:
            self._nvml = require("pynvml", "tensorrt", purpose="GPU power through NVML")
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        except MissingDependencyError as exc:
            self.reason = str(exc)
        except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            self.reason = f"NVML is not usable here: {exc}"
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _energy_mj(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # NVMLError_NotSupported before Volta
            return None

    def start(self) -> None:
        if not self.available:
            return
        self._e0 = self._energy_mj()
        self._t0 = time.perf_counter()
        self._samples = []
        self._stop.clear()
        if self._e0 is None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self._samples.append(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)
            except Exception:
                pass
            self._stop.wait(self.interval_s)

    def stop(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "source": self.name, "reason": self.reason}
        seconds = time.perf_counter() - self._t0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if not self._samples:
                return {"available": False, "source": self.name, "reason": "NVML returned no power samples"}
            mean_w = sum(self._samples) / len(self._samples)
            return {"available": True, "source": self.name, "method": "sampled power", "samples": len(self._samples),
                    "mean_w": mean_w, "energy_j": mean_w * seconds, "seconds": seconds, "scope": "GPU board"}
        e1 = self._energy_mj()
        energy_j = ((e1 or 0) - (self._e0 or 0)) / 1000.0
        return {"available": True, "source": self.name, "method": "energy counter", "energy_j": energy_j,
                "seconds": seconds, "mean_w": energy_j / seconds if seconds > 0 else None, "scope": "GPU board"}


# -- Jetson tegrastats -----------------------------------------------------------------------------------------
# A rail is "NAME inst/avg", with "mW" after each number since L4T 34 (JetPack 5); JetPack 6.2 prints a third
# value (max). Memory fields ("RAM 5246/7771MB") end in a unit and do not match because of the word boundary.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?![\w])")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
#: Rails that measure the whole module input; when one is present it is the total, else the rails are summed
#: (AGX Orin / AGX Xavier have no input rail: their total is the sum of the module rails).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """Parse one line of ``tegrastats`` output (any Jetson family).

    Returns:
        ``{"rails": {name: {"inst_mw", "avg_mw"}}, "total_mw", "total_method", "ram_used_mb", "ram_total_mb",
        "gpu_load_pct"}``; ``total_mw`` is None when the line has no rails (tegrastats prints them only as root on
        some releases).
    """
    rails = {m.group(1): {"inst_mw": int(m.group(2)), "avg_mw": int(m.group(3))} for m in _RAIL.finditer(line)}
    for non_rail in ("RAM", "SWAP", "IRAM"):
        rails.pop(non_rail, None)
    total, method = None, None
    for name in INPUT_RAILS:
        if name in rails:
            total, method = rails[name]["inst_mw"], f"input rail {name}"
            break
    else:
        if rails:
            total, method = sum(r["inst_mw"] for r in rails.values()), "sum of rails " + "+".join(rails)
    ram = _RAM.search(line)
    gpu = _GR3D.search(line)
    return {
        "rails": rails,
        "total_mw": total,
        "total_method": method,
        "ram_used_mb": int(ram.group(1)) if ram else None,
        "ram_total_mb": int(ram.group(2)) if ram else None,
        "gpu_load_pct": int(gpu.group(1)) if gpu else None,
    }


def summarize_tegrastats(lines: list[str], seconds: float) -> dict[str, Any]:
    """Mean power and energy over a window from the tegrastats lines printed during it (pure)."""
    parsed = [parse_tegrastats_line(ln) for ln in lines if ln.strip()]
    with_power = [p for p in parsed if p["total_mw"] is not None]
    if not with_power:
        why = "tegrastats printed no lines" if not parsed else "tegrastats printed no power rails (run as root)"
        return {"available": False, "source": "tegrastats", "reason": why}
    mean_w = sum(p["total_mw"] for p in with_power) / len(with_power) / 1000.0
    per_rail: dict[str, float] = {}
    for name in with_power[0]["rails"]:
        vals = [p["rails"][name]["inst_mw"] for p in with_power if name in p["rails"]]
        per_rail[name] = sum(vals) / len(vals) / 1000.0
    loads = [p["gpu_load_pct"] for p in with_power if p["gpu_load_pct"] is not None]
    return {
        "available": True,
        "source": "tegrastats",
        "samples": len(with_power),
        "mean_w": mean_w,
        "energy_j": mean_w * seconds,
        "seconds": seconds,
        "rails_w": per_rail,
        "total_method": with_power[0]["total_method"],
        "gpu_load_pct": sum(loads) / len(loads) if loads else None,
        "scope": "Jetson module",
    }


class TegrastatsReader:
    """Runs ``tegrastats --interval N`` during the window and averages its rails.

    Args:
        interval_ms: sampling period (tegrastats' own minimum is about 10 ms; 100 ms is typical).
        command: the tegrastats executable.
    """

    name = "tegrastats"

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats") -> None:
        self.interval_ms = interval_ms
        self.command = shutil.which(command)
        self.reason = None if self.command else f"'{command}' is not on PATH (not a Jetson, or L4T tools missing)"
        self._lines: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.command is not None

    def start(self) -> None:
        if not self.command:
            return
        self._lines = []
        self._proc = subprocess.Popen(
            [self.command, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()

    def _pump(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            self._lines.append(line)

    def stop(self) -> dict[str, Any]:
        if not self.command or self._proc is None:
            return {"available": False, "source": self.name, "reason": self.reason or "not started"}
        seconds = time.perf_counter() - self._t0
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._proc = None
        return summarize_tegrastats(self._lines, seconds)


def auto_power(target: dict[str, Any] | None = None) -> Any:
    """The best power reader this host offers: tegrastats on a Jetson, NVML with an NVIDIA GPU, RAPL on x86.

    Returns an :class:`Unavailable` reader listing why each one is not usable when none is.
    """
    kind = (target or {}).get("kind")
    reasons = []
    candidates: list[Any] = []
    if kind == "jetson" or Path("/etc/nv_tegra_release").exists():
        candidates.append(TegrastatsReader)
    if kind == "gpu" or shutil.which("nvidia-smi"):
        candidates.append(NvmlReader)
    candidates.append(RaplReader)
    for cls in candidates:
        reader = cls()
        if reader.available:
            return reader
        reasons.append(f"{cls.name}: {reader.reason}")
    return Unavailable("; ".join(reasons))
