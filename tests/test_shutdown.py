"""Graceful shutdown: SIGTERM/SIGINT to the server process, and leaving ``async with``."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncchat import Hub, Limits
from asyncchat.tcp import serve_tcp

from .chatclient import TIMEOUT, LineClient
from .hardening import fail_on_error_logs, fresh_nick

CLOSING = "*** closing: server is shutting down"
SERVING = re.compile(r"serving TCP on (?:\('(?P<host>[^']+)', (?P<port>\d+)|(?P<path>/\S+))")


async def _never_reader(address: tuple[str, int] | str) -> socket.socket:
    """A logged-in member with a tiny receive buffer that will never read again."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_connect(sock, address)
        nick = fresh_nick("stuck")
        await loop.sock_sendall(sock, f"{nick}\n".encode())
        buf = b""
        while f"* {nick} joined lobby\n".encode() not in buf:
            buf += await loop.sock_recv(sock, 4096)
    return sock


def _loop_name() -> str:
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


class ServerProcess:
    """``python -m asyncchat.tcp`` in a subprocess; stopped by its PID."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    @classmethod
    async def start(cls, *args: str) -> tuple[ServerProcess, re.Match[str]]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "dev",  # asyncio debug checks and ResourceWarnings are shown on stderr
            "-m",
            "asyncchat.tcp",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parent.parent),
            env=env,
        )
        server = cls(proc)
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    line = await server._readline()
                    match = SERVING.search(line)
                    if match is not None:
                        return server, match
        except BaseException:
            await server.kill()
            raise

    async def _readline(self) -> str:
        assert self.proc.stderr is not None
        raw = await self.proc.stderr.readline()
        if not raw:
            raise EOFError(f"server exited early: {''.join(self.stderr)}")
        line = raw.decode(errors="replace")
        self.stderr.append(line)
        return line

    async def wait_for_log(self, pattern: str) -> str:
        """Read stderr until a line matches *pattern* (a regular expression); return that line."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = await self._readline()
                if re.search(pattern, line):
                    return line

    async def wait(self) -> tuple[int, str]:
        """Wait for the exit; return the exit code and the whole stderr."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            rest = await self.proc.stderr.read()
            code = await self.proc.wait()
        self.stderr.append(rest.decode(errors="replace"))
        return code, "".join(self.stderr)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


def _assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Task was destroyed but it is pending" not in stderr, stderr
    assert "ResourceWarning" not in stderr, stderr
    assert " ERROR " not in stderr, stderr
    assert "CRITICAL" not in stderr, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_shuts_down_gracefully(signum: signal.Signals) -> None:
    server, match = await ServerProcess.start(
        "--port",
        "0",
        "--loop",
        _loop_name(),
        "--shutdown-timeout",
        "2",
        "--stats-interval",
        "0.2",
        "--rate",
        "10000",
        "--rate-burst",
        "10000",
    )
    address = (match["host"], int(match["port"]))
    try:
        reader_nick, talker_nick = fresh_nick("reader"), fresh_nick("talker")
        stuck = await _never_reader(address)
        async with (
            await LineClient.connect(address, reader_nick) as reader,
            await LineClient.connect(address, talker_nick) as talker,
        ):
            await reader.expect(f"* {talker_nick} joined lobby")
            # The never-reading member gets a backlog it will never read.
            filler = "q" * 900
            for i in range(100):
                await talker.send(f"{i} {filler}")
            await reader.expect(f"{talker_nick}: 99 {filler}")
            # --stats-interval: the periodic statistics line shows the three members and their lines.
            stats = await server.wait_for_log(r"statistics HubStatistics\(members=3, logged_in=3, .*lines_in=10[0-9],")
            assert "disconnects={}" in stats
            os.kill(server.proc.pid, signum)
            # The reading members are told, then the connection closes.
            assert await reader.eof() == [CLOSING]
            assert await talker.eof() == [CLOSING]
        code, stderr = await server.wait()
        stuck.close()
    finally:
        await server.kill()
    assert code == 0, stderr
    _assert_clean_stderr(stderr)
    assert "shutting down" in stderr
    assert "TCP server closed" in stderr


async def test_sigterm_on_a_unix_socket_server(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.sock")
    server, match = await ServerProcess.start("--unix", path, "--loop", _loop_name(), "--shutdown-timeout", "1")
    try:
        assert match["path"] == path
        reader, writer = await asyncio.open_unix_connection(path)
        client = LineClient(reader, writer)
        assert (await client.line()).startswith("*** welcome")
        nick = fresh_nick("unixcli")
        await client.send(nick)
        await client.expect(f"* {nick} joined lobby")
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await client.eof() == [CLOSING]
        await client.close()
        code, stderr = await server.wait()
    finally:
        await server.kill()
    assert code == 0, stderr
    _assert_clean_stderr(stderr)
    assert not os.path.exists(path)  # the socket file is cleaned up


# ---------------------------------------------------------------- in process


@pytest.fixture
def no_error_logs() -> Iterator[None]:
    with fail_on_error_logs():
        yield


@pytest.mark.usefixtures("no_error_logs")
async def test_leaving_async_with_flushes_queued_output_first() -> None:
    """Output queued before the shutdown reaches a member who reads late, then the closing line."""
    hub = Hub(limits=Limits(rate_lines_per_second=10_000, rate_burst=10_000, shutdown_timeout=5.0))
    server = serve_tcp(hub, host="127.0.0.1", port=0)
    await server.start()
    closer: asyncio.Task[None] | None = None
    try:
        late_nick, talker_nick = fresh_nick("late"), fresh_nick("talker")
        late = await LineClient.connect(server.address, late_nick)
        async with await LineClient.connect(server.address, talker_nick) as talker:
            await late.expect(f"* {talker_nick} joined lobby")
            filler = "w" * 900
            for i in range(150):  # about 140 KB: more than the transport buffer, less than the outbox limit
                await talker.send(f"{i} {filler}")
            member = hub.find(late_nick)
            assert member is not None
            # Lines are handled in order: the pong means all 150 were (and were queued for the late member).
            await talker.send("/ping all sent")
            await talker.expect("*** pong all sent")
            assert hub.statistics().lines_in >= 150 + 2
            closer = asyncio.create_task(server.aclose())
            # Only now does the late member read: everything, in order, then the closing line.
            for i in range(150):
                assert await late.line() == f"{talker_nick}: {i} {filler}"
            assert await late.eof() == [CLOSING]
            await late.close()
        async with asyncio.timeout(TIMEOUT):
            await closer
    finally:
        if closer is None:
            await server.aclose()
    stats = hub.statistics()
    assert stats.members == 0
    assert stats.disconnects.get("shutdown") == 2


async def test_never_reading_member_cannot_delay_shutdown_past_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "asyncchat")
    hub = Hub(limits=Limits(rate_lines_per_second=10_000, rate_burst=10_000, shutdown_timeout=1.0))
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        stuck = await _never_reader(server.address)
        talker_nick = fresh_nick("talker")
        async with await LineClient.connect(server.address, talker_nick) as talker:
            for i in range(150):
                await talker.send(f"{i} {'v' * 900}")
            await talker.send("/ping done")
            await talker.expect("*** pong done")
            async with asyncio.timeout(TIMEOUT):  # the deadline is 1 s; this bound only catches a hang
                await server.aclose()
            assert await talker.eof() == [CLOSING]
        stuck.close()
    # The stuck member was aborted at the deadline (by its connection's timer or by aclose).
    assert server.connections == 0
    stats = hub.statistics()
    assert stats.members == 0
    assert stats.disconnects.get("shutdown") == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
