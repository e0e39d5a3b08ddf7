"""Every script in examples/ runs against loopback servers on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from asyncchat import Closing, Error, Hub, Joined, Left, Message, Notice
from asyncchat.client import ChatClient, connect_tcp, connect_udp
from asyncchat.events import ChatEvent
from asyncchat.udp import serve_udp

TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Example:
    """A running example script: its process and a bounded way to read its output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            raw = await self.proc.stdout.readline()
        assert raw, "the example ended early"
        return raw.decode().rstrip("\n")

    async def expect(self, pattern: str) -> re.Match[str]:
        """Read lines until one matches *pattern* (from its start)."""
        while True:
            match = re.match(pattern, await self.line())
            if match is not None:
                return match

    async def address(self, pattern: str = r"listening on (?:\w+ )?(\S+):(\d+)$") -> tuple[str, int]:
        match = await self.expect(pattern)
        return match[1], int(match[2])

    async def stop(self) -> int:
        """Ctrl-C the example (by its PID); kill it if it does not exit in time."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def example(name: str, *args: str) -> AsyncIterator[Example]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(EXAMPLES / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=ENV,
    )
    running = Example(proc)
    try:
        yield running
    finally:
        await running.stop()


async def until(chat: ChatClient, wanted: ChatEvent | Callable[[ChatEvent], bool]) -> ChatEvent:
    """Receive until an event equal to *wanted* (or for which *wanted* is true); return it."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await chat.receive()
            if event == wanted or (callable(wanted) and wanted(event)):
                return event
            assert not isinstance(event, Closing), event


def is_message(event: ChatEvent) -> bool:
    return isinstance(event, Message)


def rolled(event: ChatEvent) -> bool:
    return isinstance(event, Notice) and event.text.startswith("alice rolls")


def test_every_example_is_short_documented_and_tested() -> None:
    tested = Path(__file__).read_text()
    for path in sorted(EXAMPLES.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 60, path.name
        assert source.startswith('"""'), f"{path.name} needs a docstring saying how to run it"
        assert f"python examples/{path.name}" in source, path.name
        assert f'"{path.name}"' in tested, f"{path.name} has no test"


async def test_echo_upper_pair() -> None:
    async with example("echo_upper_server.py", "--port", "0") as server:
        host, port = await server.address()
        async with example("echo_upper_client.py", "--host", host, "--port", str(port), "hello", "wörld") as client:
            assert await client.line() == "HELLO"
            assert await client.line() == "WÖRLD"
            async with asyncio.timeout(TIMEOUT):
                assert await client.proc.wait() == 0
        # The server keeps serving: a second client is answered too.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"again\n" + b"x" * 5000 + b"\n")  # the over-long line ends only this connection
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readline() == b"AGAIN\n"
            assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert await server.stop() == 0


async def test_udp_room_server_and_client() -> None:
    async with example("udp_room_server.py", "--port", "0") as server:
        host, port = await server.address()
        async with connect_udp(host, port, nick="bob") as bob:
            async with example(
                "udp_room_client.py", "--host", host, "--port", str(port), "--name", "alice", "hello bob"
            ) as client:
                await client.expect("joined lobby as alice")
                await until(bob, Message("alice", "hello bob"))
                await bob.say("hi alice")
                await client.expect("<bob> hi alice")
                assert await client.stop() == 0  # Ctrl-C leaves the room politely
            await until(bob, Left("alice", "lobby", "quit"))
        assert await server.stop() == 0


async def test_udp_room_server_strict() -> None:
    async with example("udp_room_server.py", "--port", "0", "--strict") as server:
        async with connect_udp(*await server.address(), nick="carol") as carol:
            assert carol.room == "lobby"
        assert await server.stop() == 0


async def test_embed_bot_answers_and_logs() -> None:
    async with example("embed_bot.py", "--port", "0", "--udp-port", "0") as app:
        tcp = await app.address(r"listening on tcp (\S+):(\d+)$")
        udp = await app.address(r"listening on udp (\S+):(\d+)$")
        async with connect_tcp(*tcp, nick="alice") as alice, connect_udp(*udp, nick="bob") as bob:
            await app.expect(r"\[clock\] alice joined lobby")
            await app.expect(r"\[clock\] bob joined lobby")
            await bob.say("!time")
            answer = await until(alice, is_message)
            assert answer == Message("bob", "!time")
            answer = await until(alice, is_message)
            assert isinstance(answer, Message)
            assert answer.nick == "clock"
            assert re.fullmatch(r"bob: it is \d\d:\d\d:\d\d", answer.text)
            await until(bob, Message("clock", answer.text))
            await alice.quit()
        await app.expect(r"\[clock\] alice left lobby")
        assert await app.stop() == 0


async def test_custom_command_roll() -> None:
    async with example("custom_command.py", "--port", "0") as server:
        address = await server.address()
        async with connect_tcp(*address, nick="alice") as alice, connect_tcp(*address, nick="bob") as bob:
            await until(alice, Joined("bob", "lobby"))
            await alice.send_line("/roll 3d6")
            roll = await until(bob, rolled)
            assert isinstance(roll, Notice)
            match = re.fullmatch(r"alice rolls 3d6: (\d) (\d) (\d) = (\d+)", roll.text)
            assert match is not None, roll
            dice = [int(match[i]) for i in (1, 2, 3)]
            assert all(1 <= d <= 6 for d in dice)
            assert sum(dice) == int(match[4])
            assert await until(alice, rolled) == roll  # the roller sees it too
            await alice.send_line("/roll banana")
            await until(alice, Error("usage: /roll [NdM], e.g. /roll 2d6", "error"))
            await alice.send_line("/help")
            await until(alice, Notice("  /roll"))
        assert await server.stop() == 0


@pytest.mark.parametrize("strict", [False, True])
async def test_udp_room_client_against_in_process_server(strict: bool) -> None:
    """The example client also works against a room embedded in this process."""
    hub = Hub()
    async with serve_udp(hub, port=0, strict=strict) as server:
        host, port = server.address
        async with example("udp_room_client.py", "--host", host, "--port", str(port), "--name", "dave", "hey"):
            async with asyncio.timeout(TIMEOUT):
                while [e.text for e in hub.history("lobby") if isinstance(e, Message)] != ["hey"]:
                    await asyncio.sleep(0.01)
            assert hub.find("dave") is not None
