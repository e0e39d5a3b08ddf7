"""Public names, lazy transports, and the purity of the core."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import asyncchat

PACKAGE = pathlib.Path(asyncchat.__file__).parent
# The core, as DESIGN.md names it: no I/O, no clock, directly or through anything it imports.
PURE = [
    "errors",
    "limits",
    "netaddr",
    "framing",
    "commands",
    "protocol",
    "events",
    "members",
    "broadcast",
    "hub",
    "session",
    "cluster",
    "bus",
    "_udpwire",
]
FORBIDDEN = {"asyncio", "socket", "time", "os", "redis", "uvloop", "selectors", "ssl", "threading", "subprocess"}


def test_every_public_name_resolves() -> None:
    for name in asyncchat.__all__:
        assert getattr(asyncchat, name) is not None, name
    assert sorted(dir(asyncchat)) == sorted(asyncchat.__all__)


def test_transports_are_imported_lazily() -> None:
    code = "import sys, asyncchat; print('asyncchat.tcp' in sys.modules, 'asyncio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(asyncchat modules, other top-level modules) that module *name* imports anywhere in it.

    Imports inside functions and under ``if TYPE_CHECKING:`` count too.
    """
    path = PACKAGE / f"{name.replace('.', '/')}.py"
    if not path.exists():
        path = PACKAGE / name.replace(".", "/") / "__init__.py"
    package = name.rpartition(".")[0] if path.name != "__init__.py" else name
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                (ours.add(alias.name[len("asyncchat.") :]) if root == "asyncchat" else others.add(root))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
                if node.module:
                    ours.add(target)
                else:
                    ours.update(".".join([*base, alias.name]) for alias in node.names)
            elif node.module:
                root = node.module.split(".")[0]
                (ours.add(node.module[len("asyncchat.") :]) if root == "asyncchat" else others.add(root))
    return {m for m in ours if m}, others


def test_core_does_no_io() -> None:
    """Every core module, and everything it imports from asyncchat, stays off I/O and the clock."""
    for name in PURE:
        seen: set[str] = set()
        todo = [name]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            ours, others = imports_of(module)
            assert not others & FORBIDDEN, f"{module}.py (imported by {name}.py) imports {others & FORBIDDEN}"
            todo.extend(ours)
        assert seen <= set(PURE) | {""}, f"{name}.py reaches non-core modules {seen - set(PURE)}"


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
