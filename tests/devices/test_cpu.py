"""cpu_info on this machine and the /proc/cpuinfo parser on fixed samples of x86 and ARM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeslim.devices.cpu import cpu_info, parse_cpuinfo

# Two logical CPUs of one core each, trimmed from a real x86 /proc/cpuinfo (Sapphire Rapids VM).
X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8

processor\t: 2
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8
"""

# The layout of an aarch64 kernel (Jetson Orin, Cortex-A78AE = part 0xd42): "Features", no model name, no core id.
ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd42
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd42
CPU revision\t: 1
"""


def test_parse_x86_counts_physical_cores_and_isa():
    info = parse_cpuinfo(X86)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["vendor"] == "GenuineIntel"
    assert info["logical_cores"] == 3
    assert info["physical_cores"] == 2  # two hyperthreads share core 0
    assert info["isa"]["avx512_vnni"] and info["isa"]["amx_int8"] and info["isa"]["avx2"]
    assert not info["isa"]["avx_vnni"] and not info["isa"]["asimd"]


def test_parse_arm_reports_neon_and_dot_product_without_guessing_physical_cores():
    info = parse_cpuinfo(ARM)
    assert info["vendor"] == "ARM"
    assert info["logical_cores"] == 2
    assert info["physical_cores"] is None  # the ARM kernel does not say; do not invent it
    assert info["isa"]["neon"] and info["isa"]["asimd"] and info["isa"]["asimddp"]
    assert not info["isa"]["avx2"]


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo on this OS")
def test_cpu_info_matches_this_machine():
    text = Path("/proc/cpuinfo").read_text()
    info = cpu_info()
    assert info["logical_cores"] == text.count("\nprocessor") + text.startswith("processor")
    assert info["model"]
    assert info["affinity"] == len(os.sched_getaffinity(0))
    flags_line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    flags = set(flags_line.partition(":")[2].split())
    for name in ("avx2", "avx512f", "avx512_vnni", "amx_int8"):
        assert info["isa"][name] == (name in flags)
    assert "flags" not in info  # the full list is dropped to keep reports short


def test_cpu_info_falls_back_to_platform_when_cpuinfo_is_missing(tmp_path):
    info = cpu_info(tmp_path / "absent")
    assert info["source"] == "platform"
    assert info["logical_cores"] == os.cpu_count()
    assert info["isa"] == {}
