"""Export: ONNX, OpenVINO (and TensorRT) model files, validated against PyTorch and written as one artifact.

Every module of this package other than ``base`` (the artifact writer), ``contract`` (the exporter contract),
``gate`` and ``validate`` (what every written file passes) is an exporter plugin that registers itself in
:data:`EXPORTERS` when imported, or a helper they share; they are all imported here, so adding a format is adding
one file. Exporters import their heavy libraries (torch, onnx, openvino, nncf, tensorrt) only when they run, so
this import stays light. See :mod:`edgeslim.export.contract` for the exporter contract.

The package is also the verb: ``edgeslim.export(model, out_dir, manifest, formats=[...])`` calls
:func:`export_artifact`.
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

from .base import EXPORTERS as EXPORTERS
from .base import ExportContext as ExportContext
from .base import Exporter as Exporter
from .base import export_artifact as export_artifact
from .base import export_existing as export_existing
from .validate import validate_exports as validate_exports

_NOT_PLUGINS = {"base", "contract", "gate", "validate"}

# Import every exporter module so it registers; an import error in one is a bug and must surface.
for _mod in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _mod not in _NOT_PLUGINS and not _mod.startswith("_"):
        _importlib.import_module(f"{__name__}.{_mod}")

from .._verbs import make_callable as _make_callable  # noqa: E402

_make_callable(__name__, "edgeslim.export.base:export_artifact")

__all__ = ["EXPORTERS", "ExportContext", "Exporter", "export_artifact", "export_existing", "validate_exports"]
