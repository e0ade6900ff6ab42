"""CPU identification: model, vendor, cores and the ISA features that decide which kernels a backend can use.

The parser is a pure function over the text of ``/proc/cpuinfo`` so it can be tested on samples from machines
we do not have (ARM boards print ``Features`` with ``asimd``; x86 prints ``flags``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: ISA features edgeslim reports, in the order they are printed. Names follow the kernel's /proc/cpuinfo flags.
ISA_OF_INTEREST: tuple[str, ...] = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    # ARM (Jetson, Raspberry Pi, Graviton): asimd = NEON; asimddp = dot product (INT8); sve for servers.
    "neon",
    "asimd",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
)


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Parse the text of ``/proc/cpuinfo`` (x86 or ARM) into a summary.

    Args:
        text: the whole file content.

    Returns:
        ``{"model", "vendor", "logical_cores", "physical_cores", "sockets", "isa": {flag: bool}, "flags": [...]}``.
        ``physical_cores`` is None when the file does not say (ARM kernels do not print ``core id``).
    """
    blocks = [b for b in text.split("\n\n") if b.strip()]
    procs: list[dict[str, str]] = []
    header: dict[str, str] = {}  # ARM prints "Hardware", "Model" etc. in a trailing block without "processor"
    for block in blocks:
        entry: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip().lower()] = value.strip()
        if "processor" in entry and entry["processor"].isdigit():
            procs.append(entry)
        else:
            header.update(entry)
    first = procs[0] if procs else header
    model = (
        first.get("model name")
        or header.get("model name")
        or header.get("model")  # Raspberry Pi / some ARM kernels
        or header.get("hardware")
        or first.get("cpu model")
        or ""
    )
    vendor = first.get("vendor_id") or _arm_vendor(first.get("cpu implementer", ""))
    flags_text = first.get("flags") or first.get("features") or ""
    flags = sorted(set(flags_text.split()))
    isa = {f: f in flags for f in ISA_OF_INTEREST}
    # On 64-bit ARM, NEON is called asimd in /proc/cpuinfo; report both names consistently.
    if isa.get("asimd"):
        isa["neon"] = True
    physical = None
    sockets = None
    if procs and all("core id" in p for p in procs):
        cores = {(p.get("physical id", "0"), p["core id"]) for p in procs}
        physical = len(cores)
        sockets = len({p.get("physical id", "0") for p in procs})
    return {
        "model": model,
        "vendor": vendor,
        "logical_cores": len(procs) or None,
        "physical_cores": physical,
        "sockets": sockets,
        "isa": isa,
        "flags": flags,
    }


# ARM "CPU implementer" codes (from the Arm ARM / Linux arch/arm64 cputype.h), enough to name the vendor.
_ARM_IMPLEMENTERS = {"0x41": "ARM", "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0x48": "HiSilicon"}


def _arm_vendor(code: str) -> str:
    return _ARM_IMPLEMENTERS.get(code.lower(), code)


def cpu_info(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """Describe the CPU this process runs on.

    Reads ``/proc/cpuinfo`` where it exists and falls back to :mod:`platform` and :func:`os.cpu_count` elsewhere
    (macOS, Windows), in which case ISA flags are unknown and reported as an empty mapping.

    Returns:
        The :func:`parse_cpuinfo` summary plus ``machine`` (e.g. ``x86_64``, ``aarch64``), ``affinity`` (CPUs
        this process may run on) and ``source`` (where the facts came from). ``flags`` is dropped to keep
        reports short; the ISA features of interest stay in ``isa``.
    """
    path = Path(cpuinfo_path)
    try:
        info = parse_cpuinfo(path.read_text(errors="replace"))
        info["source"] = str(path)
    except OSError:
        info = {
            "model": platform.processor() or platform.machine(),
            "vendor": "",
            "logical_cores": os.cpu_count(),
            "physical_cores": None,
            "sockets": None,
            "isa": {},
            "flags": [],
            "source": "platform",
        }
    if not info["model"]:
        info["model"] = platform.processor() or platform.machine()
    if not info["logical_cores"]:
        info["logical_cores"] = os.cpu_count()
    info["machine"] = platform.machine()
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        info["affinity"] = info["logical_cores"]
    info.pop("flags", None)
    return info
