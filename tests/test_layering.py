"""The package's import graph follows the pipeline: a stage never imports the CLI, the composer or a later stage,
and no module imports itself back through others (no import circles).

Walks every module's imports with ``ast`` (nothing is executed), including the lazy imports inside functions and
the type-only ones: a lazy import is still a dependency. The allowed graph is documented in DEVELOPERS.md ("Layout
and import direction"); change both together. Every exception below carries its reason, and an exception that no
longer occurs fails too, so the lists only shrink.
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
    "edgeslim._version",  # the version the manifests, reports and the server record, without the package root
    "edgeslim.scoring",  # softmax, the deployed decision, critical FN: the one scoring every stage reports with
    # the recipe's optional search: section (pydantic only); the search itself is its own layer, above the composer
    "edgeslim.search.config",
}
LAYERS = [
    ("shared", lambda m: m in SHARED),
    # the runtime runs artifacts on a device (no torch, no compress); export validates every file through it
    ("runtime", lambda m: m.startswith("edgeslim.runtime")),
    # INT8 (methods, handlers by method and format, NNCF, Q/DQ transforms): compress trains QAT models with it and
    # export quantizes every INT8 file through it, so it sits below both and imports neither
    ("quant", lambda m: m == "edgeslim.quant" or m.startswith("edgeslim.quant.")),
    ("compress", lambda m: m.startswith("edgeslim.compress")),
    ("export", lambda m: m.startswith("edgeslim.export")),
    ("devices", lambda m: m.startswith("edgeslim.devices")),
    ("server/pipeline", lambda m: m.startswith(("edgeslim.server", "edgeslim.pipeline", "edgeslim.summary"))),
    # the search runs whole pipelines (candidates) and profiles them: it sits on top of the composer
    ("search", lambda m: m.startswith("edgeslim.search")),
    ("cli", lambda m: m.startswith(("edgeslim.cli", "edgeslim.__main__"))),
]

# (importer, imported prefix) -> why: the only imports that go up
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("edgeslim", "edgeslim."): "the package root re-exports the public verbs of every stage, lazily (import edgeslim"
    " stays light)",
}

# (importer, imported) -> why: the imports that may close an import circle; none does. A new entry needs its reason
# (a lazy import inside a function, the back edge of a move not made yet); the recipe's name checks and the INT8
# methods' handlers, which closed the last ones, are now registered by the stages (edgeslim.recipe.RECIPE_CHECKS,
# edgeslim.quant)
ALLOWED_CIRCLE_EDGES: dict[tuple[str, str], str] = {}


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


def _graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over every module of the package (an imported name that is not
    a module counts as its module: ``from .x import f`` is an import of ``x``)."""
    mods = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}

    def module_of(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m, path in mods.items():
        for line, imported in _imports(path):
            target = module_of(imported)
            if target is not None and target != m:
                graph[m].setdefault(target, line)
    return graph


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles: for each strongly connected set of two or more modules, one path round it
    (``[a, b, ..., a]``)."""
    return [_round_trip(min(scc), scc, graph) for scc in _sccs(graph)]


def _sccs(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected sets of two or more modules, by Tarjan's algorithm (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                scc = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    scc.add(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    sccs.append(scc)
    return sccs


def _round_trip(start: str, scc: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside one circle (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w in scc and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def _without(graph: dict[str, dict[str, int]], edges) -> dict[str, dict[str, int]]:
    return {m: {t: line for t, line in ts.items() if (m, t) not in edges} for m, ts in graph.items()}


def _describe(path: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {path[-1]}"


def test_no_import_circles():
    graph = _graph()
    circles = _circles(_without(graph, ALLOWED_CIRCLE_EDGES))
    assert not circles, (
        "import circles (a lazy import is one too; break it, or add its back edge with a reason to"
        " ALLOWED_CIRCLE_EDGES):\n" + "\n".join(_describe(c, graph) for c in circles)
    )


def test_every_exception_has_a_reason_and_still_occurs():
    """An allowed import needs a sentence saying why; one that no longer occurs (or no longer closes a circle) is
    removed from the list, so the exceptions only shrink."""
    graph = _graph()
    for (importer, imported), why in ALLOWED_UPWARD.items():
        assert isinstance(why, str) and len(why.split()) >= 5, f"ALLOWED_UPWARD {importer} -> {imported}: no reason"
        assert any(t.startswith(imported) for t in graph.get(importer, {})), (
            f"ALLOWED_UPWARD {importer} -> {imported} no longer occurs: remove it")
    for (importer, imported), why in ALLOWED_CIRCLE_EDGES.items():
        assert isinstance(why, str) and len(why.split()) >= 5, f"ALLOWED_CIRCLE_EDGES {importer} -> {imported}: no reason"
        assert imported in graph.get(importer, {}), f"ALLOWED_CIRCLE_EDGES {importer} -> {imported} no longer occurs"
        back = [scc for scc in _sccs(graph) if importer in scc and imported in scc]
        assert back, f"ALLOWED_CIRCLE_EDGES {importer} -> {imported} closes no circle any more: remove it"


def test_the_circle_walk_sees_lazy_circles(tmp_path, monkeypatch):
    # the check itself must be able to fail: a lazy import that closes a circle is one
    pkg = tmp_path / "edgeslim"
    (pkg / "compress").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "compress" / "__init__.py").write_text("")
    (pkg / "compress" / "a.py").write_text("from .b import f\n")
    (pkg / "compress" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "compress" / "c.py").write_text("from edgeslim.compress.a import g\n")
    (pkg / "compress" / "d.py").write_text("from .a import g\n")  # imports into the circle, is not part of it
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    circles = _circles(_graph())
    assert circles == [["edgeslim.compress.a", "edgeslim.compress.b", "edgeslim.compress.c", "edgeslim.compress.a"]]
    graph = _graph()
    assert not _circles(_without(graph, {("edgeslim.compress.b", "edgeslim.compress.c")}))


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
