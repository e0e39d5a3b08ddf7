"""The UDP room over real loopback sockets, under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

import asyncchat
from asyncchat import Hub, Limits
from asyncchat import runtime as runtime_module
from asyncchat.runtime import attach
from asyncchat.udp import (
    AMPLIFICATION_FACTOR,
    FIRST_REPLY_ALLOWANCE,
    MAX_DATAGRAM,
    UdpServer,
    classic_line,
    pack_datagrams,
    serve_udp,
    split_lines,
    strip_own_prefix,
)

from .chatclient import LineClient
from .classic_udp_client import ClassicClient

TIMEOUT = 10.0
TOKEN = re.compile(r"/verify ([0-9a-f]{8})")


# ------------------------------------------------------------------ helpers


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


class UdpClient:
    """An asyncio UDP test client: send text, read datagrams and lines under a timeout."""

    def __init__(self, transport: asyncio.DatagramTransport, receiver: _Receiver) -> None:
        self.transport = transport
        self.receiver = receiver
        self.datagrams: list[bytes] = []
        self._lines: list[str] = []
        self.token = ""

    @classmethod
    async def open(cls, server: tuple[str, int], *, host: str = "127.0.0.1") -> UdpClient:
        loop = asyncio.get_running_loop()
        transport, receiver = await loop.create_datagram_endpoint(_Receiver, local_addr=(host, 0), remote_addr=server)
        return cls(transport, receiver)

    @classmethod
    async def login(cls, server: tuple[str, int], nick: str, *, verify: bool = True) -> UdpClient:
        """Send *nick*; a trusted source joins at once, any other gets a token and (if *verify*) echoes it."""
        client = await cls.open(server)
        client.send(nick)
        while (line := await client.line()) != f"* {nick} joined lobby":
            found = TOKEN.search(line)
            if found:
                client.token = found[1]
                if not verify:
                    return client
                client.send(f"/verify {client.token}")
                await client.expect("*** address verified: you receive all messages")
        return client

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, text: str | bytes) -> None:
        self.transport.sendto(text.encode() if isinstance(text, str) else text)

    async def datagram(self) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            data = await self.receiver.queue.get()
        self.datagrams.append(data)
        return data

    async def line(self) -> str:
        while not self._lines:
            data = await self.datagram()
            assert data.endswith(b"\n"), data
            self._lines.extend(data.decode().split("\n")[:-1])
        return self._lines.pop(0)

    async def expect(self, wanted: str) -> list[str]:
        seen: list[str] = []
        while (line := await self.line()) != wanted:
            seen.append(line)
        return seen

    async def expect_prefix(self, prefix: str) -> str:
        while not (line := await self.line()).startswith(prefix):
            pass
        return line

    def close(self) -> None:
        self.transport.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on a non-blocking socket."""
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def barrier(client: UdpClient, tag: str) -> None:
    """Every datagram that reached the server before this ping has been handled and answered."""
    client.send(f"/ping {tag}")
    await client.expect(f"*** pong {tag}")


async def in_thread(func: Any, *args: Any) -> Any:
    async with asyncio.timeout(TIMEOUT + 5):
        return await asyncio.to_thread(func, *args)


@pytest.fixture
async def udp_server(hub: Hub) -> AsyncIterator[UdpServer]:
    async with serve_udp(hub, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def untrusted_udp_server(hub: Hub) -> AsyncIterator[UdpServer]:
    """Loopback sources treated like any others (forged ones in these tests): they must verify."""
    async with serve_udp(hub, host="127.0.0.1", port=0, trust=()) as server:
        yield server


@pytest.fixture
def no_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="asyncchat")
    return caplog


def assert_no_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# ------------------------------------------------------------- pure helpers


def test_classic_line_removes_own_prefix_only() -> None:
    assert classic_line("alice:hi", "alice") == "hi"
    assert classic_line("alice: hi", "alice") == "hi"
    assert classic_line("ALICE:hi", "alice") == "hi"
    assert classic_line("alice:alice:hi", "alice") == "alice:hi"
    assert classic_line("bob: hi", "alice") == "bob: hi"
    assert classic_line("alicex:hi", "alice") == "alicex:hi"
    assert classic_line("alice", "alice") == "alice"
    assert classic_line("alice:", "alice") == ""
    assert classic_line("hello", "alice") == "hello"


