"""The UDP room: an ``asyncio.DatagramProtocol`` adapter for the hub.

One socket serves every UDP member.  The server keeps a table
``{address: UdpPeer}``; each :class:`UdpPeer` is a hub
:class:`~asyncchat.hub.Sink` with its own :class:`~asyncchat.session.Session`,
so commands, nickname rules and broadcast are exactly those of the TCP relay.

The wire contract (the classic tutorial client works unchanged):

* The first datagram from an unknown address is the nickname attempt.
* Every datagram holds one or more lines (``\\n`` or ``\\r\\n``; the last one
  may lack its ending).  A sender's own ``nick:`` prefix is removed
  (:func:`classic_line`), and ``q`` alone (so also ``nick:q``) means ``/quit``.
* The server sends whole ``\\n``-terminated lines, coalesced into datagrams of
  at most :data:`MAX_DATAGRAM` bytes.  A longer line is split at UTF-8
  character boundaries: the first piece ends with ``\\n``; every further
  piece starts with ``+ `` (a prefix no server line has) and ends with
  ``\\n`` (:func:`split_lines`).
* Members silent for ``Limits.udp_idle_timeout`` expire (``/ping`` keeps one
  alive).  An ICMP "port unreachable" for a member's address (Linux reports
  it with ``IP_RECVERR``) removes that member at once.

Anti-amplification (source addresses can be forged): until an address is
*verified* the payload bytes sent to it never exceed
``FIRST_REPLY_ALLOWANCE + 3 * payload bytes received from it`` (in strict
mode ``3 *`` received, no allowance).  Lines that do not fit are dropped and
counted; where the budget allows, the member is told how to verify.  An
address is verified by echoing the short random token the server sent it:
a line ``/verify TOKEN`` or the bare token.  With ``strict=True`` nothing
but the token is accepted before verification: the first line received is
kept as the nickname and used once the address is verified.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import os
import re
import secrets
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from .._udpwire import MAX_DATAGRAM, classic_line, pack_datagrams, split_lines, strip_own_prefix
from ..errors import ProtocolError, Refused
from ..events import Error, Notice
from ..framing import split_datagram
from ..hub import Hub, Member
from ..protocol import encode
from ..server import Server
from ..session import CommandHandler, Session

__all__ = [
    "AMPLIFICATION_FACTOR",
    "FIRST_REPLY_ALLOWANCE",
    "MAX_DATAGRAM",
    "UdpPeer",
    "UdpServer",
    "UdpStatistics",
    "classic_line",
    "pack_datagrams",
    "serve_udp",
    "split_lines",
    "strip_own_prefix",
]

logger = logging.getLogger("asyncchat.udp")

#: An unverified address gets at most this many times the payload bytes it sent.
AMPLIFICATION_FACTOR = 3
#: One-time payload allowance, in bytes, for the login reply to an unverified
#: address in the default mode: the classic client's 5-byte name must buy the
#: welcome, the token notice, ``you are ...`` and the join line (~210 bytes
#: plus twice the nickname), which ``3 x 5`` bytes cannot.  0 in strict mode.
FIRST_REPLY_ALLOWANCE = 256
#: Wrong verification tokens an address may send before it is dropped.
MAX_VERIFY_ATTEMPTS = 5
#: Tries per datagram when a send reports an earlier socket error.
SEND_ATTEMPTS = 3
#: Bytes buffered in the transport beyond which datagrams are dropped and counted.
SEND_BUFFER_LIMIT = 256 * 1024

# Linux: report ICMP errors on an unconnected socket, with the address they concern.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_UNREACHABLE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}
_MAX_ERRQUEUE_READS = 1024

_VERIFY = re.compile(r"/verify(?:\s+(\S+))?\s*", re.IGNORECASE)


def _peer_name(addr: Any) -> tuple[str, str]:
    host, port = addr[0], addr[1]
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host


# ------------------------------------------------------------------- the peer


class UdpPeer:
    """One UDP address: the hub's sink for its member, plus its amplification budget."""

    __slots__ = (
        "_attempts",
        "_hint_due",
        "_server",
        "address",
        "closed",
        "key",
        "member",
        "pending_name",
        "received",
        "sent",
        "session",
        "token",
        "verified",
    )

    def __init__(self, server: UdpServer, address: Any, key: tuple[str, int]) -> None:
        self._server = server
        self.address = address
        self.key = key
        self.member: Member | None = None
        self.session: Session | None = None
        self.token = secrets.token_hex(4)
        self.verified = False
        #: Payload bytes received from / sent to this address.
        self.received = 0
        self.sent = 0
        #: Strict mode: the first line received, used as the nickname once verified.
        self.pending_name = ""
        self.closed = False
        self._attempts = 0
        self._hint_due = 0

    def __repr__(self) -> str:
        state = "verified" if self.verified else "unverified"
        return f"<UdpPeer {self.member!r} {state} in={self.received} out={self.sent}>"

    @property
    def budget(self) -> int | None:
        """Payload bytes this address may still be sent, or ``None`` once verified."""
        if self.verified:
            return None
        allowance = 0 if self._server.strict else FIRST_REPLY_ALLOWANCE
        return allowance + AMPLIFICATION_FACTOR * self.received - self.sent

    def write(self, data: bytes) -> None:
        """Send *data* (whole lines) as datagrams, within the budget if unverified."""
        self._server._deliver(self, data)

    def close(self, *, abort: bool = False) -> None:
        """Forget this address (its member left the hub)."""
        self.closed = True
        self._server._forget(self)


