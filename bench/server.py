"""Server overhead benchmark: KServe v2 binary requests against the in-process runtime, on the same model.

Measures latency p50/p99 and throughput at concurrency 1, 8 and 32, with and without dynamic batching, against
``edgeslim.runtime.load`` in the same process (batch-1 latency and Offline throughput at the max batch), in one run,
and prints a Markdown table. Both servers stay up for the whole run and every server cell is measured right after an
in-process window, for ``--rounds`` rounds, so the ratios compare neighbours in time on a shared machine.

    python bench/server.py                          # timm mobilenetv3_small_100 (random weights), 224x224
    python bench/server.py --artifact path/to/art   # an existing artifact
    python bench/server.py --model tinynet          # the 16x16 test model (measures pure protocol overhead)

Clients (tritonclient.http, one per thread) run on the same machine as the server, so on a small CPU they compete
with it for cores; the table says how many cores there were.
"""

from __future__ import annotations

import argparse
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


def build_artifact(model_name: str, directory: Path) -> Path:
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
        name="bench",
        arch=model_name,
        classes=[f"c{i}" for i in range(classes)],
        input=TensorInfo(name="input", shape=[-1, 3, size, size]),
        outputs=[TensorInfo(name="logits", shape=[-1, classes])],
        preprocessing=Preprocessing(resize=size, crop=size),
        models=[ModelFile(format="onnx", precision="fp32", path="model.onnx")],
    )

    def writer(tmp: Path) -> None:
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(tmp / "model.onnx"), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)

    write_artifact(directory, manifest, writer)
    return directory


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) if samples else float("nan")


