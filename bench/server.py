"""Server overhead benchmark: KServe v2 binary requests against the in-process runtime, on the same model.

Measures latency p50/p99 and throughput at concurrency 1, 8 and 32, with and without dynamic batching, against the
in-process runtime (``edgeslim.runtime.load``: batch-1 latency, and Offline throughput at the max batch) loaded with
the same backend, options and number of inference threads as the server. Every server cell is measured right after
an in-process window, for ``--rounds`` rounds, so the ratios compare neighbours in time on a shared machine.

Three CPU configurations (``--configs``), because on a small machine the load generator competes with the server:

* ``shared``: server, clients and the in-process reference on every core (what one box serving its own clients
  sees; the clients' CPU time is taken from the server).
* ``pinned``: the whole server process and the in-process reference on ``--server-cpus``, with as many inference
  threads as those cores; the load generator on ``--client-cpus`` (``os.sched_setaffinity``). Everything the server
  does (HTTP, parsing, batching, inference) on the cores the in-process reference has for inference alone, with the
  load generator out of the way, as with clients on other machines.
* ``split``: the server's inference (``ServerSettings.inference_cpus``) and the in-process reference on
  ``--server-cpus``; the server's HTTP event loop and the load generator on ``--client-cpus``. Whether the server
  keeps the model as busy as the in-process loop does when its request handling has a core of its own.

Seven clients (``--client``): ``tritonclient`` (the standard ``tritonclient.http``, one thread per concurrent
request), ``tritonclient-shm`` (the same with input and output in system shared memory, as an application on the
device can send them; the server runs with ``shared_memory=True``), ``tritonclient-grpc`` (``tritonclient.grpc``
against the same server's gRPC port, raw tensor contents: gRPC's latency beside REST's in the same run),
``perf_analyzer`` and ``perf_analyzer-grpc`` (Triton's C++ load generator, binary tensors over HTTP, or gRPC;
``bench/get_perf_analyzer.sh`` fetches it; not in the default set), ``light`` (one asyncio
process, N keep-alive connections sending a pre-encoded binary request; its first answer on every connection is
checked against the in-process output) and ``light-shm`` (the same with the image copied into a shared-memory region
before every request, and only the JSON header on the socket). Each client's own CPU time per request is reported
beside the server's: on a small machine it comes out of the server's cores.

    python bench/server.py                          # timm mobilenetv3_small_100 (random weights), 224x224, ORT
    python bench/server.py --backend openvino       # the same model as an OpenVINO IR
    python bench/server.py --artifact path/to/art   # an existing artifact
    python bench/server.py --model tinynet          # the 16x16 test model (measures pure protocol overhead)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

MODEL = "bench"





def _load_state(concurrency: int):
    """What the client threads of one load share: latencies, an error count, their lock, the start barrier (the
    threads and the caller) and the stop time the caller sets once they are all ready."""
    lat: list[float] = []
    return lat, [0], threading.Lock(), threading.Barrier(concurrency + 1), [time.perf_counter() + 3600]

def _run_workers(worker, concurrency, start, stop_at, seconds) -> None:
    """Start ``concurrency`` client threads, release them together and stop them ``seconds`` later."""
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    stop_at[0] = time.perf_counter() + seconds
    for t in threads:
        t.join()

def _timed_calls(call, expect, start, stop_at, lat, errors, lock) -> None:
    """One client thread's measurement: check the answer once, warm up, then time calls until ``stop_at[0]``
    (the HTTP and gRPC tritonclient workers share it; failures are counted, not raised)."""
    np.testing.assert_allclose(call(), expect, rtol=1e-4, atol=1e-4)  # measure right answers only
    call()
    mine, bad = [], 0
    start.wait()
    while time.perf_counter() < stop_at[0]:
        t = time.perf_counter()
        try:
            call()
            mine.append((time.perf_counter() - t) * 1e3)
        except Exception:  # noqa: BLE001 - counted and reported
            bad += 1
    with lock:
        lat.extend(mine)
        errors[0] += bad

def build_artifact(model_name: str, directory: Path) -> Path:
    """A random-weight timm model (or TinyNet) as ONNX plus an OpenVINO IR converted from it."""
    import torch

    from edgeslim.artifact import Manifest, ModelFile, Preprocessing, TensorInfo, write_artifact

    torch.manual_seed(0)
    if model_name == "tinynet":
        from edgeslim.testing import TinyNet

        model, size, classes = TinyNet(num_classes=10), 16, 10
    else:
        import timm

        model, size, classes = timm.create_model(model_name, pretrained=False, num_classes=10), 224, 10
    model.eval()
    manifest = Manifest(
        name=MODEL,
        arch=model_name,
        classes=[f"c{i}" for i in range(classes)],
        input=TensorInfo(name="input", shape=[-1, 3, size, size]),
        outputs=[TensorInfo(name="logits", shape=[-1, classes])],
        preprocessing=Preprocessing(resize=size, crop=size),
        models=[ModelFile(format="onnx", precision="fp32", path="model.onnx"),
                ModelFile(format="openvino", precision="fp32", path="model.xml")],
    )

    def writer(tmp: Path) -> None:
        import openvino as ov

        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(tmp / "model.onnx"), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
        ov.save_model(ov.convert_model(str(tmp / "model.onnx")), str(tmp / "model.xml"), compress_to_fp16=False)

    write_artifact(directory, manifest, writer)
    return directory


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) if samples else float("nan")


def sample_input(shape: list[int], seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal([1, *shape[1:]]).astype(np.float32)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_s() -> float:
    """CPU seconds the hypervisor gave this VM's vCPUs to someone else (Linux /proc/stat "steal"; 0 on bare metal)."""
    fields = Path("/proc/stat").read_text().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy (Linux /proc/stat; steal excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores the rest of the machine kept busy during a window: machine busy time minus our processes'.

    On a shared machine this is what makes a cell unfair: pinning keeps our processes apart, not other people's.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cores = float("nan")

    def _ours(self) -> float:
        import resource

        done = resource.getrusage(resource.RUSAGE_CHILDREN)  # child load generators (perf_analyzer) that finished
        return sum(proc_cpu_s(p) for p in self.pids) + done.ru_utime + done.ru_stime

    def __enter__(self) -> "OtherLoad":
        self.t0, self.busy0, self.ours0, self.steal0 = time.perf_counter(), machine_busy_s(), self._ours(), steal_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        other = (machine_busy_s() - self.busy0) - (self._ours() - self.ours0)
        self.cores = max(other, 0.0) / wall
        self.steal = (steal_s() - self.steal0) / wall


# -- the in-process reference, in its own process so it can be pinned like the server ------------------------------
def inprocess_worker(spec: dict) -> None:
    """``--inprocess-worker``: load the model like the server does, then answer ``measure SECONDS`` lines."""
    if spec["cpus"]:
        os.sched_setaffinity(0, spec["cpus"])  # before the runtime creates its threads: they inherit it
    from edgeslim import runtime

    pred = runtime.load(spec["artifact"], backend=spec["backend"], threads=spec["threads"], **spec["options"])
    shape = list(pred.backend.inputs[0].shape)
    infer = pred.backend.infer
    x1 = sample_input(shape)
    xb = np.random.default_rng(1).standard_normal([spec["max_batch"], *shape[1:]]).astype(np.float32)
    for _ in range(5):
        infer({"input": x1})
        infer({"input": xb})
    print(json.dumps({"shape": shape, "logits": infer({"input": x1})["logits"].tolist()}), flush=True)
    for line in sys.stdin:
        seconds = float(line.split()[1])
        lat, end = [], time.perf_counter() + seconds * 0.4
        while time.perf_counter() < end:
            t = time.perf_counter()
            infer({"input": x1})
            lat.append((time.perf_counter() - t) * 1e3)
        # Diagnostic: the same calls with the model idle between them for --paced-gap-ms, as it is between two
        # requests of a concurrency-1 client (the server is then reading, parsing and answering): caches and the
        # runtime's worker threads go cold, and the model itself runs slower than back to back.
        paced, end = [], time.perf_counter() + seconds * 0.2
        while time.perf_counter() < end:
            time.sleep(spec["paced_gap_s"])
            t = time.perf_counter()
            infer({"input": x1})
            paced.append((time.perf_counter() - t) * 1e3)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds * 0.4:  # Offline: the whole batch at once, back to back
            infer({"input": xb})
            n += len(xb)
        print(json.dumps({"p50": pct(lat, 50), "p99": pct(lat, 99), "offline": n / (time.perf_counter() - t0),
                          "single": len(lat) / sum(lat) * 1e3, "paced_p50": pct(paced, 50)}), flush=True)
    pred.close()


class InProcess:
    def __init__(self, spec: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--inprocess-worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        self.shape, self.logits = ready["shape"], np.asarray(ready["logits"], np.float32)

    def measure(self, seconds: float) -> dict[str, float]:
        self.proc.stdin.write(f"measure {seconds}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


# -- the server -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, artifact: Path, *, backend: str, threads: int, batching: bool, max_batch: int,
                 delay_ms: float, preferred: tuple[int, ...], options: dict, cpus: list[int] | None,
                 inference_cpus: list[int] | None = None, busy_poll_us: int = 0, field_monitoring: bool = True,
                 model_field_monitoring: dict[str, bool] | None = None) -> None:
        import tritonclient.http as httpclient

        self.port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc_url = f"127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        code = textwrap.dedent(f"""
            import os
            if {cpus!r}:
                os.sched_setaffinity(0, {cpus!r})  # before the runtime creates its threads: they inherit it
            from edgeslim.server import ServerSettings, serve
            serve(ServerSettings(models=[{str(artifact)!r}], port={self.port}, backend={backend!r}, threads={threads},
                                 log_level="warning", dynamic_batching={batching}, max_batch={max_batch},
                                 batch_delay_ms={delay_ms}, preferred_batch_sizes={tuple(preferred)!r}, queue_size=256,
                                 backend_options={{{backend!r}: {options!r}}},
                                 inference_cpus={tuple(inference_cpus) if inference_cpus else None!r},
                                 shared_memory=True, busy_poll_us={busy_poll_us},
                                 field_monitoring={field_monitoring}, grpc_port={self.grpc_port},
                                 model_field_monitoring={model_field_monitoring or {}!r}))
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server failed to start: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpclient.InferenceServerClient(self.url).is_server_ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise SystemExit("server did not become ready in 180 s")

    def stats(self) -> dict[str, float]:
        import tritonclient.http as httpclient

        st = httpclient.InferenceServerClient(self.url).get_inference_statistics(MODEL)["model_stats"][0]
        inf = st["inference_stats"]
        return {"count": inf["success"]["count"], "ns": inf["success"]["ns"], "compute_ns": inf["compute_infer"]["ns"],
                "items": st["inference_count"], "execs": st["execution_count"], "cpu": proc_cpu_s(self.proc.pid)}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


# -- the field monitoring's cost ------------------------------------------------------------------------------------
def copies_of(artifact: Path, names: list[str], directory: Path) -> Path:
    """A model repository of ``artifact`` served under each of ``names`` (the same files, manifests renamed)."""
    import shutil

    for n in names:
        shutil.copytree(artifact, directory / n)
        manifest = directory / n / "manifest.json"
        data = json.loads(manifest.read_text())
        data["name"] = n
        manifest.write_text(json.dumps(data, indent=1))
    return directory


def monitoring_cost(artifact: Path, x: np.ndarray, *, backend: str = "onnxruntime", threads: int = 1,
                    options: dict | None = None, rounds: int = 3, requests: int = 2000,
                    cpus: list[int] | None = None, log=print) -> dict:
    """The field monitoring's cost per request at concurrency 1, paired inside one server process.

    Two server processes differ by where their memory and threads land, by as much as the monitoring costs (an A/A
    run of two identical servers measured -1 % .. +1 % here), so the comparison is made inside one: a no-batching
    server serves three copies of the model, two with field monitoring and one without
    (``ServerSettings.model_field_monitoring``), and each step sends one request to each copy in rotating order
    (tritonclient.http, binary, c=1). The two monitored copies give the A/A control in the same run. Every round
    starts a fresh server and moves the unmonitored role to the next copy, so that where a copy landed cannot pass
    for the monitoring. ``x``: the inputs, cycled (their first answer is checked against the in-process one).

    Returns ``on``/``off`` p50 (ms, over every round), ``diff``/``aa`` (on - off and on - on', medians of per-round
    differences, ms), ``ci``/``aa_ci`` (95 % bootstrap intervals of the pooled differences) and ``per_round``.
    """
    import tritonclient.http as httpclient

    names = [f"{MODEL}-{i}" for i in range(3)]
    lat: dict[str, list[np.ndarray]] = {"on": [], "on2": [], "off": []}
    per_round: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = copies_of(artifact, names, Path(tmp))
        for r in range(rounds):
            off = names[r % 3]
            on, on2 = [n for n in names if n != off][:: 1 if r % 2 == 0 else -1]
            roles = {on: "on", on2: "on2", off: "off"}
            srv = Server(repo, backend=backend, threads=threads, batching=False, max_batch=8, delay_ms=0.0,
                         preferred=(8,), options=options or {}, cpus=cpus, model_field_monitoring={off: False})
            try:
                c = httpclient.InferenceServerClient(srv.url, connection_timeout=30, network_timeout=60)
                inputs = []
                for i in range(len(x)):
                    inp = httpclient.InferInput("input", [1, *x.shape[1:]], "FP32")
                    inp.set_data_from_numpy(np.ascontiguousarray(x[i : i + 1], dtype=np.float32), binary_data=True)
                    inputs.append(inp)
                first = {n: c.infer(n, [inputs[0]]).as_numpy("logits") for n in names}
                for n in names[1:]:  # the same model three times: the same answers
                    np.testing.assert_allclose(first[n], first[names[0]], rtol=1e-5, atol=1e-5)
                ts: dict[str, list[float]] = {n: [] for n in names}
                for i in range(200 + requests):  # 200 warm-up steps, then measured ones
                    order = names[i % 3:] + names[: i % 3]
                    for n in order:
                        t = time.perf_counter()
                        c.infer(n, [inputs[i % len(inputs)]])
                        if i >= 200:
                            ts[n].append((time.perf_counter() - t) * 1e3)
                ids = c.infer(on, [inputs[0]]).get_response().get("id"), c.infer(off, [inputs[0]]).get_response().get("id")
                assert ids[0] and not ids[1], f"monitoring not on/off as asked: ids {ids}"  # the switch took
            finally:
                srv.stop()
            row = {k: float(np.median(ts[n])) for n, k in roles.items()}
            row["diff"], row["aa"] = row["on"] - row["off"], row["on2"] - row["on"]
            per_round.append(row)
            for n, k in roles.items():
                lat[k].append(np.asarray(ts[n]))
            log(f"[monitoring round {r + 1}/{rounds}] unmonitored copy {off}: p50 on {row['on']:.3f} / on' "
                f"{row['on2']:.3f} / off {row['off']:.3f} ms; on - off {row['diff']:+.3f} ms, A/A {row['aa']:+.3f} ms")
    pooled = {k: np.concatenate(v) for k, v in lat.items()}
    rng = np.random.default_rng(0)

    def boot(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        d = [np.median(rng.choice(a, a.size)) - np.median(rng.choice(b, b.size)) for _ in range(1000)]
        return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))

    return {"on": float(np.median(pooled["on"])), "off": float(np.median(pooled["off"])),
            "diff": float(np.median([p["diff"] for p in per_round])), "aa": float(np.median([p["aa"] for p in per_round])),
            "ci": boot(pooled["on"], pooled["off"]), "aa_ci": boot(pooled["on2"], pooled["on"]),
            "per_round": per_round, "requests": requests, "rounds": rounds}


def print_monitoring_cost(res: dict, label: str = "") -> None:
    off = res["off"]
    print(f"{label}field monitoring at concurrency 1, paired in one server ({res['rounds']} rounds x"
          f" {res['requests']} requests per copy): p50 {res['on']:.3f} ms on, {off:.3f} ms off; on - off"
          f" {res['diff']:+.3f} ms ({res['diff'] / off:+.2%} of p50, 95 % CI {res['ci'][0] / off:+.2%} .."
          f" {res['ci'][1] / off:+.2%}; target within 2 %); A/A control {res['aa']:+.3f} ms ({res['aa'] / off:+.2%},"
          f" CI {res['aa_ci'][0] / off:+.2%} .. {res['aa_ci'][1] / off:+.2%}); per round on - off "
          + " / ".join(f"{p['diff']:+.3f}" for p in res["per_round"]) + " ms")


# -- clients --------------------------------------------------------------------------------------------------------
def tritonclient_load(url: str, x: np.ndarray, concurrency: int, seconds: float,
                      expect: np.ndarray, shared_memory: bool = False) -> tuple[list[float], int]:
    """The standard client: one tritonclient.http client per thread, binary tensors both ways; or, with
    ``shared_memory``, input and output through the system shared-memory extension (each thread its own regions,
    and every request writes the image into its region and reads the logits back, as an application would)."""
    import uuid

    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    lat, errors, lock, start, stop_at = _load_state(concurrency)

    def worker() -> None:
        c = httpclient.InferenceServerClient(url, connection_timeout=30, network_timeout=60)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
        handles = []
        if shared_memory:
            tag = uuid.uuid4().hex[:10]
            h_in = shm.create_shared_memory_region(f"in-{tag}", f"/edgeslim-bench-in-{tag}", x.nbytes)
            h_out = shm.create_shared_memory_region(f"out-{tag}", f"/edgeslim-bench-out-{tag}", expect.nbytes)
            handles = [h_in, h_out]
            c.register_system_shared_memory(f"in-{tag}", f"/edgeslim-bench-in-{tag}", x.nbytes)
            c.register_system_shared_memory(f"out-{tag}", f"/edgeslim-bench-out-{tag}", expect.nbytes)
            inp.set_shared_memory(f"in-{tag}", x.nbytes)
            out[0].set_shared_memory(f"out-{tag}", expect.nbytes)

            def call() -> np.ndarray:
                shm.set_shared_memory_region(h_in, [x])
                c.infer(MODEL, [inp], outputs=out)
                return shm.get_contents_as_numpy(h_out, np.float32, list(expect.shape))
        else:
            inp.set_data_from_numpy(x, binary_data=True)

            def call() -> np.ndarray:
                return c.infer(MODEL, [inp], outputs=out).as_numpy("logits")

        try:
            _timed_calls(call, expect, start, stop_at, lat, errors, lock)
        finally:
            if handles:
                c.unregister_system_shared_memory(f"in-{tag}")
                c.unregister_system_shared_memory(f"out-{tag}")
                for h in handles:
                    shm.destroy_shared_memory_region(h)
            c.close()

    _run_workers(worker, concurrency, start, stop_at, seconds)
    return lat, errors[0]


def grpc_load(url: str, x: np.ndarray, concurrency: int, seconds: float,
              expect: np.ndarray) -> tuple[list[float], int]:
    """``tritonclient.grpc``, one client per thread as ``tritonclient_load`` does over HTTP: the input in
    ``raw_input_contents``, the logits in ``raw_output_contents``."""
    import tritonclient.grpc as grpcclient

    lat, errors, lock, start, stop_at = _load_state(concurrency)

    def worker() -> None:
        c = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = [grpcclient.InferRequestedOutput("logits")]

        def call() -> np.ndarray:
            return c.infer(MODEL, [inp], outputs=out).as_numpy("logits")

        try:
            _timed_calls(call, expect, start, stop_at, lat, errors, lock)
        finally:
            c.close()

    _run_workers(worker, concurrency, start, stop_at, seconds)
    return lat, errors[0]


def _binary_request(port: int, x: np.ndarray) -> bytes:
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(raw)}\r\n\r\n").encode()
    return head + header + raw


