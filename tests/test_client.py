"""The async client API and the terminal client, against real loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from asyncchat import (
    Closing,
    Hub,
    InvalidName,
    Joined,
    Left,
    Limits,
    Message,
    NameTaken,
    NickChanged,
    Notice,
    Private,
    Refused,
    UsageError,
)
from asyncchat.client import (
    ChatClient,
    ConnectionClosed,
    LoginFailed,
    connect_tcp,
    connect_udp,
    connect_unix,
    reconnecting,
)
from asyncchat.events import ChatEvent
from asyncchat.tcp import TcpServer, serve_tcp
from asyncchat.udp import UdpServer, serve_udp

from .chatclient import LineClient

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


async def until(chat: ChatClient, wanted: ChatEvent) -> list[ChatEvent]:
    """Receive until *wanted*; return the events before it."""
    seen: list[ChatEvent] = []
    async with asyncio.timeout(TIMEOUT):
        while (event := await chat.receive()) != wanted:
            assert not isinstance(event, Closing), (event, seen)
            seen.append(event)
    return seen


async def drain(chat: ChatClient) -> list[ChatEvent]:
    """Every remaining event, up to the end of the iteration."""
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in chat]


# --------------------------------------------------------------------- TCP API


async def test_login_delivers_greeting_and_own_join(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="alice") as chat:
        assert chat.nick == "alice"
        assert chat.room == "lobby"
        first = await chat.receive()
        assert isinstance(first, Notice)
        assert first.text.startswith("welcome")
        assert await until(chat, Joined("alice", "lobby")) == [Notice("you are alice; /help lists the commands")]
        assert repr(chat).startswith("<ChatClient tcp 127.0.0.1:")


async def test_say_msg_me_between_two_clients(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="alice") as alice, await connect_tcp(host, port, nick="bob") as bob:
        await until(alice, Joined("bob", "lobby"))
        await bob.say("hello")
        await bob.say("/not a command")
        await bob.me("waves")
        await bob.msg("alice", "psst")
        await until(alice, Message("bob", "hello"))
        assert await alice.receive() == Message("bob", "/not a command")
        assert await alice.receive_line() == "* bob waves"
        assert await alice.receive() == Private("bob", "", "psst")
        await until(bob, Private("", "alice", "psst"))


async def test_nick_and_room_follow_the_server(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="alice") as chat:
        await chat.rename("alicia")
        assert chat.nick == "alice"  # not before the server confirms
        await until(chat, NickChanged("alice", "alicia"))
        assert chat.nick == "alicia"
        await chat.join("kitchen")
        await until(chat, Left("alicia", "lobby"))
        assert chat.room is None
        await until(chat, Joined("alicia", "kitchen"))
        assert chat.room == "kitchen"


async def test_send_line_refuses_line_breaks(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="alice") as chat:
        for bad in ("a\nb", "a\rb"):
            with pytest.raises(UsageError):
                await chat.send_line(bad)
        await chat.send_line("/ping ok")  # the connection is still fine
        await until(chat, Notice("pong ok"))


async def test_quit_ends_iteration_with_goodbye(tcp_server: TcpServer, hub: Hub) -> None:
    host, port = tcp_server.address
    async with await LineClient.connect((host, port), "bob") as bob, connect_tcp(host, port, nick="alice") as chat:
        await bob.expect("* alice joined lobby")
        await chat.quit("bye now")
        events = await drain(chat)
        assert events[-1] == Closing("goodbye")
        assert chat.closed
        assert await bob.line() == "* alice left lobby (quit: bye now)"
        with pytest.raises(ConnectionClosed):
            await chat.say("too late")
        with pytest.raises(ConnectionClosed):
            await chat.receive()


async def test_leaving_async_with_quits(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with await LineClient.connect((host, port), "bob") as bob:
        async with connect_tcp(host, port, nick="alice"):
            await bob.expect("* alice joined lobby")
        assert await bob.line() == "* alice left lobby (quit)"


async def test_aclose_drops_unread_lines_and_ends_with_closing(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    chat = await connect_tcp(host, port, nick="alice")
    await chat.aclose()
    await chat.aclose()  # idempotent
    assert await drain(chat) == [Closing("connection closed")]


# ------------------------------------------------------------ login failures


async def test_login_name_taken(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="alice"):
        with pytest.raises(NameTaken, match="'ALICE' is taken"):
            await connect_tcp(host, port, nick="ALICE")
    assert tcp_server.connections <= 1  # the refused connection was closed


async def test_login_invalid_name_is_refused_before_connecting() -> None:
    with pytest.raises(InvalidName):
        await connect_tcp("127.0.0.1", 1, nick="no spaces")


async def test_login_refused_when_full() -> None:
    hub = Hub(limits=Limits(max_members=1))
    async with serve_tcp(hub, port=0) as server, connect_tcp(*server.address, nick="alice"):
        with pytest.raises(Refused, match="server is full") as info:
            await connect_tcp(*server.address, nick="bob")
        assert info.value.reason == "full"


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def fake_server(script: Script) -> asyncio.Server:
    """A loopback server that runs *script* for each connection, then closes it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def read_nick(reader: asyncio.StreamReader) -> str:
    """The nickname a client sends, after its ``/codes on``."""
    line = (await reader.readline()).decode().strip()
    assert line == "/codes on", line
    return (await reader.readline()).decode().strip()


