"""edgeslim: compress a pretrained image model, export it, serve it and profile it on the device.

The public verbs are re-exported here lazily, so ``import edgeslim`` stays light (no torch, onnxruntime or
openvino until a verb is used)::

    import edgeslim
    result = edgeslim.pipeline(edgeslim.load_recipe("default"), "out")        # every stage, from a recipe
    with edgeslim.load("out/compressed", backend="openvino", precision="int8") as model:
        print(model.predict("cat.jpg").name)

Each stage is also a verb taking the config that varies: ``compress(model, data, prune=OneShot(...))``,
``export(model, out_dir, manifest, formats=[...])``, ``profile(artifact, backends=[...])``, ``serve(settings)``.
``compress``, ``export`` and ``pipeline`` are callable modules (their subpackages keep working as packages).
``run_pipeline``, ``export_artifact`` and ``profile_artifact`` are the older names of the same functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# public name -> module that defines it (or "module:attribute" when the names differ; "module:" is the module)
_LAZY = {
    "compress": ".compress:",
    "export": ".export:",
    "pipeline": ".pipeline:",
    "profile": ".devices.profiler:profile_artifact",
    "serve": ".server:serve",
    "load": ".runtime",
    "Predictor": ".runtime",
    "Prediction": ".runtime",
    "load_recipe": ".recipe",
    "Recipe": ".recipe",
    "run_pipeline": ".pipeline",
    "load_pretrained": ".compress.sources",
    "load_data": ".compress.data",
    "export_artifact": ".export",
    "load_manifest": ".artifact",
    "Manifest": ".artifact",
    "profile_artifact": ".devices.profiler",
    "EdgeslimError": ".errors",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .artifact import Manifest as Manifest, load_manifest as load_manifest
    from .compress.data import load_data as load_data
    from .compress.sources import load_pretrained as load_pretrained
    from . import compress as compress, export as export, pipeline as pipeline
    from .devices.profiler import profile_artifact as profile  # noqa: F401 - the verb, re-exported
    from .devices.profiler import profile_artifact as profile_artifact
    from .errors import EdgeslimError as EdgeslimError
    from .export import export_artifact as export_artifact
    from .pipeline import run_pipeline as run_pipeline
    from .recipe import Recipe as Recipe, load_recipe as load_recipe
    from .runtime import Prediction as Prediction, Predictor as Predictor, load as load
    from .server import serve as serve


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeslim' has no attribute {name!r}")
    module, colon, attr = module.partition(":")
    imported = importlib.import_module(module, __name__)
    value = imported if colon and not attr else getattr(imported, attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
