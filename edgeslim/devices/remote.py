"""Remote profiling: measure a model behind an edgeslim server (or any KServe v2 / Triton server) over HTTP.

Run from a laptop against a Jetson: the client times each request end to end (serialisation, HTTP, queue,
compute), and the server's statistics extension (``/v2/models/{m}/stats``) gives the compute and queue time it
spent on the same requests, so network + protocol overhead is reported apart from compute.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError, ConfigError, require
from .profiler import ProfileConfig, _kept_samples, _timed_loop, latency_stats

_DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
           "INT32": np.int32, "INT64": np.int64}


def _split_url(url: str) -> tuple[str, bool]:
    url = url.strip().rstrip("/")
    ssl = url.startswith("https://")
    for prefix in ("http://", "https://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    if not url or "/" in url:
        raise ConfigError(f"server URL '{url}' must be host:port (optionally with http:// or https://), no path")
    return url, ssl


def _stats(client: Any, model: str, headers: dict[str, str]) -> dict[str, int] | None:
    try:
        s = client.get_inference_statistics(model_name=model, headers=headers)
        st = (s.get("model_stats") or [{}])[0]
        inf = st.get("inference_stats") or {}
        return {
            "requests": int((inf.get("success") or {}).get("count", 0)),
            "compute_ns": int((inf.get("compute_infer") or {}).get("ns", 0)),
            "queue_ns": int((inf.get("queue") or {}).get("ns", 0)),
            "executions": int(st.get("execution_count", 0)),
        }
    except Exception:  # the statistics extension is optional in KServe v2
        return None


def profile_remote(
    url: str,
    model: str,
    *,
    cfg: ProfileConfig | None = None,
    batch: int = 1,
    input_shape: Sequence[int] | None = None,
    token: str | None = None,
    binary: bool = True,
    concurrency: int = 1,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Profile ``model`` served at ``url`` over the KServe v2 HTTP protocol with ``tritonclient.http``.

    Args:
        url: ``host:port`` (or ``http://host:port`` / ``https://host:port``).
        model: the served model's name.
        cfg: warm-up and window lengths (as for local profiling).
        batch: items per request.
        input_shape: full input shape when the model's non-batch dimensions are dynamic.
        token: bearer token for an edgeslim server started with one.
        binary: send and receive tensors with the binary extension (tritonclient's default) instead of JSON.
        concurrency: requests in flight for the throughput measurement (1: sequential only).
        timeout_s: connection and network timeout.

    Returns:
        ``{"url", "model", "server", "batch", "input_shape", "first_inference_ms", "warmup", "measured",
        "latency_ms" (client end to end), "server_ms" (mean compute and queue per request from the server's
        statistics, when it has them), "overhead_ms" (end to end minus server time), "throughput", ...}``.

    Raises:
        BackendError: the server is unreachable, not live, or the model is not ready / unknown.
    """
    http = require("tritonclient.http", purpose="remote profiling (pip install 'tritonclient[http]')")
    cfg = cfg or ProfileConfig()
    if batch < 1 or concurrency < 1:
        raise ConfigError(f"batch and concurrency must be >= 1, got batch={batch}, concurrency={concurrency}")
    host, ssl = _split_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        client = http.InferenceServerClient(
            url=host, ssl=ssl, concurrency=max(1, concurrency), connection_timeout=timeout_s, network_timeout=timeout_s
        )
        if not client.is_server_live(headers=headers):
            raise BackendError(f"the server at {url} is not live")
        if not client.is_model_ready(model, headers=headers):
            raise BackendError(f"model '{model}' is not ready on {url}")
        server_meta = client.get_server_metadata(headers=headers)
        meta = client.get_model_metadata(model, headers=headers)
    except BackendError:
        raise
    except Exception as exc:  # InferenceServerException, connection refused, ...
        raise BackendError(f"cannot reach KServe v2 server {url} for model '{model}': {exc}") from exc
    inputs = meta.get("inputs") or []
    if len(inputs) != 1:
        raise ConfigError(f"remote profiling feeds models with one input; '{model}' has {len(inputs)}")
    spec = inputs[0]
    dtype = _DTYPES.get(spec["datatype"])
    if dtype is None:
        raise ConfigError(f"input datatype {spec['datatype']} is not supported for remote profiling")
    shape = [int(d) for d in (input_shape or spec["shape"])]
    shape[0] = batch
    if any(d < 0 for d in shape):
        raise ConfigError(f"'{model}' input has dynamic dimensions {spec['shape']}; pass input_shape=(N, C, H, W)")
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    outputs = [http.InferRequestedOutput(o["name"], binary_data=binary) for o in meta.get("outputs") or []]

    def make_inputs() -> list[Any]:
        inp = http.InferInput(spec["name"], shape, spec["datatype"])
        inp.set_data_from_numpy(x, binary_data=binary)
        return [inp]

    req_inputs = make_inputs()

    def call() -> None:
        client.infer(model, req_inputs, outputs=outputs, headers=headers)

    try:
        t0 = time.perf_counter_ns()
        call()
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        warm = {"iterations": 0, "seconds": 0.0}
        if cfg.warmup or cfg.warmup_seconds:
            ws, wall = _timed_loop(call, max(1, cfg.warmup), cfg.warmup_seconds)
            warm = {"iterations": len(ws), "seconds": wall / 1e9}
        before = _stats(client, model, headers)
        samples, wall = _timed_loop(call, cfg.iterations, cfg.seconds)
        after = _stats(client, model, headers)
        result: dict[str, Any] = {
            "url": url,
            "model": model,
            "server": {"name": server_meta.get("name"), "version": server_meta.get("version"),
                       "platform": meta.get("platform"), "versions": meta.get("versions")},
            "protocol": "KServe v2 HTTP" + (" (binary tensors)" if binary else " (JSON tensors)"),
            "batch": batch,
            "input_shape": shape,
            "first_inference_ms": first_ms,
            "warmup": warm,
            "measured": {"iterations": len(samples), "seconds": wall / 1e9},
            "latency_ms": latency_stats(samples),
            "samples_ms": _kept_samples(samples),
            "throughput": {"mode": "sequential", "items_per_s": batch * len(samples) / (wall / 1e9), "requests": 1},
        }
        if before and after and after["requests"] > before["requests"]:
            n = after["requests"] - before["requests"]
            compute = (after["compute_ns"] - before["compute_ns"]) / n / 1e6
            queue = (after["queue_ns"] - before["queue_ns"]) / n / 1e6
            result["server_ms"] = {"compute_mean": compute, "queue_mean": queue, "requests": n}
            result["overhead_ms"] = {"mean": result["latency_ms"]["mean"] - compute - queue}
        else:
            result["server_ms"] = None
            result["server_ms_reason"] = "the server has no statistics extension (GET /v2/models/{m}/stats)"
        if concurrency > 1:
            result["throughput_mode"] = _concurrent(client, model, make_inputs, outputs, headers, batch, cfg,
                                                    concurrency)
    except (BackendError, ConfigError):
        raise
    except Exception as exc:
        raise BackendError(f"remote inference on {url} model '{model}' failed: {exc}") from exc
    finally:
        client.close()
    return result


def _concurrent(client: Any, model: str, make_inputs: Any, outputs: list[Any], headers: dict[str, str], batch: int,
                cfg: ProfileConfig, concurrency: int) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight with ``async_infer`` until the window's minimums are met."""
    reqs = [make_inputs() for _ in range(concurrency)]
    done = 0
    start = time.perf_counter_ns()
    pending = [client.async_infer(model, reqs[i], outputs=outputs, headers=headers) for i in range(concurrency)]
    while True:
        for i, p in enumerate(pending):
            p.get_result()
            done += 1
            pending[i] = client.async_infer(model, reqs[i], outputs=outputs, headers=headers)
        wall = time.perf_counter_ns() - start
        if done >= cfg.iterations and wall >= cfg.seconds * 1e9:
            break
    for p in pending:
        p.get_result()
        done += 1
    wall = time.perf_counter_ns() - start
    return {"mode": "concurrent", "requests": concurrency, "inferences": done, "seconds": wall / 1e9,
            "items_per_s": batch * done / (wall / 1e9)}
