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
