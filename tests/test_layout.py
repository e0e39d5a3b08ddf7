"""The package's layout: no import cycles between asyncchat modules.

Every import of one asyncchat module by another counts, wherever it is
written: at the top, inside a function, or under ``if TYPE_CHECKING:``.
Exempt are the ``__main__`` modules (entry points nothing imports) and the
lazy ``__getattr__`` of ``asyncchat/__init__.py`` (PEP 562).  Importing a
submodule also runs its package's ``__init__``; that implicit edge is not
counted, so a package may re-export its submodules.
"""

from __future__ import annotations

import ast
import pathlib

import asyncchat

PACKAGE = pathlib.Path(asyncchat.__file__).parent
ROOT = "asyncchat"

# No cycle is allowed: the design's arrows run one way.
ALLOWED_CYCLES: list[frozenset[str]] = []


def module_names() -> dict[str, pathlib.Path]:
    """``{dotted name: path}`` of every module and package of asyncchat."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _lazy_getattr(tree: ast.Module) -> set[ast.AST]:
    """The nodes of ``asyncchat/__init__.py``'s module-level ``__getattr__``."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return set(ast.walk(node))
    return set()


def imports_of(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """The asyncchat modules that module *name* (at *path*) imports anywhere in its code."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _lazy_getattr(tree) if name == ROOT else set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # "from pkg import sub" imports the module pkg.sub when there is one.
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {
        name: imports_of(name, path, set(names))
        for name, path in names.items()
        if name.rpartition(".")[2] != "__main__"
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the graph's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One import cycle through the first module of *component*, as a path that ends where it starts."""
    inside = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to start
        node = queue.pop(0)
        for succ in sorted(graph[node] & inside):
            if succ == start:
                return [*paths[node], start]
            if succ not in paths:
                paths[succ] = [*paths[node], succ]
                queue.append(succ)
    raise AssertionError(f"no cycle in {component}")


def test_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "asyncchat.tcp" in graph["asyncchat.cli"]  # imported inside a function
    assert "asyncchat.tcp" in graph[ROOT]  # under "if TYPE_CHECKING:"
    assert "asyncchat.bench.worker" in graph["asyncchat.bench.coordinator"]
    assert not any(name.endswith("__main__") for name in graph)


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [component for component in strongly_connected(graph) if frozenset(component) not in ALLOWED_CYCLES]
    shown = [" -> ".join(a_cycle(graph, component)) for component in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(shown)


def test_transports_never_import_cli() -> None:
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith(("asyncchat.tcp", "asyncchat.udp")):
            assert "asyncchat.cli" not in imported, name