class InProcess:
    """The in-process runtime on the same artifact: batch-1 latency and Offline throughput at the max batch."""

    def __init__(self, artifact: Path, threads: int, max_batch: int, options: dict) -> None:
        from edgeslim import runtime

        self.pred = runtime.load(artifact, threads=threads, **options)
        self.shape = list(self.pred.backend.inputs[0].shape)
        self.x1 = np.random.default_rng(0).standard_normal([1, *self.shape[1:]]).astype(np.float32)
        self.xb = np.random.default_rng(1).standard_normal([max_batch, *self.shape[1:]]).astype(np.float32)
        for _ in range(5):
            self.pred.backend.infer({"input": self.x1})

    def measure(self, seconds: float) -> dict[str, float]:
        infer = self.pred.backend.infer
        lat, end = [], time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t = time.perf_counter()
            infer({"input": self.x1})
            lat.append((time.perf_counter() - t) * 1e3)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:  # Offline: the whole batch at once, back to back
            infer({"input": self.xb})
            n += len(self.xb)
        return {"p50": pct(lat, 50), "p99": pct(lat, 99), "offline": n / (time.perf_counter() - t0),
                "single": len(lat) / sum(lat) * 1e3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, threads: int, batching: bool, max_batch: int, delay_ms: float,
                 options: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    code = textwrap.dedent(f"""
        from edgeslim.server import ServerSettings, serve
        serve(ServerSettings(models=[{str(artifact)!r}], port={port}, threads={threads}, log_level="warning",
                             dynamic_batching={batching}, max_batch={max_batch}, batch_delay_ms={delay_ms},
                             preferred_batch_sizes=({max_batch},), queue_size=256,
                             backend_options={{"onnxruntime": {options or {}!r}}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import tritonclient.http as httpclient

    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server failed to start: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpclient.InferenceServerClient(url).is_server_ready():
                return proc, url
        except Exception:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


def drive(url: str, shape: list[int], concurrency: int, seconds: float) -> dict[str, float]:
    import tritonclient.http as httpclient

    x = np.random.default_rng(2).standard_normal([1, *shape[1:]]).astype(np.float32)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        c = httpclient.InferenceServerClient(url, connection_timeout=30, network_timeout=60)
        inp = httpclient.InferInput("input", [1, *shape[1:]], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
        for _ in range(3):
            c.infer("bench", [inp], outputs=out)  # warm the connection
        mine = []
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                c.infer("bench", [inp], outputs=out)
                mine.append((time.perf_counter() - t) * 1e3)
            except Exception:
                errors[0] += 1
        with lock:
            lat.extend(mine)
        c.close()

    def server_side() -> tuple[int, int, int]:
        st = httpclient.InferenceServerClient(url).get_inference_statistics("bench")["model_stats"][0]
        inf = st["inference_stats"]
        return inf["success"]["count"], inf["success"]["ns"], inf["compute_infer"]["ns"]

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    before = server_side()
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    after = server_side()
    count = max(after[0] - before[0], 1)
    # The server's own view (Triton statistics): mean time from the request's arrival in the handler to its answer,
    # and the model-execution part of it. What the client sees beyond that is HTTP, the client library and the OS.
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "throughput": len(lat) / took, "errors": errors[0],
            "server_ms": (after[1] - before[1]) / count / 1e6, "compute_ms": (after[2] - before[2]) / count / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="an existing artifact (default: build one from --model)")
    ap.add_argument("--model", default="mobilenetv3_small_100", help="timm model name (random weights) or 'tinynet'")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, both sides")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-delay-ms", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement window per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over every cell")
    ap.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                    help="onnxruntime option for the server, as edgeslim serve takes it (repeatable)")
    args = ap.parse_args()
    from edgeslim.server.settings import parse_backend_options

    options = parse_backend_options(args.backend_option)

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or build_artifact(args.model, Path(tmp) / "bench")
        # The in-process side gets the same onnxruntime session options the server loads the model with
        # (by default: threads do not spin), so the comparison is of the serving path alone.
        from edgeslim.server import ServerSettings
        from edgeslim.server.repository import backend_options

        same = backend_options(ServerSettings(models=[artifact], backend_options={"onnxruntime": options}),
                               "onnxruntime")
        ref = InProcess(artifact, args.threads, args.max_batch, same)
        servers = {b: start_server(artifact, args.threads, b, args.max_batch, args.batch_delay_ms, options)
                   for b in (False, True)}
        # cells[(batching, conc)] -> list of (server result, in-process result measured just before it)
        cells: dict[tuple[bool, int], list[tuple[dict, dict]]] = {}
        try:
            for _ in range(args.rounds):  # interleaved: drift on a shared machine hits both sides alike
                for batching in (False, True):
                    for conc in args.concurrency:
                        here = ref.measure(args.seconds)
                        there = drive(servers[batching][1], ref.shape, conc, args.seconds)
                        cells.setdefault((batching, conc), []).append((there, here))
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            ref.pred.close()

    med = statistics.median
    allref = [h for runs in cells.values() for _, h in runs]
    print(f"\nmodel: {args.artifact or args.model}, input {ref.shape}, {os.cpu_count()} CPU cores, "
          f"{args.threads} intra-op threads, max batch {args.max_batch}, delay {args.batch_delay_ms} ms, "
          f"{args.seconds:g} s per cell, {args.rounds} interleaved rounds (medians; ratios per adjacent pair);"
          f" onnxruntime options (both sides) {same}; clients share the CPU with the server\n")
    print("| mode | concurrency | p50 ms | p99 ms | throughput img/s | in-process p50 ms | p50 - in-process |"
          " vs in-process Offline | server-side mean ms (compute) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| in-process, batch 1 | 1 | {med(h['p50'] for h in allref):.2f} | {med(h['p99'] for h in allref):.2f} |"
          f" {med(h['single'] for h in allref):.0f} | - | - | {med(h['single'] / h['offline'] for h in allref):.0%} | - |")
    print(f"| in-process Offline, batch {args.max_batch} | - | - | - | {med(h['offline'] for h in allref):.0f} | - | - |"
          " 100% | - |")
    for (batching, conc), runs in cells.items():
        mode = "server, dynamic batching" if batching else "server, no batching"
        errs = sum(t["errors"] for t, _ in runs)
        err = f" ({errs} errors)" if errs else ""
        print(f"| {mode} | {conc} | {med(t['p50'] for t, _ in runs):.2f} | {med(t['p99'] for t, _ in runs):.2f} |"
              f" {med(t['throughput'] for t, _ in runs):.0f}{err} | {med(h['p50'] for _, h in runs):.2f} |"
              f" {med(t['p50'] - h['p50'] for t, h in runs):+.2f} ms |"
              f" {med(t['throughput'] / h['offline'] for t, h in runs):.0%} |"
              f" {med(t['server_ms'] for t, _ in runs):.2f} ({med(t['compute_ms'] for t, _ in runs):.2f}) |")
    one = cells.get((False, 1))
    if one:
        print(f"\np50 overhead at concurrency 1 (server, no batching - in-process, median of adjacent pairs): "
              f"{med(t['p50'] - h['p50'] for t, h in one):+.2f} ms (target <= 2 ms)")
    big = [med(t["throughput"] / h["offline"] for t, h in runs) for (b, c), runs in cells.items() if b and c >= 16]
    if big:
        print(f"batched throughput at concurrency >= 16: {min(big):.0%} of in-process Offline (target >= 90%)")


if __name__ == "__main__":
    main()