def test_classic_line_q_means_quit() -> None:
    assert classic_line("q", "alice") == "/quit"
    assert classic_line("alice:q", "alice") == "/quit"
    assert classic_line(" q ", "alice") == "/quit"
    assert classic_line("qq", "alice") == "qq"
    assert classic_line("bob:q", "alice") == "bob:q"
    assert strip_own_prefix("q", "alice") == "q"
    assert strip_own_prefix("x:y", "") == "x:y"


def test_split_lines_keeps_short_lines_whole() -> None:
    assert split_lines(b"a\nbb\n") == [b"a\n", b"bb\n"]
    assert split_lines(b"a\nbb") == [b"a\n", b"bb\n"]
    assert split_lines(b"") == []


def test_split_lines_splits_a_long_line_with_continuations() -> None:
    line = ("alice: " + "é" * 1500 + "z").encode()
    pieces = split_lines(line + b"\n")
    assert len(pieces) == 3
    assert all(len(p) <= MAX_DATAGRAM and p.endswith(b"\n") for p in pieces)
    assert all(p.startswith(b"+ ") for p in pieces[1:])
    assert not pieces[0].startswith(b"+ ")
    for piece in pieces:
        piece.decode()  # never cut inside a UTF-8 sequence
    rebuilt = pieces[0][:-1] + b"".join(p[2:-1] for p in pieces[1:])
    assert rebuilt == line


def test_split_lines_exact_fit() -> None:
    line = b"x" * (MAX_DATAGRAM - 1)
    assert split_lines(line + b"\n") == [line + b"\n"]
    assert [len(p) for p in split_lines(line + b"x\n")] == [MAX_DATAGRAM, 4]


def test_pack_datagrams_coalesces_in_order() -> None:
    lines = [b"%03d " % i + b"x" * 95 + b"\n" for i in range(30)]  # 100 bytes each
    datagrams = pack_datagrams(lines)
    assert [len(d) for d in datagrams] == [1200, 1200, 600]
    assert b"".join(datagrams) == b"".join(lines)
    assert pack_datagrams([]) == []


def test_lazy_exports() -> None:
    assert asyncchat.serve_udp is serve_udp
    assert asyncchat.UdpServer is UdpServer
    assert "serve_udp" in asyncchat.__all__


# ------------------------------------------------------------ the contract


