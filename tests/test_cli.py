"""`python -m asyncchat.tcp` as a user runs it: a real process, real signals."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import pytest

import asyncchat

from .chatclient import LineClient

LISTEN = re.compile(rb"serving TCP on \('127\.0\.0\.1', (\d+)\)")


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_documents_every_option_and_no_runpy_warning() -> None:
    result = run_module("asyncchat.tcp", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for option in ("--host", "--port", "--log-level", "--loop", "--history", "--version", "--max-line-bytes"):
        assert option in result.stdout


def test_version() -> None:
    result = run_module("asyncchat.tcp", "--version")
    assert result.stdout.strip() == f"asyncchat {asyncchat.__version__}"


def test_bad_limit_is_a_usage_error() -> None:
    result = run_module("asyncchat.tcp", "--max-line-bytes", "0")
    assert result.returncode == 2
    assert "Limits.max_line_bytes must be > 0" in result.stderr


class ServerProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "error", "-m", "asyncchat.tcp", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: communicate() must see what readline() has not consumed
        )
        self.stderr = b""

    async def port(self) -> int:
        assert self.proc.stderr is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(20):
            while True:
                line = await loop.run_in_executor(None, self.proc.stderr.readline)
                assert line, "server exited before listening"
                self.stderr += line
                match = LISTEN.search(line)
                if match:
                    return int(match.group(1))

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        _, err = self.proc.communicate(timeout=30)
        self.stderr += err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_shuts_down_cleanly_with_a_notice(loop: str, signum: int) -> None:
    server = ServerProcess("--loop", loop, "--history", "5")
    try:
        port = await server.port()
        async with await LineClient.connect(("127.0.0.1", port), "alice") as alice:
            await alice.send("/ping")
            assert await alice.line() == "*** pong"
            code = await asyncio.get_running_loop().run_in_executor(None, server.stop, signum)
            assert await alice.eof() == ["*** closing: server is shutting down"]
        assert code == 0, server.stderr.decode()
        text = server.stderr.decode()
        assert "Traceback" not in text
        assert "was destroyed but it is pending" not in text
        assert f"running on {loop} loop" in text
    finally:
        server.kill()


# -- every entry point runs each module once, under its package name (`-X importtime` shows every import)

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| (\s*)(\S+)$")


def imported_modules(stderr: str) -> list[str]:
    """The modules ``-X importtime`` reports, in the order their imports finished."""
    return [match[2] for line in stderr.splitlines() if (match := IMPORT_LINE.match(line))]


@pytest.mark.parametrize(
    ("module", "args", "transports"),
    [
        ("asyncchat.tcp", ["--port", "0"], ["asyncchat.tcp"]),
        ("asyncchat.udp", ["--port", "0"], ["asyncchat.udp"]),
        ("asyncchat", ["--port", "0", "--udp-port", "0"], ["asyncchat.tcp", "asyncchat.udp"]),
    ],
)
async def test_python_m_runs_every_module_once(module: str, args: list[str], transports: list[str]) -> None:
    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-W", "error", "-X", "importtime", "-m", module, *args, "--loop", loop],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while b"running on" not in (lines[-1] if lines else b""):  # logged once every server is serving
                line = await proc.stderr.readline()
                assert line, b"".join(lines).decode()
                lines.append(line)
            proc.send_signal(signal.SIGTERM)
            lines.append(await proc.stderr.read())
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = b"".join(lines).decode()
    assert code == 0, stderr
    assert "Warning" not in stderr, stderr  # -W error: runpy's "found in sys.modules" would be fatal anyway
    assert "Traceback" not in stderr, stderr
    assert stderr.count("serving ") == len(transports), stderr
    modules = imported_modules(stderr)
    repeated = sorted({name for name in modules if modules.count(name) > 1})
    assert not repeated, f"imported twice: {repeated}"
    ours = [name for name in modules if name == "asyncchat" or name.startswith("asyncchat.")]
    assert "asyncchat.cli" in ours, ours
    for transport in transports:
        assert ours.count(transport) == 1, ours
        assert f"{transport}.__main__" not in ours  # -m runs __main__ without importing it
    if module != "asyncchat":
        # -m imports the package itself before running its __main__; a module run as a script
        # would only be imported later, by cli, as a second copy of itself.
        assert ours.index(module) < ours.index("asyncchat.cli"), ours
