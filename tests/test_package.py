"""Public names, lazy transports, and the purity of the core."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import asyncchat

PACKAGE = pathlib.Path(asyncchat.__file__).parent
PURE = ["errors", "limits", "netaddr", "framing", "protocol", "events", "hub", "session"]
FORBIDDEN = {"asyncio", "socket", "time", "redis", "uvloop", "selectors", "ssl", "threading"}


def test_every_public_name_resolves() -> None:
    for name in asyncchat.__all__:
        assert getattr(asyncchat, name) is not None, name
    assert sorted(dir(asyncchat)) == sorted(asyncchat.__all__)


def test_transports_are_imported_lazily() -> None:
    code = "import sys, asyncchat; print('asyncchat.tcp' in sys.modules, 'asyncio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_core_does_no_io() -> None:
    for name in PURE:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{name}.py imports {roots & FORBIDDEN}"


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
