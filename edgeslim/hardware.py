"""What edgeslim knows about hardware, below every stage: the CPU it runs on, the named device targets, and the
INT8 scheme each target needs.

Compression, export, runtime and profiling all ask the same questions (which target is this? does its INT8
accumulate in 32 bits?), so the answers live here rather than in :mod:`edgeslim.devices`, which adds detection of
GPUs and Jetson state on top. The CPU parser is a pure function over the text of ``/proc/cpuinfo`` so it is tested
on samples from machines we do not have (ARM boards print ``Features`` with ``asimd``; x86 prints ``flags``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import Registry, did_you_mean

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


# -- device targets ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetProfile:
    """What a device supports and what edgeslim recommends on it.

    Args:
        name: registry key, e.g. ``"jetson-agx-orin"``.
        title: human name.
        kind: ``"cpu"``, ``"gpu"`` or ``"jetson"``.
        backend: recommended runtime backend.
        precision: recommended precision.
        tensorrt: TensorRT versions the board's software supports (``None`` when TensorRT does not apply).
        jetpack: JetPack releases for the board.
        dla: number of DLA cores.
        int8: fast INT8 kernels.
        fp16: fast FP16 kernels.
        sparsity_2_4: 2:4 structured-sparse tensor-core kernels (Ampere and newer).
        match: lower-case substrings of the device-tree model that identify the board (Jetson only).
        notes: why the recommendation.
        int8_path: how the target's INT8 kernels accumulate, which decides the INT8 scheme (:func:`int8_scheme`):
            ``"vnni"`` (x86 VNNI / AMX: u8 x s8 summed in 32 bits), ``"no-vnni"`` (x86 AVX2 / AVX-512 without
            VNNI: pairs summed in saturating 16-bit lanes), ``"tensorrt"`` (NVIDIA tensor cores / DP4A),
            ``"arm"`` (NEON; dot product where the core has it), ``"unknown"`` (a CPU whose ISA is not known
            when compressing: the scheme must hold on every x86 host).
    """

    name: str
    title: str
    kind: str
    backend: str
    precision: str
    tensorrt: str | None = None
    jetpack: str | None = None
    dla: int = 0
    int8: bool = True
    fp16: bool = True
    sparsity_2_4: bool = False
    match: tuple[str, ...] = ()
    notes: str = ""
    int8_path: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["match"] = list(self.match)
        return d


TARGETS: Registry[TargetProfile] = Registry("device target")


def _add(p: TargetProfile, aliases: tuple[str, ...] = ()) -> None:
    TARGETS.register(p.name, p, aliases=aliases)


_add(
    TargetProfile(
        "x86-cpu", "x86-64 CPU", "cpu", backend="openvino", precision="int8",
        notes="OpenVINO INT8 uses AVX-512 VNNI / AMX where present (about 2x FP32 on this project's Xeon); "
        "onnxruntime is the portable second choice",
    ),
    aliases=("cpu", "x86"),
)
_add(
    TargetProfile(
        "x86-vnni", "x86-64 CPU with VNNI or AMX", "cpu", backend="openvino", precision="int8", int8_path="vnni",
        notes="AVX-512 VNNI, AVX-VNNI or AMX sum u8 x s8 products in 32 bits: full 8-bit weights are safe and INT8 "
        "is about 2x FP32 in OpenVINO",
    ),
    aliases=("x86-avx512-vnni", "x86-amx"),
)
_add(
    TargetProfile(
        "x86-avx2", "x86-64 CPU without VNNI (AVX2, or AVX-512 without VNNI)", "cpu", backend="openvino",
        precision="int8", int8_path="no-vnni",
        notes="without VNNI, INT8 kernels sum u8 x s8 pairs in saturating 16-bit lanes (vpmaddubsw): weights are "
        "quantized to 7 bits (NNCF's overflow fix); INT8 gains over FP32 are small, structure buys more",
    ),
    aliases=("x86-novnni", "avx2"),
)
_add(
    TargetProfile(
        "arm-cpu", "ARM64 CPU", "cpu", backend="onnxruntime", precision="int8", int8_path="arm",
        notes="onnxruntime's NEON kernels; INT8 pays off with the dot-product extension (asimddp / i8mm)",
    ),
    aliases=("arm", "aarch64"),
)
_add(
    TargetProfile(
        "nvidia-gpu", "NVIDIA GPU (discrete)", "gpu", backend="tensorrt", precision="int8", tensorrt=">=8.6", int8_path="tensorrt",
        sparsity_2_4=True,
        notes="TensorRT with an explicit Q/DQ ONNX (the INT8 path TensorRT 10 and 11 share); 2:4 sparsity needs "
        "compute capability >= 8.0",
    ),
    aliases=("gpu",),
)
_add(
    TargetProfile(
        "jetson-nano", "Jetson Nano (Maxwell)", "jetson", backend="tensorrt", precision="fp16", tensorrt="8.0-8.2", int8_path="tensorrt",
        jetpack="4.6.x (L4T R32.7)", int8=False, match=("jetson nano", "p3448", "p3450"),
        notes="Maxwell (sm_53) has no INT8 tensor cores or DP4A: FP16 is the fast path; TensorRT stays at 8.2",
    ),
    aliases=("nano",),
)
_add(
    TargetProfile(
        "jetson-xavier-nx", "Jetson Xavier NX (Volta)", "jetson", backend="tensorrt", precision="int8", int8_path="tensorrt",
        tensorrt="8.0-8.5", jetpack="4.6.x / 5.1.x", dla=2, match=("xavier nx", "p3668", "p3509"),
        notes="INT8 on the GPU tensor cores or the two DLAs; no sparse tensor cores on Volta",
    ),
    aliases=("xavier-nx",),
)
_add(
    TargetProfile(
        "jetson-orin-nano", "Jetson Orin Nano (Ampere)", "jetson", backend="tensorrt", precision="int8", int8_path="tensorrt",
        tensorrt="8.5-10.x", jetpack="5.1.1+ / 6.x", dla=0, sparsity_2_4=True, match=("orin nano", "p3767-0003",
        "p3767-0004", "p3767-0005"),
        notes="No DLA on Orin Nano; INT8 Q/DQ on the GPU, 2:4 sparse tensor cores available",
    ),
    aliases=("orin-nano",),
)
_add(
    TargetProfile(
        "jetson-orin-nx", "Jetson Orin NX (Ampere)", "jetson", backend="tensorrt", precision="int8", int8_path="tensorrt",
        tensorrt="8.5-10.x", jetpack="5.1+ / 6.x", dla=2, sparsity_2_4=True, match=("orin nx", "p3767-0000",
        "p3767-0001"),
        notes="INT8 Q/DQ on the GPU (MLPerf v3.1: ResNet-50 SingleStream p90 1.08 ms); two DLAs for offload",
    ),
    aliases=("orin-nx",),
)
_add(
    TargetProfile(
        "jetson-agx-orin", "Jetson AGX Orin (Ampere)", "jetson", backend="tensorrt", precision="int8", int8_path="tensorrt",
        tensorrt="8.4-10.x", jetpack="5.0.2+ / 6.x", dla=2, sparsity_2_4=True, match=("agx orin", "p3701", "p3737"),
        notes="INT8 Q/DQ on the GPU (MLPerf v3.1: ResNet-50 SingleStream p90 0.64 ms, Offline 6,424 samples/s)",
    ),
    aliases=("agx-orin",),
)


def list_targets() -> list[dict[str, Any]]:
    """Every registered target profile as a dict, in registry order (sorted by name)."""
    return [TARGETS.get(n).to_dict() for n in TARGETS.names()]


def get_target(name: str | None) -> TargetProfile:
    """A target profile by name or alias (unknown names raise with did-you-mean); ``"auto"`` (or None) is
    :func:`host_target`, this host. The search's :func:`edgeslim.search.target.resolve_target` adds what a
    measurement needs on top of it (ISA caps, the backend, a device behind a server)."""
    if name is None or name == "auto":
        return host_target()
    return TARGETS.get(name)


def jetson_target_for_model(model: str) -> str | None:
    """The target name whose ``match`` substrings occur in a device-tree model string, most specific first."""
    low = model.lower().replace("\x00", " ")
    # Longest match first so "orin nano" wins over "nano".
    pairs = sorted(
        ((m, TARGETS.get(n).name) for n in TARGETS.names() for m in TARGETS.get(n).match), key=lambda p: -len(p[0])
    )
    for sub, name in pairs:
        if sub in low:
            return name
    return None


# -- the target a recipe compresses for -------------------------------------------------------------------------

#: ISA flags with which x86 INT8 kernels sum u8 x s8 products in 32-bit lanes (no 16-bit saturation)
VNNI_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_target(cpu: dict[str, Any] | None = None) -> TargetProfile:
    """The CPU profile of this machine (or of ``cpu``, a :func:`cpu_info` summary): ``x86-vnni`` or ``x86-avx2``
    from the ISA flags on x86, ``arm-cpu`` on ARM, ``x86-cpu`` when the flags are unknown (no /proc/cpuinfo). This
    machine held below VNNI by ``ONEDNN_MAX_CPU_ISA`` (``AVX2``, ``AVX512_CORE``, ...) is ``x86-avx2``: that is how
    OpenVINO runs INT8 in this process."""
    own = cpu is None
    cpu = cpu if cpu is not None else cpu_info()
    machine = str(cpu.get("machine", "")).lower()
    if machine in ("aarch64", "arm64") or str(cpu.get("vendor", "")).upper() in ("ARM", "NVIDIA"):
        return TARGETS.get("arm-cpu")
    isa = cpu.get("isa") or {}
    if not isa:
        return TARGETS.get("x86-cpu")
    vnni = any(isa.get(f) for f in VNNI_FLAGS)
    if vnni and own and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _CAPS_WITHOUT_VNNI:
        # this process's oneDNN (OpenVINO's CPU plugin) is held below VNNI: its INT8 convolutions sum in 16-bit
        # lanes as an AVX2 host's do, so it gets that host's scheme (7-bit weights, safe on onnxruntime's VNNI too)
        vnni = False
    return TARGETS.get("x86-vnni" if vnni else "x86-avx2")


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) whose INT8 kernels have no VNNI
_CAPS_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})


def host_target(root: str | os.PathLike = "/") -> TargetProfile:
    """The target this process runs on, without loading any driver library: a Jetson board by its device-tree
    model, a machine with an NVIDIA driver (``/proc/driver/nvidia/gpus``) as ``nvidia-gpu``, else
    :func:`cpu_target`. :func:`edgeslim.devices.detect` adds NVML and Jetson state for reports."""
    base = Path(root)
    try:
        model = (base / "proc/device-tree/model").read_text(errors="replace")
    except OSError:
        model = ""
    board = jetson_target_for_model(model) if model else None
    if board is not None:
        return TARGETS.get(board)
    gpus = base / "proc/driver/nvidia/gpus"
    if gpus.is_dir() and any(gpus.iterdir()):
        return TARGETS.get("nvidia-gpu")
    return cpu_target()


def check_target_name(name: str) -> str:
    """Validate a recipe's ``target`` (``auto`` or a registered name); returns the canonical name."""
    if name == "auto":
        return name
    if name not in TARGETS:
        names = ["auto", *TARGETS.names()]
        raise ConfigError(
            f"unknown target '{name}'.{did_you_mean(name, names)} Use 'auto' (this host) or one of: "
            + ", ".join(names[1:]) + " (see `edgeslim devices`)"
        )
    return TARGETS.canonical(name)


