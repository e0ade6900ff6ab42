"""TensorRT's ``trtexec``: the command line of a run comparable with edgeslim's TensorRT backend, and its report parsed.

What trtexec measures (``samples/common/sampleInference.cpp`` / ``sampleReporting.cpp``, TensorRT 10 and 11):

* Queries run for ``--warmUp`` ms (not reported), then for at least ``--duration`` s and ``--iterations`` queries.
* ``Latency`` per query = H2D + GPU compute + D2H, timed with CUDA events (no host-side overhead);
  ``GPU Compute Time`` and ``Enqueue Time`` (host time of ``enqueueV3``) are reported apart.
* ``Throughput`` (qps) = queries / Total Host Walltime (first H2D of the window to the last D2H). With an
  explicit-batch engine a query is one inference of the whole input shape: items/s = qps x batch.
* ``median`` is the middle value (mean of the two middle ones for an even count); ``percentile(P%)`` is
  ``sorted[n - 1 - floor((1 - P/100) n)]``.

edgeslim's backend runs one inference at a time: copy in, ``execute_async_v3``, copy out, synchronise. trtexec's
defaults differ, so :func:`trtexec_bench_command` asks for the same thing: one stream (``--infStreams=1``),
transfers serialised with compute and no second query in flight (``--exposeDMA``), transfers included (TensorRT 11
``--includeDataTransfers``; on by default in 10), no CUDA graph (TensorRT 11 ``--noCudaGraph``; off by default in 10)
and a spinning wait like ``cudaStreamSynchronize`` (TensorRT 10 ``--useSpinWait``; the default in 11).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BackendError, ConfigError

#: Where TensorRT installs trtexec when it is not on PATH (Debian packages, JetPack).
TRTEXEC_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")

#: The per-query metrics of the performance summary, by their printed name.
METRICS = {"Latency": "latency_ms", "Enqueue Time": "enqueue_ms", "H2D Latency": "h2d_ms",
           "GPU Compute Time": "gpu_compute_ms", "D2H Latency": "d2h_ms"}


def find_trtexec() -> str | None:
    """``trtexec`` on PATH, else in TensorRT's usual install locations; None when absent."""
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_LOCATIONS if os.access(p, os.X_OK)), None)


def format_shape(shape: Sequence[int]) -> str:
    """``(1, 3, 224, 224)`` -> ``"1x3x224x224"``."""
    return "x".join(str(int(d)) for d in shape)


def trtexec_bench_command(
    engine: str | os.PathLike,
    *,
    tensorrt_major: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
    warmup_ms: float = 200.0,
    duration_s: float = 3.0,
    iterations: int = 10,
    device: int = 0,
    percentiles: Sequence[float] = (90, 95, 99),
    executable: str = "trtexec",
) -> list[str]:
    """The trtexec argv that measures an engine the way edgeslim's TensorRT backend runs it (see the module doc).

    Args:
        engine: the serialised engine (``--loadEngine``).
        tensorrt_major: the TensorRT major version of ``executable`` (10 or 11: the flags for the same behaviour
            differ).
        shapes: input name -> full shape for a dynamic-shape engine (``--shapes``); None for a static engine.
        warmup_ms: ``--warmUp`` (trtexec's default 200 ms).
        duration_s: ``--duration``, the minimum measured wall time.
        iterations: ``--iterations``, the minimum measured queries.
        device: CUDA device (``--device``).
        percentiles: ``--percentile`` list.
        executable: the trtexec to run (:func:`find_trtexec`).

    Raises:
        ConfigError: TensorRT older than 10, or a non-positive window.
    """
    if tensorrt_major < 10:
        raise ConfigError(f"trtexec of TensorRT {tensorrt_major} is not supported; edgeslim needs TensorRT 10 or newer")
    if duration_s <= 0 or iterations < 1 or warmup_ms < 0:
        raise ConfigError(
            f"trtexec window needs duration_s > 0, iterations >= 1 and warmup_ms >= 0; got {duration_s}, {iterations},"
            f" {warmup_ms}"
        )
    cmd = [executable, f"--loadEngine={engine}", f"--device={int(device)}"]
    if shapes:
        cmd.append("--shapes=" + ",".join(f"{name}:{format_shape(s)}" for name, s in shapes.items()))
    cmd += [f"--warmUp={warmup_ms:g}", f"--duration={duration_s:g}", f"--iterations={int(iterations)}",
            "--infStreams=1", "--exposeDMA", "--percentile=" + ",".join(f"{p:g}" for p in percentiles)]
    if tensorrt_major >= 11:
        cmd += ["--includeDataTransfers", "--noCudaGraph"]  # 11 defaults: no transfers, CUDA graph, spin wait
    else:
        cmd += ["--useSpinWait"]  # 10 defaults: transfers, no CUDA graph, blocking wait
    return cmd


#: The inference options trtexec must echo back for :func:`trtexec_bench_command`'s run to be sequential.
EXPECTED_OPTIONS = {"Inference Streams": "1", "ExposeDMA": "Enabled", "Data transfers": "Enabled",
                    "Spin-wait": "Enabled", "CUDA Graph": "Disabled", "Multithreading": "Disabled"}

