"""The TCP relay: an ``asyncio.start_server`` adapter for the hub.

Each accepted connection becomes a :class:`Connection`: bytes in go through a
:class:`~asyncchat.framing.LineDecoder` into the member's
:class:`~asyncchat.session.Session`; bytes out are whatever the hub hands to
the connection, written once per loop iteration.

``asyncio.start_server`` accepts; its client-connected callback is a plain
function that swaps the transport's protocol for a :class:`Connection`
(``transport.set_protocol``), so a connection costs no task, no
``StreamReader`` buffer and no coroutine frame — the adapter reads in
``data_received`` and writes with ``transport.write``.  The transport's
write-buffer marks are set explicitly (uvloop's defaults differ from
asyncio's): past the high mark the hub keeps the member's output in its
bounded outbox and applies the slow-consumer policy.

Run ``python -m asyncchat.tcp --help`` for the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as ssl_module
import sys
from collections.abc import Sequence
from typing import Any, cast

from ..errors import Refused
from ..events import Closing, Error
from ..framing import LineDecoder
from ..hub import Hub, Member
from ..protocol import encode, encode_with_codes
from ..server import Server
from ..session import CommandHandler, Session

__all__ = ["Connection", "TcpServer", "serve_tcp"]

logger = logging.getLogger("asyncchat.tcp")

#: Transport write-buffer marks in bytes; above HIGH the member is paused.
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024


def _peer_name(peer: Any) -> tuple[str, str]:
    """(display name, ip) of a socket peer address."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = sys.intern(peer[0]), peer[1]  # interned: many members share an address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return shown, host
    return "unix", ""


