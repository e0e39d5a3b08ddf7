"""The bad-input suite: attacks over real loopback sockets, under both loops.

After each attack two fresh clients must still join and chat, and no record
at ERROR or above may reach the ``asyncchat`` or ``asyncio`` loggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import re
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from asyncchat import Hub, Limits, SlowConsumerPolicy
from asyncchat.tcp import WRITE_HIGH, TcpServer, serve_tcp
from asyncchat.udp import AMPLIFICATION_FACTOR, FIRST_REPLY_ALLOWANCE, UdpServer, serve_udp

from .chatclient import TIMEOUT, LineClient
from .hardening import check_chat, fail_on_error_logs, fresh_nick, open_fds, tcp_opener, wait_for

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_error_logs() -> Iterator[None]:
    with fail_on_error_logs():
        yield


@contextlib.asynccontextmanager
async def chat_server(**overrides: Any) -> AsyncIterator[tuple[Hub, TcpServer]]:
    """A hub with test-friendly limits (*overrides* win) served on a free loopback port."""
    options: dict[str, Any] = {"max_per_ip": 10_000}
    options.update(overrides)
    hub = Hub(limits=Limits(**options))
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        yield hub, server


async def still_serves(server: TcpServer) -> None:
    await check_chat(tcp_opener(server.address))


async def still_open(client: LineClient) -> None:
    """The attacker's own (logged-in) connection was kept and still works: a /ping gets its pong."""
    tag = fresh_nick("alive")
    await client.send(f"/ping {tag}")
    await client.expect(f"*** pong {tag}")


