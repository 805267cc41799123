"""The package's import graph: every napari_mpf import at module level, no cycle, and an engine
that imports neither napari nor Qt.

Each module of ``napari_mpf`` is parsed with ``ast`` (nothing is imported). An import inside a
function would hide a dependency from this graph (the five-module circle model -> predict -> heads
-> network -> model once hid that way), so none is allowed for napari_mpf modules; lazy imports of
optional third-party modules (zarr, dask, tifffile, ...) inside the function that alone uses them
are fine. Imports under ``if TYPE_CHECKING:`` are edges too: a cycle kept for annotations is still a
cycle in the design (the arithmetic of :mod:`napari_mpf.engine.network.mpf` uses the ``Model`` below
it; the model does not evaluate itself).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "napari_mpf"
PACKAGE = "napari_mpf"
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (resolved, absolute)
    line: int
    in_function: bool
    type_only: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads: ``from pkg import name`` loads ``pkg.name`` when that
    is a module of the package, else ``pkg``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _resolve(module, is_package, node)
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, is_package, node):
                found.append(Import(module, target, node.lineno, in_function, type_only))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_only)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_only)

    visit(tree, False, False)
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _ours(target: str) -> bool:
    return target == PACKAGE or target.startswith(PACKAGE + ".")


def _graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in imports:
        if _ours(imp.target) and imp.target != imp.module:  # imports for annotations only count too
            graph[imp.module].add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph.get(root, ())))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_parser_sees_the_package():
    assert "napari_mpf.engine" in MODULES and "napari_mpf.cli" in MODULES
    edges = _graph(IMPORTS)
    assert "napari_mpf.engine" in edges["napari_mpf.cli"]  # relative imports are resolved
    assert any(_ours(t) for t in edges["napari_mpf.engine"])


def test_find_cycle_reports_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_napari_mpf_module_is_imported_inside_a_function():
    lazy = sorted({f"{MODULES[i.module].relative_to(ROOT.parent)}:{i.line} imports {i.target}"
                   for i in IMPORTS if i.in_function and _ours(i.target)})
    assert not lazy, "imports of napari_mpf modules inside functions:\n" + "\n".join(lazy)


def test_the_import_graph_is_acyclic():
    cycle = find_cycle(_graph(IMPORTS))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _layer(module: str) -> str | None:
    """The engine's sub-package (or top-level module) of ``module``; None outside the engine and
    for the engine's own ``__init__`` (the public names, above every layer)."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["napari_mpf", "engine"] and len(parts) > 2 else None


def test_the_engines_sub_packages_are_layers():
    """The sub-packages of the engine (kernels, network, io, training, scale, post) import each
    other in one direction only."""
    layers: dict[str, set[str]] = {}
    for module, targets in _graph(IMPORTS).items():
        a = _layer(module)
        if a is None:
            continue
        layers.setdefault(a, set()).update(b for b in map(_layer, targets) if b is not None and b != a)
    assert {"napari_mpf.engine.kernels", "napari_mpf.engine.network"} <= set(layers)
    cycle = find_cycle(layers)
    assert cycle is None, "sub-packages import each other: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("napari_mpf.engine")))
def test_the_engine_imports_no_napari_and_no_qt(name):
    gui = [f"line {i.line}: {i.target}" for i in IMPORTS
           if i.module == name and (i.target.split(".")[0] in GUI or i.target.split(".")[0].startswith("Qt"))
           or i.module == name and _ours(i.target) and not i.target.startswith("napari_mpf.engine")]
    assert not gui, f"{name} imports napari, Qt or the GUI part of the plugin: {gui}"