class Connection(asyncio.Protocol):
    """One TCP (or Unix socket) member: protocol callbacks in, sink methods out."""

    __slots__ = ("_closing", "_decoder", "_hub", "_loop", "_server", "_writer", "member", "session", "transport")

    def __init__(self, server: TcpServer, transport: asyncio.Transport, writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._hub = server.hub
        self._loop = server.loop
        self._decoder = LineDecoder(self._hub.limits.max_line_bytes)
        self._writer = writer  # kept: newer Pythons close the transport when it is collected
        self._closing = False
        self.transport = transport
        self.member: Member | None = None
        self.session: Session | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.member!r}>"

    # -- protocol callbacks (the transport calls these)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        items = self._decoder.feed(data)
        self._hub.note_input(len(items), len(data))
        if items:
            session.receive(items, self._loop.time())

    def eof_received(self) -> bool:
        session = self.session
        if session is not None:
            items = self._decoder.feed_eof()
            if items:
                self._hub.note_input(len(items), 0)
                session.receive(items, self._loop.time())
            session.close("closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost()
        self._server._forget(self)
        if exc is not None:
            logger.debug("connection %r lost: %s", self.member, exc)

    def pause_writing(self) -> None:
        if self.member is not None:
            self._hub.pause(self.member)

    def resume_writing(self) -> None:
        if self.member is not None:
            self._hub.resume(self.member)

    # -- sink (the hub calls these)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self, *, abort: bool = False) -> None:
        if abort:
            self.transport.abort()
        elif not self._closing:
            self._closing = True
            self.transport.close()
            # A peer that never reads would keep a closing transport forever.
            if self.transport.get_write_buffer_size():
                self._loop.call_later(self._hub.limits.shutdown_timeout, self.transport.abort)


class TcpServer(Server):
    """A running TCP relay for one hub; use it as ``async with serve_tcp(...)``.

    Leaving the ``async with`` block shuts down gracefully: stop accepting,
    tell every member ``*** closing: server is shutting down``, flush within
    ``Limits.shutdown_timeout`` seconds, then close what is left.  A
    connection that arrives (or finishes its TLS handshake) once shutdown has
    begun gets that closing line and is closed at once.
    """

    kind = "TCP"
    logger = logger

    def __init__(
        self,
        hub: Hub,
        *,
        host: str | Sequence[str] | None = "127.0.0.1",
        port: int = 8080,
        unix: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        backlog: int = 4096,
        commands: dict[str, CommandHandler] | None = None,
    ) -> None:
        super().__init__(hub)
        self.host = host
        self.port = port
        self.unix = unix
        self.ssl = ssl
        self.backlog = backlog
        self.commands = commands
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._drained: asyncio.Future[None] | None = None
        self._unix_file: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"<TcpServer {self.addresses} connections={len(self._connections)}>"

    async def _open(self) -> None:
        # A TLS handshake happens before the connection is a member: bound it by
        # the login timeout too, or a TLS slowloris holds sockets for 60 s each.
        handshake = self.hub.limits.login_timeout if self.ssl is not None else None
        if self.unix is not None:
            self._server = await asyncio.start_unix_server(
                self._accept, self.unix, ssl=self.ssl, backlog=self.backlog, ssl_handshake_timeout=handshake
            )
            info = os.stat(self.unix)
            self._unix_file = (info.st_dev, info.st_ino)
        else:
            self._server = await asyncio.start_server(
                self._accept,
                self.host,
                self.port,
                ssl=self.ssl,
                backlog=self.backlog,
                ssl_handshake_timeout=handshake,
            )
        self._watch_accept(self._server.sockets)

    def _addresses(self) -> list[Any]:
        if self._server is None:
            return []
        return [sock.getsockname() for sock in self._server.sockets]

    def _describe(self) -> str:
        return f"TCP{' (TLS)' if self.ssl else ''} on {', '.join(map(str, self.addresses))}"

    @property
    def connections(self) -> int:
        """Open connections, logged in or not."""
        return len(self._connections)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, writer.transport)
        shown, ip = _peer_name(transport.get_extra_info("peername"))
        if self._closing:  # accepted, or done with its TLS handshake, after shutdown began
            logger.debug("refused connection from %s: shutting down", shown)
            self.hub.note_refused("closing")
            transport.write(encode(Closing(self._notice)))
            transport.close()
            return
        if self._fd_exhausted(transport, shown, len(self._connections)):
            return
        try:
            connection = Connection(self, transport, writer)
            member = self.hub.connect(connection, kind="tcp", peer=shown, ip=ip, now=self.loop.time())
        except Refused as exc:
            self._warn_limited("refused", f"refused connection from {shown}: {exc}")
            transport.write(encode_with_codes(Error(str(exc), exc.code)))  # no session: the code always
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        transport.set_protocol(connection)
        connection.member = member
        member.outbox.write = transport.write  # what Connection.write would do, one call less per flush
        self._connections.add(connection)
        logger.info("connection %d from %s", member.id, shown)
        connection.session = Session(self.hub, member, now=self.loop.time(), extra_commands=self.commands)

    def _forget(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            if connection.member is not None:
                logger.info("connection %d from %s closed", connection.member.id, connection.member.peer)
            if not self._connections and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    async def _close(self, notice: str) -> None:
        server, self._server = self._server, None
        assert server is not None
        server.close()
        self._unwatch_accept()
        members = [c.member for c in self._connections if c.member is not None]
        self.hub.close_all(notice, members=members)
        if self._connections:
            self._drained = self.loop.create_future()
            try:
                async with asyncio.timeout(self.hub.limits.shutdown_timeout):
                    await self._drained
            except TimeoutError:
                logger.warning("shutdown: %d connections did not drain in time; aborting them", len(self._connections))
            for connection in list(self._connections):
                connection.transport.abort()
        # Since Python 3.12, wait_closed() also waits for connections still in their TLS
        # handshake, which a slow peer can hold open: close() has already closed the
        # listening sockets, and a handshake that finishes later is refused (self.closing).
        if sys.version_info < (3, 12):
            await server.wait_closed()
        self._remove_unix_file()

    def _remove_unix_file(self) -> None:
        """Remove our Unix socket file (asyncio leaves it), unless another server replaced it."""
        if self.unix is None or self._unix_file is None:
            return
        with contextlib.suppress(OSError):
            info = os.stat(self.unix)
            if (info.st_dev, info.st_ino) == self._unix_file:
                os.unlink(self.unix)
        self._unix_file = None


def serve_tcp(
    hub: Hub,
    *,
    host: str | Sequence[str] | None = "127.0.0.1",
    port: int = 8080,
    unix: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    backlog: int = 4096,
    commands: dict[str, CommandHandler] | None = None,
) -> TcpServer:
    """Serve *hub* over TCP (or a Unix socket if *unix* is a path); use with ``async with``.

    ``port=0`` picks a free port (read it from ``server.address``).  *ssl*
    enables TLS.  *commands* adds ``/name`` commands: ``{name: handler(session, arg)}``.
    """
    return TcpServer(hub, host=host, port=port, unix=unix, ssl=ssl, backlog=backlog, commands=commands)