@dataclass(frozen=True, slots=True)
class UdpStatistics:
    """Counters of one :class:`UdpServer` since it started (see :meth:`UdpServer.statistics`)."""

    peers: int
    verified: int
    datagrams_in: int
    bytes_in: int
    datagrams_out: int
    bytes_out: int
    dropped_empty: int
    dropped_oversized: int
    #: Lines withheld from unverified addresses by the amplification bound.
    dropped_unverified: int
    #: Datagrams dropped because the socket's send buffer was full.
    dropped_send_buffer: int
    #: Datagrams the kernel refused to send, after retries.
    send_failed: int
    refused: int
    errors_received: int
    unreachable: int


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: UdpServer) -> None:
        self.server = server
        self.closed: asyncio.Future[None] = server.loop.create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.server._error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


# ------------------------------------------------------------------ the server


class UdpServer(Server):
    """A running UDP room for one hub; use it as ``async with serve_udp(...)``.

    Leaving the ``async with`` block shuts down gracefully: every UDP member
    gets ``*** closing: server is shutting down`` (within its budget if
    unverified) and the socket closes within ``Limits.shutdown_timeout``.
    """

    kind = "UDP"
    logger = logger

    def __init__(
        self,
        hub: Hub,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        strict: bool = False,
        commands: dict[str, CommandHandler] | None = None,
    ) -> None:
        super().__init__(hub)
        self.host = host
        self.port = port
        self.strict = strict
        self.commands = commands
        self.max_datagram_in = max(hub.limits.max_line_bytes + 2, MAX_DATAGRAM)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._errsock: socket.socket | None = None
        self._peers: dict[tuple[str, int], UdpPeer] = {}
        self._in_send = False
        self._send_failed = False
        self._refusal_logged = -1e9
        self._counts = dict.fromkeys(
            (
                "verified",
                "datagrams_in",
                "bytes_in",
                "datagrams_out",
                "bytes_out",
                "dropped_empty",
                "dropped_oversized",
                "dropped_unverified",
                "dropped_send_buffer",
                "send_failed",
                "refused",
                "errors_received",
                "unreachable",
            ),
            0,
        )

    def __repr__(self) -> str:
        where = self.address if self._transport is not None else "closed"
        return f"<UdpServer {where} peers={len(self._peers)}{' strict' if self.strict else ''}>"

    def _addresses(self) -> list[Any]:
        if self._transport is None:
            return []
        return [self._transport.get_extra_info("sockname")]

    def _describe(self) -> str:
        return f"UDP{' (strict)' if self.strict else ''} on {self.address[0]}:{self.address[1]}"

    @property
    def peers(self) -> int:
        """Addresses currently in the table (members, named or not)."""
        return len(self._peers)

    def peer(self, address: Any) -> UdpPeer | None:
        """The table entry of *address* (``(host, port)``), or ``None``."""
        return self._peers.get((address[0], address[1]))

    def statistics(self) -> UdpStatistics:
        """A snapshot of the server's counters."""
        counts = dict(self._counts)
        counts["verified"] = sum(1 for peer in self._peers.values() if peer.verified)
        return UdpStatistics(peers=len(self._peers), **counts)

    async def _open(self) -> None:
        self._transport, self._protocol = await self.loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._errsock = self._enable_recverr(self._transport)

    @staticmethod
    def _enable_recverr(transport: asyncio.DatagramTransport) -> socket.socket | None:
        """Linux: ask for ICMP errors with their address; return a socket to read them from."""
        if sys.platform != "linux":
            return None
        sock = transport.get_extra_info("socket")
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            # The error queue must be drained (error_received does it): left
            # full, the socket stays readable forever, and uvloop 0.23 crashes
            # (SIGSEGV) on its next read.  A dup of the fd reads the same queue.
            return socket.socket(fileno=os.dup(sock.fileno()))
        except OSError as exc:  # pragma: no cover - exotic kernels
            logger.debug("IP_RECVERR unavailable: %s", exc)
            return None

    # -- input

    def _datagram(self, data: bytes, addr: Any) -> None:
        counts = self._counts
        size = len(data)
        counts["datagrams_in"] += 1
        counts["bytes_in"] += size
        if self._closing:
            return
        key = (addr[0], addr[1])
        peer = self._peers.get(key)
        if size == 0:
            counts["dropped_empty"] += 1
            return
        now = self.loop.time()
        if size > self.max_datagram_in:
            counts["dropped_oversized"] += 1
            if peer is not None:
                peer.received += size
                if peer.session is not None:
                    error = ProtocolError(f"datagram of {size} bytes exceeds limit of {self.max_datagram_in} bytes")
                    peer.session.receive([error], now)
            return
        if peer is None:
            peer = self._admit(addr, key, size, now)
            if peer is None:
                return
        peer.received += size
        if peer.member is not None:
            peer.member.last_seen = now  # any datagram proves the member is alive
        items = split_datagram(data, self.hub.limits.max_line_bytes)
        self.hub.note_input(len(items), size)
        self._feed(peer, items, now)
        member = peer.member
        if peer.session is None and member is not None and not member.closed:
            self.hub.send(member, Notice(f"to join, send /verify {peer.token}"))

    def _admit(self, addr: Any, key: tuple[str, int], size: int, now: float) -> UdpPeer | None:
        shown, ip = _peer_name(addr)
        peer = UdpPeer(self, addr, key)
        try:
            member = self.hub.connect(peer, kind="udp", peer=shown, ip=ip, now=now)
        except Refused as exc:
            self._counts["refused"] += 1
            if now - self._refusal_logged >= 10.0:
                self._refusal_logged = now
                logger.warning("refused UDP peer %s: %s (%d refused so far)", shown, exc, self._counts["refused"])
            reply = encode(Error(str(exc)))
            # Stateless: answer only within 3x this one datagram.
            if len(reply) <= AMPLIFICATION_FACTOR * size:
                self._sendto(reply, addr)
            return None
        peer.member = member
        self._peers[key] = peer
        logger.debug("UDP peer %d from %s", member.id, shown)
        if not self.strict:
            peer.session = Session(self.hub, member, now=now, extra_commands=self.commands)
            self.hub.send(member, Notice(f"to receive all messages, send /verify {peer.token}"))
        return peer

    def _feed(self, peer: UdpPeer, items: list[str | ProtocolError], now: float) -> None:
        member = peer.member
        assert member is not None
        for item in items:
            if member.closed:
                return
            session = peer.session
            if isinstance(item, str):
                if member.nick:
                    line = classic_line(item, member.nick)
                elif session is None:  # strict, unverified: "alice:TOKEN" from the classic client
                    line = strip_own_prefix(item, peer.pending_name)
                else:
                    line = item
                if self._verification(peer, member, line, now):
                    continue
                if session is None:  # strict and unverified: keep the first line as the nickname
                    if not peer.pending_name and line.strip():
                        peer.pending_name = line.strip()[:64]
                    continue
                session.receive([line], now)
            elif session is not None:
                session.receive([item], now)

    def _verification(self, peer: UdpPeer, member: Member, line: str, now: float) -> bool:
        """Handle ``/verify TOKEN`` or a bare token; return whether *line* was consumed."""
        text = line.strip()
        match = _VERIFY.fullmatch(text)
        if match is None:
            if peer.verified or not text or not _same(text, peer.token):
                return False
        elif peer.verified:
            self.hub.send(member, Notice("this address is already verified"))
            return True
        elif not _same(match[1] or "", peer.token):
            peer._attempts += 1
            left = MAX_VERIFY_ATTEMPTS - peer._attempts
            if left <= 0:
                self.hub.disconnect(member, "unverified", notice="too many wrong verification tokens")
            else:
                self.hub.send(member, Error(f"wrong verification token ({left} tries left)"))
            return True
        peer.verified = True
        self._counts["verified"] += 1
        logger.info("UDP peer %d from %s verified", member.id, member.peer)
        self.hub.send(member, Notice("address verified: you receive all messages"))
        if peer.session is None:
            peer.session = Session(self.hub, member, now=now, extra_commands=self.commands)
            if peer.pending_name:
                peer.session.receive([peer.pending_name], now)
        return True

    def _error(self, exc: Exception) -> None:
        """``error_received``: count it; on Linux, drop members whose port is unreachable."""
        self._counts["errors_received"] += 1
        if self._in_send:
            self._send_failed = True
        logger.debug("UDP socket error: %s", exc)
        sock = self._errsock
        if sock is None:
            return
        for _ in range(_MAX_ERRQUEUE_READS):
            try:
                _, ancdata, _, addr = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as read_exc:  # pragma: no cover - defensive
                logger.debug("reading the UDP error queue failed: %s", read_exc)
                return
            for _level, _type, data in ancdata:
                if len(data) < 8:
                    continue
                ee_errno, origin = struct.unpack_from("=IB", data)
                if origin in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6) and ee_errno in _UNREACHABLE:
                    self._unreachable(addr)

    def _unreachable(self, addr: Any) -> None:
        if not isinstance(addr, tuple) or len(addr) < 2:
            return
        peer = self._peers.get((addr[0], addr[1]))
        if peer is None or peer.member is None:
            return
        self._counts["unreachable"] += 1
        logger.info("UDP peer %d at %s is unreachable; removing it", peer.member.id, peer.member.peer)
        self.hub.disconnect(peer.member, "unreachable", abort=True)

    # -- output

    def _deliver(self, peer: UdpPeer, data: bytes) -> None:
        lines = split_lines(data)
        budget = peer.budget
        if budget is not None:
            kept: list[bytes] = []
            dropped = 0
            hint = self._hint(peer)
            if peer._hint_due and peer.session is not None and len(hint) <= budget:
                kept.append(hint)
                budget -= len(hint)
                peer._hint_due = 0
            for line in lines:
                if len(line) <= budget:
                    kept.append(line)
                    budget -= len(line)
                else:
                    dropped += 1
            if dropped:
                self._counts["dropped_unverified"] += dropped
                peer._hint_due += dropped
                hint = self._hint(peer)
                if peer.session is not None and len(hint) <= budget:
                    kept.append(hint)
                    peer._hint_due = 0
            lines = kept
        for datagram in pack_datagrams(lines):
            peer.sent += len(datagram)
            self._sendto(datagram, peer.address)

    def _hint(self, peer: UdpPeer) -> bytes:
        return encode(
            Error(
                f"{peer._hint_due} lines not sent: an unverified address gets at most "
                f"{AMPLIFICATION_FACTOR}x what it sends; send /verify {peer.token}"
            )
        )

    def _sendto(self, datagram: bytes, addr: Any) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:  # type: ignore[attr-defined]
            self._counts["dropped_send_buffer"] += 1
            return
        self._counts["datagrams_out"] += 1
        self._counts["bytes_out"] += len(datagram)
        # A pending socket error (say, an ICMP error about another member) is
        # reported by the next send, which the kernel then discards: both loops
        # call error_received synchronously from sendto, so retry (bounded).
        for _ in range(SEND_ATTEMPTS):
            self._send_failed = False
            self._in_send = True
            try:
                transport.sendto(datagram, addr)
            finally:
                self._in_send = False
            if not self._send_failed:
                return
        self._counts["send_failed"] += 1

    def _forget(self, peer: UdpPeer) -> None:
        if self._peers.get(peer.key) is peer:
            del self._peers[peer.key]
            logger.debug("UDP peer %r forgotten", peer.member)

    # -- life cycle

    async def _close(self, notice: str) -> None:
        # From now on input is ignored (self.closing); the closing lines still go out.
        transport = self._transport
        assert transport is not None
        members = [peer.member for peer in self._peers.values() if peer.member is not None]
        self.hub.close_all(notice, members=members)
        self._transport = None
        transport.close()
        if self._protocol is not None:
            try:
                async with asyncio.timeout(self.hub.limits.shutdown_timeout):
                    await self._protocol.closed
            except TimeoutError:
                logger.warning("shutdown: the UDP socket did not flush in time; aborting it")
                transport.abort()
        if self._errsock is not None:
            self._errsock.close()
            self._errsock = None


def _same(candidate: str, token: str) -> bool:
    return hmac.compare_digest(candidate.lower().encode(), token.encode())


def serve_udp(
    hub: Hub,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    strict: bool = False,
    commands: dict[str, CommandHandler] | None = None,
) -> UdpServer:
    """Serve *hub* over UDP; use with ``async with``.

    ``port=0`` picks a free port (read it from ``server.address``).  With
    *strict*, an address must echo its verification token before its
    nickname is accepted.  *commands* adds ``/name`` commands as for
    :func:`~asyncchat.tcp.serve_tcp`.
    """
    return UdpServer(hub, host=host, port=port, strict=strict, commands=commands)
