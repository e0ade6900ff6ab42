"""Crash safety (issue 7): real processes killed with SIGKILL.

A fine-tune killed after an epoch resumes with ``--resume`` to the weights and metrics of an uninterrupted run and
redoes at most the epoch it was in; an export killed half-way leaves nothing that loads at its target, and an
artifact already there keeps loading.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgeslim.artifact import load_manifest
from edgeslim.errors import ArtifactError

RECIPE = {
    "version": 1,
    "name": "crash",
    "seed": 0,
    "model": {"source": "tiny"},
    "data": {"dataset": "digits", "image_size": 16, "critical": ["8"], "imbalance": {"8": 0.25}, "batch_size": 32},
    "train": {"epochs": 2, "lr": 0.05, "threads": 1},
    "prune": {"rounds": 1, "rate": 0.5},
}
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def edgeslim(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "edgeslim.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=ENV)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f} s:\n{log.read_text()}"
        time.sleep(0.02)


def sigkill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the process finished before it could be killed: the test would prove nothing"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_killed_fine_tune_resumes_to_the_uninterrupted_result(tmp_path):
    import torch
    from safetensors.torch import load_file

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    ref_log, log = tmp_path / "reference.log", tmp_path / "killed.log"
    # The uninterrupted reference runs beside the victim (one thread each) to keep the test short.
    reference = edgeslim("compress", str(recipe), "--out", str(ref_out), "--no-progress", log=ref_log)
    victim = edgeslim("compress", str(recipe), "--out", str(out), "--no-progress", log=log)
    try:
        checkpoint = out / "run" / "compress" / "round1" / "last.pt"
        wait_for(checkpoint, victim, log)
        sigkill(victim)  # while it trains the next epoch
        at_kill = torch.load(checkpoint, map_location="cpu", weights_only=True)  # atomic: never half written
        done = int(at_kill["epoch"])
        assert 1 <= done < RECIPE["train"]["epochs"] * 2
        assert not (out / "compressed").exists()

        resumed = edgeslim("compress", str(recipe), "--out", str(out), "--no-progress", "--resume", log=log)
        finish(resumed, log)
        finish(reference, ref_log)
    finally:
        for p in (reference, victim):
            if p.poll() is None:
                p.kill()
                p.wait()

    # Same weights as the uninterrupted run ...
    want, got = load_file(str(ref_out / "compressed" / "model.safetensors")), load_file(str(out / "compressed" / "model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    # ... the same test metrics (accuracy, per-class recall, critical FN) and the same per-epoch history,
    summary = json.loads((out / "run" / "compress" / "summary.json").read_text())
    ref_summary = json.loads((ref_out / "run" / "compress" / "summary.json").read_text())
    for key in ("metrics", "dense_metrics", "val_metrics", "sparsity", "history", "rounds"):
        assert _without_timing(summary[key]) == _without_timing(ref_summary[key]), key
    assert load_manifest(out / "compressed").metrics == load_manifest(ref_out / "compressed").metrics
    # ... and only the epoch it was killed in was trained again: epochs 1..done are the killed run's own records.
    first = [h for h in summary["history"] if h["tag"] == "round1"][:done]
    assert [h["epoch"] for h in first] == list(range(1, done + 1))
    assert [h["seconds"] for h in first] == [h["seconds"] for h in at_kill["history"]]


VICTIM = """
import sys, torch, torchvision
from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
from edgeslim.export import export_artifact

torch.manual_seed(0)
torch.set_num_threads(1)
manifest = Manifest(name="resnet", arch="torchvision:resnet18", classes=[str(i) for i in range(10)],
                    input=TensorInfo(name="input", shape=[-1, 3, 64, 64]),
                    outputs=[TensorInfo(name="logits", shape=[-1, 10])],
                    preprocessing=Preprocessing(resize=64, crop=64))
export_artifact(torchvision.models.resnet18(num_classes=10), sys.argv[1], manifest, formats=["onnx", "openvino"],
                precisions=["fp32"])
"""


def kill_export_midway(target: Path, tmp_path: Path) -> Path:
    """Start a real export into ``target``, SIGKILL it once it has written its first file; return its temp directory.

    The first file is the torch weights; the ONNX export of a ResNet-18 that follows takes seconds, so the kill
    lands in the middle of the export.
    """
    log = tmp_path / f"export-{time.monotonic_ns()}.log"
    before = set(target.parent.iterdir())
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", VICTIM, str(target)], stdout=out, stderr=subprocess.STDOUT,
                                env=ENV)
    try:
        deadline = time.monotonic() + 180
        while True:
            partial = [p for p in set(target.parent.iterdir()) - before if p.name.endswith(".partial")]
            if partial and (partial[0] / "model.safetensors").is_file():
                break
            assert proc.poll() is None, f"the export ended before it could be killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the export wrote nothing in 180 s:\n{log.read_text()}"
            time.sleep(0.01)
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert partial[0].is_dir(), "the temp directory was renamed: the export finished, it was not killed mid-way"
    return partial[0]


def test_killed_export_leaves_nothing_that_loads_and_keeps_the_previous_artifact(tmp_path):
    import torch

    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo
    from edgeslim.export import export_artifact
    from edgeslim.testing import TinyNet

    # No artifact before: nothing may load at the target afterwards.
    fresh = tmp_path / "fresh"
    debris = kill_export_midway(fresh, tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_manifest(fresh)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(debris)  # nor does the killed export's own temp directory

    # A complete artifact before: it still loads, verified, unchanged.
    kept = tmp_path / "kept"
    torch.manual_seed(0)
    old = export_artifact(
        TinyNet(num_classes=10), kept,
        Manifest(name="old", arch="tiny", classes=[str(i) for i in range(10)],
                 input=TensorInfo(name="input", shape=[-1, 3, 64, 64]), outputs=[TensorInfo(name="logits", shape=[-1, 10])],
                 preprocessing=Preprocessing(resize=64, crop=64)),
        formats=[], precisions=["fp32"],
    )
    kill_export_midway(kept, tmp_path)
    now = load_manifest(kept)  # verify=True: every file against its sha256
    assert now.name == "old" and now.files == old.files and now.created == old.created
