"""Bad targets fail before any work, with the fix in the message."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from edgeslim.errors import BackendError, ConfigError, UnknownNameError
from edgeslim.search.target import apply_isa, resolve_target


def test_unknown_target_says_did_you_mean():
    with pytest.raises(UnknownNameError, match="Did you mean 'jetson-orin-nx'"):
        resolve_target("jetson-orin-nxx")


def test_a_named_board_that_is_not_this_host_is_refused():
    with pytest.raises(ConfigError, match="jetson-agx-orin.*is not this host.*run the search there"):
        resolve_target("jetson-agx-orin")


def test_remote_target_that_does_not_answer():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=f"127.0.0.1:{port} does not answer.*edgeslim serve"):
        resolve_target(f"http://127.0.0.1:{port}", timeout_s=2)
    assert time.perf_counter() - t0 < 10


def test_isa_names_and_late_cap():
    with pytest.raises(ConfigError, match="Did you mean 'sse41'"):
        apply_isa("sse4")
    import openvino  # noqa: F401  (loaded: oneDNN has read its ISA already)

    with pytest.raises(ConfigError, match="already loaded"):
        apply_isa("avx")


def test_isa_cap_reaches_openvino_kernels():
    """ONEDNN_MAX_CPU_ISA=SSE41 makes OpenVINO's CPU plugin dispatch SSE4.x kernels (read off its own counters)."""
    code = (
        "from edgeslim.search.target import apply_isa; apply_isa('sse41');"
        "from edgeslim.recipe import parse_recipe; from edgeslim.search.latency import measure_architecture;"
        "b = parse_recipe({'model': {'source': 'tiny'}, 'data': {'image_size': 16}});"
        "m = measure_architecture(b, {'prune': 'structured:0', 'precision': 'fp32', 'image_size': 16}, "
        "backend='openvino', num_classes=10, iterations=5, seconds=0, threads=1);"
        "print(sorted({r['exec'] for r in m.layers if r['kind'] in ('conv', 'dw', 'pw')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kernels = out.stdout.strip().splitlines()[-1]
    assert "sse" in kernels and "avx2" not in kernels, kernels


def test_target_names_follow_edgeslim_hardware():
    """auto is this host's hardware target (the recipe's INT8 scheme); an x86 host also answers to x86-cpu."""
    from edgeslim.hardware import cpu_target, host_target

    here = resolve_target("auto")
    assert here.name == host_target().name
    cpu = cpu_target().name
    if cpu.startswith("x86-"):
        generic = resolve_target("x86-cpu")
        assert generic.name == "x86-cpu" and generic.isa is None
        avx2 = resolve_target("x86-avx2")  # a VNNI host is held below VNNI to run as one
        assert avx2.name == "x86-avx2" and avx2.isa == (None if cpu == "x86-avx2" else "avx2")
        # capped below VNNI, this host is an AVX2 target whatever its own ISA
        assert resolve_target("auto", isa="sse41").name == ("x86-avx2" if here.kind == "cpu" else here.name)
        other = "x86-vnni" if cpu == "x86-avx2" else None
        if other:
            with pytest.raises(ConfigError, match="x86-vnni.*is not this host.*x86-avx2"):
                resolve_target(other)


def test_missing_optuna_names_the_search_extra(monkeypatch):
    from edgeslim.errors import MissingDependencyError
    from edgeslim.search.study import _optuna

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"edgeslim\[search\]"):
        _optuna()