# -- the INT8 scheme of a target ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Scheme:
    """How an INT8 file is quantized for one target and runtime.

    Attributes:
        target: the profile the file is made for.
        runtime: the runtime that runs the file there (``openvino``, ``onnxruntime``, ``tensorrt``).
        overflow_fix: NNCF's ``OverflowFix``: ``enable`` quantizes every weight to 7 bits so that u8 x s8 pairs
            cannot saturate a 16-bit lane; ``first_layer`` only the first layer (NNCF's default); ``disable`` none.
        per_tensor_activations: one scale and zero point per activation tensor (onnxruntime's QLinearConv accepts
            only a scalar input zero point; TensorRT wants per-tensor activations too).
        signed_activations: symmetric INT8 activations with zero point 0 (TensorRT's explicit Q/DQ form).
        why: the reasons, citing each runtime's documentation.
    """

    target: str
    runtime: str
    overflow_fix: str = "first_layer"
    per_tensor_activations: bool = False
    signed_activations: bool = False
    why: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.target}/{self.runtime}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["why"] = list(self.why)
        d["name"] = self.name
        return d


_WHY_NO_VNNI = ("without VNNI, x86 INT8 kernels (oneDNN, MLAS) sum u8 x s8 pairs in saturating 16-bit lanes "
                "(vpmaddubsw); 7-bit weights cannot overflow them (NNCF OverflowFix.ENABLE; onnxruntime's "
                "reduce_range)")