def _shm_request(port: int, x: np.ndarray, region: str) -> bytes:
    """An infer request whose input is in shared-memory region ``region``: only a JSON header on the socket."""
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"shared_memory_region": region,
                                                    "shared_memory_byte_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(header)}\r\n\r\n").encode()
    return head + header


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


def light_load(port: int, x: np.ndarray, concurrency: int, seconds: float,
               expect: np.ndarray, shared_memory: bool = False) -> tuple[list[float], int]:
    """A light load generator: one asyncio loop, ``concurrency`` keep-alive connections, a pre-encoded request.

    With ``shared_memory`` each connection has its own input region and writes the image into it before every
    request (a numpy copy into the mapping, as an application would); the logits come back in the body."""
    import mmap
    import uuid

    import tritonclient.http as httpclient

    regions = []
    if shared_memory:
        admin = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(concurrency):
            tag = uuid.uuid4().hex[:10]
            key = f"/edgeslim-bench-light-{tag}"
            fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, x.nbytes)
            mm = mmap.mmap(fd, x.nbytes)
            os.close(fd)
            admin.register_system_shared_memory(f"light-{tag}", key, x.nbytes)
            regions.append((f"light-{tag}", key, mm))
    request = _binary_request(port, x)

    async def main() -> tuple[list[float], int]:
        lat: list[float] = []
        errors = 0
        ready = asyncio.Event()
        opened = [0]
        stop_at = [time.perf_counter() + 3600]

        async def connection(i_conn: int) -> None:
            nonlocal errors
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if shared_memory:
                region, _, mm = regions[i_conn]
                dest = np.frombuffer(mm, np.float32).reshape(x.shape)
                req = _shm_request(port, x, region)

                def send() -> None:
                    np.copyto(dest, x)  # this request's image into the shared memory
                    writer.write(req)
            else:
                def send() -> None:
                    writer.write(request)
            for i in range(2):
                send()
                status, headers, body = await _read_response(reader)
                if status != 200:
                    raise SystemExit(f"light client: HTTP {status}: {body[:300]!r}")
                if i == 0:  # measure right answers only
                    n = int(headers[b"inference-header-content-length"])
                    got = np.frombuffer(body[n:], "<f4").reshape(expect.shape)
                    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
            opened[0] += 1
            if opened[0] == concurrency:
                stop_at[0] = time.perf_counter() + seconds
                ready.set()
            await ready.wait()
            while time.perf_counter() < stop_at[0]:
                t = time.perf_counter()
                send()
                status, _, _ = await _read_response(reader)
                if status == 200:
                    lat.append((time.perf_counter() - t) * 1e3)
                else:
                    errors += 1
            writer.close()

        await asyncio.gather(*(connection(i) for i in range(concurrency)))
        return lat, errors

    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
        for name, key, mm in regions:
            os.unlink(f"/dev/shm{key}")
            admin.unregister_system_shared_memory(name)
            mm.close()