async def raw_socket(address: tuple[str, int], *, rcvbuf: int = 0) -> socket.socket:
    """A non-blocking client socket (no StreamReader buffering on our side)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def recv_until(sock: socket.socket, marker: bytes, buf: bytearray | None = None) -> bytearray:
    """Receive into *buf* until it contains *marker* (EOF fails)."""
    loop = asyncio.get_running_loop()
    buf = bytearray() if buf is None else buf
    async with asyncio.timeout(TIMEOUT):
        while marker not in buf:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise EOFError(f"EOF before {marker!r}; got {bytes(buf[-200:])!r}")
            buf += chunk
    return buf


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------- bad bytes


@given(payload=st.binary(min_size=1, max_size=8192), login=st.booleans())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
async def test_random_bytes(tcp_server: TcpServer, payload: bytes, login: bool) -> None:
    # More lines than the rate bucket holds would get the ping dropped: not this test's subject.
    assume(payload.count(b"\n") + 3 < tcp_server.hub.limits.rate_burst)
    nick = fresh_nick("rnd") if login else None
    async with await LineClient.connect(tcp_server.address, nick) as attacker:
        await attacker.send_raw(payload)
        # A nickname (chat text if already named) and a ping after the garbage:
        # the stream is still in sync, and the connection still open.
        await attacker.send_raw(f"\n{fresh_nick('rnd')}\n/ping after-garbage\n".encode())
        if b"/quit" not in payload.lower():
            await attacker.expect("*** pong after-garbage")
        else:  # the garbage may have said /quit: then the server says goodbye first, or resets
            seen: list[str] = []
            with contextlib.suppress(ConnectionError):  # a reset: input left unread after /quit
                while (line := await attacker.line()) != "*** pong after-garbage":
                    seen.append(line)
                    if line == "*** closing: goodbye":
                        assert await attacker.eof() == []
                        break
    await still_serves(tcp_server)


@contextlib.asynccontextmanager
async def attacker_and_observer(server: TcpServer) -> AsyncIterator[tuple[LineClient, LineClient, str]]:
    nick = fresh_nick("mallory")
    async with await LineClient.connect(server.address, nick) as attacker:
        observer_nick = fresh_nick("obs")
        async with await LineClient.connect(server.address, observer_nick) as observer:
            await attacker.expect(f"* {observer_nick} joined lobby")
            yield attacker, observer, nick


async def test_invalid_utf8_gets_an_error_and_the_stream_stays_in_sync(tcp_server: TcpServer) -> None:
    async with attacker_and_observer(tcp_server) as (attacker, observer, nick):
        await attacker.send_raw(b"\xff\xfebad\n\xc3(\nok \xe2\x82\n")
        assert await attacker.lines(3) == [
            "! line is not valid UTF-8 (bad byte at offset 0)",
            "! line is not valid UTF-8 (bad byte at offset 0)",
            "! line is not valid UTF-8 (bad byte at offset 3)",
        ]
        await attacker.send("caf\u00e9 is fine")
        assert await observer.line() == f"{nick}: caf\u00e9 is fine"
        await still_open(attacker)
    await still_serves(tcp_server)


async def test_invalid_utf8_nickname(tcp_server: TcpServer) -> None:
    async with await LineClient.connect(tcp_server.address) as attacker:
        await attacker.send_raw(b"\xff\n")
        assert await attacker.line() == "! line is not valid UTF-8 (bad byte at offset 0)"
        nick = fresh_nick("late")
        await attacker.send(nick)
        await attacker.expect(f"* {nick} joined lobby")
    await still_serves(tcp_server)


@pytest.mark.parametrize("login", [True, False])
async def test_one_mebibyte_line_without_newline(tcp_server: TcpServer, login: bool) -> None:
    nick = fresh_nick("big") if login else None
    async with await LineClient.connect(tcp_server.address, nick) as attacker:
        await attacker.send_raw(b"x" * MiB)
        # The server holds at most one line's worth of the attack.
        connection = next(iter(tcp_server._connections))
        assert connection._decoder.buffered <= tcp_server.hub.limits.max_line_bytes + 1
        await attacker.send_raw(b"\r\n/ping still-in-sync\n")
        assert await attacker.line() == f"! line of {MiB} bytes exceeds limit of 4096 bytes"
        expected = "*** pong still-in-sync" if login else "! nickname '/ping still-in-sync' is invalid"
        assert (await attacker.line()).startswith(expected)
    await still_serves(tcp_server)


async def test_one_mebibyte_line_then_eof(tcp_server: TcpServer) -> None:
    async with await LineClient.connect(tcp_server.address, fresh_nick("big")) as attacker:
        await attacker.send_raw(b"y" * MiB)
        attacker.writer.write_eof()
        assert await attacker.eof() == [f"! line of {MiB} bytes exceeds limit of 4096 bytes"]
    await wait_for(lambda: tcp_server.connections == 0)
    await still_serves(tcp_server)


async def test_nul_bytes_are_escaped(tcp_server: TcpServer) -> None:
    async with attacker_and_observer(tcp_server) as (attacker, observer, nick):
        await attacker.send_raw(b"a\x00b\x00\n")
        raw = await observer.reader.readline()
        assert raw == f"{nick}: a\\x00b\\x00\n".encode()
        await still_open(attacker)
    await still_serves(tcp_server)


ESCAPES = (
    "\x1b[2J\x1b[H"  # clear the screen
    "\x1b]0;pwned\x07"  # set the window title (OSC ... BEL)
    "\x9b31m"  # C1 CSI
    "\x7f\x08\x08"  # DEL, backspaces
    "safe\u202eexe.txt\u202c"  # RLO ... PDF: "Trojan source"
    "\u2066isolate\u2069\u200f\u200e\u061c\u200b\ufeff"
)


async def test_terminal_escapes_and_bidi_controls_do_not_reach_others_raw(tcp_server: TcpServer) -> None:
    async with attacker_and_observer(tcp_server) as (attacker, observer, nick):
        await attacker.send(ESCAPES, "/me " + ESCAPES, f"/msg {nick} self", "/nick \x1bbad")
        received = await observer.reader.readline() + await observer.reader.readline()
        for forbidden in ["\x1b", "\x07", "\x9b", "\x7f", "\x08", "\u202e", "\u202c", "\u2066", "\u2069", "\u200f"]:
            assert forbidden.encode() not in received, forbidden
        text = received.decode()
        assert text.startswith(f"{nick}: \\x1b[2J\\x1b[H\\x1b]0;pwned\\x07\\x9b31m\\x7f\\x08\\x08safe\\u202eexe.txt")
        assert text.splitlines()[1].startswith(f"* {nick} \\x1b[2J")
        lines = await attacker.lines(2)
        assert lines[0] == "! you cannot send a private message to yourself"
        assert "\x1b" not in lines[1]
        assert lines[1].startswith("! nickname '\\\\x1bbad' is invalid")
        await still_open(attacker)
    await still_serves(tcp_server)


async def test_cr_inside_a_line_cannot_forge_a_second_line(tcp_server: TcpServer) -> None:
    async with attacker_and_observer(tcp_server) as (attacker, observer, nick):
        victim = fresh_nick("victim")
        # CR alone, CR before a forged server line, CRLF split across writes.
        await attacker.send_raw(f"hi\r{victim}: I owe mallory money\n".encode())
        await attacker.send_raw(b"x\r*** closing: forged\r\r\n")
        await attacker.send_raw(b"split\r")
        await attacker.send_raw(b"\nlast\n")
        assert await observer.lines(4) == [
            f"{nick}: hi\\x0d{victim}: I owe mallory money",
            f"{nick}: x\\x0d*** closing: forged\\x0d",
            f"{nick}: split",
            f"{nick}: last",
        ]
        # Membership lines cannot be forged with /me either.
        await attacker.send("/me left lobby (quit)", f"/me is now known as {victim}")
        assert await attacker.lines(2) == ["! that action would read like a server line; reword it"] * 2
        await still_open(attacker)
    await still_serves(tcp_server)


# ------------------------------------------------------------------ floods


async def test_flood_of_ten_thousand_lines() -> None:
    async with chat_server() as (hub, server):
        limits = hub.limits
        flooder_nick, observer_nick, talker_nick = fresh_nick("flood"), fresh_nick("obs"), fresh_nick("talk")
        async with (
            await LineClient.connect(server.address, flooder_nick) as flooder,
            await LineClient.connect(server.address, observer_nick) as observer,
            await LineClient.connect(server.address, talker_nick) as talker,
        ):
            await flooder.expect(f"* {talker_nick} joined lobby")
            await observer.expect(f"* {talker_nick} joined lobby")
            # Phase 1: over the burst but under the disconnect threshold -> a warning line.
            phase1 = limits.rate_burst + 60
            await flooder.send(*(f"flood {i}" for i in range(phase1)))
            await flooder.expect(
                f"! slow down: at most {limits.rate_lines_per_second:g} lines per second; line dropped"
            )
            # Phase 2: the rest of the 10,000 lines, while someone else keeps talking.
            await flooder.send_raw("".join(f"flood {i}\n" for i in range(phase1, 10_000)).encode())
            for i in range(20):
                await talker.send(f"talk {i}")
            with contextlib.suppress(ConnectionError):
                rest = await flooder.eof()
                assert rest[-1] == f"*** closing: {limits.rate_disconnect_after} lines over the rate limit", rest[-3:]
            await talker.send("talk end")
            seen = await observer.expect(f"{talker_nick}: talk end")
        stats = hub.statistics()
        assert stats.disconnects.get("flood") == 1
        assert stats.rate_limited >= limits.rate_disconnect_after
        flood = [int(line.rsplit(" ", 1)[1]) for line in seen if line.startswith(f"{flooder_nick}: flood ")]
        talk = [line for line in seen if line.startswith(f"{talker_nick}: ")]
        # Others are unaffected: every talker line, in order; the flood mostly dropped, in order.
        assert talk == [f"{talker_nick}: talk {i}" for i in range(20)]
        assert flood == sorted(flood)
        assert len(set(flood)) == len(flood)
        # The burst (less the token the nickname line took) got through; then the rate.
        assert limits.rate_burst - 1 <= len(flood) < 1_000
        assert f"* {flooder_nick} left lobby (flood)" in seen
        await still_serves(server)


# ---------------------------------------------------------- slow consumers


async def _slow_reader_scenario(hub: Hub, server: TcpServer, *, lines: int, stop: Any) -> tuple[socket.socket, str]:
    """A logged-in member that stops reading while a talker sends *lines* lines of 1 KiB."""
    slow = await raw_socket(server.address, rcvbuf=4096)
    slow_nick = fresh_nick("slow")
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(slow, f"{slow_nick}\n".encode())
    await recv_until(slow, f"* {slow_nick} joined lobby\n".encode())
    talker_nick = fresh_nick("talk")
    observer_nick = fresh_nick("obs")
    high_water = hub.limits.outbox_high_water
    member = hub.find(slow_nick)
    assert member is not None
    connection: Any = member.sink
    async with (
        await LineClient.connect(server.address, talker_nick) as talker,
        await LineClient.connect(server.address, observer_nick) as observer,
    ):
        await talker.expect(f"* {observer_nick} joined lobby")
        filler = "z" * 1000
        for i in range(lines):
            await talker.send(f"{i} {filler}")
            # The observer, who reads, gets every line in order.
            assert await observer.line() == f"{talker_nick}: {i} {filler}"
            # Hub-side memory for the slow member stays bounded, and so does the transport's.
            assert member.pending_bytes <= high_water
            if not member.closed:
                assert connection.transport.get_write_buffer_size() <= WRITE_HIGH + high_water
            if stop(member):
                break
        else:
            raise AssertionError(f"the slow-consumer policy never acted: {hub.statistics()}")
        await talker.send("after")
        await observer.expect(f"{talker_nick}: after")
    return slow, slow_nick


async def test_never_reading_client_is_disconnected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "asyncchat")
    async with chat_server(outbox_high_water=32 * 1024, rate_lines_per_second=10_000, rate_burst=10_000) as (
        hub,
        server,
    ):
        slow, slow_nick = await _slow_reader_scenario(hub, server, lines=5_000, stop=lambda member: member.closed)
        with slow:
            assert hub.statistics().disconnects.get("slow") == 1
            assert hub.find(slow_nick) is None
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "slow consumer" in r.getMessage()]
            assert len(warnings) == 1
            assert "exceeds limit of 32768 bytes" in warnings[0].getMessage()
        await still_serves(server)


async def test_never_reading_client_has_lines_dropped_and_is_told() -> None:
    async with chat_server(
        outbox_high_water=32 * 1024,
        slow_consumer=SlowConsumerPolicy.DROP,
        rate_lines_per_second=10_000,
        rate_burst=10_000,
    ) as (hub, server):
        slow, slow_nick = await _slow_reader_scenario(
            hub, server, lines=5_000, stop=lambda member: hub.statistics().lines_dropped >= 100
        )
        with slow:
            member = hub.find(slow_nick)
            assert member is not None
            assert not member.closed
            # Now it reads: everything queued arrives, then the drop notice, then new lines.
            buf = await recv_until(slow, b" lines were dropped because you read too slowly\n")
            await recv_until(slow, b": after\n", buf)
            text = buf.decode()
            reported = [
                int(line[2:].split(" ", 1)[0]) for line in text.splitlines() if line.endswith("read too slowly")
            ]
            assert sum(reported) == hub.statistics().lines_dropped
            assert reported
            assert all(n > 0 for n in reported)
        await still_serves(server)


# -------------------------------------------------------------- slowloris


async def test_slowloris_connections_are_freed_by_the_login_timeout() -> None:
    async with chat_server(login_timeout=1.0, max_per_ip=1_000) as (hub, server):
        baseline = (server.connections, hub.statistics().members)
        clients = await asyncio.gather(*(LineClient.connect(server.address) for _ in range(500)))
        try:
            assert server.connections == baseline[0] + 500
            # A legitimate user is still served while the slowloris clients wait.
            await still_serves(server)
            rests = await asyncio.gather(*(client.eof() for client in clients))
            assert all(rest == ["*** closing: no nickname within 1 seconds"] for rest in rests), rests[0]
        finally:
            await asyncio.gather(*(client.close() for client in clients))
        await wait_for(lambda: server.connections == baseline[0])
        stats = hub.statistics()
        assert stats.members == baseline[1]
        assert stats.disconnects.get("login-timeout") == 500
        await still_serves(server)


# ------------------------------------------------------ connection churn


async def _cycle(address: tuple[str, int], i: int) -> None:
    loop = asyncio.get_running_loop()
    sock = await raw_socket(address)
    try:
        kind = i % 5
        if kind == 0:  # connect and close at once
            sock.close()
            return
        if kind == 1:  # connect and reset at once
            reset(sock)
            return
        await recv_until(sock, b"\n")  # the greeting
        if kind == 2:  # reset in the middle of the nickname
            await loop.sock_sendall(sock, b"half-a-ni")
            reset(sock)
            return
        nick = f"churn{i}"
        await loop.sock_sendall(sock, f"{nick}\n".encode())
        await recv_until(sock, f"* {nick} joined lobby\n".encode())
        if kind == 3:  # logged in, reset in the middle of a line
            await loop.sock_sendall(sock, b"a line cut sho")
            reset(sock)
        else:  # logged in, half a line, clean close
            await loop.sock_sendall(sock, b"bye without newline")
            sock.close()
    except BaseException:
        sock.close()
        raise


async def test_connect_disconnect_churn_returns_to_baseline() -> None:
    async with chat_server() as (hub, server):
        await still_serves(server)
        await wait_for(lambda: server.connections == 0)
        base_fds, base_members = open_fds(), hub.statistics().members
        async with asyncio.timeout(60):
            for start in range(0, 2_000, 50):
                await asyncio.gather(*(_cycle(server.address, i) for i in range(start, start + 50)))
        await wait_for(lambda: server.connections == 0 and hub.statistics().members == base_members)
        await wait_for(lambda: open_fds() <= base_fds)
        assert open_fds() == base_fds
        stats = hub.statistics()
        # Every cycle became a member and left again (plus the two fresh clients of the first check).
        assert stats.disconnects == {"closed": 2_000 + 2}
        assert stats.logged_in == 0
        assert server.connections == 0
        await still_serves(server)


# ------------------------------------------------------------- per-IP cap


async def test_connections_over_the_per_ip_limit_are_refused() -> None:
    async with chat_server(max_per_ip=5) as (hub, server):
        clients = [await LineClient.connect(server.address) for _ in range(5)]
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            async with asyncio.timeout(TIMEOUT):
                assert (
                    await reader.read() == b"! [too-many-from-address] too many connections from 127.0.0.1 (limit 5)\n"
                )
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        finally:
            for client in clients:
                await client.close()
        assert hub.statistics().refused == {"per-ip": 1}
        await wait_for(lambda: server.connections == 0)
        await still_serves(server)


# --------------------------------------------------------- garbage collection


async def test_connections_survive_garbage_collection(tcp_server: TcpServer) -> None:
    """The server keeps every live transport referenced (a collected StreamWriter closes it)."""
    async with attacker_and_observer(tcp_server) as (attacker, observer, nick):
        gc.collect()
        await attacker.send("still connected after gc")
        assert await observer.line() == f"{nick}: still connected after gc"
    await still_serves(tcp_server)


# --------------------------------------------------------------------- UDP


_TOKEN = re.compile(r"send /verify ([0-9a-f]+)")


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.received = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += len(data)
        self.queue.put_nowait(data)


class UdpPeer:
    """A minimal UDP test client: raw datagrams out, lines in (each wait bounded)."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _Datagrams) -> None:
        self.transport = transport
        self.protocol = protocol
        self.sent = 0
        self._lines: list[str] = []

    @classmethod
    async def open(cls, address: tuple[str, int]) -> UdpPeer:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(_Datagrams, remote_addr=address)
        return cls(transport, protocol)

    def send(self, data: bytes) -> None:
        self.sent += len(data)
        self.transport.sendto(data)

    async def line(self) -> str:
        while not self._lines:
            async with asyncio.timeout(TIMEOUT):
                datagram = await self.protocol.queue.get()
            self._lines += datagram.decode().splitlines()
        return self._lines.pop(0)

    async def expect(self, wanted: str) -> list[str]:
        seen = []
        while (line := await self.line()) != wanted:
            seen.append(line)
        return seen

    async def login(self, nick: str) -> None:
        """Send the nickname, verify the address (the join line may exceed the unverified budget)."""
        self.send(f"{nick}\n".encode())
        while (match := _TOKEN.search(await self.line())) is None:
            pass
        self.send(f"/verify {match[1]}\n".encode())
        await self.expect("*** address verified: you receive all messages")
        self.send(b"/ping logged-in\n")
        seen = await self.expect("*** pong logged-in")
        assert not any(line.startswith("! ") for line in seen), seen

    def close(self) -> None:
        self.transport.close()


