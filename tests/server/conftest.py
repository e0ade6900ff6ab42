"""Fixtures for the server tests: a tiny real ONNX artifact and the in-process runtime as the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_helpers import build_tiny_artifact


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifact(tmp_path_factory.mktemp("artifacts") / "tiny")


@pytest.fixture(scope="session")
def reference(artifact: Path):
    """The in-process runtime on the same artifact: what every server answer is compared with."""
    from edgeslim import runtime

    predictor = runtime.load(artifact, threads=1)
    yield predictor
    predictor.close()


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory):
    """The field-monitoring tests' digits artifact (tests/server/field_helpers.py), built once for the session."""
    from field_helpers import build_digits_model

    return build_digits_model(tmp_path_factory.mktemp("field"))


@pytest.fixture(scope="session")
def predictor(digits_model):
    """That artifact in ONNX Runtime, one thread."""
    from edgeslim import runtime

    p = runtime.load(digits_model.artifact, backend="onnxruntime", threads=1)
    yield p
    p.close()
