"""The INT8 export and its validation as every other x86 host kind this machine can stand in for would run them.

oneDNN (OpenVINO's CPU plugin and PyTorch's CPU convolutions) reads ``ONEDNN_MAX_CPU_ISA`` once, when it loads, so
each kind runs in a child process with the variable set (``host_kind_child.py``). Each run is checked to have
really been that kind twice over: oneDNN's own log names the ISA of every INT8 convolution it created
(``ONEDNN_VERBOSE=profile_create``: ``jit_uni_int8:avx2``, ``brg_conv_fwd:avx512_core_vnni``, ...) and OpenVINO's
execution graph names the kernels (``jit_avx2_I8``, ``brgconv_avx512_I8``, ``brgconv_avx512_amx_I8``). Each kind
quantizes with its own host's scheme (``x86-avx2`` without VNNI, ``x86-vnni`` with it) and must hold the default
validation rule, whose extra-critical-FN limit is derived from the val split's own critical count.

This host's own kind runs for real in the rest of the suite; kinds newer than this CPU cannot be emulated and are
skipped with the reason (``tests/host_kinds.py``; the session header and summary list both).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from export_testlib import CRITICAL
from host_kinds import ISA_RANK, KINDS, RANK_OF_KIND, can_run, cpu_flags, native_kind

HERE = Path(__file__).parent
FLAGS = cpu_flags()
NATIVE = native_kind(FLAGS)
EMULATED = [k for k in KINDS if k is not NATIVE and can_run(k, FLAGS)]
_CONV = re.compile(r"onednn_verbose,.*?,primitive,create:[a-z_]+,cpu,convolution,([^,]+),[^,]*,src:([us]8)")


def _int8_conv_isas(log: str) -> list[str]:
    """The ISA suffix of every INT8 (u8/s8 input) convolution oneDNN created: only OpenVINO's INT8 IR has them."""
    return [impl.rsplit(":", 1)[-1] for impl, _ in _CONV.findall(log)]


@pytest.fixture(scope="module")
def runs(trained, tmp_path_factory):
    """Every emulated kind's child run, two at a time (each child uses one thread)."""
    import torch

    base = tmp_path_factory.mktemp("host_kinds")
    data, weights = base / "data.npz", base / "weights.pt"
    np.savez(data, train_x=trained.train_x[:32], test_x=trained.test_x, test_y=trained.test_y,
             val_x=trained.train_x[1000:1200], val_y=trained.train_y[1000:1200])
    torch.save(trained.model.state_dict(), weights)

    def run(kind):
        out = base / kind.name
        out.mkdir()
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": kind.isa_cap, "ONEDNN_VERBOSE": "profile_create",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, str(HERE / "host_kind_child.py"), str(data), str(weights), kind.target,
                               str(out)], env=env, capture_output=True, text=True, timeout=600)
        result = json.loads((out / "result.json").read_text()) if proc.returncode == 0 else None
        return kind.name, (proc, result)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, EMULATED))


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_int8_export_holds_on_each_host_kind(kind, runs, trained, request):
    if NATIVE is None:
        pytest.skip("not an x86 CPU with AVX2: no kind of this project's x86 hosts can be run here")
    if kind is NATIVE:
        pytest.skip(f"{kind.name} is this host's own kind: the rest of the suite runs it for real")
    if not can_run(kind, FLAGS):
        pytest.skip(f"not covered: this CPU ({NATIVE.name}) lacks {', '.join(sorted(kind.flags - FLAGS))}; oneDNN can"
                    " hold a CPU to an older ISA, never lift it to a newer one")
    proc, result = runs[kind.name]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 1. the emulation happened: oneDNN's INT8 convolutions ran at this kind's ISA, none above it
    isas = _int8_conv_isas(proc.stdout + proc.stderr)
    assert isas, "oneDNN logged no INT8 convolution: ONEDNN_VERBOSE=profile_create was not honoured"
    ranks = {ISA_RANK.get(i, 99) for i in isas}
    assert max(ranks) == RANK_OF_KIND[kind.name] == ISA_RANK[kind.onednn_isa], sorted(set(isas))
    # ... and OpenVINO's execution graph names that family's kernels
    kernels = result["exec_kernels"]
    assert kernels and any(kind.exec_family in k for k in kernels), kernels
    if kind.exec_family != "amx":
        assert not any("amx" in k for k in kernels), kernels
    if kind.exec_family == "avx2":
        assert not any("avx512" in k for k in kernels), kernels
    request.node.user_properties.append(("kernels", f"{sorted(set(isas))} / {sorted(set(kernels))}"))
    # 2. this kind's own INT8 scheme holds the default rule, decided on val with the test figures reported
    v = result["validation"]
    assert result["int8_scheme"]["target"] == kind.target
    assert ["openvino", "int8"] in result["models"] and v["decided_on"] == "val" and not v["failed"], v["failed"]
    r = v["models"]["openvino_int8/model.xml"]
    n_crit = int((trained.train_y[1000:1200] == CRITICAL).sum())
    assert r["val"]["critical_fn_limit"]["critical_samples"] == n_crit and not v.get("int8_fallback")
    assert r["passed"] and r["val"]["extra_critical_fn"] <= r["limits"]["extra_critical_fn"]
    assert r["limits"]["extra_critical_fn"] >= max(1, int(0.025 * n_crit))
    assert "extra_critical_fn" in r and "critical_fn" in r  # test split: reported
    # FP32 parity holds under every ISA (OpenVINO is pinned to f32 for validation)
    assert v["models"]["openvino/model.xml"]["max_abs_diff"] < 1e-3


def test_each_cpu_is_sorted_into_real_emulated_and_not_covered_kinds():
    from host_kinds import plan

    zen4 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"})
    p = plan(zen4)
    assert [k.name for k in p["real"]] == ["avx512-vnni"]
    assert [k.name for k in p["emulated"]] == ["avx2", "avx512"]
    assert [k.name for k in p["not_covered"]] == ["avx2-vnni", "amx"]  # oneDNN never lifts a CPU to a newer ISA
    assert [k.name for k in plan(frozenset({"avx2", "fma"}))["real"]] == ["avx2"]
    assert plan(frozenset())["real"] == [] and len(plan(frozenset())["not_covered"]) == len(KINDS)
    # the INT8 scheme each kind's host gets is edgeslim's own (hardware.int8_scheme), not a second copy of the rule
    from edgeslim.hardware import TARGETS, cpu_target

    for k in KINDS:
        assert k.target in TARGETS.names()
        assert cpu_target({"machine": "x86_64", "isa": {f: True for f in k.flags}}).name == k.target, k.name
