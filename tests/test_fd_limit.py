"""Running out of file descriptors: a server process whose ``RLIMIT_NOFILE`` is lowered to 64.

The server runs in a subprocess (the limit is per process) with the same
event loop as the test; the test connects over loopback until the server
refuses, then (with the server stopped by SIGSTOP) queues a burst of
connections so that ``accept()`` itself runs out of descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable

import pytest

from asyncchat.cli import check_open_file_limit, raise_open_file_limit

from .chatclient import TIMEOUT

LIMIT = 64
REFUSAL = f"! [server-full] server is out of file descriptors (limit {LIMIT})\n".encode()
SERVER = (
    "import resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT}))\n"
    "from asyncchat.tcp.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class ServerLog:
    """The server's stderr, read line by line in the background."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def wait_for(self, condition: Callable[[str], bool]) -> str:
        """The first line (seen so far or to come) for which *condition* holds."""
        async with asyncio.timeout(TIMEOUT):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if condition(line):
                        return line
                seen = len(self.lines)
                assert not self._reader.done(), "the server exited:\n" + "".join(self.lines)
                self._changed.clear()
                await self._changed.wait()

    async def finish(self) -> str:
        async with asyncio.timeout(TIMEOUT):
            await self._reader
        return "".join(self.lines)


def fd_limit_count(line: str) -> int:
    """``refused['fd-limit']`` in a statistics log line (0 if absent)."""
    found = re.search(r"'fd-limit': (\d+)", line)
    return int(found[1]) if found else 0


async def first_bytes(address: tuple[str, int]) -> tuple[asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    async with asyncio.timeout(TIMEOUT):
        return writer, await reader.readline()


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    try:
        async with asyncio.timeout(TIMEOUT):
            return await reader.read()
    except ConnectionResetError:  # accepted and closed unread, by libuv (uvloop) for lack of descriptors
        return b""


async def test_server_out_of_file_descriptors_refuses_warns_and_counts() -> None:
    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-W", "error", "-c", SERVER, "--port", "0", "--loop", loop, "--stats-interval", "0.2"],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    log = ServerLog(proc)
    writers: list[asyncio.StreamWriter] = []
    try:
        serving = await log.wait_for(lambda line: "serving TCP on" in line)
        found = re.search(r"\('127\.0\.0\.1', (\d+)\)", serving)
        assert found is not None
        address = ("127.0.0.1", int(found[1]))
        await log.wait_for(lambda line: f"WARNING asyncchat: the open-file limit is {LIMIT}" in line)

        # One at a time: members are greeted until the descriptors left are the server's reserve.
        first = b""
        for _ in range(LIMIT):
            writer, first = await first_bytes(address)
            writers.append(writer)
            if not first.startswith(b"*** welcome"):
                break
        assert first == REFUSAL
        members = len(writers) - 1
        assert 0 < members < LIMIT
        await log.wait_for(lambda line: "WARNING" in line and "out of file descriptors (descriptor" in line)

        # A burst queued while the server is stopped: accept() runs out of descriptors.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            burst = [await asyncio.open_connection(*address) for _ in range(40)]
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        writers += [writer for _, writer in burst]
        answers = await asyncio.gather(*(until_eof(reader) for reader, _ in burst))
        assert set(answers) <= {REFUSAL, b""}, answers
        refused = 1 + answers.count(REFUSAL)
        if loop == "asyncio":  # uvloop does not report failed accepts
            await log.wait_for(lambda line: "WARNING" in line and "cannot accept connections: [Errno 24]" in line)
        stats = await log.wait_for(lambda line: f"members={members}," in line and fd_limit_count(line) >= refused)
        assert "logged_in=0" in stats
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            code = await proc.wait()
        stderr = await log.finish()
    finally:
        for writer in writers:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert " ERROR " not in stderr, stderr  # asyncio's own "socket.accept() out of system resource" is caught


def test_open_file_limit_check_warns_with_numbers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncchat")
    limit = raise_open_file_limit()
    assert limit is not None
    assert check_open_file_limit(10, 2)
    assert not caplog.records
    assert not check_open_file_limit(limit, 2)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"the open-file limit is {limit}, but --max-members {limit} needs about" in record.getMessage()
