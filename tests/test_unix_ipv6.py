"""Unix domain sockets and IPv6 (TCP and UDP) over real sockets, under both loops."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from asyncchat import Hub, Limits
from asyncchat.tcp import serve_tcp
from asyncchat.udp import serve_udp

from .chatclient import TIMEOUT, LineClient
from .hardening import Opener, check_chat, client_from, fail_on_error_logs, fresh_nick, tcp_opener


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


@pytest.fixture(autouse=True)
def no_error_logs() -> Iterator[None]:
    with fail_on_error_logs():
        yield


def unix_opener(path: str) -> Opener:
    def opener() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return asyncio.open_unix_connection(path, limit=1 << 22)

    return opener


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be long.
    path = tmp_path / "chat.sock"
    if len(str(path)) > 100:  # pragma: no cover - unusual TMPDIR
        pytest.skip("temporary directory path too long for AF_UNIX")
    return str(path)


# ---------------------------------------------------------------- Unix


async def test_unix_socket_members_chat(sock_path: str) -> None:
    hub = Hub()
    async with serve_tcp(hub, unix=sock_path) as server:
        assert server.addresses == [sock_path]
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
        await check_chat(unix_opener(sock_path))
        nick = fresh_nick("ux")
        async with await client_from(unix_opener(sock_path), nick) as client:
            member = hub.find(nick)
            assert member is not None
            assert member.peer == "unix"
            assert member.ip == ""  # no per-IP accounting for local peers
            await client.send("/who")
            assert (await client.line()).startswith("*** members of lobby (1)")


async def test_unix_socket_file_is_removed_at_close(sock_path: str) -> None:
    async with serve_tcp(Hub(), unix=sock_path):
        assert os.path.exists(sock_path)
    assert not os.path.exists(sock_path)


async def test_stale_unix_socket_file_is_replaced(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)  # a server that crashed leaves its socket file behind
    stale.close()
    async with serve_tcp(Hub(), unix=sock_path):
        await check_chat(unix_opener(sock_path))


async def test_unix_and_tcp_members_share_the_hub(sock_path: str) -> None:
    hub = Hub()
    async with serve_tcp(hub, unix=sock_path), serve_tcp(hub, host="127.0.0.1", port=0) as tcp:
        local_nick, remote_nick = fresh_nick("ux"), fresh_nick("tcp")
        async with (
            await client_from(unix_opener(sock_path), local_nick) as local,
            await LineClient.connect(tcp.address, remote_nick) as remote,
        ):
            await local.expect(f"* {remote_nick} joined lobby")
            await local.send("from the unix socket")
            assert await remote.line() == f"{local_nick}: from the unix socket"


# ---------------------------------------------------------------- IPv6


@needs_ipv6
async def test_tcp_over_ipv6() -> None:
    hub = Hub(limits=Limits(max_per_ip=2))
    async with serve_tcp(hub, host="::1", port=0) as server:
        host, port = server.address
        assert host == "::1"
        await check_chat(tcp_opener((host, port)))
        nick = fresh_nick("v6")
        async with await LineClient.connect((host, port), nick):
            member = hub.find(nick)
            assert member is not None
            assert member.ip == "::1"
            assert member.peer.startswith("[::1]:")
            # The per-IP limit counts IPv6 sources too, by /64 (Limits.ipv6_prefix_bits).
            async with await LineClient.connect((host, port)):
                reader, writer = await asyncio.open_connection(host, port)
                async with asyncio.timeout(TIMEOUT):
                    assert (
                        await reader.read() == b"! [too-many-from-address] too many connections from ::/64 (limit 2)\n"
                    )
                writer.close()
            assert hub.statistics().refused == {"per-ip": 1}


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


@needs_ipv6
async def test_udp_over_ipv6_chats_with_tcp() -> None:
    hub = Hub()
    async with serve_tcp(hub, host="::1", port=0) as tcp, serve_udp(hub, host="::1", port=0) as udp:
        assert udp.address[0] == "::1"
        tcp_nick, udp_nick = fresh_nick("v6t"), fresh_nick("v6u")
        async with await LineClient.connect(tcp.address, tcp_nick) as tcp_member:
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(_Datagrams, remote_addr=udp.address)
            try:
                transport.sendto(f"{udp_nick}\n".encode())
                await tcp_member.expect(f"* {udp_nick} joined lobby")
                member = hub.find(udp_nick)
                assert member is not None
                assert member.ip == "::1"
                assert member.kind == "udp"
                transport.sendto(b"hello over udp6\n")
                await tcp_member.expect(f"{udp_nick}: hello over udp6")
                async with asyncio.timeout(TIMEOUT):
                    first = await protocol.queue.get()
                assert first.startswith(b"*** welcome")
            finally:
                transport.close()
