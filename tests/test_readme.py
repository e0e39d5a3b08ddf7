"""The README's commands and snippet stay true."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import subprocess
import sys

from .chatclient import LineClient

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.DOTALL)


async def test_library_snippet_runs(tmp_path: pathlib.Path) -> None:
    snippet = next(block for block in python_blocks() if "serve_tcp" in block)
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-W", "error", str(script)], stdout=subprocess.PIPE, bufsize=0, env=env)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline), 20)
        host, port = re.match(rb"chat on (.+):(\d+)", line).groups()  # type: ignore[union-attr]
        async with await LineClient.connect((host.decode(), int(port)), "alice") as alice:
            assert await alice.line() == "greeter: welcome, alice!"
            await alice.send("!who")
            assert await alice.line() == "greeter: alice"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_readme_opens_with_the_two_commands_ci_runs() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.DOTALL)[:2]
    assert "python -m asyncchat.tcp" in commands[0]
    assert commands[1].endswith("python -m pytest")
    ci = (pathlib.Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
