"""The TCP relay over real loopback sockets, under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest

from asyncchat import Hub, Limits, watch
from asyncchat.events import Joined, Left, Message, Notice
from asyncchat.tcp import TcpServer, serve_tcp

from .chatclient import LineClient


async def test_two_nc_style_clients_chat(tcp_server: TcpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        async with await LineClient.connect(tcp_server.address) as bob:
            await bob.send("bob")
            assert await bob.lines(2) == ["*** you are bob; /help lists the commands", "* bob joined lobby"]
            assert await alice.line() == "* bob joined lobby"
            await alice.send_raw(b"hello bob\r\n")
            assert await bob.line() == "alice: hello bob"
            await bob.send("hi alice")
            assert await alice.line() == "bob: hi alice"
        assert await alice.line() == "* bob left lobby (connection closed)"


async def test_topic_kick_op_and_deop(tcp_server: TcpServer) -> None:
    async with (
        await LineClient.connect(tcp_server.address, "alice") as alice,
        await LineClient.connect(tcp_server.address, "bob") as bob,
        await LineClient.connect(tcp_server.address, "carol") as carol,
    ):
        await alice.expect("* carol joined lobby")
        await bob.expect("* carol joined lobby")
        await bob.send("/topic mine now")
        assert await bob.line() == "! only operators of lobby may set its topic"
        await alice.send("/topic welcome, be nice")
        for client in (alice, bob, carol):
            assert await client.line() == "* alice set the topic of lobby: welcome, be nice"
        await carol.send("/topic")
        assert await carol.line() == "*** topic of lobby: welcome, be nice"
        await alice.send("/op bob")
        for client in (alice, bob, carol):
            assert await client.line() == "* alice made bob an operator of lobby"
        await carol.send("/who")
        assert await carol.line() == "*** members of lobby (3): @alice, @bob, carol"
        await bob.send("/deop alice")
        for client in (alice, bob, carol):
            assert await client.line() == "* bob removed alice as operator of lobby"
        await alice.send("/kick carol")
        assert await alice.line() == "! you are not an operator of lobby"
        await bob.send("/kick carol enough")
        for client in (alice, bob, carol):
            assert await client.line() == "* carol was kicked from lobby by bob (enough)"
        await carol.send("still here?")
        assert await carol.line() == "! you are not in a room; /join one"
        await carol.send("/join lobby")
        history = await carol.expect("* carol joined lobby")  # history first: topic and kick lines are kept
        assert history == [
            "* alice set the topic of lobby: welcome, be nice",
            "* carol was kicked from lobby by bob (enough)",
        ]
        assert await carol.line() == "*** topic of lobby: welcome, be nice"
        await alice.send("/who")
        assert await alice.line() == "* carol joined lobby"
        assert await alice.line() == "*** members of lobby (3): alice, @bob, carol"


async def test_error_codes_for_programs(tcp_server: TcpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        reader, writer = await asyncio.open_connection(*tcp_server.address)
        async with await LineClient.start(reader, writer, None) as bob:
            await bob.send("/codes on", "ALICE", "bob", "/kick alice", "/msg nobody hi")
            assert await bob.lines(5) == [
                "! [nick-taken] nickname 'ALICE' is taken",
                "*** you are bob; /help lists the commands",
                "* bob joined lobby",
                "! [not-operator] you are not an operator of lobby",
                "! [no-such-nick] no member named 'nobody'",
            ]
            await bob.send("/codes off", "/kick alice")
            assert await bob.line() == "! you are not an operator of lobby"
        await alice.expect("* bob left lobby (connection closed)")


async def test_every_command(tcp_server: TcpServer) -> None:
    async with (
        await LineClient.connect(tcp_server.address, "alice") as alice,
        await LineClient.connect(tcp_server.address, "bob") as bob,
    ):
        await alice.expect("* bob joined lobby")
        await alice.send("/who")
        assert await alice.line() == "*** members of lobby (2): @alice, bob"
        await alice.send("/rooms")
        assert await alice.line() == "*** rooms (1): lobby (2)"
        await alice.send("/msg bob secret")
        assert await alice.line() == "[pm to bob] secret"
        assert await bob.line() == "[pm from alice] secret"
        await alice.send("/me waves")
        assert await bob.line() == "* alice waves"
        await alice.send("//help is literal")
        assert await bob.line() == "alice: /help is literal"
        await alice.send("/bogus")
        assert await alice.line() == "! unknown command /bogus; /help lists the commands"
        await alice.send("/help")
        assert await alice.line() == "*** commands:"
        await alice.expect("***   //TEXT             send a line starting with /")
        await alice.send("/nick alicia")
        assert await alice.line() == "* alice is now known as alicia"
        assert await bob.line() == "* alice is now known as alicia"
        await alice.send("/join games")
        assert await alice.lines(2) == ["* alicia left lobby", "* alicia joined games"]
        assert await bob.line() == "* alicia left lobby"
        await bob.send("/join games")
        assert await bob.lines(2) == ["* bob left lobby", "* bob joined games"]
        assert await alice.line() == "* bob joined games"
        await bob.send("/quit see you")
        assert await bob.eof() == ["*** closing: goodbye"]
        assert await alice.line() == "* bob left games (quit: see you)"


async def test_history_replay_then_live(hub: Hub, tcp_server: TcpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        for i in range(25):
            await alice.send(f"old {i}")
        await alice.send("/ping sync")
        await alice.expect("*** pong sync")
        async with await LineClient.connect(tcp_server.address) as bob:
            await bob.send("bob")
            lines = await bob.expect("* bob joined lobby")
            assert lines == ["*** you are bob; /help lists the commands"] + [f"alice: old {i}" for i in range(5, 25)]
            await alice.send("live")
            assert await bob.line() == "alice: live"


async def test_nickname_rules(tcp_server: TcpServer) -> None:
    async with (
        await LineClient.connect(tcp_server.address, "Alice"),
        await LineClient.connect(tcp_server.address) as client,
    ):
        await client.send("aLiCe", "bad nick", "x" * 33, "*star", "ok-name_2")
        assert await client.lines(5) == [
            "! nickname 'aLiCe' is taken",
            "! nickname 'bad nick' is invalid: use 1-32 letters, digits, _ or -",
            f"! nickname '{'x' * 33}' is invalid: use 1-32 letters, digits, _ or -",
            "! nickname '*star' is invalid: use 1-32 letters, digits, _ or -",
            "*** you are ok-name_2; /help lists the commands",
        ]


async def test_bad_input_gets_error_lines_and_stream_stays_in_sync(tcp_server: TcpServer) -> None:
    async with (
        await LineClient.connect(tcp_server.address, "alice") as alice,
        await LineClient.connect(tcp_server.address, "bob") as bob,
    ):
        await alice.expect("* bob joined lobby")
        await bob.send_raw(b"A" * 70_000 + b"\nafter long\n")
        assert await bob.line() == "! line of 70000 bytes exceeds limit of 4096 bytes"
        assert await alice.line() == "bob: after long"
        await bob.send_raw(b"\xc3\x28 bad utf-8\nafter bad\n")
        assert await bob.line() == "! line is not valid UTF-8 (bad byte at offset 0)"
        assert await alice.line() == "bob: after bad"
        await bob.send_raw(b"red \x1b[31mtext\x07 nul\x00 cr\rforged: line\n")
        line = await alice.line()
        assert line == "bob: red \\x1b[31mtext\\x07 nul\\x00 cr\\x0dforged: line"
        await bob.send_raw("bidi \u202eevil\n".encode())
        assert await alice.line() == "bob: bidi \\u202eevil"


async def test_never_reading_client_is_dropped_and_others_get_everything_in_order() -> None:
    limits = Limits(outbox_high_water=64 * 1024, rate_lines_per_second=100_000, rate_burst=100_000)
    hub = Hub(limits=limits)
    async with serve_tcp(hub, port=0) as server:
        # The stuck client asks for a tiny receive buffer and never reads.
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stuck, server.address)
        await asyncio.get_running_loop().sock_sendall(stuck, b"stuck\n")
        async with (
            await LineClient.connect(server.address, "alice") as alice,
            await LineClient.connect(server.address, "bob") as bob,
        ):
            await alice.expect("* bob joined lobby")
            payload = "x" * 1000  # 10 MB in all: more than the kernel buffers can hide
            count = 10_000

            async def send_all() -> None:
                for start in range(0, count, 500):
                    await alice.send(*(f"{i:05} {payload}" for i in range(start, start + 500)))

            sender = asyncio.create_task(send_all())
            received = []
            while len(received) < count:
                line = await bob.line()
                if line.startswith("alice: "):
                    received.append(line)
                else:
                    assert line == "* stuck left lobby (slow)", line
                # Bounded memory: no member's hub outbox exceeds the high-water mark.
                assert all(m.pending_bytes <= limits.outbox_high_water for m in hub.members())
            await sender
            assert received == [f"alice: {i:05} {payload}" for i in range(count)]
            assert hub.find("stuck") is None
            stats = hub.statistics()
            assert stats.disconnects.get("slow") == 1
        stuck.close()


async def test_library_api_observe_and_post(hub: Hub, tcp_server: TcpServer) -> None:
    host, port = tcp_server.address
    assert host == "127.0.0.1"
    assert port > 0
    async with watch(hub) as events:
        async with await LineClient.connect(tcp_server.address, "alice") as alice:
            assert await asyncio.wait_for(anext(events), 10) == Joined("alice", "lobby")
            await alice.send("hello")
            assert await asyncio.wait_for(anext(events), 10) == Message("alice", "hello", "lobby")
            hub.post("lobby", "the server speaks")
            hub.post("lobby", "beep", nick="robot")
            assert await alice.lines(2) == ["*** the server speaks", "robot: beep"]
            assert [r.name for r in hub.rooms()] == ["lobby"]
            assert hub.who("lobby") == ["alice"]
        assert await asyncio.wait_for(anext(events), 10) == Notice("the server speaks")
        assert await asyncio.wait_for(anext(events), 10) == Message("robot", "beep", "lobby")
        event = await asyncio.wait_for(anext(events), 10)
        assert event == Left("alice", "lobby", "connection closed")


async def test_graceful_close_tells_every_member(hub: Hub) -> None:
    server = serve_tcp(hub, port=0)
    await server.start()
    alice = await LineClient.connect(server.address, "alice")
    lurker = await LineClient.connect(server.address)
    await server.aclose()
    assert await alice.eof() == ["*** closing: server is shutting down"]
    assert await lurker.eof() == ["*** closing: server is shutting down"]
    assert hub.statistics().members == 0
    await alice.close()
    await lurker.close()


async def test_refused_when_full() -> None:
    hub = Hub(limits=Limits(max_members=1))
    async with serve_tcp(hub, port=0) as server, await LineClient.connect(server.address):
        reader, writer = await asyncio.open_connection(*server.address)
        async with asyncio.timeout(10):
            assert await reader.read() == b"! [server-full] server is full (1 members)\n"
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


@pytest.mark.parametrize("family", ["ipv6"])
async def test_ipv6_loopback(hub: Hub, family: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    async with serve_tcp(hub, host="::1", port=0) as server, await LineClient.connect(server.address, "six") as six:
        await six.send("/who")
        assert await six.line() == "*** members of lobby (1): @six"


async def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub(limits=Limits(max_members=1))
    caplog.set_level(logging.WARNING, logger="asyncchat")
    async with serve_tcp(hub, port=0) as server, await LineClient.connect(server.address):
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*server.address)
            async with asyncio.timeout(10):
                assert await reader.read() == b"! [server-full] server is full (1 members)\n"
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 1
    assert hub.statistics().refused == {"full": 20}