def perf_analyzer_path() -> str | None:
    """Triton's perf_analyzer: $EDGESLIM_PERF_ANALYZER, bench/get_perf_analyzer.sh's copy, or on PATH."""
    import shutil

    for candidate in (os.environ.get("EDGESLIM_PERF_ANALYZER"),
                      str(Path(__file__).resolve().parents[1] / ".cache/perf_analyzer/perf_analyzer"),
                      shutil.which("perf_analyzer")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def perf_analyzer_load(url: str, x: np.ndarray, concurrency: int, seconds: float,
                       protocol: str = "http") -> dict[str, float]:
    """Triton's C++ load generator at ``concurrency`` (binary tensors over HTTP, or gRPC with ``protocol="grpc"``;
    one request in flight per worker, sending the benchmark image): its p50 / p99 client latency and throughput
    over three windows of a third of ``seconds`` each (its stability check needs three). Answers are checked by the other clients of the run
    (perf_analyzer's own validation compares bytes exactly, and batched execution may change the last bits)."""
    exe = perf_analyzer_path()
    if exe is None:
        raise SystemExit("perf_analyzer not found: run bench/get_perf_analyzer.sh (or set EDGESLIM_PERF_ANALYZER)")
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "input.json", Path(tmp) / "out.csv"
        data.write_text(json.dumps({"data": [{"input": {"content": x[0].ravel().tolist(),
                                                        "shape": list(x.shape[1:])}}]}))
        cmd = [exe, "-m", MODEL, "-u", url, "-i", protocol, "--input-data", str(data), "--concurrency-range",
               str(concurrency), "-p", str(max(int(seconds * 1000 / 3), 200)), "--stability-percentage", "999",
               "--max-trials", "3", "--percentile", "50", "-f", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + 3 * seconds)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"perf_analyzer failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")
        import csv

        row = next(csv.DictReader(out.open()))
    return {"p50": int(row["p50 latency"]) / 1e3, "p99": int(row["p99 latency"]) / 1e3,
            "throughput": float(row["Inferences/Second"]), "errors": 0}


