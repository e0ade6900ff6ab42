"""Power readers: the tegrastats parser on real lines from each Jetson family, RAPL on a sysfs-shaped tree
(wraparound, permissions), and the profiler's J per inference."""

from __future__ import annotations

import os

import pytest

from edgeslim.devices.power import RaplReader, Unavailable, auto_power, parse_tegrastats_line, summarize_tegrastats

# Real tegrastats lines, one per board family, with where each was published:
# AGX Orin 32GB (JetPack 6, 12 cores, no input rail: VDD_GPU_SOC / VDD_CPU_CV / VIN_SYS_5V0), first line of
# github.com/ZexinLi0w0/TetraRL tests/fixtures/tegra_sample.txt
AGX_ORIN = (
    "04-18-2026 09:08:28 RAM 4093/30596MB (lfb 7x4MB) SWAP 0/15298MB (cached 0MB) CPU [9%@2188,4%@2188,3%@2188,"
    "2%@2188,1%@2188,3%@2188,1%@2188,5%@2188,2%@2188,2%@2188,1%@2188,1%@2188] EMC_FREQ 2%@2133 GR3D_FREQ 0%@[1377] "
    "CPU@49C SOC2@48.062C SOC0@49.781C CV1@48.343C GPU@48.281C tj@49.781C SOC1@48.5C VDD_GPU_SOC 6429mW/6429mW "
    "VDD_CPU_CV 1235mW/1235mW VIN_SYS_5V0 4011mW/4011mW"
)
# Orin Nano 8GB (JetPack 6), github.com/henrygd/beszel agent GPU tests (TestParseJetsonData "orin nano"),
# taken from a user report in beszel issue #286
ORIN_NANO = (
    "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) CPU [1%@1420,2%@1420,"
    "0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C gpu@49.031C tj@50.25C "
    "soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW"
)
# Orin NX/Nano family under load (same rails as Orin NX: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC), beszel tests
# ("more valid data")
ORIN_LOADED = (
    "11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) CPU [15%@729,11%@729,14%@729,"
    "13%@729,11%@729,8%@729] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] NVDEC off NVJPG off NVJPG1 off VIC off OFA off "
    "APE 200 cpu@53.968C soc2@52.437C soc0@50.75C gpu@53.343C tj@53.968C soc1@51.656C VDD_IN 12479mW/12479mW "
    "VDD_CPU_GPU_CV 4667mW/4667mW VDD_SOC 2817mW/2817mW"
)
# Xavier NX, JetPack 4.4.1 (no mW units) and JetPack 5.1.2 (mW units), github.com/waggle-sensor/jetson-exporter
# tegrastats_test.go (TestParseTegraStatsXavierNXJetPack411 / ...512)
XAVIER_NX_JP4 = (
    "RAM 5246/7771MB (lfb 7x4MB) SWAP 983/20269MB (cached 280MB) CPU [47%@1420,23%@1420,32%@1420,22%@1420,"
    "31%@1420,96%@1420] EMC_FREQ 2%@1600 GR3D_FREQ 0%@1109 APE 150 MTS fg 1% bg 9% AO@29C GPU@31.5C PMIC@100C "
    "AUX@30C CPU@33.5C thermal@31.35C VDD_IN 6140/5510 VDD_CPU_GPU_CV 2706/2119 VDD_SOC 1074/1051"
)
XAVIER_NX_JP5 = (
    "07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) CPU [23%@1397,17%@1192,16%@1190,"
    "13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] VIC_FREQ 115 APE 150 AUX@45C CPU@46.5C "
    "thermal@45.6C AO@45C GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW"
)
# Jetson Nano (JetPack 4.x, POM_5V_* rails, no units), running detectnet: github.com/dusty-nv/jetson-inference
# issue #1206
NANO = (
    "RAM 1504/3956MB (lfb 331x4MB) IRAM 0/252kB(lfb 252kB) CPU [44%@1479,22%@1479,26%@1479,14%@1479] "
    "EMC_FREQ 7%@1600 GR3D_FREQ 86%@921 NVDEC 716 VIC_FREQ 0%@140 APE 25 PLL@39C CPU@44C PMIC@100C GPU@42.5C "
    "AO@47.5C thermal@42.5C POM_5V_IN 4531/3285 POM_5V_GPU 1113/213 POM_5V_CPU 539/722"
)


@pytest.mark.parametrize(
    "line, rails, total_mw, method, ram, gpu",
    [
        (AGX_ORIN, {"VDD_GPU_SOC": 6429, "VDD_CPU_CV": 1235, "VIN_SYS_5V0": 4011}, 6429 + 1235 + 4011, "sum of rails",
         (4093, 30596), 0),
        (ORIN_NANO, {"VDD_IN": 4824, "VDD_CPU_GPU_CV": 518, "VDD_SOC": 1475}, 4824, "input rail VDD_IN", (3452, 7620), 0),
        (ORIN_LOADED, {"VDD_IN": 12479, "VDD_CPU_GPU_CV": 4667, "VDD_SOC": 2817}, 12479, "input rail VDD_IN",
         (6185, 7620), 63),
        (XAVIER_NX_JP4, {"VDD_IN": 6140, "VDD_CPU_GPU_CV": 2706, "VDD_SOC": 1074}, 6140, "input rail VDD_IN",
         (5246, 7771), 0),
        (XAVIER_NX_JP5, {"VDD_IN": 2763, "VDD_CPU_GPU_CV": 650, "VDD_SOC": 650}, 2763, "input rail VDD_IN",
         (3168, 6851), 0),
        (NANO, {"POM_5V_IN": 4531, "POM_5V_GPU": 1113, "POM_5V_CPU": 539}, 4531, "input rail POM_5V_IN", (1504, 3956), 86),
    ],
    ids=["agx-orin", "orin-nano", "orin-loaded", "xavier-nx-jp4", "xavier-nx-jp5", "nano"],
)
def test_tegrastats_rails_of_every_family(line, rails, total_mw, method, ram, gpu):
    p = parse_tegrastats_line(line)
    assert {k: v["inst_mw"] for k, v in p["rails"].items()} == rails  # RAM/SWAP/IRAM/temps are not rails
    assert p["total_mw"] == total_mw and p["total_method"].startswith(method)
    assert (p["ram_used_mb"], p["ram_total_mb"]) == ram
    assert p["gpu_load_pct"] == gpu


