"""One error root for edgeslim.

Every error a user can cause derives from :class:`EdgeslimError` and also from the builtin it naturally is,
so ``except ValueError`` keeps working for callers who do not know edgeslim. Messages name the bad value and
say how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class EdgeslimError(Exception):
    """Root of every error edgeslim raises on purpose."""


class ConfigError(EdgeslimError, ValueError):
    """A recipe, option or argument is invalid."""


class UnknownNameError(ConfigError):
    """A registry lookup failed; the message lists the known names and the closest match."""


class DataError(EdgeslimError, ValueError):
    """A dataset is missing, empty, unreadable or does not match the task."""


class SourceError(EdgeslimError, RuntimeError):
    """A pretrained source cannot be loaded (offline, uncached, wrong file, wrong keys)."""


class TrainingError(EdgeslimError, RuntimeError):
    """Fine-tuning, pruning or quantization could not proceed."""


class ExportError(EdgeslimError, RuntimeError):
    """An exporter failed to write a model."""


class ValidationError(ExportError):
    """An exported model disagrees with its PyTorch reference beyond tolerance."""


class ArtifactError(EdgeslimError, RuntimeError):
    """An artifact directory is missing, incomplete or of an unknown format."""


class IntegrityError(ArtifactError):
    """A file in an artifact does not match the sha256 recorded in its manifest."""


class BackendError(EdgeslimError, RuntimeError):
    """A runtime backend failed to load or run a model."""


class InputError(EdgeslimError, ValueError):
    """Inference input has the wrong name, shape, dtype or content."""


class SearchError(EdgeslimError, RuntimeError):
    """A budget search found no candidate that meets every budget (the message names the binding one)."""


class MissingDependencyError(EdgeslimError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str | None = None, *, purpose: str | None = None) -> ModuleType:
    """Import an optional module lazily, or raise :class:`MissingDependencyError` naming the extra.

    Args:
        module: dotted module name, e.g. ``"tensorrt"``.
        extra: the edgeslim extra that installs it, e.g. ``"tensorrt"``.
        purpose: what it is needed for, used in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {purpose}" if purpose else ""
        fix = f"pip install 'edgeslim[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(f"'{module}' is needed{what} but is not installed ({exc}); fix: {fix}") from exc