def drive(server: Server, client: str, x: np.ndarray, concurrency: int, seconds: float,
          expect: np.ndarray) -> dict[str, float]:
    import resource

    before, cpu0 = server.stats(), time.process_time()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # Throughput over the measured window only: the requests that started in it, over its length.
    window = max(seconds, 1e-9)
    if client.startswith("perf_analyzer"):
        grpc = client == "perf_analyzer-grpc"
        res = perf_analyzer_load(server.grpc_url if grpc else server.url, x, concurrency, seconds,
                                 "grpc" if grpc else "http")
        lat_n = res["throughput"] * window
    else:
        if client == "tritonclient-grpc":
            lat, errors = grpc_load(server.grpc_url, x, concurrency, seconds, expect)
        elif client in ("tritonclient", "tritonclient-shm"):
            lat, errors = tritonclient_load(server.url, x, concurrency, seconds, expect, client == "tritonclient-shm")
        else:
            lat, errors = light_load(server.port, x, concurrency, seconds, expect, client == "light-shm")
        res = {"p50": pct(lat, 50), "p99": pct(lat, 99), "throughput": len(lat) / window, "errors": errors}
        lat_n = len(lat)
    took = time.perf_counter() - t0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (time.process_time() - cpu0 + children1.ru_utime - children0.ru_utime
                  + children1.ru_stime - children0.ru_stime)
    after = server.stats()
    d = {k: after[k] - before[k] for k in after}
    count = max(d["count"], 1)
    return {
        **res,
        # The server's own view (Triton statistics): mean time from the request's arrival to its answer, and the
        # model-execution part of it. What the client sees beyond that is HTTP, the client library and the OS.
        "server_ms": d["ns"] / count / 1e6, "compute_ms": d["compute_ns"] / count / 1e6,
        "mean_batch": d["items"] / max(d["execs"], 1),
        "server_cpu_ms": d["cpu"] / count * 1e3,
        # Client CPU over the whole call (warm-up included): an upper bound per request.
        "client_cpu_ms": client_cpu / max(lat_n, 1) * 1e3, "wall": took,
    }


