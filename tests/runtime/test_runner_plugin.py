"""A new backend as a plugin, end to end: the worked example of DEVELOPERS.md ("Adding a runtime backend").

A distribution installed beside edgeslim (here: a package and its ``.dist-info`` in a temporary directory on
``sys.path``, which is what ``pip install`` leaves behind) adds a ``numpy`` format in two files: an exporter that
writes a linear classifier's weights as ``model.npz``, and a runner that computes ``x.flatten() @ W.T + b`` with
numpy, declared in the ``edgeslim.runners`` entry-point group. Nothing in edgeslim names it, yet export validates
its file against PyTorch through its runner, ``runtime.load`` runs it, and the profiler measures it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeslim.errors import BackendError
from edgeslim.runtime import BACKENDS, RunnerPluginWarning

SIZE = 8  # 3x8x8 inputs, 10 classes

EXPORTER = '''
"""The numpy exporter: a linear classifier's (Flatten + Linear) weights as one .npz file."""

import io

import numpy as np

from edgeslim._io import atomic_write_bytes
from edgeslim.artifact import ModelFile
from edgeslim.export import EXPORTERS, Exporter


@EXPORTERS.register("numpy")
class NumpyExporter(Exporter):
    name = "numpy"
    precisions = ("fp32",)

    def export(self, ctx):
        import torch

        linear = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear))
        buf = io.BytesIO()
        np.savez(buf, weight=linear.weight.detach().numpy(), bias=linear.bias.detach().numpy(),
                 input_shape=np.asarray(ctx.input_dims()))
        atomic_write_bytes(ctx.path("model.npz"), buf.getvalue())
        return [ModelFile(format="numpy", precision="fp32", path="model.npz")]
'''

RUNNER = '''
"""The numpy runner: ``logits = x.reshape(n, -1) @ W.T + b`` from the exporter's model.npz."""

import numpy as np

from edgeslim.errors import BackendError
from edgeslim.runtime import Backend, TensorSpec


class NumpyRunner(Backend):
    name = "numpy"
    formats = ("numpy",)
    suffix = ".npz"

    @classmethod
    def classify_layer(cls, row):
        return "fc" if row["type"] == "MatMul" else "other"

    def _load(self):
        if not self.path.is_file():
            raise BackendError(f"numpy model {self.path} does not exist")
        with np.load(self.path) as f:
            self._w, self._b = f["weight"].astype(np.float32), f["bias"].astype(np.float32)
            shape = tuple(int(d) for d in f["input_shape"])
        self.inputs = [TensorSpec("input", "float32", shape)]
        self.outputs = [TensorSpec("logits", "float32", (shape[0], len(self._b)))]

    def _infer(self, feeds):
        x = feeds["input"]
        return {"logits": (x.reshape(len(x), -1) @ self._w.T + self._b).astype(np.float32)}

    def _layer_times(self, feeds, runs):
        import time

        times = []
        for _ in range(runs):
            t = time.perf_counter()
            self._infer(feeds)
            times.append((time.perf_counter() - t) * 1e3)
        return [{"name": "linear", "type": "MatMul", "exec": "numpy", "ms": float(np.median(times))}]
