"""Server overhead benchmark: KServe v2 binary requests against the in-process runtime, on the same model.

Measures latency p50/p99 and throughput at concurrency 1, 8 and 32, with and without dynamic batching, against
``edgeslim.runtime.load`` in the same process (batch-1 latency and Offline throughput at the max batch), in one run,
and prints a Markdown table.

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


def in_process(artifact: Path, threads: int, max_batch: int, seconds: float) -> dict[str, float]:
    from edgeslim import runtime

    with runtime.load(artifact, threads=threads) as pred:
        shape = list(pred.backend.inputs[0].shape)
        x1 = np.random.default_rng(0).standard_normal([1, *shape[1:]]).astype(np.float32)
        xb = np.random.default_rng(1).standard_normal([max_batch, *shape[1:]]).astype(np.float32)
        for _ in range(5):
            pred.backend.infer({"input": x1})
        lat, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            pred.backend.infer({"input": x1})
            lat.append((time.perf_counter() - t) * 1e3)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:  # Offline: the whole batch at once, back to back
            pred.backend.infer({"input": xb})
            n += max_batch
        return {"p50": pct(lat, 50), "p99": pct(lat, 99), "offline": n / (time.perf_counter() - t0),
                "single": len(lat) / sum(lat) * 1e3, "shape": shape}


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

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "throughput": len(lat) / took, "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="an existing artifact (default: build one from --model)")
    ap.add_argument("--model", default="mobilenetv3_small_100", help="timm model name (random weights) or 'tinynet'")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, both sides")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-delay-ms", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement window per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                    help="onnxruntime option for the server, as edgeslim serve takes it (repeatable)")
    args = ap.parse_args()
    from edgeslim.server.settings import parse_backend_options

    options = parse_backend_options(args.backend_option)

    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or build_artifact(args.model, Path(tmp) / "bench")
        ref = in_process(artifact, args.threads, args.max_batch, args.seconds)
        rows = []
        for batching in (False, True):
            proc, url = start_server(artifact, args.threads, batching, args.max_batch, args.batch_delay_ms,
                                      options)
            try:
                for conc in args.concurrency:
                    rows.append((batching, conc, drive(url, ref["shape"], conc, args.seconds)))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)

    print(f"\nmodel: {args.artifact or args.model}, input {ref['shape']}, {os.cpu_count()} CPU cores, "
          f"{args.threads} intra-op threads, max batch {args.max_batch}, delay {args.batch_delay_ms} ms, "
          f"{args.seconds:g} s per cell; clients share the CPU with the server\n")
    print("| mode | concurrency | p50 ms | p99 ms | throughput img/s | vs in-process Offline |")
    print("|---|---|---|---|---|---|")
    print(f"| in-process, batch 1 | 1 | {ref['p50']:.2f} | {ref['p99']:.2f} | {ref['single']:.0f} | "
          f"{ref['single'] / ref['offline']:.0%} |")
    print(f"| in-process Offline, batch {args.max_batch} | - | - | - | {ref['offline']:.0f} | 100% |")
    for batching, conc, r in rows:
        mode = "server, dynamic batching" if batching else "server, no batching"
        err = f" ({r['errors']} errors)" if r["errors"] else ""
        print(f"| {mode} | {conc} | {r['p50']:.2f} | {r['p99']:.2f} | {r['throughput']:.0f}{err} | "
              f"{r['throughput'] / ref['offline']:.0%} |")
    one = next((r for b, c, r in rows if not b and c == 1), None)
    if one:
        print(f"\np50 overhead at concurrency 1 (server, no batching - in-process): {one['p50'] - ref['p50']:+.2f} ms")


if __name__ == "__main__":
    main()