_WHY_UNKNOWN = ("the target's ISA is unknown: 7-bit weights hold on every x86 host, with and without VNNI, at the "
                "cost of one bit of weight precision")
_WHY_VNNI = ("VNNI / AMX sum u8 x s8 products in 32 bits: 8-bit weights are safe (NNCF's default overflow fix, on "
             "the first layer only)")
_WHY_ORT = ("onnxruntime fuses Q/DQ + Conv into QLinearConv, which takes a scalar input zero point: per-tensor "
            "activations")
_WHY_TRT = ("TensorRT's explicit quantization takes symmetric signed INT8 (zero point 0), per-channel weights and "
            "per-tensor activations; tensor cores accumulate in 32 bits (no overflow fix)")
_WHY_ARM = "ARM NEON kernels widen to 16 bits without the dot-product extension: 7-bit weights are the safe choice"


def int8_scheme(target: TargetProfile | str, fmt: str) -> Int8Scheme:
    """The INT8 scheme of a model file in format ``fmt`` (``onnx`` or ``openvino``) made for ``target``.

    A format that does not run on the target (an OpenVINO IR for a GPU or a Jetson) is made for this machine's
    CPU instead (:func:`cpu_target`), and says so in ``why``.
    """
    profile = get_target(target) if isinstance(target, str) else target
    why: list[str] = []
    if fmt == "openvino" and profile.kind != "cpu":
        why.append(f"OpenVINO does not run on {profile.name}: the IR is made for this machine's CPU")
        profile = cpu_target()
    if fmt == "onnx":
        runtime = "tensorrt" if profile.int8_path == "tensorrt" else "onnxruntime"
    elif fmt == "openvino":
        runtime = "openvino"
    else:
        raise ConfigError(f"no INT8 scheme for format '{fmt}': edgeslim quantizes 'onnx' and 'openvino' files")
    path = profile.int8_path
    if path == "tensorrt":
        return Int8Scheme(profile.name, runtime, overflow_fix="disable", per_tensor_activations=True,
                          signed_activations=True, why=(*why, _WHY_TRT))
    ort = runtime == "onnxruntime"
    if path == "vnni":
        fix, reason = "first_layer", _WHY_VNNI
    elif path == "no-vnni":
        fix, reason = "enable", _WHY_NO_VNNI
    elif path == "arm":
        fix, reason = "enable", _WHY_ARM
    else:
        fix, reason = "enable", _WHY_UNKNOWN
    return Int8Scheme(profile.name, runtime, overflow_fix=fix, per_tensor_activations=ort,
                      why=(*why, reason, *((_WHY_ORT,) if ort else ())))


