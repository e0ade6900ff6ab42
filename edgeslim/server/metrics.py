"""``GET /metrics``: Prometheus text with Triton's metric names, process/system memory and optional power.

The numbers come from the same :class:`~edgeslim.server.repository.ModelStats` that ``/v2/models/{m}/stats``
reports, through a custom collector, so the two never disagree. A custom collector (rather than
``prometheus_client.Counter``) is used because Counter renames samples to ``*_total``, and Triton's dashboards
expect ``nv_inference_request_success`` as is; :func:`render` also undoes the ``_total`` that
``generate_latest`` adds to counter HELP/TYPE lines, so the text matches what Triton itself exposes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from fastapi import APIRouter, Request, Response

#: A power reader for the ``/metrics`` hook: returns instantaneous watts per rail, e.g. ``{"VDD_IN": 4.2}``;
#: an empty dict when the device has no reader. Issue 5's readers live in :mod:`edgeslim.devices`.
PowerReader = Callable[[], dict[str, float]]

_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", lambda s: s.fail.count),
    ("nv_inference_count", "Number of inferences performed (items, not requests)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (batches)", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: s.success.ns // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns // 1000),
)


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * 1024
    except OSError:  # not Linux: the memory gauges are simply absent
        pass
    return out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class TritonCollector:
    """Yields Triton-named metric families from a repository's statistics at scrape time."""

    def __init__(self, repository: Any, power: PowerReader | None = None) -> None:
        self.repository = repository
        self.power = power

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric

        models = list(self.repository.models.values())
        for name, doc, get in _COUNTERS:
            m = Metric(name, doc, "counter")
            for model in models:
                m.add_sample(name, {"model": model.name, "version": model.version}, float(get(model.stats)))
            yield m
        m = Metric("nv_inference_pending_request_count", "Instantaneous number of pending requests awaiting execution",
                   "gauge")
        for model in models:
            m.add_sample("nv_inference_pending_request_count", {"model": model.name, "version": model.version},
                         float(model.batcher.pending))
        yield m

        mem = _meminfo()
        if "MemTotal" in mem:
            used = mem["MemTotal"] - mem.get("MemAvailable", mem.get("MemFree", 0))
            for name, doc, value in (
                ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", mem["MemTotal"]),
                ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", used),
            ):
                g = Metric(name, doc, "gauge")
                g.add_sample(name, {}, float(value))
                yield g
        rss = _rss_bytes()
        if rss is not None:
            g = Metric("edgeslim_server_resident_memory_bytes", "Resident memory of the server process, in bytes",
                       "gauge")
            g.add_sample("edgeslim_server_resident_memory_bytes", {}, float(rss))
            yield g

        if self.power is not None:
            try:
                rails = self.power() or {}
            except Exception:  # a flaky sensor must not break the scrape; the gauge is just absent this time
                rails = {}
            if rails:
                g = Metric("edgeslim_power_watts", "Instantaneous power draw per rail, in watts", "gauge")
                for rail, watts in sorted(rails.items()):
                    g.add_sample("edgeslim_power_watts", {"rail": str(rail)}, float(watts))
                yield g


class WindowedPower:
    """Adapts an issue-5 reader (``start()`` / ``stop() -> {"available", "mean_w", ...}``, see
    :mod:`edgeslim.devices.power`) to instantaneous-style gauges: each scrape reports the mean watts since the
    previous scrape, then opens the next window. Unavailable readers report nothing (the gauge is absent).
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._started = False

    def __call__(self) -> dict[str, float]:
        if not self._started:
            self.reader.start()
            self._started = True
            return {}
        result = self.reader.stop()
        self.reader.start()
        if not result.get("available") or result.get("mean_w") is None:
            return {}
        return {str(result.get("source", getattr(self.reader, "name", "device"))): float(result["mean_w"])}


def auto_power_reader() -> PowerReader | None:
    """The host's best power reader (tegrastats, NVML, RAPL) as a scrape-windowed gauge source, or None."""
    try:
        from ..devices.power import auto_power
    except ImportError:  # devices without power support: no gauges
        return None
    reader = auto_power()
    return WindowedPower(reader) if getattr(reader, "name", "none") != "none" else None


def build_registry(repository: Any, power: PowerReader | None = None) -> Any:
    """A private Prometheus registry (so several apps in one process do not collide)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TritonCollector(repository, power))
    return registry


def render(registry: Any) -> bytes:
    """The registry in Prometheus text format, with Triton's counter names on the HELP/TYPE lines."""
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode("utf-8")
    for name, _, _ in _COUNTERS:
        text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ").replace(
            f"# TYPE {name}_total counter", f"# TYPE {name} counter"
        )
    return text.encode("utf-8")


router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Triton metric names (labels `model`, `version`), CPU memory, server RSS and power where available.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format 0.0.4"}},
)
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.concurrency import run_in_threadpool

    # In a thread: a power reader may block briefly (tegrastats window), and the loop must keep serving.
    return Response(await run_in_threadpool(render, request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)
