"""The x86 host kinds whose INT8 results differ, and which of them this machine runs for real or can emulate.

INT8 convolutions differ between x86 CPUs: without VNNI, u8 x s8 pairs are summed in saturating 16-bit lanes; with
AVX-512 VNNI or AMX, in 32-bit lanes. A test suite written on one kind can fail on another, so the suite runs the
INT8 export and validation of the other kinds this machine can stand in for: oneDNN (OpenVINO's CPU plugin, and
PyTorch's CPU convolutions) honours ``ONEDNN_MAX_CPU_ISA``, read once when the library loads, so a child process
with the variable set dispatches the older kind's kernels (``tests/export/test_host_kinds.py``, which checks the
kernels that really ran). oneDNN can hold a CPU to an older ISA, never lift it to a newer one: kinds above this
host's are not covered here. onnxruntime's MLAS picks its kernels from CPUID with no such cap, so its INT8 is
covered for this host's kind only. Nor does the cap reach OpenVINO's own choice of precision for float layers: on a
CPU with BF16 (AMX, AVX512_BF16) it still defaults to bf16, whose kernels an AVX2 cap removes ("Convolution node ...
object is not initialized"); the emulated runs therefore compile as the validation, accuracy control and the
runtime do on a CPU, pinned to f32.

Used by ``tests/conftest.py`` (the session header and summary) and by ``.ci/run`` (``python tests/host_kinds.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostKind:
    """One x86 kind: its name, oneDNN's cap that emulates it, the cpuinfo flags it needs, and what it implies."""

    name: str
    isa_cap: str  # ONEDNN_MAX_CPU_ISA
    flags: frozenset[str]  # /proc/cpuinfo flags a CPU needs to run (or stand in for) this kind
    target: str  # edgeslim.hardware's INT8 target of such a host (its scheme)
    onednn_isa: str  # the ISA suffix of oneDNN's INT8 convolution implementations on it (verbose log)
    exec_family: str  # the word in OpenVINO's execution-graph primitiveType of its INT8 convolutions
    describe: str


_AVX512 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
#: oldest first; each kind's flags include those of the kinds before it that oneDNN's cap implies
KINDS: tuple[HostKind, ...] = (
    HostKind("avx2", "AVX2", frozenset({"avx2"}), "x86-avx2", "avx2", "avx2", "AVX2 only"),
    HostKind("avx2-vnni", "AVX2_VNNI", frozenset({"avx2", "avx_vnni"}), "x86-vnni", "avx2_vnni", "avx2",
             "AVX2 with AVX-VNNI"),
    HostKind("avx512", "AVX512_CORE", _AVX512, "x86-avx2", "avx512_core", "avx512", "AVX-512 without VNNI"),
    HostKind("avx512-vnni", "AVX512_CORE_VNNI", _AVX512 | {"avx512_vnni"}, "x86-vnni", "avx512_core_vnni", "avx512",
             "AVX-512 VNNI"),
    HostKind("amx", "AVX512_CORE_AMX", _AVX512 | {"avx512_vnni", "amx_int8", "amx_tile"}, "x86-vnni", "amx", "amx",
             "AMX"),
)
#: oneDNN ISA suffixes in the order of the kinds (AMX kernels are named avx512_core_amx or avx10_1_512_amx)
ISA_RANK = {"sse41": 0, "avx": 0, "avx2": 1, "avx2_vnni": 2, "avx2_vnni_2": 2, "avx512_core": 3,
            "avx512_core_bf16": 3, "avx512_core_vnni": 4, "avx512_core_amx": 5, "avx10_1_512_amx": 5}
RANK_OF_KIND = {"avx2": 1, "avx2-vnni": 2, "avx512": 3, "avx512-vnni": 4, "amx": 5}


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's flags (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def can_run(kind: HostKind, flags: frozenset[str]) -> bool:
    return kind.flags <= flags


def native_kind(flags: frozenset[str] | None = None) -> HostKind | None:
    """The newest kind this CPU runs for real (None: not x86, or no AVX2)."""
    flags = cpu_flags() if flags is None else flags
    runnable = [k for k in KINDS if can_run(k, flags)]
    return max(runnable, key=lambda k: RANK_OF_KIND[k.name]) if runnable else None


def plan(flags: frozenset[str] | None = None) -> dict[str, list[HostKind]]:
    """``real`` (this host's kind), ``emulated`` (older kinds it can stand in for) and ``not_covered``."""
    flags = cpu_flags() if flags is None else flags
    native = native_kind(flags)
    real = [native] if native else []
    emulated = [k for k in KINDS if k is not native and can_run(k, flags)]
    return {"real": real, "emulated": emulated, "not_covered": [k for k in KINDS if k not in real + emulated]}


def session_cap() -> str | None:
    """A note when this whole session runs under ``ONEDNN_MAX_CPU_ISA``: then OpenVINO and torch run as that kind,
    not this CPU's, while onnxruntime still runs as this CPU."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if not cap:
        return None
    kind = next((k.name for k in KINDS if k.isa_cap == cap.upper()), None)
    return (f"this session runs under ONEDNN_MAX_CPU_ISA={cap}: OpenVINO and torch as {kind or cap}, onnxruntime as"
            " this CPU")


def describe_plan(flags: frozenset[str] | None = None) -> str:
    p = plan(flags)

    def names(ks: list[HostKind]) -> str:
        return ", ".join(f"{k.name} ({k.describe})" for k in ks) or "none"

    cap = session_cap()
    return (f"x86 host kinds for INT8: real: {names(p['real'])}; emulated with ONEDNN_MAX_CPU_ISA (OpenVINO + torch;"
            f" not onnxruntime): {names(p['emulated'])}; not covered here: {names(p['not_covered'])}"
            + (f" ({cap})" if cap else ""))


if __name__ == "__main__":  # .ci/run prints this before the tests
    print(describe_plan())
