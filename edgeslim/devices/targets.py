"""Device targets: named board profiles in a registry, and detection of the machine edgeslim runs on.

A :class:`TargetProfile` says what a board supports (TensorRT range, DLA cores, INT8, FP16, 2:4 sparse kernels)
and which backend and precision edgeslim recommends there. :func:`detect` finds which profile this machine is,
and records its state (Jetson power mode and clock lock, GPU clocks and power limit) for reports.

The Jetson readers are pure parsers over the text of ``/proc/device-tree/model``, ``/etc/nv_tegra_release``,
``nvpmodel -q`` and ``jetson_clocks --show``, so they are tested on real samples without a board.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, require
from ..hardware import TARGETS as TARGETS
from ..hardware import TargetProfile as TargetProfile
from ..hardware import VNNI_FLAGS, cpu_info, cpu_target
from ..hardware import get_target as get_target
from ..hardware import jetson_target_for_model as jetson_target_for_model
from ..hardware import list_targets as list_targets


# -- Jetson parsers (pure) ----------------------------------------------------------------------------------------
# L4T (Jetson Linux) release -> JetPack, from NVIDIA's JetPack archive.
_L4T_TO_JETPACK = {
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}


def parse_nv_tegra_release(text: str) -> dict[str, Any]:
    """Parse ``/etc/nv_tegra_release`` (``# R35 (release), REVISION: 4.1, GCID: ..., BOARD: ...``).

    Returns:
        ``{"l4t": "35.4.1", "jetpack": "5.1.2" | None, "board": "t186ref" | None}``; ``l4t`` is None if unparsable.
    """
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return {"l4t": None, "jetpack": None, "board": None}
    rev = m.group(2)
    parts = rev.split(".")
    if len(parts) == 1:
        parts.append("0")
    l4t = f"{m.group(1)}.{parts[0]}.{parts[1]}"
    board = re.search(r"BOARD:\s*([\w-]+)", text)
    return {"l4t": l4t, "jetpack": _L4T_TO_JETPACK.get(l4t), "board": board.group(1) if board else None}


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """Parse ``nvpmodel -q`` (``NV Power Mode: MAXN`` then the mode id on the next line)."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    mode_id = None
    if m:
        rest = text[m.end():].split()
        if rest and rest[0].isdigit():
            mode_id = int(rest[0])
    return {"mode": m.group(1) if m else None, "id": mode_id}


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """Parse ``jetson_clocks --show``: per-clock min / max / current and whether clocks are locked at max.

    Clocks count as locked (``jetson_clocks`` was run) when every online CPU and the GPU run with
    MinFreq == MaxFreq == CurrentFreq.
    """
    cpus = []
    for m in re.finditer(r"^cpu(\d+): Online=(\d) .*?MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", text, re.M):
        cpus.append({"cpu": int(m.group(1)), "online": m.group(2) == "1", "min": int(m.group(3)),
                     "max": int(m.group(4)), "current": int(m.group(5))})
    gpu = re.search(r"^GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", text, re.M)
    emc = re.search(r"^EMC MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", text, re.M)
    machine = re.search(r"Machine:\s*(.+)$", text, re.M)
    mode = re.search(r"NV Power Mode:\s*(\S+)", text)

    def clk(m: re.Match | None) -> dict[str, int] | None:
        return None if not m else {"min": int(m.group(1)), "max": int(m.group(2)), "current": int(m.group(3))}

    online = [c for c in cpus if c["online"]]
    g = clk(gpu)
    locked = bool(online) and all(c["min"] == c["max"] == c["current"] for c in online) and (
        g is None or g["min"] == g["max"] == g["current"]
    )
    return {
        "machine": machine.group(1).strip() if machine else None,
        "cpu_online": len(online),
        "cpu_max_khz": max((c["max"] for c in online), default=None),
        "cpu_current_khz": [c["current"] for c in online],
        "gpu": g,
        "emc": clk(emc),
        "locked": locked,
        "power_mode": mode.group(1) if mode else None,
    }


def _run(cmd: list[str], timeout: float = 10.0) -> tuple[str | None, str | None]:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None, f"'{cmd[0]}' is not on PATH"
    try:
        p = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`{' '.join(cmd)}` failed: {exc}"
    if p.returncode != 0:
        return None, f"`{' '.join(cmd)}` exited {p.returncode}: {(p.stderr or p.stdout).strip()[:200]}"
    return p.stdout, None


def jetson_state(root: str | Path = "/") -> dict[str, Any] | None:
    """Jetson model, L4T / JetPack, power mode and clocks, or None when this is not a Jetson.

    Args:
        root: filesystem root to read ``proc/device-tree/model`` and ``etc/nv_tegra_release`` under.
    """
    root = Path(root)
    release = root / "etc/nv_tegra_release"
    model_file = root / "proc/device-tree/model"
    if not release.exists() and not model_file.exists():
        return None
    model = model_file.read_text(errors="replace").strip("\x00\n ") if model_file.exists() else ""
    if release.exists():
        rel = parse_nv_tegra_release(release.read_text(errors="replace"))
    else:
        rel = {"l4t": None, "jetpack": None, "board": None}
    if not release.exists() and "jetson" not in model.lower() and "nvidia" not in model.lower():
        return None  # another ARM board with a device tree
    state: dict[str, Any] = {"model": model, **rel, "target": jetson_target_for_model(model)}
    out, why = _run(["nvpmodel", "-q"])
    state["power_mode"] = parse_nvpmodel(out) if out else {"mode": None, "id": None, "reason": why}
    out, why = _run(["jetson_clocks", "--show"])
    state["clocks"] = parse_jetson_clocks(out) if out else {"locked": None, "reason": why}
    return state


def nvidia_gpus() -> tuple[list[dict[str, Any]], str | None]:
    """NVIDIA GPUs through NVML: name, memory, clocks, power limit; or ``([], reason)``."""
    try:
        nvml = require("pynvml", "tensorrt", purpose="NVIDIA GPU detection")
    except MissingDependencyError as exc:
        return [], str(exc)
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded
        return [], f"NVML could not start: {exc}"
    gpus = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            g: dict[str, Any] = {"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                                 "memory_mb": mem.total // (1024 * 1024)}
            for key, fn, arg in (
                ("sm_clock_mhz", "nvmlDeviceGetClockInfo", "NVML_CLOCK_SM"),
                ("sm_clock_max_mhz", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM"),
                ("mem_clock_mhz", "nvmlDeviceGetClockInfo", "NVML_CLOCK_MEM"),
            ):
                try:
                    g[key] = getattr(nvml, fn)(h, getattr(nvml, arg))
                except Exception:
                    g[key] = None
            try:
                g["power_limit_w"] = nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            except Exception:
                g["power_limit_w"] = None
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
                g["compute_capability"] = f"{major}.{minor}"
            except Exception:
                g["compute_capability"] = None
            gpus.append(g)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return gpus, None if gpus else "NVML reports no GPU"


def detect(*, root: str | Path = "/", probe_gpu: bool = True) -> dict[str, Any]:
    """Detect the target this process runs on.

    Order: a Jetson (device tree / ``nv_tegra_release``), else a machine with an NVIDIA GPU (NVML), else the CPU.

    Args:
        root: filesystem root for the Jetson files (tests point it at a copied tree).
        probe_gpu: ask NVML for GPUs (skipped on Jetson, where NVML does not apply).

    Returns:
        ``{"name", "title", "kind", "profile", "cpu", "gpus", "jetson", "why"}`` where ``profile`` is the
        matching :class:`TargetProfile` as a dict and ``why`` says what the detection was based on.
    """
    cpu = cpu_info()
    jet = jetson_state(root)
    gpus: list[dict[str, Any]] = []
    gpu_reason = None
    if jet is not None:
        name = jet.get("target")
        why = f"Jetson: device-tree model {jet.get('model')!r}"
        if name is None:
            why += " matches no known board profile; showing the closest generic profile"
            name = "jetson-orin-nano" if "orin" in jet.get("model", "").lower() else "jetson-xavier-nx"
    else:
        if probe_gpu:
            gpus, gpu_reason = nvidia_gpus()
        if gpus:
            name, why = "nvidia-gpu", f"NVML: {gpus[0]['name']}"
        else:
            name = cpu_target(cpu).name
            why = f"CPU {cpu['model']} ({cpu.get('machine')}); no Jetson files" + (
                f"; no NVIDIA GPU ({gpu_reason})" if gpu_reason else ""
            )
    profile = TARGETS.get(name)
    out = {
        "name": profile.name,
        "title": profile.title,
        "kind": profile.kind,
        "why": why,
        "profile": profile.to_dict(),
        "cpu": cpu,
        "gpus": gpus,
        "jetson": jet,
    }
    if jet is not None:
        out["power_mode"] = (jet.get("power_mode") or {}).get("mode")
        out["clocks"] = "locked (jetson_clocks)" if (jet.get("clocks") or {}).get("locked") else "dynamic"
        out["l4t"], out["jetpack"] = jet.get("l4t"), jet.get("jetpack")
    if gpus:
        out["gpu"] = gpus[0]["name"]
    isa = cpu.get("isa") or {}
    if profile.name in ("x86-cpu", "x86-avx2") and not any(isa.get(f) for f in VNNI_FLAGS):
        out["advice"] = "no VNNI/AMX on this CPU: INT8 gains over FP32 will be small; compare both precisions"
    return out
