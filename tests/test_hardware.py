"""edgeslim.hardware: the target a recipe compresses for and the INT8 scheme each target needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslim.errors import ConfigError
from edgeslim.hardware import (
    TARGETS,
    check_target_name,
    cpu_target,
    host_target,
    int8_scheme,
    parse_cpuinfo,
    scheme_mismatch,
)
from edgeslim.recipe import parse_recipe


def _cpu(flags: str, machine: str = "x86_64") -> dict:
    info = parse_cpuinfo(f"processor\t: 0\nvendor_id\t: X\nmodel name\t: test cpu\nflags\t\t: {flags}\n")
    info["machine"] = machine
    return info


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("sse4_2 avx avx2 fma f16c", "x86-avx2"),  # AMD EPYC (Rome) style
        ("avx2 avx512f avx512bw", "x86-avx2"),  # Skylake-SP: AVX-512 without VNNI saturates too
        ("avx2 avx512f avx512bw avx512_vnni", "x86-vnni"),
        ("avx2 avx_vnni", "x86-vnni"),  # Alder Lake
        ("avx2 avx512_vnni amx_tile amx_int8", "x86-vnni"),  # Sapphire Rapids
    ],
)
def test_the_cpu_target_follows_the_int8_accumulation_of_the_isa(flags, expected):
    assert cpu_target(_cpu(flags)).name == expected


def test_arm_and_unknown_cpus():
    assert cpu_target(_cpu("fp asimd asimddp", machine="aarch64")).name == "arm-cpu"
    assert cpu_target({"machine": "x86_64", "isa": {}}).name == "x86-cpu"


@pytest.mark.parametrize("cap, expected", [("AVX2", "x86-avx2"), ("AVX512_CORE", "x86-avx2"), ("avx512_core", "x86-avx2"),
                                           ("AVX512_CORE_VNNI", "x86-vnni"), ("AVX512_CORE_AMX", "x86-vnni"), ("", "x86-vnni")])
def test_this_process_held_below_vnni_by_onednn_is_an_avx2_target(monkeypatch, cap, expected):
    # oneDNN's ISA cap makes OpenVINO's INT8 convolutions sum in 16-bit lanes: the scheme must be the AVX2 host's
    import edgeslim.hardware as hw

    monkeypatch.setattr(hw, "cpu_info", lambda: _cpu("avx2 avx512f avx512_vnni amx_int8"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hw.cpu_target().name == expected
    assert hw.cpu_target(_cpu("avx2 avx512_vnni")).name == "x86-vnni"  # a described CPU is not this process


def test_host_target_reads_a_jetson_device_tree_and_an_nvidia_driver(tmp_path):
    dt = tmp_path / "jetson" / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert host_target(tmp_path / "jetson").name == "jetson-agx-orin"
    gpus = tmp_path / "gpu" / "proc" / "driver" / "nvidia" / "gpus" / "0000:01:00.0"
    gpus.mkdir(parents=True)
    assert host_target(tmp_path / "gpu").name == "nvidia-gpu"
    assert host_target(tmp_path / "empty").name == cpu_target().name


def test_int8_scheme_per_target_and_runtime():
    avx2 = int8_scheme("x86-avx2", "openvino")
    assert (avx2.runtime, avx2.overflow_fix, avx2.per_tensor_activations) == ("openvino", "enable", False)
    assert any("vpmaddubsw" in w for w in avx2.why)
    ort = int8_scheme("x86-avx2", "onnx")
    assert (ort.runtime, ort.overflow_fix, ort.per_tensor_activations) == ("onnxruntime", "enable", True)
    vnni = int8_scheme("x86-vnni", "openvino")
    assert vnni.overflow_fix == "first_layer"
    unknown = int8_scheme("x86-cpu", "onnx")  # a CPU named without its ISA: the scheme that holds everywhere
    assert unknown.overflow_fix == "enable"
    trt = int8_scheme("jetson-orin-nx", "onnx")
    assert (trt.runtime, trt.overflow_fix, trt.signed_activations, trt.per_tensor_activations) == (
        "tensorrt", "disable", True, True)
    # OpenVINO does not run on a GPU target: its IR is made for this machine's CPU, and says so
    ov_for_gpu = int8_scheme("nvidia-gpu", "openvino")
    assert ov_for_gpu.target == cpu_target().name and "does not run on nvidia-gpu" in ov_for_gpu.why[0]
    with pytest.raises(ConfigError, match="no INT8 scheme for format 'tensorrt'"):
        int8_scheme("nvidia-gpu", "tensorrt")


def test_a_file_made_for_vnni_is_foreign_on_avx2_but_7bit_weights_hold_everywhere():
    avx2, vnni = TARGETS.get("x86-avx2"), TARGETS.get("x86-vnni")
    made_vnni = int8_scheme("x86-vnni", "openvino").to_dict()
    made_avx2 = int8_scheme("x86-avx2", "openvino").to_dict()
    assert "made for x86-vnni" in scheme_mismatch(made_vnni, avx2)
    assert scheme_mismatch(made_vnni, vnni) is None
    assert scheme_mismatch(made_avx2, vnni) is None and scheme_mismatch(made_avx2, avx2) is None
    assert "made for nvidia-gpu" in scheme_mismatch(int8_scheme("nvidia-gpu", "onnx").to_dict(), avx2)
    assert scheme_mismatch(None, avx2) is None  # files from before targets: nothing is known, nothing is said


def test_recipe_target_is_checked_with_did_you_mean():
    assert parse_recipe({}).target == "auto"
    assert parse_recipe({"target": "avx2"}).target == "x86-avx2"  # aliases resolve to the canonical name
    with pytest.raises(ConfigError, match="unknown target 'jetson-orin-nxx'.*Did you mean 'jetson-orin-nx'"):
        parse_recipe({"target": "jetson-orin-nxx"})
    assert check_target_name("auto") == "auto"


def test_this_host_is_a_known_target():
    assert host_target().name in TARGETS.names()
    assert Path("/proc/cpuinfo").exists() is False or cpu_target().name in ("x86-vnni", "x86-avx2", "arm-cpu")
