"""OpenVINO's ``benchmark_app``: the command line of a run comparable with edgeslim's profiler, and its report parsed.

What benchmark_app measures (``openvino/tools/benchmark/benchmark.py`` and ``main.py``, OpenVINO 2026.4):

* ``-api sync``: one request, ``infer()`` in a loop for ``-t`` seconds; latency = each request's own
  ``InferRequest.latency``; throughput = batch x iterations / wall time of the loop.
* ``-api async``: an ``AsyncInferQueue`` of ``-nireq`` requests (default: ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``),
  the next idle request started until ``-t`` seconds have passed, rounded up to a multiple of the requests, then
  ``wait_all``; throughput = batch x iterations / wall time including that wait.
* "Median" is the lower median (``sorted[ceil(n / 2) - 1]``); one "first inference" runs before the loop and is
  reported apart; nothing else is a warm-up. With static shapes the inputs are filled once ("inference only").
* Compile settings come from ``-load_config`` (a JSON ``{"CPU": {property: value}}``) when no ``-hint`` /
  ``-nstreams`` / ``-nthreads`` flag overrides them; step 8 prints every property of the compiled model, which
  :func:`parse_benchmark_app` returns so a caller can check both tools ran with the same settings.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import BackendError, ConfigError

_API = ("sync", "async")


def device_config(
    *, hint: str, threads: int | None = None, streams: int | str | None = None, precision: str | None = "f32",
    device: str = "CPU",
) -> dict[str, dict[str, str]]:
    """The ``-load_config`` content for these compile settings: the same properties edgeslim's openvino backend
    sets for ``hint`` / ``threads`` / ``streams`` / ``inference_precision``.

    Args:
        hint: ``LATENCY`` or ``THROUGHPUT`` (``PERFORMANCE_HINT``).
        threads: ``INFERENCE_NUM_THREADS`` (None: the plugin's choice).
        streams: ``NUM_STREAMS`` (None: what the hint derives).
        precision: ``INFERENCE_PRECISION_HINT`` (None: the plugin's choice, bf16 on AMX CPUs).
        device: the OpenVINO device the properties are for.
    """
    cfg = {"PERFORMANCE_HINT": str(hint).upper()}
    if streams is not None:
        cfg["NUM_STREAMS"] = str(streams).upper()
    if threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = str(int(threads))
    if precision is not None:
        cfg["INFERENCE_PRECISION_HINT"] = str(precision).lower()
    return {device.upper(): cfg}


def benchmark_app_command(
    model: str,
    *,
    api: str,
    seconds: int,
    shape: Sequence[int],
    config_file: str | None = None,
    requests: int | None = None,
    device: str = "CPU",
    executable: str = "benchmark_app",
) -> list[str]:
    """The benchmark_app argv for one measurement.

    Args:
        model: the IR (``.xml``).
        api: ``sync`` (latency: one request at a time) or ``async`` (throughput: a queue of requests).
        seconds: measured window (``-t``; benchmark_app takes whole seconds).
        shape: the full input shape, batch first (``-shape``).
        config_file: a ``-load_config`` JSON from :func:`device_config`.
        requests: ``-nireq`` (async only). Leave it None to let the queue take ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``
            like edgeslim does: the flag also sets ``PERFORMANCE_HINT_NUM_REQUESTS``, a compile property edgeslim
            does not set.
        device: ``-d``.
        executable: the benchmark_app to run.

    Raises:
        ConfigError: an unknown api, a window under one second, or requests with the sync api.
    """
    if api not in _API:
        raise ConfigError(f"benchmark_app api must be one of {_API}, got {api!r}")
    if int(seconds) != seconds or seconds < 1:
        raise ConfigError(f"benchmark_app -t takes whole seconds >= 1, got {seconds!r}")
    if requests is not None and api == "sync":
        raise ConfigError("-nireq applies to -api async only; the sync api runs one request")
    cmd = [executable, "-m", str(model), "-d", device, "-api", api, "-t", str(int(seconds)),
           "-shape", "[" + ",".join(str(int(d)) for d in shape) + "]",
           # f32 input: otherwise benchmark_app feeds a 4-D input as u8 images through a conversion step, which is
           # not the graph edgeslim runs
           "-ip", "f32"]
    if config_file:
        cmd += ["-load_config", str(config_file)]
    if requests is not None:
        cmd += ["-nireq", str(int(requests))]
    return cmd


_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_LAT = re.compile(rf"^\[ INFO \]\s+(Median|Average|Min|Max):\s+{_NUM} (ms|us)\s*$", re.M)
_STEP10 = re.compile(r"Measuring performance \(Start inference (sync|async)hronously(?:, (\d+) inference requests)?")
_PROP = re.compile(r"^\[ INFO \]   ([A-Z][A-Z0-9_]*): (.*?)\s*$")


def parse_benchmark_app(text: str) -> dict[str, Any]:
    """The figures and settings of one benchmark_app report (its console output).

    Returns:
        ``api``, ``requests`` (1 for sync), ``count`` (iterations), ``duration_ms``, ``latency_ms`` (``median``,
        ``mean``, ``min``, ``max``, converted from microseconds where benchmark_app printed them),
        ``throughput_fps``, ``first_inference_ms`` (None with ``-no_warmup``), ``version`` and ``properties`` (the
        compiled model's properties from step 8, as printed).

    Raises:
        BackendError: the text is not a finished benchmark_app report (the missing line is named).
    """

    def need(pattern: str, what: str) -> re.Match[str]:
        m = re.search(pattern, text, re.M)
        if m is None:
            raise BackendError(f"benchmark_app output has no {what} line; is it a finished run?\n{text[-2000:]}")
        return m

    step10 = _STEP10.search(text)
    if step10 is None:
        raise BackendError(f"benchmark_app output has no 'Measuring performance' step; is it a finished run?\n"
                            f"{text[-2000:]}")
    latency = {}
    for name, value, unit in _LAT.findall(text):
        key = {"Median": "median", "Average": "mean", "Min": "min", "Max": "max"}[name]
        latency.setdefault(key, float(value) / (1000.0 if unit == "us" else 1.0))
    if "median" not in latency:
        raise BackendError(f"benchmark_app output has no latency 'Median' line\n{text[-2000:]}")
    first = re.search(rf"First inference took {_NUM} ms", text)
    version = re.search(r"^\[ INFO \] Build \.+ (\S+)", text, re.M)
    return {
        "api": step10.group(1),
        "requests": int(step10.group(2)) if step10.group(2) else 1,
        "count": int(need(r"Count:\s+(\d+) iterations", "'Count'").group(1)),
        "duration_ms": float(need(rf"Duration:\s+{_NUM} ms", "'Duration'").group(1)),
        "latency_ms": latency,
        "throughput_fps": float(need(rf"Throughput:\s+{_NUM} FPS", "'Throughput'").group(1)),
        "first_inference_ms": float(first.group(1)) if first else None,
        "version": version.group(1) if version else None,
        "properties": _properties(text),
    }


def _properties(text: str) -> dict[str, str]:
    """The ``Model:`` block of step 8: ``KEY: value`` lines as printed (nested device properties are skipped)."""
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.rstrip().endswith("] Model:"))
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    for ln in lines[start + 1:]:
        if ln.startswith("[Step"):
            break
        m = _PROP.match(ln)
        if m:
            out[m.group(1)] = m.group(2)
    return out
