"""The UDP side of :mod:`asyncchat.client`: :func:`connect_udp`.

A connected datagram socket talks to one server.  Three things differ from
TCP, and are handled here:

* **Verification.**  The server sends an unverified address at most a few
  times what it received (:mod:`asyncchat.udp`).  The client sends a padded
  blank line first (a blank nickname attempt is ignored by the server), reads
  the token from the server's ``send /verify TOKEN`` line, echoes it, and
  sends the nickname only once the address is verified.  Lost datagrams are
  covered by sending the probe or the ``/verify`` line again every second.
* **Split lines.**  A line longer than a datagram arrives in pieces; every
  piece after the first starts with ``+ ``.  A datagram whose last line is
  piece-sized is held until the next datagram (or :data:`HOLD_SECONDS`) shows
  whether a continuation follows.
* **No end of stream.**  The connection ends with the server's ``*** closing:``
  line, or when the socket reports an error (an ICMP "port unreachable" after
  a keepalive ``/ping`` to a server that is gone), or on :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections import deque
from typing import Any

from .._udpwire import MAX_DATAGRAM
from ..events import Closing, Error, Notice
from ..framing import split_datagram
from ..protocol import check_nick, parse
from ._core import (
    LOGIN_TIMEOUT,
    MAX_LINE_BYTES,
    ChatClient,
    ConnectionClosed,
    LoginFailed,
    _Connecting,
    _login_error,
    _peer,
)

__all__ = ["connect_udp", "open_udp"]

logger = logging.getLogger("asyncchat.client")

#: The first datagram: a blank line padded to 64 bytes (the server may answer ~3x that).
PROBE = b" " * 63 + b"\n"
#: Seconds between retries of the probe or the ``/verify`` line while logging in.
RETRY_SECONDS = 1.0
#: Seconds a possibly split line is held waiting for its continuation.
HOLD_SECONDS = 0.2
#: Seconds :meth:`UdpClient.aclose` waits for the server's goodbye.
GOODBYE_SECONDS = 1.0
#: Lines kept for a reader that does not keep up; older ones are dropped and counted.
MAX_BACKLOG = 10_000

_TOKEN = re.compile(r"send /verify (\S+)")
_VERIFIED = ("address verified", "this address is already verified")
# A server line at least this long (with its newline) may have been split.
_PIECE = MAX_DATAGRAM - 4


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: UdpClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.client._end(f"connection lost: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._end(f"connection lost: {exc}" if exc else "connection closed")


class UdpClient(ChatClient):
    """A :class:`~asyncchat.client.ChatClient` over UDP."""

    transport = "udp"

    def __init__(self, nick: str, *, peer: str, keepalive: float | None, max_line_bytes: int) -> None:
        super().__init__(nick, peer=peer, keepalive=keepalive)
        self._transport: asyncio.DatagramTransport | None = None
        self._max_line_bytes = max_line_bytes
        self._lines: deque[str] = deque()
        self._held: bytes | None = None
        self._held_timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._goodbye: asyncio.Future[None] | None = None
        #: Lines dropped because they were not read in time (at most MAX_BACKLOG are kept).
        self.dropped = 0

    # -- input (the protocol calls these)

    def _datagram(self, data: bytes) -> None:
        raws = data.split(b"\n")
        if not raws[-1]:
            raws.pop()
        for index, raw in enumerate(raws):
            if raw.startswith(b"+ ") and self._held is not None:
                self._held += raw[2:]
                if len(raw) + 1 < _PIECE:
                    self._release()
                continue
            self._release()
            if index == len(raws) - 1 and len(raw) + 1 >= _PIECE:
                self._held = raw
            else:
                self._add(raw)
        if self._held is not None and self._held_timer is None:
            loop = asyncio.get_running_loop()
            self._held_timer = loop.call_later(HOLD_SECONDS, self._release)

    def _release(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        held, self._held = self._held, None
        if held is not None:
            self._add(held)

    def _add(self, raw: bytes) -> None:
        before = len(self._lines)
        self._decoded(split_datagram(raw, self._max_line_bytes), self._lines)
        goodbye = self._goodbye
        new = itertools.islice(self._lines, before, None)
        if goodbye is not None and not goodbye.done() and any(isinstance(parse(line), Closing) for line in new):
            goodbye.set_result(None)
        while len(self._lines) > MAX_BACKLOG:
            self._lines.popleft()
            self.dropped += 1
        if len(self._lines) > before:
            self._wake()

    def _end(self, reason: str) -> None:
        if not self._eof:
            self._release()
            self._eof = True
            self._reason = self._reason or reason
            self._wake()
            if self._goodbye is not None and not self._goodbye.done():
                self._goodbye.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the ChatClient transport interface

    async def _read_raw(self) -> str | None:
        while not self._lines:
            if self._eof:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._lines.popleft()

    def _write_nowait(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._eof:
            raise ConnectionClosed(f"the connection is closed ({self._reason or 'closed'})")
        transport.sendto(data)

    async def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
        self._end("connection closed")

    async def aclose(self) -> None:
        """Say ``/quit``, wait (at most :data:`GOODBYE_SECONDS`) for the goodbye, and close.

        Waiting keeps the socket open for the server's last line: a reply to
        a closed port would come back as an ICMP error to the server.
        """
        if not self._closed and not self._eof and self._transport is not None:
            self._goodbye = asyncio.get_running_loop().create_future()
            try:
                self._write_nowait(b"/quit\n")
                async with asyncio.timeout(GOODBYE_SECONDS):
                    await self._goodbye
            except (ConnectionClosed, TimeoutError):
                pass
            self._closed = True  # /quit is said: the base class must not say it again
            self._reason = "connection closed"
        await super().aclose()

    async def _before_login(self) -> None:
        pending = PROBE
        while True:
            self._write_nowait(pending)
            try:
                async with asyncio.timeout(RETRY_SECONDS):
                    while True:
                        line = await self._read_raw()
                        if line is None:
                            raise LoginFailed(f"{self._reason} before {self.nick!r} was logged in")
                        self._backlog.append(line)
                        event = parse(line)
                        if isinstance(event, Notice) and event.text.startswith(_VERIFIED):
                            return
                        token = _TOKEN.search(line)
                        if token is not None:
                            verify = f"/verify {token[1]}\n".encode()
                            if verify != pending:
                                pending = verify
                                break
                        elif isinstance(event, Error):
                            raise _login_error(event)
                        elif isinstance(event, Closing):
                            raise LoginFailed(f"the server closed the connection: {event.reason}")
            except TimeoutError:
                logger.debug("no answer from %s yet; sending again", self.peer)


async def open_udp(
    host: str, port: int, *, nick: str, keepalive: float | None, login_timeout: float, max_line_bytes: int
) -> ChatClient:
    """Open a UDP client and log in (see :func:`asyncchat.client.connect_udp`)."""
    check_nick(nick)
    client = UdpClient(nick, peer=_peer(host, port), keepalive=keepalive, max_line_bytes=max_line_bytes)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(client), remote_addr=(host, port))
    client._transport = transport
    await client._login(login_timeout)
    return client


def connect_udp(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    nick: str,
    keepalive: float | None = 30.0,
    login_timeout: float = LOGIN_TIMEOUT,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> _Connecting:
    """Talk to a UDP room and log in as *nick* (see :func:`connect_tcp`).

    The client verifies its address first (the server's anti-amplification
    rule): it sends a blank line padded to 64 bytes, which buys the greeting
    and the token notice, answers ``/verify TOKEN``, and only then sends the
    nickname, so the login reply and the room's history arrive in full.
    *keepalive* (seconds, default 30, below the server's 120-second
    ``Limits.udp_idle_timeout``) keeps the member from expiring and detects a
    server that went away (the client then ends with a
    :class:`~asyncchat.events.Closing` event).  Lines the server split across
    datagrams (``+ `` continuations) are joined again.
    """
    return _Connecting(
        lambda: open_udp(
            host,
            port,
            nick=nick,
            keepalive=keepalive,
            login_timeout=login_timeout,
            max_line_bytes=max_line_bytes,
        )
    )
