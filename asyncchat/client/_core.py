"""The client's core: :class:`ChatClient`, its stream (TCP, TLS, Unix) form, and reconnecting.

The public names are re-exported by :mod:`asyncchat.client` (read its
docstring); the UDP form is in :mod:`._udp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any

from ..errors import (
    ChatError,
    ConnectionClosed,
    ErrorCode,
    InvalidName,
    LoginFailed,
    NameTaken,
    ProtocolError,
    Refused,
    UsageError,
)
from ..events import ChatEvent, Closing, Error, Joined, Left, NickChanged
from ..framing import LineDecoder
from ..protocol import check_nick, fold, parse, render

__all__ = [
    "CLOSE_TIMEOUT",
    "LOGIN_TIMEOUT",
    "MAX_LINE_BYTES",
    "ChatClient",
    "ConnectionClosed",
    "LoginFailed",
    "connect_tcp",
    "connect_unix",
    "reconnecting",
]

logger = logging.getLogger("asyncchat.client")

#: Longest line accepted from a server, in bytes (servers default to 4096 plus a prefix).
MAX_LINE_BYTES = 1 << 20
#: Seconds allowed for the connection and the login together.
LOGIN_TIMEOUT = 10.0
#: Seconds allowed for closing a connection (TLS close_notify, flushing).
CLOSE_TIMEOUT = 5.0


def _login_error(error: Error) -> ChatError:
    """The exception for an error reply to the nickname, chosen by its stable code."""
    text, code = error.text, error.code
    if code == ErrorCode.NICK_TAKEN:
        return NameTaken(text)
    if code == ErrorCode.INVALID_NICK:
        return InvalidName(text)
    if code == ErrorCode.SERVER_FULL:
        return Refused("full", text)
    if code == ErrorCode.TOO_MANY_FROM_ADDRESS:
        return Refused("per-ip", text)
    return LoginFailed(f"login refused: {text}", code)


class ChatClient:
    """One logged-in chat connection (see :mod:`asyncchat.client`).

    Create it with :func:`connect_tcp`, :func:`connect_unix` or
    :func:`connect_udp`.  ``nick`` and ``room`` follow what the server says
    (``/nick``, ``/join``).  Leaving ``async with`` calls :meth:`aclose`.
    """

    transport = "?"

    def __init__(self, nick: str, *, peer: str, keepalive: float | None) -> None:
        self.nick = nick
        self.room: str | None = None
        self.peer = peer
        self.keepalive = keepalive
        #: Lines from the server that could not be decoded (logged, then skipped).
        self.bad_lines = 0
        self._backlog: deque[str] = deque()
        self._closed = False  # the transport is closed (or closing)
        self._aclosed = False  # aclose() was called: unread lines are dropped
        self._ended = False  # the final Closing event was handed out
        self._reason = ""
        self._ping = f"/ping keepalive-{secrets.token_hex(4)}"
        self._pong = "*** pong " + self._ping.partition(" ")[2]
        self._keepalive_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ChatClient {self.transport} {self.peer} {self.nick!r} {self.room or '-'} {state}>"

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (nothing more can be sent)."""
        return self._closed

    # ----------------------------------------------------------- transport

    async def _read_raw(self) -> str | None:
        """The next decoded line from the server, or ``None`` at the end."""
        raise NotImplementedError

    def _write_nowait(self, data: bytes) -> None:
        """Hand *data* to the transport; raise :class:`ConnectionClosed` if it is gone."""
        raise NotImplementedError

    async def _drain(self) -> None:
        """Wait until the transport accepts more data."""

    async def _close_transport(self) -> None:
        """Close the transport and wait (bounded) until it is closed."""
        raise NotImplementedError

    def _decoded(self, items: list[str | ProtocolError], into: deque[str]) -> None:
        for item in items:
            if isinstance(item, ProtocolError):
                self.bad_lines += 1
                logger.warning("skipping a bad line from %s: %s", self.peer, item)
            else:
                into.append(item)

    # --------------------------------------------------------------- login

    async def _login(self, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                await self._before_login()
                # Error replies carry their stable codes ("! [nick-taken] ..."), so the
                # client decides by code, never by English text.
                await self._send(f"/codes on\n{self.nick}\n".encode())
                key = fold(self.nick)
                while True:
                    line = await self._read_raw()
                    if line is None:
                        raise LoginFailed(f"{self._reason} before {self.nick!r} was logged in")
                    event = self._track(parse(line))
                    self._backlog.append(line)
                    match event:
                        case Joined(nick) if fold(nick) == key:
                            break
                        case Error():
                            raise _login_error(event)
                        case Closing(reason):
                            raise LoginFailed(f"the server closed the connection: {reason}")
        except TimeoutError:
            await self._abandon()
            raise LoginFailed(f"not logged in within {within:g} seconds") from None
        except BaseException:
            await self._abandon()
            raise
        logger.info("logged in to %s as %r", self.peer, self.nick)
        if self.keepalive is not None:
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keep_alive(self.keepalive))

    async def _before_login(self) -> None:
        """What a transport must do before sending the nickname (UDP: verify the address)."""

    async def _abandon(self) -> None:
        self._closed = self._ended = True
        self._reason = self._reason or "login abandoned"
        with contextlib.suppress(Exception):
            await self._close_transport()

    async def _keep_alive(self, interval: float) -> None:
        data = (self._ping + "\n").encode()
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self._send(data)
            except ConnectionClosed:
                return

    # ------------------------------------------------------------- receive

    def _track(self, event: ChatEvent) -> ChatEvent:
        """Follow our own nickname and room in what the server says."""
        match event:
            case Joined(nick, room) if nick == self.nick:
                self.room = room
            case Left(nick, room) if nick == self.nick and room == self.room:
                self.room = None
            case NickChanged(old, new) if old == self.nick:
                self.nick = new
            case Closing(reason):
                self._closed = True
                self._reason = reason
        return event

    async def _next(self) -> tuple[str, ChatEvent]:
        if self._ended:
            raise ConnectionClosed(f"the connection is closed ({self._reason})")
        while True:
            line = None if self._aclosed else self._backlog.popleft() if self._backlog else await self._read_raw()
            if line is None:
                self._closed = self._ended = True
                await self._stop()
                event: ChatEvent = Closing(self._reason or "connection closed")
                return render(event), event
            if line == self._pong:
                continue
            event = self._track(parse(line))
            if isinstance(event, Closing):
                self._ended = True
                await self._stop()
            return line, event

    async def receive(self) -> ChatEvent:
        """The next event from the server.

        The last event is always a :class:`~asyncchat.events.Closing`; after
        it, raises :class:`ConnectionClosed`.
        """
        return (await self._next())[1]

    async def receive_line(self) -> str:
        """Like :meth:`receive`, but the line as the server sent it (sanitised)."""
        return (await self._next())[0]

    def __aiter__(self) -> ChatClient:
        return self

    async def __anext__(self) -> ChatEvent:
        if self._ended:
            raise StopAsyncIteration
        return await self.receive()

    # ---------------------------------------------------------------- send

    async def _send(self, data: bytes) -> None:
        self._write_nowait(data)
        await self._drain()

    async def send_line(self, line: str) -> None:
        """Send one raw input line: chat text, or a command such as ``/who``.

        Raises :class:`~asyncchat.errors.UsageError` if *line* contains CR or
        LF, :class:`ConnectionClosed` if the connection has ended.
        """
        if "\n" in line or "\r" in line:
            raise UsageError("a line must not contain CR or LF")
        if self._closed:
            raise ConnectionClosed(f"the connection is closed ({self._reason})")
        await self._send((line + "\n").encode())

    async def say(self, text: str) -> None:
        """Say *text* in the current room (text starting with ``/`` is sent as text)."""
        await self.send_line("/" + text if text.startswith("/") else text)

    async def me(self, action: str) -> None:
        """Act: the room sees ``* nick action``."""
        await self.send_line(f"/me {action}")

    async def msg(self, nick: str, text: str) -> None:
        """Send *text* privately to *nick*."""
        await self.send_line(f"/msg {nick} {text}")

    async def join(self, room: str) -> None:
        """Leave the current room and join (or create) *room*; ``room`` changes on the server's answer."""
        await self.send_line(f"/join {room}")

    async def rename(self, nick: str) -> None:
        """Ask for a new nickname; ``nick`` changes when the server confirms."""
        await self.send_line(f"/nick {nick}")

    async def quit(self, reason: str = "") -> None:
        """Leave the chat; the server answers ``*** closing: goodbye`` and closes.

        Keep iterating to read the remaining events, or leave ``async with``.
        """
        await self.send_line(f"/quit {reason}".rstrip())

    # --------------------------------------------------------------- close

    async def _stop(self) -> None:
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_transport()

    async def aclose(self) -> None:
        """Say ``/quit`` if still connected, then close the connection (idempotent).

        Lines not read yet are dropped: the next :meth:`receive` returns the
        final :class:`~asyncchat.events.Closing` event.
        """
        self._aclosed = True
        if not self._closed:
            self._closed = True
            self._reason = "connection closed"
            with contextlib.suppress(ConnectionClosed):
                self._write_nowait(b"/quit\n")
        await self._stop()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _StreamClient(ChatClient):
    """A client over an asyncio stream: TCP, TLS or a Unix socket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        nick: str,
        *,
        transport: str,
        peer: str,
        keepalive: float | None,
        max_line_bytes: int,
    ) -> None:
        super().__init__(nick, peer=peer, keepalive=keepalive)
        self.transport = transport
        self._reader = reader
        self._writer = writer
        self._decoder = LineDecoder(max_line_bytes)
        self._lines: deque[str] = deque()
        self._eof = False

    async def _read_raw(self) -> str | None:
        while not self._lines:
            if self._eof:
                return None
            try:
                data = await self._reader.read(65536)
            except OSError as exc:
                self._reason = self._reason or f"connection lost: {exc}"
                data = b""
            if data:
                self._decoded(self._decoder.feed(data), self._lines)
            else:
                self._eof = True
                self._reason = self._reason or "the server closed the connection"
                self._decoded(self._decoder.feed_eof(), self._lines)
        return self._lines.popleft()

    def _write_nowait(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionClosed(f"the connection is closed ({self._reason or 'closed by the server'})")
        self._writer.write(data)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            self._closed = True
            self._reason = self._reason or f"connection lost: {exc}"
            raise ConnectionClosed(f"the connection is closed ({self._reason})") from exc

    async def _close_transport(self) -> None:
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            logger.debug("closing %s: %r", self.peer, exc)
            writer.transport.abort()


def _peer(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connecting(Awaitable[ChatClient]):
    """``await connect_x(...)`` gives a client; ``async with connect_x(...)`` also closes it."""

    def __init__(self, factory: Callable[[], Awaitable[ChatClient]]) -> None:
        self._factory = factory
        self._client: ChatClient | None = None

    def __await__(self) -> Generator[Any, None, ChatClient]:
        return self._factory().__await__()

    async def __aenter__(self) -> ChatClient:
        self._client = await self._factory()
        return self._client

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _open_stream(
    opener: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
    nick: str,
    *,
    transport: str,
    peer: str,
    keepalive: float | None,
    login_timeout: float,
    max_line_bytes: int,
) -> ChatClient:
    check_nick(nick)
    try:
        async with asyncio.timeout(login_timeout):
            reader, writer = await opener()
    except TimeoutError:
        raise LoginFailed(f"could not connect to {peer} within {login_timeout:g} seconds") from None
    client = _StreamClient(
        reader, writer, nick, transport=transport, peer=peer, keepalive=keepalive, max_line_bytes=max_line_bytes
    )
    await client._login(login_timeout)
    return client


def connect_tcp(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    nick: str,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    keepalive: float | None = None,
    login_timeout: float = LOGIN_TIMEOUT,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> _Connecting:
    """Connect over TCP (TLS with an *ssl* context) and log in as *nick*.

    Use as ``chat = await connect_tcp(...)`` or ``async with connect_tcp(...) as chat``.
    *keepalive* (seconds) sends a ``/ping`` that often; TCP servers expire
    silent members only after ``Limits.idle_timeout`` (an hour by default).
    Raises :class:`OSError` if the connection fails, and the errors listed in
    the module docstring if the login fails; *login_timeout* bounds both.
    """
    return _Connecting(
        lambda: _open_stream(
            lambda: asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname if ssl else None),
            nick,
            transport="tls" if ssl else "tcp",
            peer=_peer(host, port),
            keepalive=keepalive,
            login_timeout=login_timeout,
            max_line_bytes=max_line_bytes,
        )
    )


def connect_unix(
    path: str,
    *,
    nick: str,
    keepalive: float | None = None,
    login_timeout: float = LOGIN_TIMEOUT,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> _Connecting:
    """Connect to a server's Unix socket at *path* and log in as *nick* (see :func:`connect_tcp`)."""
    return _Connecting(
        lambda: _open_stream(
            lambda: asyncio.open_unix_connection(path),
            nick,
            transport="unix",
            peer=path,
            keepalive=keepalive,
            login_timeout=login_timeout,
            max_line_bytes=max_line_bytes,
        )
    )


async def reconnecting(
    connect: Callable[[], Awaitable[ChatClient]],
    *,
    initial_delay: float = 0.5,
    max_delay: float = 30.0,
    attempts: int | None = None,
) -> AsyncIterator[ChatClient]:
    """Yield a new logged-in client each time the previous one has ended.

    ::

        async for chat in reconnecting(lambda: connect_tcp(nick="bot")):
            async with chat:
                async for event in chat:
                    ...

    A failed attempt (:class:`OSError` or :class:`~asyncchat.errors.ChatError`,
    e.g. the old nickname not yet released) is retried after a delay that
    starts at *initial_delay* seconds and doubles up to *max_delay*; a
    successful login resets it.  After *attempts* failures in a row the last
    error is raised.
    """
    delay = initial_delay
    failures = 0
    while True:
        try:
            client = await connect()
        except (OSError, ChatError) as exc:
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            logger.info("connection attempt %d failed (%s); retrying in %g seconds", failures, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        failures = 0
        delay = initial_delay
        try:
            yield client
        finally:
            await client.aclose()
