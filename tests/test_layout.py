"""The import graph of the project's packages: no circles, and no module importing a layer above its own.

Read from the source with `ast` (nothing is imported), counting imports inside functions too: a lazy import that
closes a circle is still a circle. Imports under `if TYPE_CHECKING:` are type hints only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("curation", "operators", "captioner", "trainer", "pipelines")

# Layers, lowest first; a module may import its own layer and the layers below, never one above.
CORE = ("curation.errors", "curation.typed", "curation.schema", "curation.outfs", "curation.operator", "curation.config",
        "curation.catalog", "curation.decide", "curation.models")
INGEST = ("curation.ingest",)
PASSES = ("curation.rayinit", "curation.graph", "curation.manifest", "curation.progress", "curation.logfilter",
          "curation.dedup",
          "curation.clustering", "curation.stages", "curation.resume", "curation.report")
PLUGINS = ("operators", "captioner", "curation.testing")
RUN = ("curation.run", "curation.runner")
TOP = ("curation.cli", "curation.label", "captioner.cli", "pipelines", "trainer")
LAYERS = (CORE, INGEST, PASSES, PLUGINS, RUN, TOP)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Project modules a module's code imports (`from pkg import mod` resolves to the module when it is one)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, over every package of the repository."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    return {m: _imports(ast.parse(p.read_text(), str(p)), modules) - {m} for m, p in files.items()}


def _layer(module: str) -> int | None:
    best = None  # the longest prefix wins: curation.cli is TOP although curation.* modules are lower
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    return None if best is None else best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_every_module_has_a_layer():
    graph = import_graph()
    assert not [m for m in graph if _layer(m) is None and "." in m], "add new modules to a layer"


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_no_upward_imports():
    graph = import_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m))
    assert upward == []


def test_the_checks_can_fail():
    """The two checks see a circle and an upward import when there is one."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from curation.run import run_pipeline\n")
    assert _imports(tree, {"curation.run"}) == {"curation.run"}
    assert _layer("curation.run") > _layer("curation.config")
    hidden = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import curation.run\n")
    assert _imports(hidden, {"curation.run"}) == set()
