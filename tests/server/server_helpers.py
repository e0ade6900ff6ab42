"""Helpers for the server tests: a tiny real ONNX artifact, inputs, and live uvicorn servers in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np

CLASSES = ["cat", "dog", "person", "bike"]
CRITICAL = [2]
THRESHOLDS = {"2": 0.3}


def build_tiny_artifact(directory: Path, name: str = "tiny") -> Path:
    """An untrained TinyNet(4 classes) as ONNX with a dynamic batch, in an edgeslim artifact."""
    from edgeslim import testing

    return testing.build_tiny_artifact(directory, name=name, classes=CLASSES, critical=CRITICAL, thresholds=THRESHOLDS)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def png_bytes(seed: int = 0, size: tuple[int, int] = (20, 24)) -> bytes:
    import io

    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``edgeslim.server.serve`` in a subprocess on 127.0.0.1 (a real uvicorn, real signals)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"127.0.0.1:{port}"
        self.log = log

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def live_server(tmp_path: Path, models: list[Path], **settings: object) -> Iterator[LiveServer]:
    port = free_port()
    code = textwrap.dedent(
        f"""
        import signal, sys

        def report(signum, frame):
            # uvicorn restores this handler and re-raises SIGTERM once it has shut down gracefully.
            print("TORCH_IMPORTED", "torch" in sys.modules, flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, report)
        from edgeslim.server import ServerSettings, serve
        serve(ServerSettings(models={[str(m) for m in models]!r}, port={port}, threads=1, log_level="warning",
                             **{settings!r}))
        """
    )
    log = tmp_path / f"server-{port}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(proc, port, log)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"http://{server.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
