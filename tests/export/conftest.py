"""Fixtures of the export tests (helpers live in export_testlib.py, importable by every test module)."""

from __future__ import annotations

import pytest

from export_testlib import Trained, train_tiny


@pytest.fixture(scope="session")
def trained() -> Trained:
    """TinyNet trained on sklearn digits; non-trivial BatchNorm statistics, test accuracy > 0.8."""
    return train_tiny()