def test_tegrastats_average_column_is_kept_apart():
    p = parse_tegrastats_line(XAVIER_NX_JP5)
    assert p["rails"]["VDD_IN"] == {"inst_mw": 2763, "avg_mw": 2846}


def test_tegrastats_window_mean_and_energy():
    s = summarize_tegrastats([ORIN_NANO, ORIN_LOADED, ""], seconds=2.0)
    assert s["available"] and s["samples"] == 2
    assert s["mean_w"] == pytest.approx((4.824 + 12.479) / 2)
    assert s["energy_j"] == pytest.approx(s["mean_w"] * 2.0)
    assert s["rails_w"]["VDD_CPU_GPU_CV"] == pytest.approx((0.518 + 4.667) / 2)
    # tegrastats run without root prints no rails: say so instead of reporting 0 W
    no_rails = summarize_tegrastats(["RAM 3452/7620MB (lfb 25x4MB) CPU [1%@1420] GR3D_FREQ 0%"], seconds=1.0)
    assert not no_rails["available"] and "root" in no_rails["reason"]


def _rapl_tree(root, energy_uj: int, max_uj: int = 262143328850):
    d = root / "intel-rapl:0"
    (d / "intel-rapl:0:0").mkdir(parents=True)  # the core sub-domain must not be double-counted
    (d / "name").write_text("package-0\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (d / "intel-rapl:0:0" / "energy_uj").write_text("5\n")
    return d


def test_rapl_energy_over_a_window_with_wraparound(tmp_path):
    d = _rapl_tree(tmp_path, energy_uj=1_000_000_000 - 2_000_000, max_uj=1_000_000_000)
    r = RaplReader(tmp_path)
    assert r.available and [p.name for p in r.domains] == ["intel-rapl:0"]
    r.start()
    (d / "energy_uj").write_text("3000000\n")  # wrapped: 2 J before the top + 3 J after
    out = r.stop()
    assert out["available"] and out["domains"] == ["package-0"]
    assert out["energy_j"] == pytest.approx(5.0)
    assert out["mean_w"] == pytest.approx(5.0 / out["seconds"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file, so a permission error cannot be produced")
def test_rapl_permission_denied_is_a_reason_not_a_crash(tmp_path):
    d = _rapl_tree(tmp_path, energy_uj=10)
    (d / "energy_uj").chmod(0)
    r = RaplReader(tmp_path)
    out = r.stop()
    assert not out["available"] and "root" in out["reason"]


def test_no_rapl_says_why(tmp_path):
    out = RaplReader(tmp_path / "absent").stop()
    assert out == {"available": False, "source": "rapl", "reason": out["reason"]}
    assert "does not exist" in out["reason"]


def test_auto_power_on_this_host_reports_or_explains():
    reader = auto_power()
    reader.start()
    out = reader.stop()
    if out["available"]:
        assert out["energy_j"] >= 0 and out["seconds"] > 0
    else:
        assert isinstance(reader, Unavailable) and "rapl" in out["reason"]


def test_profiler_reports_power_not_available_with_the_reason(spin):
    from edgeslim.devices.profiler import ProfileConfig, profile_backend

    b = spin(0.2)
    r = profile_backend(b, batch=1, cfg=ProfileConfig(warmup=0, iterations=5, seconds=0), power=Unavailable("no meter"))
    assert r["power"] == {"available": False, "source": "none", "reason": "no meter"}


def test_profiler_divides_energy_by_items(tmp_path, spin):
    """J per inference = window energy / (batch x calls): RAPL on a tree whose counter a thread advances."""
    import threading

    from edgeslim._io import atomic_write_text
    from edgeslim.devices.profiler import ProfileConfig, profile_backend

    d = _rapl_tree(tmp_path, energy_uj=0)
    reader = RaplReader(tmp_path)
    b = spin(0.5)
    stop = threading.Event()

    def tick():  # about 1 J per 10 ms (the spinning backend holds the GIL, so fewer ticks land)
        e = 0
        while not stop.wait(0.01):
            e += 1_000_000
            atomic_write_text(d / "energy_uj", f"{e}\n")  # sysfs reads never see a half-written value

    t = threading.Thread(target=tick)
    t.start()
    try:
        r = profile_backend(b, batch=2, cfg=ProfileConfig(warmup=0, iterations=50, seconds=0.2), power=reader)
    finally:
        stop.set()
        t.join()
    p = r["power"]
    items = 2 * r["measured"]["iterations"]
    assert p["available"] and p["energy_j"] > 0
    assert p["j_per_inference"] == pytest.approx(p["energy_j"] / items)
    assert p["mean_w"] == pytest.approx(p["energy_j"] / p["seconds"])
    assert p["seconds"] >= r["measured"]["seconds"]  # the reader brackets the measured window
