"""The package's import graph follows the pipeline: a stage never imports the CLI, the composer or a later stage.

Walks every module's imports with ``ast`` (nothing is executed), including the lazy imports inside functions: a
lazy import is still a dependency. The allowed graph is documented in DEVELOPERS.md ("Layout and import
direction"); change both together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeslim"

# lower number = lower layer; a module may import its own layer and the layers below it
SHARED = {
    "edgeslim.errors", "edgeslim.registry", "edgeslim._io", "edgeslim.artifact", "edgeslim.preprocess",
    "edgeslim.decision", "edgeslim.recipe", "edgeslim.methods", "edgeslim.models", "edgeslim.testing",
    "edgeslim._verbs", "edgeslim.recipes", "edgeslim.hardware",
    "edgeslim.field_reference",  # the input statistics both the export's val reference and the server compute
    "edgeslim.scoring",  # softmax, the deployed decision, critical FN: the one scoring every stage reports with
    # the recipe's optional search: section (pydantic only); the search itself is its own layer, above the composer
    "edgeslim.search.config",
}
LAYERS = [
    ("shared", lambda m: m in SHARED),
    # the runtime runs artifacts on a device (no torch, no compress); export validates every file through it
    ("runtime", lambda m: m.startswith("edgeslim.runtime")),
    ("compress", lambda m: m.startswith("edgeslim.compress")),
    ("export", lambda m: m.startswith("edgeslim.export")),
    ("devices", lambda m: m.startswith("edgeslim.devices")),
    ("server/pipeline", lambda m: m.startswith(("edgeslim.server", "edgeslim.pipeline", "edgeslim.summary"))),
    # the search runs whole pipelines (candidates) and profiles them: it sits on top of the composer
    ("search", lambda m: m.startswith("edgeslim.search")),
    ("cli", lambda m: m.startswith(("edgeslim.cli", "edgeslim.__main__"))),
]

# (importer, imported prefix): the only imports that go up, each with its reason
ALLOWED_UPWARD = {
    # the package root re-exports the public verbs of every stage, lazily (import edgeslim stays light)
    ("edgeslim", "edgeslim."),
    # Recipe.check_names looks the registry names up in the stages that own them; only load_recipe(check_names=True)
    # calls it, never parsing (tests/test_recipe.py checks that printing a recipe imports no stage)
    ("edgeslim.recipe", "edgeslim.compress.data"),
    ("edgeslim.recipe", "edgeslim.compress.sources"),
    ("edgeslim.recipe", "edgeslim.export"),
    ("edgeslim.recipe", "edgeslim.runtime"),
    # the quantize section is parsed by compress.quant.parse_quantize (pydantic only, no torch), which keeps the
    # version-1 flat-section upgrade beside the typed configs it produces; the prune configs come in the same way,
    # through PRUNE_METHODS' lazy plugin import (a string, so this walk does not see it)
    ("edgeslim.recipe", "edgeslim.compress.quant"),
}


def _layer(module: str) -> int | None:
    for i, (_, match) in enumerate(LAYERS):
        if match(module):
            return i
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ``import`` / ``from ... import`` of edgeslim in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("edgeslim")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("edgeslim"):
                continue
            if node.module is None or (node.level and not node.module):
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]  # from . import x: x is a module
            else:
                out.append((node.lineno, mod))
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        mine = _layer(importer)
        if importer == "edgeslim":
            continue  # the root: ALLOWED_UPWARD
        assert mine is not None, f"{importer} belongs to no layer: add it to LAYERS/SHARED in {__file__}"
        for line, imported in _imports(path):
            theirs = _layer(imported)
            if theirs is None or theirs <= mine:
                continue
            if any(importer == a and imported.startswith(b) for a, b in ALLOWED_UPWARD):
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {LAYERS[mine][0]} module {importer} imports"
                       f" {imported} ({LAYERS[theirs][0]})")
    return bad


def test_no_stage_imports_the_cli_the_composer_or_a_later_stage():
    bad = _violations()
    assert not bad, "imports against the layering of DEVELOPERS.md:\n" + "\n".join(bad)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    # the check itself must be able to fail: a lazy relative import of the CLI from a compress module is caught
    pkg = tmp_path / "edgeslim"
    (pkg / "compress").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "compress" / "__init__.py").write_text("")
    (pkg / "compress" / "x.py").write_text("def f():\n    from ..cli import app\n    from .. import pipeline\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    bad = _violations()
    assert len(bad) == 2 and "imports edgeslim.cli (cli)" in bad[0] and "edgeslim.pipeline" in bad[1]


@pytest.mark.parametrize("module", ["edgeslim.compress.prune.base", "edgeslim.methods"])
def test_the_plugin_base_imports_no_plugin(module):
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    plugins = {"lottery", "oneshot", "gradual", "nm", "structured", "transfer", "dense"}
    imported = {m.rpartition(".")[2] for _, m in _imports(path)}
    assert not imported & plugins


def test_training_does_not_import_the_pruning_methods_back():
    """The pruning methods train through compress.train; it must not import them (the old train <-> pruning cycle).
    A type-only import under ``if TYPE_CHECKING:`` is not a dependency."""
    path = PACKAGE / "compress" / "train.py"
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n) for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    runtime = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in typing_only]
    assert not [n.module for n in runtime if n.module and n.module.startswith("prune")]
    assert any(n.module == "checkpoint" for n in runtime)  # the walk sees its real imports
