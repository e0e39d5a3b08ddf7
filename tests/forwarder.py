"""A TCP forwarder on 127.0.0.1 that a test can cut and restore (test helper).

Put it between a client and a server to simulate a network that fails::

    async with Forwarder(("127.0.0.1", redis_port)) as forwarder:
        client = connect(*forwarder.address)
        forwarder.cut(refuse=True)   # every forwarded connection is reset; new ones too
        await forwarder.wait_refused(3)
        forwarder.restore()          # new connections are forwarded again

Connections are reset (RST, not FIN), as when a peer or a middlebox dies.
With ``cut_after_reply=True`` a new connection is forwarded until the server
has answered once and is then reset at once: the client dies in the middle
of the handshake of a reconnect.  Counters are kept for the test to wait on
(:meth:`wait_accepted`, :meth:`wait_refused`, :meth:`wait_seen`), without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from types import TracebackType

TIMEOUT = 10.0


def _reset(transport: asyncio.BaseTransport) -> None:
    """Abort *transport* with SO_LINGER 0, so the peer gets a RST."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _Side(asyncio.Protocol):
    """One end of a forwarded connection; hands what it receives to its link."""

    def __init__(self, link: _Link | None) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.link is not None:
            self.link.received(self, data)

    def eof_received(self) -> bool:
        if self.link is not None:
            self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.close()


class _ClientSide(_Side):
    """The accepted end: refused (reset) at once, or linked to a new upstream connection."""

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__(None)
        self.forwarder = forwarder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.forwarder._client_connected(self)


class _Link:
    """A client connection and its upstream connection."""

    def __init__(self, forwarder: Forwarder, client: _Side) -> None:
        self.forwarder = forwarder
        self.client = client
        self.server: _Side | None = None
        self.pending = bytearray()  # from the client, before upstream is connected
        self.closed = False
        self.cut_after_reply = forwarder.cut_after_reply

    def received(self, side: _Side, data: bytes) -> None:
        if self.closed:
            return
        if side is self.client:
            if self.server is None or self.server.transport is None:
                self.pending += data
            else:
                self.server.transport.write(data)
            return
        assert self.client.transport is not None
        self.client.transport.write(data)
        self.forwarder._seen(data)
        if self.cut_after_reply:
            self.reset()  # the reply, then a RST in the same instant

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.forwarder._links.discard(self)
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                _reset(side.transport)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.forwarder._links.discard(self)
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.close()


class Forwarder:
    """Forward connections from a free port of 127.0.0.1 to *target* (see the module docstring)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.refusing = False
        self.cut_after_reply = False
        #: Connections accepted and forwarded, and connections reset at once (``refuse``).
        self.accepted = 0
        self.refused = 0
        self._links: set[_Link] = set()
        self._server: asyncio.AbstractServer | None = None
        self._changed = asyncio.Event()
        self._seen_bytes = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def __aenter__(self) -> Forwarder:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientSide(self), "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            link.reset()
        async with asyncio.timeout(TIMEOUT):
            for task in list(self._tasks):
                with contextlib.suppress(OSError):
                    await task
            await self._server.wait_closed()

    def _client_connected(self, side: _ClientSide) -> None:
        assert side.transport is not None
        if self.refusing:
            self.refused += 1
            self._notify()
            _reset(side.transport)
            return
        link = side.link = _Link(self, side)
        self._links.add(link)
        self.accepted += 1
        self._notify()
        task = asyncio.get_running_loop().create_task(self._connect_upstream(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_upstream(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(lambda: _Side(link), *self.target)
        except OSError:
            link.reset()
            return
        link.server = server
        if link.closed:
            assert server.transport is not None
            _reset(server.transport)
            return
        if link.pending:
            assert server.transport is not None
            server.transport.write(bytes(link.pending))
            link.pending.clear()

    def _notify(self) -> None:
        self._changed.set()

    def _seen(self, data: bytes) -> None:
        self._seen_bytes += data
        del self._seen_bytes[: max(0, len(self._seen_bytes) - 65536)]
        self._notify()

    # ------------------------------------------------------------ control

    def cut(self, *, refuse: bool = False, cut_after_reply: bool = False) -> None:
        """Reset every forwarded connection; with *refuse*, reset new ones at once until :meth:`restore`.

        With *cut_after_reply*, new connections are forwarded until the
        server's first answer, then reset (until :meth:`restore`).
        """
        self.refusing = refuse
        self.cut_after_reply = cut_after_reply
        for link in list(self._links):
            link.reset()
        self._seen_bytes.clear()

    def restore(self) -> None:
        """Forward new connections normally again."""
        self.refusing = False
        self.cut_after_reply = False
        self._seen_bytes.clear()

    async def _wait(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    async def wait_accepted(self, count: int) -> None:
        """Wait (bounded) until *count* connections in all have been accepted and forwarded."""
        await self._wait(lambda: self.accepted >= count)

    async def wait_refused(self, count: int) -> None:
        """Wait (bounded) until *count* connections in all have been refused."""
        await self._wait(lambda: self.refused >= count)

    async def wait_seen(self, data: bytes) -> None:
        """Wait (bounded) until the server sent *data* to a client since the last cut or restore."""
        await self._wait(lambda: data in self._seen_bytes)
