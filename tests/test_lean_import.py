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
