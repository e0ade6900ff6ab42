"""The conformance tests every runtime backend passes: same inputs, same expectations.

A backend's test subclasses :class:`BackendConformance`, names its registry key and provides the
``model_path`` and ``options`` fixtures. ``test_backends.py`` fails when a registered backend has no subclass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeslim.errors import BackendError, ConfigError, InputError
from edgeslim.runtime import BACKENDS, Backend, BackendOptions, TensorSpec

NUM_CLASSES = 4
SIZE = 16
CLASSES = ["cat", "dog", "fox", "owl"]


class BackendConformance:
    """Subclass with ``backend_name`` set and the ``model_path`` / ``options`` fixtures overridden."""

    backend_name: str = ""
    #: max |logit difference| allowed against the PyTorch reference
    atol: float = 1e-4
    #: whether the test model has a dynamic batch dimension
    dynamic_batch: bool = True
    #: whether the runtime has a per-layer profiler behind :meth:`Backend.layer_times`
    layer_profiler: bool = True

    @pytest.fixture
    def model_path(self, tiny_models) -> Path:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @pytest.fixture
    def options(self) -> BackendOptions:
        return BackendOptions(threads=1)

    @pytest.fixture
    def runner(self, model_path, options):
        backend = BACKENDS.get(self.backend_name)(model_path, options)
        yield backend
        backend.close()

    # -- identity and metadata ----------------------------------------------------------------------------
    def test_registered_under_its_name(self, runner):
        assert isinstance(runner, Backend)
        assert type(runner) is BACKENDS.get(self.backend_name)
        assert runner.name == self.backend_name

    def test_io_specs_follow_the_artifact_contract(self, runner):
        batch = -1 if self.dynamic_batch else 1
        assert runner.inputs == [TensorSpec("input", "float32", (batch, 3, SIZE, SIZE))]
        assert [o.name for o in runner.outputs] == ["logits"]
        assert runner.outputs[0].dtype == "float32"
        assert runner.outputs[0].shape[1:] == (NUM_CLASSES,)

    def test_metadata(self, runner, model_path):
        meta = runner.metadata()
        assert meta["backend"] == self.backend_name
        assert meta["version"] and meta["version"][0].isdigit()
        assert meta["path"] == str(model_path)
        assert meta["threads"] == runner.options.threads
        assert meta["inputs"][0]["name"] == "input"
        assert meta["outputs"][0]["name"] == "logits"

    # -- results ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("n", [1, 5])
    def test_matches_pytorch_reference(self, runner, tiny_models, batch, n):
        if n > 1 and not self.dynamic_batch:
            pytest.skip("static-batch model")
        x = batch[:n]
        out = runner.infer({"input": x})
        assert set(out) == {"logits"}
        assert out["logits"].shape == (n, NUM_CLASSES)
        assert out["logits"].dtype == np.float32
        np.testing.assert_allclose(out["logits"], tiny_models.reference(x), atol=self.atol, rtol=0)

    def test_bare_array_equals_named_feed(self, runner, batch):
        np.testing.assert_array_equal(runner.infer(batch[:1])["logits"], runner.infer({"input": batch[:1]})["logits"])

    def test_repeated_calls_are_independent(self, runner, batch):
        # Catches backends returning views into reused output buffers.
        first = runner.infer(batch[:1])["logits"]
        kept = first.copy()
        runner.infer(batch[1:2])
        np.testing.assert_array_equal(first, kept)

    def test_read_only_input_and_reusing_the_callers_array(self, runner, batch):
        # The server passes read-only views of the request body; backends may read inputs in place (zero-copy),
        # so a caller overwriting its array after a call must not change that call's result.
        ro = np.frombuffer(batch[1:2].tobytes(), dtype=batch.dtype).reshape(batch[1:2].shape)
        assert not ro.flags.writeable
        np.testing.assert_array_equal(runner.infer(ro)["logits"], runner.infer(batch[1:2].copy())["logits"])
        x = batch[:1].copy()
        first = runner.infer(x)["logits"]
        x[:] = 0
        np.testing.assert_array_equal(first, runner.infer(batch[:1])["logits"])

    # -- per-layer times (profile --layers, the search's latency model) ----------------------------------
    def test_layer_times_come_from_the_runtime_and_leave_the_loaded_model_alone(self, runner, batch):
        before = runner.infer(batch[:1])["logits"]
        if not self.layer_profiler:
            with pytest.raises(BackendError, match=f"not supported by the {self.backend_name} backend"):
                runner.layer_times(batch[:1])
            return
        rows = runner.layer_times(batch[:1], runs=3)
        assert rows and all(set(r) == {"name", "type", "exec", "ms"} for r in rows)
        assert len({r["name"] for r in rows}) == len(rows)  # one row per layer, its runs folded into the median
        assert all(r["ms"] >= 0 for r in rows) and sum(r["ms"] for r in rows) > 0
        # TinyNet is convolutions and a linear head: the runtime's rows name its convolutions
        assert any("conv" in (r["type"] + r["name"]).lower() for r in rows)
        # profiled on a copy of its own: the loaded model runs as before, without the profiler
        np.testing.assert_array_equal(runner.infer(batch[:1])["logits"], before)

    def test_layer_times_check_their_input(self, runner, batch):
        with pytest.raises(InputError, match="float64"):
            runner.layer_times(batch[:1].astype(np.float64))
        with pytest.raises(ConfigError, match="runs must be a positive integer"):
            runner.layer_times(batch[:1], runs=0)

    # -- bad input ----------------------------------------------------------------------------------------
    def test_unknown_input_name(self, runner, batch):
        with pytest.raises(InputError, match="unknown \\['image'\\], missing \\['input'\\]"):
            runner.infer({"image": batch[:1]})

    @pytest.mark.parametrize(
        "shape", [(1, 4, SIZE, SIZE), (3, SIZE, SIZE), (1, 3, SIZE + 1, SIZE)], ids=["channels", "rank", "height"]
    )
    def test_wrong_shape(self, runner, shape):
        with pytest.raises(InputError, match="shape"):
            runner.infer({"input": np.zeros(shape, np.float32)})

    def test_wrong_dtype(self, runner, batch):
        with pytest.raises(InputError, match="float64"):
            runner.infer({"input": batch[:1].astype(np.float64)})

    # -- lifecycle and loading errors ---------------------------------------------------------------------
    def test_context_manager_closes(self, model_path, options, batch):
        with BACKENDS.get(self.backend_name)(model_path, options) as backend:
            assert backend.infer(batch[:1])["logits"].shape == (1, NUM_CLASSES)
        with pytest.raises(BackendError, match="closed"):
            backend.infer(batch[:1])
        backend.close()  # idempotent

    def test_missing_model_file(self, tmp_path, options):
        with pytest.raises(BackendError, match="does not exist"):
            BACKENDS.get(self.backend_name)(tmp_path / "missing.model", options)

    def test_unknown_option_is_named(self, model_path, options):
        bad = BackendOptions(device=options.device, threads=options.threads, extra={**options.extra, "thredas": 2})
        with pytest.raises(ConfigError, match="unknown option 'thredas'"):
            BACKENDS.get(self.backend_name)(model_path, bad)