'''


def _install(site: Path, package: str, files: dict[str, str], entry_points: str) -> None:
    """What ``pip install`` leaves: the package and its dist-info with the entry points."""
    (site / package).mkdir(parents=True)
    for name, text in files.items():
        (site / package / name).write_text(textwrap.dedent(text))
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_site(tmp_path):
    """A temporary site directory on sys.path; every runner, exporter and module it added is removed after."""
    from edgeslim.export import EXPORTERS

    site = tmp_path / "site"
    site.mkdir()
    before_runners, before_exporters = set(BACKENDS.names()), set(EXPORTERS.names())
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()
        for name in set(BACKENDS.names()) - before_runners:
            BACKENDS.unregister(name)
        for name in set(EXPORTERS.names()) - before_exporters:
            EXPORTERS.unregister(name)
        for mod in [m for m in sys.modules if m.startswith(("edgeslim_numpy_runner", "edgeslim_broken_runner"))]:
            del sys.modules[mod]


@pytest.fixture
def numpy_plugin(plugin_site):
    _install(plugin_site, "edgeslim_numpy_runner", {"__init__.py": "", "exporter.py": EXPORTER, "runner.py": RUNNER},
             """
             [edgeslim.runners]
             numpy = edgeslim_numpy_runner.runner:NumpyRunner
             """)
    return plugin_site


def _linear_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 10)).eval()


def _manifest():
    from edgeslim.artifact import Manifest, Preprocessing, TensorInfo

    return Manifest(name="linear", arch="", classes=[str(i) for i in range(10)], critical=[3],
                    input=TensorInfo(name="input", shape=[-1, 3, SIZE, SIZE]),
                    outputs=[TensorInfo(name="logits", shape=[-1, 10])],
                    preprocessing=Preprocessing(resize=SIZE, crop=SIZE))


def test_an_installed_runner_plugin_exports_validates_loads_and_profiles(numpy_plugin, tmp_path):
    import torch

    from edgeslim import runtime
    from edgeslim.devices.profiler import ProfileConfig, profile_artifact
    from edgeslim.export import export_artifact
    from edgeslim.export.validate import DEFAULT_BACKENDS

    # the runner is found through its entry point, on the first lookup that misses it
    assert "edgeslim_numpy_runner.runner" not in sys.modules
    runner_cls = runtime.BACKENDS.get("numpy")
    assert runner_cls.__module__ == "edgeslim_numpy_runner.runner"
    assert runtime.runner_for_format("numpy") is runner_cls and runtime.formats_of("numpy") == ("numpy",)
    assert DEFAULT_BACKENDS["numpy"] == "numpy"  # export validation checks the format with its own runner
    importlib.import_module("edgeslim_numpy_runner.exporter")  # an exporter registers in its module

    model = _linear_model()
    x = np.random.default_rng(0).standard_normal((40, 3, SIZE, SIZE)).astype(np.float32)
    y = np.arange(40) % 10
    with torch.inference_mode():
        reference = model(torch.from_numpy(x)).numpy()
    art = tmp_path / "art"
    manifest = export_artifact(model, art, _manifest(), formats=["numpy"], precisions=["fp32"], validation=(x, y),
                               strict=True)
    report = manifest.validation
    assert report["passed"] and report["models"]["model.npz"]["backend"] == "numpy"
    assert report["models"]["model.npz"]["max_abs_diff"] < 1e-4

    # runtime.load runs the file with the plugin's runner: the same logits as PyTorch, computed by numpy
    with runtime.load(art, backend="numpy") as pred:
        assert isinstance(pred.backend, runner_cls)
        logits = pred.backend.infer(x)["logits"]
        # the search's latency model reads its layers, classified by the runner (a MatMul is an fc layer)
        from edgeslim.search.latency import _layer_rows

        assert [r["kind"] for r in _layer_rows(pred.backend, (1, 3, SIZE, SIZE), runs=3)] == ["fc"]
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)

    # the profiler plans, loads, times and scores it like any backend
    entries = profile_artifact(art, backends=["numpy"], cfg=ProfileConfig(warmup=1, iterations=5, seconds=0.0,
                                                                          batch_sizes=(1,), throughput=False),
                               progress=False, data=(x, y), layers=True)
    assert [e["status"] for e in entries] == ["ok"]
    entry = entries[0]
    assert entry["backend"]["name"] == "numpy" and entry["latency_ms"]["median"] > 0
    assert [r["type"] for r in entry["layer_profile"]["layers"]] == ["MatMul"]  # the runner's own layer times
    assert entry["accuracy"]["accuracy"] == pytest.approx(float((reference.argmax(1) == y).mean()))


def test_a_broken_runner_plugin_is_left_out_with_a_warning_that_names_it(plugin_site):
    _install(plugin_site, "edgeslim_broken_runner", {"__init__.py": "", "runner.py": "raise ImportError('no libfoo')"},
             """
             [edgeslim.runners]
             broken = edgeslim_broken_runner.runner:BrokenRunner
             """)
    with pytest.warns(RunnerPluginWarning, match=r"'broken'.*edgeslim_broken_runner.*no libfoo"):
        with pytest.raises(BackendError, match=r"plugin that failed to load.*edgeslim_broken_runner"):
            BACKENDS.get("broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the built-in runners are unaffected, and the warning is not repeated
        assert BACKENDS.get("onnxruntime").formats == ("onnx",)
        with pytest.raises(BackendError, match="no libfoo"):
            BACKENDS.get("broken")
