"""Target registry, Jetson parsers on real samples, and detection on this machine and on a Jetson-shaped tree."""

from __future__ import annotations

import pytest

from edgeslim.devices.targets import (
    TARGETS,
    detect,
    get_target,
    jetson_target_for_model,
    list_targets,
    parse_jetson_clocks,
    parse_nv_tegra_release,
    parse_nvpmodel,
)
from edgeslim.errors import UnknownNameError

# `jetson_clocks --show` of a Jetson TX2 as captured in github.com/rbonghi/jetson_stats tests/jetson_clocks
TX2_CLOCKS = """SOC family:tegra186  Machine:quill
Online CPUs: 0,3-5
CPU Cluster Switching: Disabled
cpu0: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=2035200 IdleStates: C1=1 c7=1
cpu1: Online=0 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=1113600 IdleStates: C1=1 c6=1 c7=1
cpu2: Online=0 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=1113600 IdleStates: C1=1 c6=1 c7=1
cpu3: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=1881600 IdleStates: C1=1 c7=1
cpu4: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=2035200 IdleStates: C1=1 c7=1
cpu5: Online=1 Governor=schedutil MinFreq=345600 MaxFreq=2035200 CurrentFreq=2035200 IdleStates: C1=1 c7=1
GPU MinFreq=114750000 MaxFreq=1134750000 CurrentFreq=114750000
EMC MinFreq=40800000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0
Fan: speed=0
NV Power Mode: MAXP_CORE_ARM
"""


def test_registry_lists_every_board_with_capabilities():
    names = {t["name"] for t in list_targets()}
    assert {"x86-cpu", "arm-cpu", "nvidia-gpu", "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano",
            "jetson-orin-nx", "jetson-agx-orin"} <= names
    nano, orin = get_target("nano"), get_target("jetson-agx-orin")
    assert nano.precision == "fp16" and not nano.int8 and not nano.sparsity_2_4  # Maxwell: no INT8 path
    assert orin.sparsity_2_4 and orin.dla == 2 and orin.backend == "tensorrt"
    assert get_target("jetson-orin-nano").dla == 0
    with pytest.raises(UnknownNameError, match="Did you mean 'agx-orin'"):
        get_target("agx-orn")
    assert len(TARGETS) == len(list_targets())


@pytest.mark.parametrize(
    "model, target",
    [
        ("NVIDIA Jetson AGX Orin Developer Kit\x00", "jetson-agx-orin"),
        ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
        ("NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
        ("NVIDIA Jetson Nano Developer Kit", "jetson-nano"),
        ("Raspberry Pi 4 Model B Rev 1.4", None),
    ],
)
def test_device_tree_model_to_target(model, target):
    assert jetson_target_for_model(model) == target


@pytest.mark.parametrize(
    "text, l4t, jetpack",
    [
        ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022",
         "32.7.1", "4.6.1"),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
         "35.4.1", "5.1.2"),
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
         "36.4.3", "6.2"),
        ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64", "36.3.0", "6.0"),
    ],
)
def test_l4t_release_and_jetpack(text, l4t, jetpack):
    r = parse_nv_tegra_release(text)
    assert (r["l4t"], r["jetpack"]) == (l4t, jetpack)
    assert parse_nv_tegra_release("garbage")["l4t"] is None


def test_nvpmodel_and_jetson_clocks():
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == {"mode": "MAXN", "id": 0}
    assert parse_nvpmodel("NV Power Mode: 15W\n2") == {"mode": "15W", "id": 2}
    c = parse_jetson_clocks(TX2_CLOCKS)
    assert c["machine"] == "quill" and c["cpu_online"] == 4 and c["cpu_max_khz"] == 2035200
    assert c["gpu"] == {"min": 114750000, "max": 1134750000, "current": 114750000}
    assert c["locked"] is False and c["power_mode"] == "MAXP_CORE_ARM"
    locked = TX2_CLOCKS.replace("MinFreq=345600", "MinFreq=2035200").replace("CurrentFreq=1881600", "CurrentFreq=2035200")
    locked = locked.replace("GPU MinFreq=114750000", "GPU MinFreq=1134750000").replace(
        "MaxFreq=1134750000 CurrentFreq=114750000", "MaxFreq=1134750000 CurrentFreq=1134750000"
    )
    assert parse_jetson_clocks(locked)["locked"] is True


def test_detect_this_machine():
    t = detect()
    assert t["name"] in TARGETS and t["profile"]["name"] == t["name"]
    assert t["cpu"]["logical_cores"] >= 1 and t["why"]
    if t["jetson"] is None and not t["gpus"]:
        assert t["kind"] == "cpu"
        assert "no NVIDIA GPU" in t["why"]  # says why it is not a GPU target


def test_detect_a_jetson_tree_without_its_tools(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023\n"
    )
    t = detect(root=tmp_path)
    assert t["name"] == "jetson-orin-nx" and t["kind"] == "jetson"
    assert (t["l4t"], t["jetpack"]) == ("35.4.1", "5.1.2")
    # nvpmodel / jetson_clocks are absent here: the state says so instead of guessing
    assert t["jetson"]["power_mode"]["mode"] is None and "nvpmodel" in t["jetson"]["power_mode"]["reason"]
    assert t["clocks"] == "dynamic" and t["jetson"]["clocks"]["locked"] is None