_PREFIX = r"^(?:\[[^\]\n]*\] )?"  # "[11/22/2026-02:40:01] " timestamp of trtexec's logger
_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan))"
_STAT = re.compile(rf"(min|max|mean|median|percentile\(([\d.]+)%\)) = {_NUM} ms")


def _stats(body: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, pct, value in _STAT.findall(body):
        out[f"p{float(pct):g}" if pct else key] = float(value)
    return out


def tensorrt_version(code: int) -> str:
    """``NV_TENSORRT_VERSION`` as trtexec prints it (``100300``; 8.x: ``8601``) -> ``"10.3.0"``."""
    if code >= 10000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def parse_trtexec(text: str) -> dict[str, Any]:
    """The figures and settings of one trtexec run (its console output, stdout and stderr together).

    Returns:
        ``version`` (``"10.3.0"``, from the ``&&&& RUNNING`` line), ``passed``, ``throughput_qps``, one dict of
        ``min`` / ``max`` / ``mean`` / ``median`` / ``p90`` ... per metric in :data:`METRICS` (``latency_ms``,
        ``gpu_compute_ms``, ...), ``walltime_s`` and ``gpu_compute_total_s``, ``warmup_queries`` / ``queries`` /
        ``window_s`` from the prolog, ``options`` (the echoed ``=== Inference Options ===``), ``shapes``
        (input -> shape string) and ``warnings`` (the ``[W]`` lines after the summary).

    Raises:
        BackendError: no performance summary in ``text`` (a failed run or a build-only run), naming the last lines.
    """
    if "=== Performance summary ===" not in text:
        failed = "&&&& FAILED" in text
        raise BackendError(
            ("trtexec failed" if failed else "trtexec output has no '=== Performance summary ==='")
            + f" (was inference skipped, or did the engine fail to load?):\n{text[-2000:]}"
        )
    out: dict[str, Any] = {"version": None, "passed": "&&&& PASSED" in text}
    m = re.search(r"&&&& RUNNING TensorRT\.trtexec \[TensorRT v(\d+)\]", text)
    if m:
        out["version"] = tensorrt_version(int(m.group(1)))
    summary = text[text.index("=== Performance summary ==="):]
    m = re.search(rf"{_PREFIX}\[I\] Throughput: {_NUM} qps", summary, re.M)
    if m is None:
        raise BackendError(f"trtexec performance summary has no 'Throughput: ... qps' line:\n{summary[:2000]}")
    out["throughput_qps"] = float(m.group(1))
    for name, key in METRICS.items():
        m = re.search(rf"{_PREFIX}\[I\] {re.escape(name)}: (.*)$", summary, re.M)
        out[key] = _stats(m.group(1)) if m else None
    if not out["latency_ms"] or "median" not in out["latency_ms"]:
        raise BackendError(f"trtexec performance summary has no 'Latency: ... median = ...' line:\n{summary[:2000]}")
    for label, key in (("Total Host Walltime", "walltime_s"), ("Total GPU Compute Time", "gpu_compute_total_s")):
        m = re.search(rf"{label}: {_NUM} s", summary)
        out[key] = float(m.group(1)) if m else None
    m = re.search(rf"Warmup completed (\d+) queries over {_NUM} ms", text)
    out["warmup_queries"] = int(m.group(1)) if m else None
    m = re.search(rf"Timing trace has (\d+) queries over {_NUM} s", text)
    out["queries"], out["window_s"] = (int(m.group(1)), float(m.group(2))) if m else (None, None)
    out["options"] = _section(text, "=== Inference Options ===")
    out["shapes"] = dict(re.findall(r"Input inference shape ?: ([^=\s]+)=(\S+)", text))
    out["warnings"] = [w.strip() for w in re.findall(rf"{_PREFIX}\[W\] (.*)$", summary, re.M)]
    return out


def _section(text: str, header: str) -> dict[str, str]:
    """``Key: value`` lines of one ``=== ... ===`` block of trtexec's option echo."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.rstrip().endswith(header)), None)
    if start is None:
        return {}
    out: dict[str, str] = {}
    for ln in lines[start + 1:]:
        body = re.sub(rf"{_PREFIX}\[I\] ?", "", ln, count=1)
        if body.startswith("==="):
            break
        key, sep, value = body.partition(": ")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def option_mismatches(parsed: Mapping[str, Any], expected: Mapping[str, str] = EXPECTED_OPTIONS) -> dict[str, tuple]:
    """``{option: (expected, echoed)}`` for every expected inference option trtexec reported differently."""
    echoed = parsed.get("options") or {}
    return {k: (v, echoed.get(k)) for k, v in expected.items() if echoed.get(k) != v}


def engine_path(path: str | os.PathLike) -> Path:
    """An existing engine file, or :class:`ConfigError` naming how to make one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"TensorRT engine {p} does not exist; build one on this GPU with"
            " `trtexec --onnx=model.onnx --saveEngine=model.plan` or the artifact's tensorrt/build.sh"
        )
    return p