@pytest.fixture
async def greeter() -> AsyncIterator[asyncio.Server]:
    """A server that greets, reads the nickname and hangs up without logging in."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"*** welcome\n")
        await read_nick(reader)

    server = await fake_server(script)
    async with server:
        yield server


async def test_login_failed_when_server_hangs_up(greeter: asyncio.Server) -> None:
    host, port = greeter.sockets[0].getsockname()[:2]
    with pytest.raises(LoginFailed, match="the server closed the connection before 'alice' was logged in"):
        await connect_tcp(host, port, nick="alice")


async def test_login_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up

    server = await fake_server(silent)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        with pytest.raises(LoginFailed, match=r"not logged in within 0\.2 seconds"):
            await connect_tcp(host, port, nick="alice", login_timeout=0.2)


# ----------------------------------------------------------- connection loss


async def test_server_shutdown_gives_final_closing(hub: Hub) -> None:
    server = serve_tcp(hub, port=0)
    await server.start()
    try:
        chat = await connect_tcp(*server.address, nick="alice")
        await until(chat, Joined("alice", "lobby"))
    finally:
        await server.aclose()
    assert await drain(chat) == [Closing("server is shutting down")]
    assert chat.closed
    with pytest.raises(ConnectionClosed):
        await chat.say("anyone?")
    await chat.aclose()


@pytest.mark.parametrize("abort", [False, True])
async def test_close_without_closing_line_gives_made_up_closing(abort: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"*** welcome\n")
        nick = await read_nick(reader)
        writer.write(f"* {nick} joined lobby\nbob: hi\n".encode())
        await writer.drain()
        if abort:
            writer.transport.abort()

    server = await fake_server(script)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        chat = await connect_tcp(host, port, nick="alice")
        events = await drain(chat)
        last = events[-1]
        assert isinstance(last, Closing)
        if abort:
            # A reset may overtake the last lines; either way the reason says what happened.
            assert last.reason == "the server closed the connection" or last.reason.startswith("connection lost")
        else:
            assert events[-2:] == [Message("bob", "hi"), Closing("the server closed the connection")]
        assert chat.closed
        with pytest.raises(ConnectionClosed):
            await chat.say("hello?")
        await chat.aclose()


async def test_control_characters_from_server_are_escaped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"*** welcome\n")
        nick = await read_nick(reader)
        writer.write(f"* {nick} joined lobby\nmallory: \x1b[2Jgone\x07\r\n*** closing: bye\n".encode())
        await writer.drain()
        await reader.read()

    server = await fake_server(script)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        async with connect_tcp(host, port, nick="alice") as chat:
            await until(chat, Joined("alice", "lobby"))
            assert await chat.receive() == Message("mallory", "\\x1b[2Jgone\\x07")
            assert await drain(chat) == [Closing("bye")]


# ------------------------------------------------------- keepalive, TLS, unix


async def test_keepalive_pings_are_sent_and_pongs_hidden(tcp_server: TcpServer, hub: Hub) -> None:
    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="alice", keepalive=0.01) as chat:
        async with asyncio.timeout(TIMEOUT):
            while hub.lines_in < 6:  # the nickname plus at least five pings
                await asyncio.sleep(0.01)
        await chat.send_line("/ping mine")
        events = await until(chat, Notice("pong mine"))
        assert not [e for e in events if isinstance(e, Notice) and e.text.startswith("pong")]


async def test_tls(hub: Hub) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with serve_tcp(hub, port=0, ssl=server_ctx) as server:
        host, port = server.address
        async with connect_tcp(host, port, nick="alice", ssl=client_ctx, server_hostname="localhost") as chat:
            assert repr(chat).startswith("<ChatClient tls")
            await chat.send_line("/ping tls")
            await until(chat, Notice("pong tls"))
        with pytest.raises(ssl.SSLError):  # an unknown CA is refused
            await connect_tcp(host, port, nick="bob", ssl=ssl.create_default_context(), server_hostname="localhost")


async def test_unix_socket(hub: Hub) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "chat.sock")
        async with serve_tcp(hub, unix=path), connect_unix(path, nick="alice") as chat:
            await chat.send_line("/who")
            await until(chat, Notice("members of lobby (1): @alice"))


async def test_reconnecting_retries_then_connects(hub: Hub) -> None:
    attempts = 0
    server: TcpServer | None = None

    async def connect() -> ChatClient:
        nonlocal attempts, server
        attempts += 1
        if attempts == 3:  # the server comes up after two refused attempts
            server = serve_tcp(hub, port=0)
            await server.start()
        if server is None:
            raise ConnectionRefusedError("not yet")
        return await connect_tcp(*server.address, nick="bot")

    sessions = 0
    try:
        async with asyncio.timeout(TIMEOUT):
            async for chat in reconnecting(connect, initial_delay=0.01, attempts=5):
                sessions += 1
                await until(chat, Joined("bot", "lobby"))
                if sessions == 2:
                    break
                await chat.quit()
    finally:
        if server is not None:
            await server.aclose()
    assert (attempts, sessions) == (4, 2)


async def test_reconnecting_gives_up() -> None:
    async def connect() -> ChatClient:
        raise ConnectionRefusedError("nobody home")

    async def run() -> None:
        async with asyncio.timeout(TIMEOUT):
            async for _chat in reconnecting(connect, initial_delay=0.001, attempts=3):
                pytest.fail("no connection was possible")

    with pytest.raises(ConnectionRefusedError):
        await run()


# --------------------------------------------------------------------- UDP


@pytest.fixture
async def udp_server(hub: Hub) -> AsyncIterator[UdpServer]:
    async with serve_udp(hub, host="127.0.0.1", port=0) as server:
        yield server


@pytest.mark.parametrize(("strict", "trusted"), [(False, False), (True, False), (False, True)])
async def test_udp_login_verifies_and_chats_with_tcp(
    hub: Hub, tcp_server: TcpServer, strict: bool, trusted: bool
) -> None:
    # Untrusted, the client echoes its token; from a trusted source it is verified at once.
    async with serve_udp(hub, port=0, strict=strict, trust=["127.0.0.0/8"] if trusted else ()) as udp_server:
        async with (
            connect_udp(*udp_server.address, nick="alice") as alice,
            connect_tcp(*tcp_server.address, nick="bob") as bob,
        ):
            assert repr(alice).startswith("<ChatClient udp 127.0.0.1:")
            assert alice.room == "lobby"
            peer = udp_server.peer(alice._transport.get_extra_info("sockname"))  # type: ignore[attr-defined]
            assert peer is not None
            assert peer.verified
            assert peer.trusted is trusted
            await until(alice, Joined("bob", "lobby"))
            await bob.say("hi alice")
            await until(alice, Message("bob", "hi alice"))
            await alice.say("hi bob")
            await until(bob, Message("alice", "hi bob"))
        assert udp_server.statistics().dropped_unverified == 0


async def test_udp_long_lines_and_history_arrive_whole(hub: Hub, udp_server: UdpServer) -> None:
    long = "é" * 1500 + "x" * 1000  # 4000 bytes: split into four datagrams by the server
    for n in range(3):
        hub.post("lobby", f"{n} {long}", nick="historian")
    async with (
        connect_udp(*udp_server.address, nick="alice") as alice,
        await connect_udp(*udp_server.address, nick="bob") as bob,
    ):
        history = await until(alice, Joined("alice", "lobby"))
        assert [e for e in history if isinstance(e, Message)] == [Message("historian", f"{n} {long}") for n in range(3)]
        await until(alice, Joined("bob", "lobby"))
        await bob.say(long)
        await bob.say("short")
        assert await alice.receive() == Message("bob", long)
        assert await alice.receive() == Message("bob", "short")


async def test_udp_name_taken(udp_server: UdpServer) -> None:
    async with connect_udp(*udp_server.address, nick="alice"):
        with pytest.raises(NameTaken):
            await connect_udp(*udp_server.address, nick="Alice")


async def test_udp_server_shutdown_gives_final_closing(hub: Hub) -> None:
    server = serve_udp(hub, port=0)
    await server.start()
    try:
        chat = await connect_udp(*server.address, nick="alice")
        await until(chat, Joined("alice", "lobby"))
    finally:
        await server.aclose()
    assert await drain(chat) == [Closing("server is shutting down")]
    with pytest.raises(ConnectionClosed):
        await chat.say("anyone?")
    await chat.aclose()


async def test_udp_keepalive_keeps_member_while_silent_one_expires() -> None:
    hub = Hub(limits=Limits(udp_idle_timeout=1.0))
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve_udp(hub, port=0))
        alice = await stack.enter_async_context(connect_udp(*server.address, nick="alice", keepalive=0.1))
        bob = await stack.enter_async_context(connect_udp(*server.address, nick="bob", keepalive=None))
        events = await drain(bob)  # bob never speaks: the server expires him
        assert events[-1] == Closing("idle for too long")
        assert not alice.closed
        assert hub.find("alice") is not None
        await alice.send_line("/who")
        await until(alice, Notice("members of lobby (1): @alice"))


async def test_udp_server_gone_is_detected_by_keepalive() -> None:
    """A server that vanishes without a closing line: the next ping ends the client."""
    loop = asyncio.get_running_loop()

    class FakeRoom(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            line = data.decode().strip().rpartition("\n")[2]  # the nickname comes after "/codes on"
            if not line:
                reply = "*** to receive all messages, send /verify abc\n"
            elif line == "/verify abc":
                reply = "*** address verified: you receive all messages\n"
            else:
                reply = f"* {line} joined lobby\n"
            self.transport.sendto(reply.encode(), addr)

    transport, _ = await loop.create_datagram_endpoint(FakeRoom, local_addr=("127.0.0.1", 0))
    address = transport.get_extra_info("sockname")
    chat = await connect_udp(*address, nick="alice", keepalive=0.05)
    transport.close()  # gone, without a word
    events = await drain(chat)
    assert events[-1] == Closing("connection lost: [Errno 111] Connection refused")
    await chat.aclose()


# --------------------------------------------------------- terminal client


def test_format_line_escapes_control_characters() -> None:
    from asyncchat.client._terminal import format_line

    assert format_line("bob: \x1b[31mred\x1b[0m\x9b\u202e") == "bob: \\x1b[31mred\\x1b[0m\\x9b\\u202e"
    assert format_line("tab\tok") == "tab\tok"


async def test_terminal_main_piped_in_process(tcp_server: TcpServer) -> None:
    from asyncchat.client._terminal import main

    host, port = tcp_server.address
    stdout = io.StringIO()
    async with await LineClient.connect((host, port), "bob") as bob:
        argv = ["--host", host, "--port", str(port), "--name", "carol", "--loop", "asyncio"]
        thread = asyncio.create_task(asyncio.to_thread(main, argv, stdin=io.StringIO("hi bob\n/who\n"), stdout=stdout))
        await bob.expect("carol: hi bob")
        assert await bob.line() == "* carol left lobby (quit)"
        async with asyncio.timeout(TIMEOUT):
            assert await thread == 0
    lines = stdout.getvalue().splitlines()
    assert "* carol joined lobby" in lines
    assert "*** members of lobby (2): @bob, carol" in lines
    assert lines[-1] == "*** closing: goodbye"


async def test_terminal_main_escapes_control_characters() -> None:
    from asyncchat.client._terminal import main

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"*** welcome\n")
        nick = await read_nick(reader)
        writer.write(f"* {nick} joined lobby\nmallory: \x1b]0;pwned\x07\x1b[2J\n".encode())
        await reader.readline()  # /quit
        writer.write(b"*** closing: goodbye\n")

    server = await fake_server(script)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        stdout = io.StringIO()
        argv = ["--host", host, "--port", str(port), "--name", "carol", "--loop", "asyncio"]
        async with asyncio.timeout(TIMEOUT):
            assert await asyncio.to_thread(main, argv, stdin=io.StringIO(""), stdout=stdout) == 0
    out = stdout.getvalue()
    assert "mallory: \\x1b]0;pwned\\x07\\x1b[2J\n" in out
    assert "\x1b" not in out
    assert "\x07" not in out


async def test_terminal_main_login_failure(tcp_server: TcpServer, capsys: pytest.CaptureFixture[str]) -> None:
    from asyncchat.client._terminal import main

    host, port = tcp_server.address
    async with connect_tcp(host, port, nick="carol"):
        argv = ["--host", host, "--port", str(port), "--name", "carol", "--loop", "asyncio"]
        async with asyncio.timeout(TIMEOUT):
            status = await asyncio.to_thread(main, argv, stdin=io.StringIO("hi\n"), stdout=io.StringIO())
    assert status == 1
    assert "login failed: nickname 'carol' is taken" in capsys.readouterr().err


async def test_terminal_main_piped_udp(hub: Hub, udp_server: UdpServer, tcp_server: TcpServer) -> None:
    from asyncchat.client._terminal import main

    host, port = udp_server.address
    stdout = io.StringIO()
    async with await LineClient.connect(tcp_server.address, "bob") as bob:
        argv = ["--udp", "--host", host, "--port", str(port), "--name", "carol", "--loop", "asyncio"]
        thread = asyncio.create_task(asyncio.to_thread(main, argv, stdin=io.StringIO("over udp\n"), stdout=stdout))
        await bob.expect("carol: over udp")
        assert await bob.line() == "* carol left lobby (quit)"
        async with asyncio.timeout(TIMEOUT):
            assert await thread == 0
    lines = stdout.getvalue().splitlines()
    assert "*** address verified: you receive all messages" in lines
    assert lines[-1] == "*** closing: goodbye"


async def test_piped_client_subprocess(tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    async with await LineClient.connect((host, port), "bob") as bob:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-W",
            "error",
            "-m",
            "asyncchat.client",
            "--port",
            str(port),
            "--name",
            "carol",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            async with asyncio.timeout(TIMEOUT * 2):
                out, err = await proc.communicate(b"hello\n")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err
        assert await bob.line() == "* carol joined lobby"
        assert await bob.line() == "carol: hello"
        assert await bob.line() == "* carol left lobby (quit)"
    assert out.decode().splitlines()[-2:] == ["* carol joined lobby", "*** closing: goodbye"]
    assert err == b""


def test_module_help_runs_without_warnings() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "asyncchat.client", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--name" in result.stdout
    assert "--udp" in result.stdout
    assert result.stderr == ""


async def test_interactive_client_with_pipe_input(tcp_server: TcpServer) -> None:
    """The prompt_toolkit client, driven by a pipe instead of a keyboard: a line, then Ctrl-D."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from asyncchat.client._terminal import _interactive

    host, port = tcp_server.address
    async with await LineClient.connect((host, port), "bob") as bob:
        chat = await connect_tcp(host, port, nick="carol")
        with create_pipe_input() as keyboard:
            task = asyncio.create_task(_interactive(chat, input=keyboard, output=DummyOutput()))
            keyboard.send_text("hello from the prompt\r")
            await bob.expect("carol: hello from the prompt")
            keyboard.send_text("\x04")  # Ctrl-D leaves
            async with asyncio.timeout(TIMEOUT):
                assert await task == 0
        assert await bob.line() == "* carol left lobby (quit)"
        assert chat.closed