@contextlib.asynccontextmanager
async def tcp_and_udp(host: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[tuple[Hub, TcpServer, UdpServer]]:
    """One hub served over TCP and UDP on free ports of *host*; UDP trusts no source (attackers forge)."""
    options: dict[str, Any] = {"max_per_ip": 10_000}
    options.update(overrides)
    hub = Hub(limits=Limits(**options))
    async with serve_tcp(hub, host=host, port=0) as tcp, serve_udp(hub, host=host, port=0, trust=()) as udp:
        yield hub, tcp, udp


async def udp_still_serves(tcp: TcpServer, udp: UdpServer) -> None:
    """A fresh TCP pair chats, and a fresh UDP member's line reaches a TCP member."""
    await check_chat(tcp_opener(tcp.address))
    nick = fresh_nick("udpok")
    async with await LineClient.connect(tcp.address, fresh_nick("tcpok")) as observer:
        peer = await UdpPeer.open(udp.address)
        try:
            await peer.login(nick)
            await observer.expect(f"* {nick} joined lobby")
            peer.send(b"hello over udp\n")
            await observer.expect(f"{nick}: hello over udp")
        finally:
            peer.close()


async def test_udp_empty_and_oversized_datagrams() -> None:
    async with tcp_and_udp() as (_hub, tcp, udp):
        attacker = await UdpPeer.open(udp.address)
        try:
            # (asyncio's sendto() skips empty datagrams: send them from a plain socket.)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
                for _ in range(10):
                    plain.sendto(b"", udp.address)
            for size in (udp.max_datagram_in + 1, 20_000, 65_000):
                attacker.send(b"x" * size)
            await wait_for(lambda: udp.statistics().datagrams_in >= 13)
            stats = udp.statistics()
            assert (stats.dropped_empty, stats.dropped_oversized, stats.peers) == (10, 3, 0)
            # Nothing was answered: the first thing this address gets is the reply to its nickname.
            nick = fresh_nick("udpbig")
            attacker.send(f"{nick}\n".encode())
            assert (await attacker.line()).startswith("*** welcome")
            token = _TOKEN.search(await attacker.line())
            assert token is not None
            attacker.send(f"/verify {token[1]}\n".encode())
            await attacker.expect(f"* {nick} joined lobby")
            # A member's oversized datagram gets an error with the numbers.
            attacker.send(b"y" * 30_000)
            assert await attacker.line() == f"! datagram of 30000 bytes exceeds limit of {udp.max_datagram_in} bytes"
        finally:
            attacker.close()
        await udp_still_serves(tcp, udp)


GARBAGE = [
    b"\xff\xfe\xfd",
    b"\x00\x00\x00\n\x00",
    b"\n\n\n\r\r\r\n",
    b"\x1b[2J\x1b]0;pwned\x07\n",
    "\u202eevil\u202c\n".encode(),
    b"nick\rforged: line\n",
    b"/quit\n",
    b"/verify 00000000\n" * 6,
    bytes(range(256)),
]


async def test_udp_garbage_datagrams_from_fresh_addresses() -> None:
    async with tcp_and_udp() as (_hub, tcp, udp):
        rng = random.Random(5)
        payloads = GARBAGE + [rng.randbytes(rng.randrange(1, 1500)) for _ in range(40)]
        attackers = [await UdpPeer.open(udp.address) for _ in payloads]
        try:
            for attacker, payload in zip(attackers, payloads, strict=True):
                attacker.send(payload)
            await wait_for(lambda: udp.statistics().datagrams_in >= len(payloads))
            # Let the replies (if any) go out and arrive: one TCP round trip after the flush.
            async with await LineClient.connect(tcp.address) as probe:
                await probe.send("/ping")
            for attacker in attackers:
                # Never an amplifier: an unverified address gets at most allowance + 3x what it sent.
                assert attacker.protocol.received <= FIRST_REPLY_ALLOWANCE + AMPLIFICATION_FACTOR * attacker.sent
        finally:
            for attacker in attackers:
                attacker.close()
        assert udp.statistics().peers <= len(payloads)
        await udp_still_serves(tcp, udp)


async def test_udp_garbage_from_a_member_does_not_reach_others_raw() -> None:
    async with tcp_and_udp() as (_hub, tcp, udp):
        observer_nick = fresh_nick("obs")
        async with await LineClient.connect(tcp.address, observer_nick) as observer:
            attacker = await UdpPeer.open(udp.address)
            nick = fresh_nick("udpevil")
            try:
                await attacker.login(nick)
                await observer.expect(f"* {nick} joined lobby")
                for payload in GARBAGE[:6]:
                    attacker.send(payload)
                attacker.send(b"marker\n")
                seen = await observer.expect(f"{nick}: marker")
            finally:
                attacker.close()
            raw = "\n".join(seen).encode()
            for forbidden in (b"\x00", b"\x1b", b"\x07", b"\r", "\u202e".encode()):
                assert forbidden not in raw
            assert f"{nick}: nick\\x0dforged: line" in seen
            assert not any(line.startswith("forged") for line in seen)
        await udp_still_serves(tcp, udp)


async def test_udp_flood_from_one_address() -> None:
    async with tcp_and_udp() as (hub, tcp, udp):
        observer_nick, talker_nick = fresh_nick("obs"), fresh_nick("talk")
        async with (
            await LineClient.connect(tcp.address, observer_nick) as observer,
            await LineClient.connect(tcp.address, talker_nick) as talker,
        ):
            flooder = await UdpPeer.open(udp.address)
            nick = fresh_nick("udpflood")
            try:
                await flooder.login(nick)
                for i in range(10_000):
                    flooder.send(f"flood {i}\n".encode())
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # let the server read (the kernel drops the rest)
                    if i % 1000 == 0:
                        await talker.send(f"talk {i // 1000}")
                await wait_for(lambda: hub.statistics().disconnects.get("flood", 0) >= 1)
                await talker.send("talk end")
                seen = await observer.expect(f"{talker_nick}: talk end")
            finally:
                flooder.close()
        assert [line for line in seen if line.startswith(f"{talker_nick}: ")] == [
            f"{talker_nick}: talk {i}" for i in range(10)
        ]
        flood = [int(line.rsplit(" ", 1)[1]) for line in seen if line.startswith(f"{nick}: flood ")]
        assert flood == sorted(flood)
        assert 0 < len(flood) < 1_000
        assert f"* {nick} left lobby (flood)" in seen
        # One address is one table entry, whatever it sends.
        assert udp.statistics().peers <= 1
        await udp_still_serves(tcp, udp)
