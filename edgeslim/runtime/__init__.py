"""One inference API over PyTorch, ONNX Runtime, OpenVINO and TensorRT, and any runner a plugin adds.

>>> from edgeslim.runtime import load
>>> with load("artifacts/tiny", backend="openvino") as model:   # doctest: +SKIP
...     print(model.predict("cat.jpg").name)

Runners (backends) are found two ways, and nothing else lists them:

* built-in: every module of this package is a runner module that registers itself in :data:`BACKENDS` when
  imported, except the contract and helpers in ``_NOT_RUNNERS`` (and ``_private`` modules). Importing the package
  imports them all (found with ``pkgutil``, as ``edgeslim.export`` finds its exporters), so adding a built-in
  runner is adding one file. A runner imports its runtime library only when a model is loaded, so this import
  stays light.
* plugins: the ``edgeslim.runners`` entry-point group (:data:`ENTRY_POINT_GROUP`) of any installed distribution,
  ``name = "package.module:RunnerClass"`` (or a module that registers itself). :data:`BACKENDS` loads the group
  lazily, on its first lookup or listing; a broken plugin is left out with a :class:`RunnerPluginWarning`.

Every format <-> backend question (which runner validates an ONNX file, which file the openvino backend runs,
which Triton platform serves it) is answered from the runner classes by :mod:`edgeslim.runtime.runners`.
See DEVELOPERS.md, "Adding a runtime backend".
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

from .base import BACKENDS as BACKENDS
from .base import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from .base import Backend as Backend
from .base import BackendOptions as BackendOptions
from .base import RunnerPluginWarning as RunnerPluginWarning
from .base import TensorSpec as TensorSpec
from .predictor import Prediction as Prediction
from .predictor import Predictor as Predictor
from .predictor import load as load
from .runners import file_format as file_format
from .runners import formats_of as formats_of
from .runners import from_model as from_model
from .runners import runner_for_format as runner_for_format
from .runners import runners as runners

_NOT_RUNNERS = {"base", "predictor", "runners"}

# Import every built-in runner module so it registers; an import error in one is a bug and must surface.
for _mod in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _mod not in _NOT_RUNNERS and not _mod.startswith("_"):
        _importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "Backend", "BackendOptions", "Prediction", "Predictor",
           "RunnerPluginWarning", "TensorSpec", "file_format", "formats_of", "from_model", "load", "runner_for_format",
           "runners"]
