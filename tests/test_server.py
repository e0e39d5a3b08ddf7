"""The life cycle TcpServer and UdpServer share (asyncchat.server.Server), over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from asyncchat import Hub
from asyncchat import runtime as runtime_module
from asyncchat.server import Server
from asyncchat.tcp import TcpServer, serve_tcp
from asyncchat.udp import UdpServer, serve_udp

from .chatclient import TIMEOUT

SERVERS: list[Callable[[Hub], Server]] = [
    lambda hub: serve_tcp(hub, port=0),
    lambda hub: serve_udp(hub, port=0),
]


@pytest.mark.parametrize("make", SERVERS, ids=["tcp", "udp"])
async def test_life_cycle(make: Callable[[Hub], Server]) -> None:
    hub = Hub()
    server = make(hub)
    assert isinstance(server, TcpServer | UdpServer)
    assert server.addresses == []
    with pytest.raises(RuntimeError, match="not started"):
        await server.serve_forever()
    await server.aclose()  # before start: nothing to do
    async with server:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port > 0
        assert server.addresses[0][:2] == (host, port)
        assert not server.closing
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
        waiter = asyncio.create_task(server.serve_forever())
        await server.aclose()
        assert server.closing
        async with asyncio.timeout(TIMEOUT):
            await waiter  # returns once the server is closed
        await server.aclose()  # twice is fine
    assert server.addresses == []
    with pytest.raises(RuntimeError, match="not listening"):
        _ = server.address
    await server.serve_forever()  # closed: returns at once


@pytest.mark.parametrize("make", SERVERS, ids=["tcp", "udp"])
async def test_cancelling_serve_forever_then_leaving_closes(make: Callable[[Hub], Server]) -> None:
    hub = Hub()
    async with make(hub) as server:
        waiter = asyncio.create_task(server.serve_forever())
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not server.closing  # cancelling the wait does not close the server
    assert server.closing
    assert server.addresses == []


async def test_failed_start_releases_the_hub_and_can_be_retried() -> None:
    hub = Hub()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = serve_tcp(hub, port=port)
        with pytest.raises(OSError):  # noqa: PT011 - the errno depends on the platform
            await server.start()
    assert hub not in runtime_module._runtimes  # the hub is not left bound to the loop
    server.port = 0
    async with server:
        assert server.address[1] > 0


async def test_tcp_server_gives_the_loop_its_exception_handler_back() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    async with serve_tcp(Hub(), port=0) as first, serve_tcp(first.hub, port=0):
        assert loop.get_exception_handler() is not before  # catches accept() failing for lack of descriptors
    assert loop.get_exception_handler() is before