async def test_classic_client_chats_with_tcp_member(
    hub: Hub, tcp_server: Any, udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        bob = ClassicClient(udp_server.address, "bob")
        try:
            bob.start()
            await alice.expect("* bob joined lobby")
            assert await in_thread(bob.wait_for, "* bob joined lobby")
            assert bob.lines()[0].startswith("*** welcome")

            bob.say("hi there")
            await alice.expect("bob: hi there")
            bob.say("alice: forged?")  # the server, not the sender, attributes lines
            await alice.expect("bob: alice: forged?")

            await alice.send("hello bob")
            assert await in_thread(bob.wait_for, "alice: hello bob")

            await alice.send("/who")
            await alice.expect("*** members of lobby (2): @alice, bob")
            bob.say("/who")
            assert await in_thread(bob.wait_for, "*** members of lobby (2): @alice, bob")
            # A loopback source is trusted: no token to type.
            assert "*** address verified: you receive all messages" in bob.lines()
            assert not any("/verify" in line for line in bob.lines())

            bob.say("q")
            await alice.expect("* bob left lobby (quit)")
            assert await in_thread(bob.wait_for, "*** closing: goodbye")
            assert udp_server.peers == 0
        finally:
            bob.stop()
    assert_no_error_logs(no_errors)


async def test_classic_client_verifies_by_typing_the_token(
    hub: Hub, tcp_server: Any, untrusted_udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    server = untrusted_udp_server
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        bob = ClassicClient(server.address, "bob")
        try:
            bob.start()
            challenge = await in_thread(bob.wait_for_prefix, "*** to join, send /verify ")
            assert bob.lines()[0].startswith("*** welcome")
            assert server.peer(bob.address) is not None
            assert hub.find("bob") is None  # not a member: the name waits for the token
            bob.say("hello?")  # not relayed: the address is not verified...
            bob.say("is anyone there?")
            assert await in_thread(bob.wait_for_count, challenge, 3)  # ...and it is told again how to verify
            await alice.send("/who")
            await alice.expect("*** members of lobby (1): @alice")
            # A human with the classic client verifies by typing the token it saw (bob:TOKEN).
            bob.say(challenge.rsplit(" ", 1)[1])
            seen = await alice.expect("* bob joined lobby")
            assert await in_thread(bob.wait_for, "*** address verified: you receive all messages")
            assert await in_thread(bob.wait_for, "* bob joined lobby")
            assert [line for line in bob.lines() if line.startswith("*** welcome")] == [bob.lines()[0]]  # once
            bob.say("hi there")
            await alice.expect("bob: hi there")
            await alice.send("hello bob")
            assert await in_thread(bob.wait_for, "alice: hello bob")
            assert not any(line.startswith("bob:") for line in seen)
        finally:
            bob.stop()
    assert_no_error_logs(no_errors)


async def test_name_colon_q_and_slash_quit_leave(hub: Hub, tcp_server: Any, udp_server: UdpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        for nick, bye in [("bob", "bob:q"), ("carol", "/quit")]:
            client = await UdpClient.login(udp_server.address, nick)
            await alice.expect(f"* {nick} joined lobby")
            client.send(bye)
            await alice.expect(f"* {nick} left lobby (quit)")
            await client.expect("*** closing: goodbye")
            client.close()
        assert udp_server.peers == 0


async def test_udp_and_tcp_share_rooms(hub: Hub, tcp_server: Any, udp_server: UdpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        bob = await UdpClient.login(udp_server.address, "bob")
        try:
            await alice.expect("* bob joined lobby")
            bob.send("/join den")
            await bob.expect("* bob joined den")
            await alice.expect("* bob left lobby")
            await alice.send("/join den")
            await alice.expect("* alice joined den")
            await bob.expect("* alice joined den")
            bob.send("several\nlines in\none datagram")
            assert await alice.lines(3) == ["bob: several", "bob: lines in", "bob: one datagram"]
            bob.send("/msg alice psst")
            await alice.expect("[pm from bob] psst")
            await alice.send("/me waves")
            await bob.expect("* alice waves")
            bob.send("/ping 42")
            await bob.expect("*** pong 42")
        finally:
            bob.close()


async def test_first_datagram_nick_rules(hub: Hub, tcp_server: Any, udp_server: UdpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice"):
        client = await UdpClient.open(udp_server.address)
        try:
            client.send("no way")
            await client.expect("! nickname 'no way' is invalid: use 1-32 letters, digits, _ or -")
            client.send("ALICE")
            await client.expect("! nickname 'ALICE' is taken")
            client.send("bob")
            await client.expect("* bob joined lobby")
            assert hub.find("bob") is not None
        finally:
            client.close()


async def test_output_is_coalesced_into_bounded_datagrams(hub: Hub, tcp_server: Any, udp_server: UdpServer) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        bob = await UdpClient.login(udp_server.address, "bob")
        try:
            bob.datagrams.clear()
            lines = [f"line {i:03d} " + "x" * 60 for i in range(50)]
            long_text = "é" * 2000 + "END"
            await alice.send(*lines, long_text)  # one TCP segment: one flush
            got = [await bob.line() for _ in range(50)]
            assert got == [f"alice: {text}" for text in lines]
            first = await bob.line()
            rest = [await bob.line() for _ in range(3)]
            assert all(r.startswith("+ ") for r in rest)
            assert first + "".join(r[2:] for r in rest) == f"alice: {long_text}"
            assert all(len(d) <= MAX_DATAGRAM and d.endswith(b"\n") for d in bob.datagrams)
            assert len(bob.datagrams) < 20  # 54 lines, about 7000 bytes: coalesced
        finally:
            bob.close()


async def test_shutdown_tells_every_udp_member(hub: Hub, tcp_server: Any) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        server = serve_udp(hub, port=0)
        await server.start()
        bob = await UdpClient.login(server.address, "bob")
        carol = await UdpClient.login(server.address, "carol", verify=False)
        try:
            await alice.expect("* carol joined lobby")
            await server.aclose()
            await bob.expect("*** closing: server is shutting down")
            await carol.expect("*** closing: server is shutting down")
            left = {await alice.line(), await alice.line()}
            assert left == {"* bob left lobby (server shutting down)", "* carol left lobby (server shutting down)"}
            await alice.send("/who")
            await alice.expect("*** members of lobby (1): @alice")
            await server.aclose()  # twice is fine
        finally:
            bob.close()
            carol.close()


async def test_classic_client_that_only_reads_gets_every_line(
    hub: Hub, tcp_server: Any, udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    """A loopback source cannot be forged from another host: it is trusted, with no budget."""
    bob = ClassicClient(udp_server.address, "bob")
    try:
        async with await LineClient.connect(tcp_server.address, "alice") as alice:
            bob.start()  # the name is all bob ever sends
            await alice.expect("* bob joined lobby")
            texts = [f"chat line {i:02d} " + "x" * 60 for i in range(30)]
            for text in texts:
                await alice.send(text)
            await alice.send("/quit")
            await alice.expect("*** closing: goodbye")
        assert await in_thread(bob.wait_for, "* alice left lobby (quit)")
        assert [line for line in bob.lines() if line.startswith("alice: ")] == [f"alice: {t}" for t in texts]
        stats = udp_server.statistics()
        assert (stats.dropped_unverified, stats.verified) == (0, 1)
    finally:
        bob.stop()
    assert_no_error_logs(no_errors)


# ---------------------------------------------------------------- expiry


async def test_silent_member_expires(tcp_server: Any) -> None:
    hub = Hub(limits=Limits(udp_idle_timeout=1.0))
    runtime = attach(hub, tick_seconds=0.05)  # the servers below share this binding
    async with (
        serve_udp(hub, port=0) as server,
        asyncchat.serve_tcp(hub, port=0) as tcp,
        await LineClient.connect(tcp.address, "alice") as alice,
    ):
        bob = await UdpClient.login(server.address, "bob")
        try:
            await alice.expect("* bob left lobby (idle)")
            await bob.expect("*** closing: idle for too long")
            assert server.peers == 0
            assert hub.find("bob") is None
            assert hub.statistics().disconnects["idle"] == 1
        finally:
            bob.close()
    runtime.release()


async def test_ping_keeps_a_member_alive(hub: Hub, udp_server: UdpServer) -> None:
    loop = asyncio.get_running_loop()
    timeout = hub.limits.udp_idle_timeout
    bob = await UdpClient.login(udp_server.address, "bob")
    try:
        member = hub.find("bob")
        assert member is not None
        member.last_seen = 0.0  # as if bob had been silent since the clock started
        start = loop.time()
        assert start > timeout  # so that a tick at start + 0.9 timeouts would expire bob...
        bob.send("/ping")
        await bob.expect("*** pong")
        hub.tick(start + timeout * 0.9)  # ...had the ping not refreshed him
        assert hub.find("bob") is not None
        hub.tick(loop.time() + timeout * 1.1)
        assert hub.find("bob") is None
        assert udp_server.peers == 0
    finally:
        bob.close()


# ---------------------------------------------------------------- safety


async def test_amplification_bound_default_mode(
    hub: Hub, tcp_server: Any, untrusted_udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    udp_server = untrusted_udp_server
    async with (
        await LineClient.connect(tcp_server.address, "alice") as alice,
        await LineClient.connect(tcp_server.address, "bob") as bob,
    ):
        probe = await UdpClient.login(udp_server.address, "probe")
        await alice.send(*(f"history {i} " + "h" * 900 for i in range(20)))  # a big join reply
        await bob.expect("alice: history 19 " + "h" * 900)
        try:
            # A valid nickname, one byte of junk, and 150 junk lines that each draw an error.
            for payload in [b"mallory", b"!", b"!\n" * 150]:
                sock = raw_socket()
                try:
                    sock.sendto(payload, udp_server.address)
                    await barrier(probe, str(len(payload)))
                    await alice.send(*(f"flood {i} " + "f" * 200 for i in range(100)))
                    await bob.expect("alice: flood 99 " + "f" * 200)
                    await barrier(probe, "after")
                    got = drain(sock)
                    total = sum(map(len, got))
                    assert 0 < total <= FIRST_REPLY_ALLOWANCE + AMPLIFICATION_FACTOR * len(payload), (payload, total)
                    assert all(len(d) <= MAX_DATAGRAM for d in got)
                    assert b"flood" not in b"".join(got)  # an unverified address is in no room
                finally:
                    sock.close()
            assert udp_server.statistics().dropped_unverified > 100
            assert hub.find("mallory") is None
        finally:
            probe.close()
    assert_no_error_logs(no_errors)


async def test_unverified_address_is_told_how_to_verify(
    hub: Hub, tcp_server: Any, untrusted_udp_server: UdpServer
) -> None:
    udp_server = untrusted_udp_server
    async with (
        await LineClient.connect(tcp_server.address, "alice") as alice,
        await LineClient.connect(tcp_server.address, "carol") as carol,
    ):
        bob = await UdpClient.login(udp_server.address, "bob", verify=False)
        try:
            challenge = f"*** to join, send /verify {bob.token}"
            await alice.send(*(f"burst {i} " + "b" * 40 for i in range(30)))
            await carol.expect("alice: burst 29 " + "b" * 40)  # bob's share would have gone in the same flush
            # Until it verifies, bob is no member: its lines go nowhere, and it is told again how to verify.
            bob.send("bob:" + "hello, is anybody reading what I write here? " * 2)
            seen = await bob.expect(challenge)
            assert not any(line.startswith("alice: ") for line in seen)
            await alice.send("/who")
            await alice.expect("*** members of lobby (2): @alice, carol")
            sent = sum(len(d) for d in bob.datagrams)
            assert udp_server.peer(bob.address) is not None
            received = udp_server.peer(bob.address).received  # type: ignore[union-attr]
            assert sent <= FIRST_REPLY_ALLOWANCE + AMPLIFICATION_FACTOR * received

            bob.send(f"bob:/verify {bob.token}x")
            await bob.expect("! wrong verification token (4 tries left)")
            bob.send(f"bob: {bob.token.upper()}")
            await bob.expect("*** address verified: you receive all messages")
            await bob.expect("* bob joined lobby")  # under the name it gave first
            await alice.expect("* bob joined lobby")
            await alice.send(*(f"after {i} " + "a" * 100 for i in range(30)))
            for i in range(30):
                assert await bob.line() == f"alice: after {i} " + "a" * 100
            bob.send("/verify whatever")
            await bob.expect("*** this address is already verified")
        finally:
            bob.close()


async def test_wrong_tokens_drop_the_address(hub: Hub, untrusted_udp_server: UdpServer) -> None:
    udp_server = untrusted_udp_server
    bob = await UdpClient.login(udp_server.address, "bob", verify=False)
    try:
        for left in range(4, 0, -1):
            bob.send("/verify 00000000" if bob.token != "00000000" else "/verify 11111111")
            await bob.expect(f"! wrong verification token ({left} tries left)")
        bob.send("/verify 00000000" if bob.token != "00000000" else "/verify 11111111")
        await bob.expect("*** closing: too many wrong verification tokens")
        assert udp_server.peers == 0
    finally:
        bob.close()


async def test_strict_mode_bound_and_login(tcp_server: Any, hub: Hub) -> None:
    async with (
        serve_udp(hub, port=0, strict=True, trust=()) as server,
        await LineClient.connect(tcp_server.address, "alice") as alice,
    ):
        # A forged-looking sender: one 5-byte datagram gets at most 15 bytes (here: none).
        sock = raw_socket()
        probe = raw_socket()
        try:
            sock.sendto(b"mallory", server.address)
            for _ in range(10):
                sock.sendto(b"x" * 5, server.address)
            probe.sendto(b"probe", server.address)
            # The probe's own challenge needs 12 bytes of input: pad like QUIC does.
            probe.sendto(b"probe" + b" " * 10, server.address)
            async with asyncio.timeout(TIMEOUT):
                got = [await asyncio.get_running_loop().sock_recv(probe, 65536)]
            assert TOKEN.search(got[0].decode())
            total = sum(map(len, drain(sock)))
            assert total <= AMPLIFICATION_FACTOR * (7 + 50)
            assert hub.find("mallory") is None
            await alice.send("/who")
            await alice.expect("*** members of lobby (1): @alice")
        finally:
            sock.close()
            probe.close()

        # The classic client logs in once its user types the token.
        bob = ClassicClient(server.address, "bob")
        try:
            bob.start()
            bob.say("hello?")  # 3 + 10 bytes in: enough for the 36-byte challenge
            challenge = await in_thread(bob.wait_for_prefix, "*** to join, send /verify ")
            assert hub.find("bob") is None
            bob.say(challenge.rsplit(" ", 1)[1])
            await alice.expect("* bob joined lobby")
            assert await in_thread(bob.wait_for, "* bob joined lobby")
            bob.say("hi from strict")
            await alice.expect("bob: hi from strict")
            assert sum(map(len, bob.datagrams)) > 0
        finally:
            bob.stop()


async def test_forged_sources_do_not_fill_the_server(no_errors: pytest.LogCaptureFixture) -> None:
    """Unverified addresses wait in their own bounded table, outside max_members; the oldest goes first."""
    hub = Hub(limits=Limits(max_members=4, udp_max_unverified=8, max_per_ip=10_000))
    async with (
        asyncchat.serve_tcp(hub, port=0) as tcp,
        serve_udp(hub, port=0, trust=()) as server,  # loopback sources stand in for forged ones
    ):
        forged = [await UdpClient.open(server.address, host=f"127.0.0.{2 + i % 4}") for i in range(20)]
        try:
            for i, client in enumerate(forged):
                client.send(f"forged{i}")
                # Answered at once, within the budget: the welcome, then how to verify.
                assert (await client.line()).startswith("*** welcome")
                found = TOKEN.search(await client.expect_prefix("*** to join, send /verify "))
                assert found is not None
                client.token = found[1]
            stats = server.statistics()
            assert (stats.unverified, stats.evicted_unverified, stats.verified) == (8, 12, 0)
            assert server.peers == 8
            assert server.peer(forged[0].address) is None  # evicted
            assert hub.statistics().members == 0
            async with await LineClient.connect(tcp.address, "alice") as alice:
                await alice.send("/who")
                await alice.expect("*** members of lobby (1): @alice")
                # An address still in the table joins under the name it gave.
                forged[19].send(f"/verify {forged[19].token}")
                await forged[19].expect("*** address verified: you receive all messages")
                await alice.expect("* forged19 joined lobby")
                # An evicted address can still verify (its token depends on the address
                # alone); its name was forgotten with its entry, so it picks one again.
                forged[0].send(forged[0].token)
                await forged[0].expect("*** address verified: you receive all messages")
                forged[0].send("forged0")
                await forged[0].expect("* forged0 joined lobby")
                await alice.expect("* forged0 joined lobby")
                assert hub.statistics().members == 3
                assert server.statistics().unverified == 7
        finally:
            for client in forged:
                client.close()
    assert hub.statistics().refused == {}
    assert_no_error_logs(no_errors)


async def test_trust_sets_the_ranges_verified_without_a_token(hub: Hub, tcp_server: Any) -> None:
    async with (
        serve_udp(hub, port=0, trust=["127.0.0.2/32", "::1"]) as server,
        await LineClient.connect(tcp_server.address, "alice") as alice,
    ):
        assert [str(n) for n in server.trust] == ["127.0.0.2/32", "::1/128"]
        near = await UdpClient.open(server.address, host="127.0.0.2")
        far = await UdpClient.open(server.address, host="127.0.0.1")
        try:
            near.send("near")
            await near.expect("*** address verified: you receive all messages")
            await alice.expect("* near joined lobby")
            far.send("far")
            await far.expect_prefix("*** to join, send /verify ")
            stats = server.statistics()
            assert (stats.trusted, stats.verified, stats.unverified) == (1, 1, 1)
            assert server.peer(near.address).trusted  # type: ignore[union-attr]
        finally:
            near.close()
            far.close()
    with pytest.raises(ValueError, match="not an address range: 'lan'"):
        serve_udp(hub, trust=["lan"])


async def test_unverified_address_expires_and_hears_of_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "TICK_SECONDS", 0.05)
    hub = Hub(limits=Limits(login_timeout=1.0))
    async with serve_udp(hub, port=0, trust=()) as server:
        slow = await UdpClient.login(server.address, "slow", verify=False)
        try:
            await slow.expect("*** closing: not verified within 1 seconds")
            stats = server.statistics()
            assert (stats.peers, stats.unverified, stats.expired_unverified) == (0, 0, 1)
            late = await UdpClient.login(server.address, "late", verify=False)
            try:
                await server.aclose()
                await late.expect("*** closing: server is shutting down")
                assert server.peers == 0
            finally:
                late.close()
        finally:
            slow.close()


async def test_bad_datagrams_are_answered_or_dropped(
    hub: Hub, tcp_server: Any, udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        bob = await UdpClient.login(udp_server.address, "bob")
        stranger = raw_socket()
        dave = raw_socket()
        try:
            dave.sendto(b"dave", udp_server.address)
            dave.sendto(b"", udp_server.address)  # empty: dropped and counted, even from a member
            bob.send(b"x" * 5000)
            await bob.expect("! datagram of 5000 bytes exceeds limit of 4098 bytes")
            bob.send(b"\xff\xfe")
            await bob.expect("! line is not valid UTF-8 (bad byte at offset 0)")
            bob.send(b"fine\xe2\x80\xaeafter")  # a bidi control is escaped, never relayed raw
            await alice.expect("bob: fine\\u202eafter")
            stranger.sendto(b"", udp_server.address)
            stranger.sendto(b"y" * 60000, udp_server.address)
            await barrier(bob, "1")
            assert drain(stranger) == []
            assert udp_server.peer(stranger.getsockname()) is None
            assert udp_server.peer(dave.getsockname()) is not None
            stats = udp_server.statistics()
            assert stats.dropped_empty == 2
            assert stats.dropped_oversized == 2
            bob.send("still here")
            await alice.expect("bob: still here")
        finally:
            bob.close()
            stranger.close()
            dave.close()
    assert_no_error_logs(no_errors)


async def test_burst_hits_the_session_rate_limit(tcp_server: Any) -> None:
    hub = Hub(limits=Limits(rate_burst=5, rate_lines_per_second=1))
    async with (
        serve_udp(hub, port=0) as server,
        asyncchat.serve_tcp(hub, port=0) as tcp,
        await LineClient.connect(tcp.address, "alice") as alice,
    ):
        bob = await UdpClient.login(server.address, "bob")  # login + /verify: 2 tokens
        try:
            await alice.expect("* bob joined lobby")
            bob.send("\n".join(f"spam {i}" for i in range(50)))
            await bob.expect("! slow down: at most 1 lines per second; line dropped")
            await alice.send("/who")
            seen = await alice.expect("*** members of lobby (2): @alice, bob")
            assert 1 <= len(seen) <= 5
            assert hub.statistics().rate_limited >= 40
        finally:
            bob.close()


async def test_refused_address_is_told_once_verified_or_trusted(tcp_server: Any) -> None:
    hub = Hub(limits=Limits(max_per_ip=1))
    async with serve_udp(hub, port=0, trust=()) as server, serve_udp(hub, port=0) as trusting:
        bob = await UdpClient.login(server.address, "bob")
        eve = await UdpClient.login(server.address, "eve", verify=False)
        try:
            # Until eve verifies, it is not a member and the per-IP limit does not apply...
            assert server.peers == 2
            assert hub.statistics().members == 1
            # ...then the hub refuses it, and a verified address may be told so.
            eve.send(f"/verify {eve.token}")
            assert await eve.line() == "! [too-many-from-address] too many connections from 127.0.0.1 (limit 1)"
            await barrier(bob, "1")
            assert server.statistics().refused == 1
            assert server.peers == 1
            # A trusted source is refused at once, with the reason.
            mallory = await UdpClient.open(trusting.address)
            try:
                mallory.send("mallory")
                assert await mallory.line() == "! [too-many-from-address] too many connections from 127.0.0.1 (limit 1)"
                assert trusting.statistics().refused == 1
                assert trusting.peers == 0
            finally:
                mallory.close()
            assert hub.statistics().refused == {"per-ip": 2}
        finally:
            eve.close()
            bob.close()


@pytest.mark.skipif(sys.platform != "linux", reason="ICMP errors with their address need Linux IP_RECVERR")
async def test_vanished_member_is_removed_on_icmp(
    hub: Hub, tcp_server: Any, udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    async with await LineClient.connect(tcp_server.address, "alice") as alice:
        carol = await UdpClient.login(udp_server.address, "carol")
        bob = ClassicClient(udp_server.address, "bob")
        try:
            bob.start()
            await alice.expect("* bob joined lobby")
        finally:
            bob.stop()  # bob's port is closed: the next datagram to it draws an ICMP error
        try:
            await alice.send("anyone there?")
            await carol.expect("alice: anyone there?")
            await alice.expect("* bob left lobby (unreachable)")
            await carol.expect("* bob left lobby (unreachable)")
            for i in range(20):
                await alice.send(f"still serving {i}")
                await carol.expect(f"alice: still serving {i}")
            stats = udp_server.statistics()
            assert stats.unreachable == 1
            assert stats.errors_received >= 1
            assert udp_server.peers == 1
        finally:
            carol.close()
    assert_no_error_logs(no_errors)


async def test_traffic_to_closed_ports_disturbs_nobody(
    hub: Hub, udp_server: UdpServer, no_errors: pytest.LogCaptureFixture
) -> None:
    carol = await UdpClient.login(udp_server.address, "carol")
    gone: list[ClassicClient] = []
    try:
        for i in range(5):
            client = ClassicClient(udp_server.address, f"gone{i}")
            client.start()
            gone.append(client)
            await carol.expect(f"* gone{i} joined lobby")
        for client in gone:
            client.stop()
        for i in range(30):
            carol.send(f"message {i}")
            carol.send(f"/ping {i}")
            await carol.expect(f"*** pong {i}")
        assert udp_server.peer(carol.address) is not None
    finally:
        for client in gone:
            client.stop()
        carol.close()
    assert_no_error_logs(no_errors)


# ------------------------------------------------------------- command line


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_udp_module_help() -> None:
    result = _run("asyncchat.udp", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "--port" in result.stdout
    assert "--udp-strict" in result.stdout
    assert "--udp-trust" in result.stdout
    assert "--udp-max-unverified" in result.stdout
    assert "nc -u 127.0.0.1 8000" in " ".join(result.stdout.split())


def test_cli_udp_trust_option() -> None:
    from asyncchat.cli import build_parser, udp_trust_from_args
    from asyncchat.netaddr import LOOPBACK

    parser = build_parser("x", tcp=False, udp=True)
    assert udp_trust_from_args(parser.parse_args([]).udp_trust) == LOOPBACK
    lan = parser.parse_args(["--udp-trust", "192.168.1.0/24", "--udp-trust", "127.0.0.0/8"]).udp_trust
    assert [str(n) for n in udp_trust_from_args(lan)] == ["192.168.1.0/24", "127.0.0.0/8"]  # replaces the default
    assert udp_trust_from_args(parser.parse_args(["--udp-trust", "none"]).udp_trust) == ()
    with pytest.raises(ValueError, match="cannot be combined"):
        udp_trust_from_args(["none", "10.0.0.0/8"])
    with pytest.raises(ValueError, match=r"--udp-trust: not an address range: '10\.0\.0\.1/8'"):
        udp_trust_from_args(["10.0.0.1/8"])
    result = _run("asyncchat.udp", "--udp-trust", "lan")
    assert result.returncode == 2
    assert "--udp-trust: not an address range: 'lan'" in result.stderr


def test_cli_port_options() -> None:
    from asyncchat.cli import build_parser

    udp_only = build_parser("x", tcp=False, udp=True)
    assert udp_only.parse_args([]).udp_port == 8000
    assert udp_only.parse_args(["--port", "9"]).udp_port == 9
    assert udp_only.parse_args(["--udp-port", "9", "--udp-strict"]).udp_strict is True
    both = build_parser("x", tcp=True, udp=True)
    args = both.parse_args(["--port", "1", "--udp-port", "2"])
    assert (args.port, args.udp_port, args.udp_strict) == (1, 2, False)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_main_serves_tcp_and_udp_and_stops_on_sigterm(loop: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-W", "error", "-m", "asyncchat", "--port", "0", "--udp-port", "0", "--loop", loop]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    log: list[str] = []
    try:
        udp_port = 0
        while not any("running on" in line for line in log):
            log.append(lines.get(timeout=TIMEOUT))
            found = re.search(r"serving UDP on 127\.0\.0\.1:(\d+)", log[-1])
            if found:
                udp_port = int(found[1])
        assert udp_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(b"zed", ("127.0.0.1", udp_port))
            assert sock.recv(2048).startswith(b"*** welcome")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=TIMEOUT) == 0
            assert sock.recv(2048) == b"*** closing: server is shutting down\n"
        reader.join(timeout=TIMEOUT)
        while not lines.empty():
            log.append(lines.get_nowait())
        assert not [line for line in log if "ERROR" in line or "Traceback" in line], log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
        reader.join(timeout=TIMEOUT)
        stderr.close()


async def test_ipv6_loopback(hub: Hub) -> None:
    try:
        server = serve_udp(hub, host="::1", port=0)
        await server.start()
    except OSError as exc:  # pragma: no cover - hosts without IPv6
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        loop = asyncio.get_running_loop()
        transport, receiver = await loop.create_datagram_endpoint(
            _Receiver, local_addr=("::1", 0), remote_addr=server.address
        )
        client = UdpClient(transport, receiver)
        try:
            client.send("six")
            await client.expect("* six joined lobby")
            peer = server.peer(client.address)
            assert peer is not None
            assert peer.member is not None
            assert peer.member.peer == f"[::1]:{client.address[1]}"
        finally:
            client.close()
    finally:
        await server.aclose()
