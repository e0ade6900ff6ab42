"""`import edgeslim` and the CLI's --help must stay light: no torch, onnxruntime, openvino or tensorrt."""

import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "openvino", "tensorrt", "nncf", "timm", "torch_pruning")


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return {m for m in out if m.split(".")[0] in HEAVY}


def test_import_edgeslim_is_light():
    assert _imported_after("import edgeslim") == set()


def test_cli_help_is_light():
    assert _imported_after(
        "from typer.testing import CliRunner\nfrom edgeslim.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output"
    ) == set()


def test_serving_and_profiling_an_onnx_artifact_import_no_torch(tmp_path):
    """The device-side paths (edgeslim[serve] has no torch): serve, load, and profile with accuracy from a labelled
    folder, on onnxruntime and openvino; tests/test_install.py runs them in a venv without torch."""
    import numpy as np
    from PIL import Image

    from edgeslim.testing import build_tiny_artifact, digits

    art = build_tiny_artifact(tmp_path / "art", files=("onnx", "openvino"))
    x, y = digits()
    for i in range(20):
        (tmp_path / "images" / str(y[i])).mkdir(parents=True, exist_ok=True)
        px = ((x[i].transpose(1, 2, 0) * 0.5 + 0.5) * 255).round().astype(np.uint8)
        Image.fromarray(px).save(tmp_path / "images" / str(y[i]) / f"{i}.png")
    code = f"""
import json
from pathlib import Path
import numpy as np
from fastapi.testclient import TestClient
from edgeslim.server import ServerSettings, create_app
from edgeslim.devices.profile_report import profile_to_report
import edgeslim

art = Path({str(art)!r})
with TestClient(create_app(ServerSettings(models=[art], threads=1))) as c:
    body = {{"inputs": [{{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}}]}}
    assert c.post("/v2/models/tiny/infer", json=body).status_code == 200
with edgeslim.load(art, backend="openvino") as m:
    m.infer(np.zeros((1, 3, 16, 16), np.float32))
report = profile_to_report(art, Path({str(tmp_path / "prof")!r}), backends=["onnxruntime", "openvino"],
                           batch_sizes=[1], seconds=0.05, iterations=3, warmup=1, threads=1,
                           data_dir=Path({str(tmp_path / "images")!r}), progress=False)
entries = json.loads(report.read_text())["entries"]
assert all(e["status"] == "ok" and e["accuracy"]["samples"] == 20 for e in entries), entries
"""
    assert _imported_after(code) & {"torch", "nncf", "timm", "torch_pruning"} == set()


def test_the_verbs_and_the_pruning_configs_are_light_until_called():
    assert _imported_after(
        "import edgeslim\n"
        "verbs = [edgeslim.compress, edgeslim.export, edgeslim.pipeline, edgeslim.profile, edgeslim.serve]\n"
        "assert all(callable(v) for v in verbs), verbs\n"
        "from edgeslim.compress.prune import OneShot, PRUNE_METHODS\n"
        "assert PRUNE_METHODS.parse({'method': 'oneshot'}) == OneShot()\n"
        "import edgeslim.compress.prune\n"
        "assert callable(edgeslim.compress)  # still the verb once the subpackage is imported"
    ) == set()
