"""Callable modules: ``edgeslim.compress``, ``edgeslim.export`` and ``edgeslim.pipeline`` are verbs and modules.

The public verbs share their names with the subpackages that implement them. A module cannot be both a package
attribute and a function, so those modules are made callable: ``edgeslim.compress(model, data, prune=...)`` calls
:func:`edgeslim.compress.api.compress` whether or not ``edgeslim.compress`` was imported as a package first, and
``edgeslim.compress.prune`` still names the subpackage.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def make_callable(module_name: str, target: str) -> None:
    """Let the module ``module_name`` be called as ``target`` (``"package.module:function"``, imported lazily)."""
    module = sys.modules[module_name]
    target_module, _, attr = target.partition(":")

    class VerbModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(target_module), attr)(*args, **kwargs)

    VerbModule.__name__ = f"VerbModule[{target}]"
    VerbModule.__call__.__doc__ = f"Call :func:`{target_module}.{attr}`."
    module.__class__ = VerbModule
