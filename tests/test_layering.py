"""medens' layers, read from the source: library code never imports the commands, and no module imports itself
through others.

Every ``import`` and ``from ... import`` of every module under ``medens/`` counts, wherever it stands (a function's
lazy import too), with relative imports resolved. ``from package import name`` is an import of the submodule
``package.name`` when there is one, else of the package. The package a module lies in is not counted as imported
by it: Python runs a package's ``__init__`` before its submodules, which is not a cycle of the code.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Library code: may use ``medens.flags``, ``medens.errors``, ``medens.layout`` and each other, never the commands.
LIBRARY = ("medens.inference", "medens.evaluate", "medens.data", "medens.models", "medens.engine", "medens.ops")
COMMANDS = "medens.train"


def _package_root() -> Path:
    """The ``medens`` sources the tests run against: the installed package (or the checkout's, when it is that)."""
    spec = importlib.util.find_spec("medens")
    assert spec is not None and spec.submodule_search_locations, "medens is not importable"
    return Path(next(iter(spec.submodule_search_locations)))


ROOT = _package_root()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """``(imported medens module, line)`` for every import in ``path``, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def _graph() -> dict[str, dict[str, int]]:
    """``{module: {medens module it imports: first line}}``."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for target, line in _imports(module, path):
            if not _within(target, "medens"):
                continue
            while target not in MODULES and "." in target:  # ``import medens.x.y`` of a name inside a module
                target = target.rpartition(".")[0]
            if target != module and not _within(module, target):  # a package is not imported by its own parts
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_the_imports_it_must_judge():
    """The checks below would be empty if the walk missed imports: it finds known ones, lazy and relative."""
    graph = _graph()
    assert len(MODULES) > 50
    assert "medens.data.registry" in graph["medens.data.options"]  # relative: from .registry import ...
    assert "medens.flags" in graph["medens.data.options"]
    assert "medens.engine" in graph["medens.cli"]  # a function's lazy import
    assert "medens.train.pipeline" in graph["medens.train.units"]  # lazy, inside UnitJob.__call__
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_medens_modules():
    graph = _graph()
    cycles = _cycles(graph)
    described = [
        " -> ".join(f"{m} (imports {t} at line {graph[m][t]})" for m in cycle for t in graph[m] if t in cycle)
        for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


@pytest.mark.parametrize("layer", LIBRARY)
def test_library_code_never_imports_the_commands(layer):
    graph = _graph()
    found = [
        f"{module} imports {target} ({MODULES[module].relative_to(ROOT.parent)}:{line})"
        for module, edges in graph.items() if _within(module, layer)
        for target, line in edges.items() if _within(target, COMMANDS)
    ]
    assert not found, "\n".join(found)