# -- the run --------------------------------------------------------------------------------------------------------
def cpu_sets(args: argparse.Namespace) -> dict[str, dict]:
    every = sorted(os.sched_getaffinity(0))
    configs = {}
    for name in args.configs:
        if name == "shared":
            configs[name] = {"server": None, "client": None, "threads": args.threads or len(every),
                             "describe": f"server, in-process reference and clients share CPUs {every}"}
        else:
            server = args.server_cpus or every[:-1] or every
            client = args.client_cpus or every[-1:]
            if set(server) & set(client):
                raise SystemExit(f"--server-cpus {server} and --client-cpus {client} overlap; {name} needs them apart")
            cfg = {"server": server, "client": client, "threads": args.threads or len(server)}
            if name == "pinned":
                cfg["describe"] = (f"server process and in-process reference on CPUs {server}, load generator on CPUs"
                                   f" {client}")
            else:  # split: inference on the server CPUs, the server's event loop beside the load generator
                cfg.update(process=client, inference=server,
                           describe=f"server inference and in-process reference on CPUs {server}; server HTTP event"
                                    f" loop and load generator on CPUs {client}")
            configs[name] = cfg
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="an existing artifact (default: build one from --model)")
    ap.add_argument("--model", default="mobilenetv3_small_100", help="timm model name (random weights) or 'tinynet'")
    ap.add_argument("--backend", default="onnxruntime", help="runtime backend, both sides (onnxruntime, openvino)")
    ap.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                    help="backend option, both sides, as edgeslim serve takes it (repeatable)")
    ap.add_argument("--threads", type=int, help="inference threads, both sides (default: the cores each config gives "
                                                "the server)")
    ap.add_argument("--max-batch", type=int, default=8, help="server max batch = in-process Offline batch")
    ap.add_argument("--batch-delay-ms", type=float, default=2.0)
    ap.add_argument("--preferred", type=int, nargs="*", help="preferred batch sizes (default: the max batch)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement window per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--client", nargs="+",
                    default=["tritonclient", "tritonclient-grpc", "tritonclient-shm", "light", "light-shm"],
                    choices=["tritonclient", "tritonclient-grpc", "tritonclient-shm", "light", "light-shm",
                             "perf_analyzer", "perf_analyzer-grpc"],
                    help="*-shm: input (and for tritonclient output) in system shared memory; *-grpc: over the"
                         " server's gRPC port; perf_analyzer: Triton's C++ load generator (bench/get_perf_analyzer.sh)")
    ap.add_argument("--tritonclient-concurrency", type=int, nargs="*", default=[1, 32],
                    help="concurrencies also driven by tritonclient (the other clients drive every one)")
    ap.add_argument("--configs", nargs="+", default=["shared", "pinned", "split"],
                    choices=["shared", "pinned", "split"])
    ap.add_argument("--server-cpus", type=int, nargs="+",
                    help="pinned/split: the inference CPUs (default: all but the last)")
    ap.add_argument("--client-cpus", type=int, nargs="+",
                    help="pinned/split: the load generator's CPUs (default: the last)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over every cell")
    ap.add_argument("--paced-gap-ms", type=float, default=1.5,
                    help="idle time between the in-process reference's paced calls (a diagnostic row: about the"
                         " server's time outside the model per concurrency-1 request)")
    ap.add_argument("--busy-poll-us", type=int, default=0,
                    help="also measure a no-batching server with this busy_poll_us (its rows are labelled)")
    ap.add_argument("--monitoring-off", action="store_true",
                    help="also measure the field monitoring's cost at concurrency 1 (feedback ids, drift windows):"
                         " one no-batching server per round serving three copies of the model, one of them"
                         " unmonitored, requests alternating between them (monitoring_cost)")
    ap.add_argument("--monitoring-requests", type=int, default=2000,
                    help="--monitoring-off: requests per copy and round")
    ap.add_argument("--inprocess-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inprocess_worker:
        return inprocess_worker(json.loads(args.inprocess_worker))

    from edgeslim.server import ServerSettings
    from edgeslim.server.repository import backend_options
    from edgeslim.server.settings import parse_backend_options

    options = parse_backend_options(args.backend_option)
    preferred = tuple(args.preferred) if args.preferred is not None else (args.max_batch,)
    configs = cpu_sets(args)
    # server modes: "none" (no batching), "batching" (dynamic batching), "poll" (no batching + --busy-poll-us)
    modes = ("none", "batching") + (("poll",) if args.busy_poll_us else ())
    cells: list[tuple[str, str, int]] = []  # (client, mode, concurrency), in measuring order
    for mode in modes:
        for conc in args.concurrency:
            for client in args.client:
                if not client.startswith("tritonclient") or conc in args.tritonclient_concurrency:
                    cells.append((client, mode, conc))
    # results[(config, mode, client, conc)] -> list of (server result, in-process result measured just before)
    results: dict[tuple, list[tuple[dict, dict]]] = {}
    refs: dict[str, list[dict]] = {}
    every = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or build_artifact(args.model, Path(tmp) / MODEL)
        # Both sides load the model with the options the server would use (for onnxruntime: threads that sleep
        # instead of spinning), so the comparison is of the serving path alone.
        same = backend_options(ServerSettings(models=[artifact], backend_options={args.backend: options}),
                               args.backend)
        for name, cfg in configs.items():
            ref = InProcess({"artifact": str(artifact), "backend": args.backend, "threads": cfg["threads"],
                             "options": same, "max_batch": args.max_batch, "cpus": cfg["server"],
                             "paced_gap_s": args.paced_gap_ms / 1e3})
            servers = {m: Server(artifact, backend=args.backend, threads=cfg["threads"], batching=m == "batching",
                                 max_batch=args.max_batch, delay_ms=args.batch_delay_ms, preferred=preferred,
                                 options=options, cpus=cfg.get("process", cfg["server"]),
                                 inference_cpus=cfg.get("inference"),
                                 busy_poll_us=args.busy_poll_us if m == "poll" else 0) for m in modes}
            x = sample_input(ref.shape)
            try:
                if cfg["client"]:
                    os.sched_setaffinity(0, cfg["client"])  # this process is the load generator
                for r in range(args.rounds):  # interleaved: drift on a shared machine hits both sides alike
                    for client, mode, conc in cells:
                        pids = [os.getpid(), ref.proc.pid, *(srv.proc.pid for srv in servers.values())]
                        with OtherLoad(pids) as load:
                            here = ref.measure(args.seconds)
                        here["other"], here["steal"] = load.cores, load.steal
                        refs.setdefault(name, []).append(here)
                        with OtherLoad(pids) as load:
                            there = drive(servers[mode], client, x, conc, args.seconds, ref.logits)
                        there["other"], there["steal"] = load.cores, load.steal
                        results.setdefault((name, mode, client, conc), []).append((there, here))
                        print(f"[{name} round {r + 1}] {mode_label(mode, args)} {client} c={conc}:"
                              f" p50 {there['p50']:.2f} ms, {there['throughput']:.0f} img/s, mean batch"
                              f" {there['mean_batch']:.1f}; in-process p50 {here['p50']:.2f} ms,"
                              f" Offline {here['offline']:.0f} img/s; other load {there['other']:.2f} /"
                              f" {here['other']:.2f} cores, host steal {there['steal']:.2f} / {here['steal']:.2f}",
                              file=sys.stderr, flush=True)
            finally:
                os.sched_setaffinity(0, every)
                for s in servers.values():
                    s.stop()
                ref.close()
        report(args, configs, preferred, same, ref.shape, results, refs)
        if args.monitoring_off:
            print()
            for name, cfg in configs.items():
                try:
                    if cfg["client"]:
                        os.sched_setaffinity(0, cfg["client"])
                    res = monitoring_cost(artifact, x, backend=args.backend, threads=cfg["threads"], options=options,
                                          rounds=max(args.rounds, 3), requests=args.monitoring_requests,
                                          cpus=cfg.get("process", cfg["server"]),
                                          log=lambda m: print(m, file=sys.stderr, flush=True))
                finally:
                    os.sched_setaffinity(0, every)
                print_monitoring_cost(res, f"{name}: ")


def mode_label(mode: str, args: argparse.Namespace) -> str:
    return {"none": "no batching", "batching": "dynamic batching",
            "poll": f"no batching, busy poll {args.busy_poll_us} us"}[mode]


def report(args, configs, preferred, same, shape, results, refs) -> None:
    med = statistics.median
    print(f"\nmodel: {args.artifact or args.model}, input {shape}, backend {args.backend} {same or ''},"
          f" {os.cpu_count()} CPU cores; server max batch {args.max_batch}, preferred {list(preferred)}, max delay"
          f" {args.batch_delay_ms} ms (batching rows); {args.seconds:g} s per cell, {args.rounds} interleaved rounds"
          " (medians; ratios per adjacent pair). Configurations:")
    for name, cfg in configs.items():
        print(f"- {name}: {cfg['describe']}; {cfg['threads']} inference thread(s) on both sides")
    print("\n| config | server | client | conc. | p50 ms | p99 ms | img/s | in-process p50 ms | p50 - in-process |"
          " vs in-process Offline | mean batch | server mean ms (compute) | server CPU ms/req | client CPU ms/req |"
          " other load / host steal, cores |")
    print("|" + "---|" * 15)
    for name in configs:
        allref = refs[name]
        print(f"| {name} | in-process, batch 1 | - | 1 | {med(h['p50'] for h in allref):.2f} |"
              f" {med(h['p99'] for h in allref):.2f} | {med(h['single'] for h in allref):.0f} | - | - |"
              f" {med(h['single'] / h['offline'] for h in allref):.0%} | 1 | - | - | - |"
              f" {med(h['other'] for h in allref):.2f} / {med(h['steal'] for h in allref):.2f} |")
        print(f"| {name} | in-process, batch 1, idle {args.paced_gap_ms:g} ms between calls (diagnostic) | - | 1 |"
              f" {med(h['paced_p50'] for h in allref):.2f} | - | - | - | - | - | 1 | - | - | - | (above) |")
        print(f"| {name} | in-process Offline, batch {args.max_batch} | - | - | - | - |"
              f" {med(h['offline'] for h in allref):.0f} | - | - | 100% | {args.max_batch} | - | - | - | (above) |")
        for (cfg, mode, client, conc), runs in results.items():
            if cfg != name:
                continue
            label = mode_label(mode, args)
            errs = sum(t["errors"] for t, _ in runs)
            err = f" ({errs} errors)" if errs else ""
            print(f"| {name} | {label} | {client} | {conc} | {med(t['p50'] for t, _ in runs):.2f} |"
                  f" {med(t['p99'] for t, _ in runs):.2f} | {med(t['throughput'] for t, _ in runs):.0f}{err} |"
                  f" {med(h['p50'] for _, h in runs):.2f} | {med(t['p50'] - h['p50'] for t, h in runs):+.2f} ms |"
                  f" {med(t['throughput'] / h['offline'] for t, h in runs):.0%} |"
                  f" {med(t['mean_batch'] for t, _ in runs):.1f} |"
                  f" {med(t['server_ms'] for t, _ in runs):.2f} ({med(t['compute_ms'] for t, _ in runs):.2f}) |"
                  f" {med(t['server_cpu_ms'] for t, _ in runs):.2f} | {med(t['client_cpu_ms'] for t, _ in runs):.2f} |"
                  f" {med(t['other'] for t, _ in runs):.2f} / {med(t['steal'] for t, _ in runs):.2f} |")
    other = [t["other"] for runs in results.values() for t, _ in runs] + [h["other"] for r in refs.values() for h in r]
    steal = [t["steal"] for runs in results.values() for t, _ in runs] + [h["steal"] for r in refs.values() for h in r]
    print(f"\nother load: other processes kept a median {statistics.median(other):.2f} of {os.cpu_count()} cores busy"
          f" during the windows (max {max(other):.2f})" + (": not a quiet machine, read the ratios with care"
                                                           if statistics.median(other) > 0.1 else ""))
    print(f"host steal: the hypervisor took a median {statistics.median(steal):.2f} cores from this VM during the"
          f" windows (max {max(steal):.2f})" + (": a busy host, absolute times are inflated" if statistics.median(steal)
                                                 > 0.1 else ""))
    for name in configs:
        for mode in ("none", "poll"):
            for client in args.client:
                one = results.get((name, mode, client, 1))
                if one:
                    print(f"{name}, {client}: p50 overhead at concurrency 1, {mode_label(mode, args)} (server -"
                          f" in-process, median of adjacent pairs): {med(t['p50'] - h['p50'] for t, h in one):+.2f} ms"
                          " (target <= 2 ms)")
            rest = results.get((name, mode, "tritonclient", 1))
            over_grpc = results.get((name, mode, "tritonclient-grpc", 1))
            if rest and over_grpc:  # the same server process, its two ports, measured in the same rounds
                print(f"{name}, {mode_label(mode, args)}: concurrency-1 p50, tritonclient.http"
                      f" {med(t['p50'] for t, _ in rest):.2f} ms, tritonclient.grpc"
                      f" {med(t['p50'] for t, _ in over_grpc):.2f} ms (gRPC - REST, median of rounds:"
                      f" {med(g['p50'] - r['p50'] for (g, _), (r, _) in zip(over_grpc, rest)):+.2f} ms)")
        cold = [h["paced_p50"] - h["p50"] for h in refs[name]]
        if any((name, "none", client, 1) in results for client in args.client):
            print(f"{name}: of that, the model itself runs {med(cold):+.2f} ms slower in-process when idle"
                  f" {args.paced_gap_ms:g} ms between calls than back to back (paced - back-to-back p50, median of"
                  " rounds): a concurrency-1 client leaves it that idle")
        big = [(c, cl, med(t["throughput"] / h["offline"] for t, h in runs))
               for (cfg, m, cl, c), runs in results.items() if cfg == name and m == "batching" and c >= 16]
        for conc, client, share in big:
            print(f"{name}, {client}: dynamic batching at concurrency {conc}: {share:.0%} of in-process Offline"
                  " (target >= 90%)")


if __name__ == "__main__":
    main()
