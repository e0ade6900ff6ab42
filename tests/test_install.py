"""The device-side install: ``pip install edgeslim[serve]`` into a clean venv (no torch, no NNCF) serves and profiles
an ONNX / OpenVINO artifact that a full install built. Marked ``install`` (deselected from the default suite: it installs
onnxruntime, openvino, fastapi and uvicorn into a new venv, about 1.5 minutes); .ci/run runs it in its second step
(``-m "live or install"``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "timm", "nncf", "torch_pruning", "onnxscript", "safetensors")


def _run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's edgeslim, not this checkout's
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digit_folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A labelled ImageFolder of digit PNGs, as a device would hold its own test images."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        px = ((img.transpose(1, 2, 0) * 0.5 + 0.5) * 255).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / str(label) / f"{i}.png")
    return root


def test_serve_extra_installs_without_torch_then_serves_and_profiles_an_artifact(tmp_path):
    import httpx
    import tritonclient.http as httpclient

    from edgeslim.testing import build_tiny_artifact, digits_splits, train_tiny

    # built by this (full) environment: a trained TinyNet as ONNX + OpenVINO IR (+ torch weights for the error case)
    xtr, ytr, xte, yte = digits_splits(1200, 100)
    model = train_tiny(xtr, ytr)
    recipe = {"version": 1, "model": {"source": "tiny"}, "data": {"dataset": "digits", "image_size": 16}}
    art = build_tiny_artifact(tmp_path / "art", model, name="digits-tiny", files=("onnx", "openvino", "torch"),
                              recipe=recipe)
    import torch

    with torch.inference_mode():
        want = model(torch.from_numpy(xte[:4])).numpy()
    images = _digit_folder(tmp_path / "images", xte, yte)

    start = time.monotonic()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "edgeslim"
    install = _run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{ROOT}[serve]"], 1500)
    assert install.returncode == 0, install.stderr[-4000:]
    install_s = time.monotonic() - start
    missing = _run([py, "-c", f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"])
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr  # no torch, NNCF, ... in the venv

    helped = _run([cli, "--help"])
    assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
    light = _run([py, "-c", "import sys, edgeslim, edgeslim.server, edgeslim.runtime; "
                  "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))"])
    assert light.stdout.strip() == "[]", light.stderr

    # a backend whose library is missing: the CLI's one red line names the extra
    wrong = _run([cli, "serve", art, "--backend", "torch", "--port", "1"])
    lines = [ln for ln in (wrong.stdout + wrong.stderr).splitlines() if ln.strip()]
    assert wrong.returncode == 1 and len(lines) == 1, wrong.stdout + wrong.stderr
    assert "pip install 'edgeslim[compress]'" in lines[0], lines

    port, grpc_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cli), "serve", str(art), "--port", str(port), "--grpc-port", str(grpc_port),
                                 "--threads", "1"], stdout=out,
                                stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_repository_index() == [
            {"name": "digits-tiny", "version": "1", "state": "READY", "reason": ""}]
        inp = httpclient.InferInput("input", [4, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(xte[:4])
        got = client.infer("digits-tiny", [inp]).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert (got.argmax(1) == yte[:4]).mean() >= 0.75
        # gRPC from the same process: the serve extra brings grpcio and the generated protocol code
        import tritonclient.grpc as grpcclient

        ginp = grpcclient.InferInput("input", [4, 3, 16, 16], "FP32")
        ginp.set_data_from_numpy(xte[:4])
        over_grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer("digits-tiny", [ginp])
        np.testing.assert_allclose(over_grpc.as_numpy("logits"), got, rtol=1e-6, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # profile with the device's own labelled images: latency on both runtimes, accuracy with per-class recall
    prof = _run([cli, "profile", art, "--backends", "onnxruntime,openvino", "--iterations", "5", "--warmup", "1",
                 "--duration", "0.2s", "--data", images, "--out", tmp_path / "prof"])
    assert prof.returncode == 0, prof.stdout + prof.stderr
    report = json.loads((tmp_path / "prof" / "report.json").read_text())
    ok = {(e["model"]["format"], e["backend"]["name"]) for e in report["entries"] if e["status"] == "ok"}
    assert ok == {("onnx", "onnxruntime"), ("openvino", "openvino")}, report["entries"]
    for e in report["entries"]:
        if e["status"] == "ok":
            assert e["accuracy"]["samples"] == len(yte) and e["accuracy"]["accuracy"] > 0.8
            assert len(e["accuracy"]["per_class"]) == 10
    assert (tmp_path / "prof" / "report.html").is_file()

    # profile without --data: the recipe's dataset needs torch, so speed is measured and the report says why not
    # accuracy
    bare = _run([cli, "profile", art, "--backends", "onnxruntime", "--iterations", "5", "--warmup", "1",
                 "--duration", "0.1s", "--no-html", "--out", tmp_path / "bare"])
    assert bare.returncode == 0, bare.stdout + bare.stderr
    assert "edgeslim[compress]" in bare.stdout + bare.stderr
    md = (tmp_path / "bare" / "report.md").read_text()
    assert "Accuracy not measured: 'torch' is needed" in md and "--data DIR" in md
    print(f"install of .[serve] into a clean venv: {install_s:.0f} s", file=sys.stderr)