class Int8TargetWarning(UserWarning):
    """An INT8 file runs on a host it was not made for (see :func:`scheme_mismatch`)."""


def scheme_mismatch(made_for: dict[str, Any] | None, host: TargetProfile | None = None) -> str | None:
    """Why an INT8 file made for ``made_for`` (a model file's ``extra["int8_scheme"]``) may lose accuracy on
    ``host`` (default: this machine), or None when it was made for this kind of host or holds on it.

    7-bit weights (``overflow_fix: enable``) hold on every x86 host; 8-bit weights made for VNNI can saturate
    on a host without it; a TensorRT file on a CPU runs with emulated Q/DQ the target never used.
    """
    if not made_for:
        return None
    host = host or host_target()
    target = str(made_for.get("target", ""))
    if target == host.name or (target in TARGETS and TARGETS.canonical(target) == host.name):
        return None
    if made_for.get("overflow_fix") == "enable" and host.int8_path in ("vnni", "no-vnni", "unknown", "arm"):
        return None
    if host.int8_path == "vnni" and made_for.get("runtime") in ("openvino", "onnxruntime"):
        return None  # 32-bit accumulation: a file made for any CPU holds
    return (f"this INT8 file was made for {target} ({made_for.get('runtime')}, overflow fix"
            f" {made_for.get('overflow_fix')}) and runs on {host.name}: its accuracy there can differ from the"
            f" validated figures; re-export with target: auto on this host, or target: {host.name}")
