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

Trust and verification (source addresses can be forged):

* A source in a *trusted* range (``trust=``; by default the loopback ranges
  ``127.0.0.0/8`` and ``::1``, which Linux never accepts from outside) is
  verified at once: it becomes a hub member with its first datagram.
* Any other address is *unverified* until it echoes the short token the
  server sent it (a line ``/verify TOKEN``, or the bare token).  The token is
  a keyed hash of the address, so an address whose entry was forgotten can
  still verify with it.  Until then the address is not a hub member: it
  waits in a table of at most ``Limits.udp_max_unverified`` entries (the
  oldest is forgotten when it is full; an entry lives ``Limits.login_timeout``
  seconds), outside ``max_members`` and ``max_per_ip``, and keeps only its
  counters and the nickname it asked for, which it gets once verified.  The
  payload bytes sent to it never exceed ``FIRST_REPLY_ALLOWANCE + 3 * payload
  bytes received from it`` (strict mode: ``3 *``, no allowance); lines that
  do not fit are dropped and counted.  It gets the welcome, an error for a
  bad or taken nickname, and ``*** to join, send /verify TOKEN``; in strict
  mode only the last, and its first line is kept as the nickname unchecked.
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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import runtime
from .._udpwire import MAX_DATAGRAM, classic_line, pack_datagrams, split_lines, strip_own_prefix
from ..errors import NameTaken, ProtocolError, Refused
from ..events import ChatEvent, Closing, Error, Greeting, Notice
from ..framing import split_datagram
from ..hub import Hub, Member
from ..netaddr import LOOPBACK, IPNetwork, in_networks, parse_networks
from ..protocol import check_nick, encode, encode_with_codes
from ..server import Server
from ..session import CommandHandler, Session

__all__ = [
    "AMPLIFICATION_FACTOR",
    "FIRST_REPLY_ALLOWANCE",
    "LOOPBACK",
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
#: One-time payload allowance, in bytes, for the first reply to an unverified
#: address in the default mode: the classic client's 5-byte name must buy the
#: welcome and ``*** to join, send /verify TOKEN`` (~130 bytes, ~210 with an
#: error about the nickname), which ``3 x 5`` bytes cannot.  0 in strict mode.
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
_WELCOME = Greeting()
_WELCOME_BYTES = encode(_WELCOME)


def _peer_name(addr: Any) -> tuple[str, str]:
    host, port = addr[0], addr[1]
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host


# ------------------------------------------------------------------- the peer


class UdpPeer:
    """One UDP address: the hub's sink for its member, plus its amplification budget.

    An unverified address has no member and no session: it is an entry of
    the server's unverified table (``member is None``), and keeps only its
    counters and :attr:`pending_name`.
    """

    __slots__ = (
        "_attempts",
        "_greeted",
        "_server",
        "address",
        "closed",
        "created",
        "key",
        "member",
        "pending_name",
        "received",
        "sent",
        "session",
        "token",
        "trusted",
        "verified",
    )

    def __init__(self, server: UdpServer, address: Any, key: tuple[str, int], token: str, now: float) -> None:
        self._server = server
        self.address = address
        self.key = key
        self.member: Member | None = None
        self.session: Session | None = None
        self.token = token
        self.created = now
        #: Verified by echoing its token, or trusted.
        self.verified = False
        #: From a trusted range: verified without a token.
        self.trusted = False
        #: Payload bytes received from / sent to this address.
        self.received = 0
        self.sent = 0
        #: Unverified: the nickname asked for, used once the address is verified.
        self.pending_name = ""
        self.closed = False
        self._attempts = 0
        #: Sent the welcome while unverified: the session's own is not sent again.
        self._greeted = False

    def __repr__(self) -> str:
        state = "trusted" if self.trusted else "verified" if self.verified else "unverified"
        who = self.member if self.member is not None else _peer_name(self.address)[0]
        return f"<UdpPeer {who!r} {state} in={self.received} out={self.sent}>"

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

    #: Addresses in the tables now: members plus unverified entries.
    peers: int
    #: Members now (each verified or trusted).
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
    #: Unverified addresses in their table now (at most ``Limits.udp_max_unverified``).
    unverified: int = 0
    #: Addresses admitted at once because their source is trusted.
    trusted: int = 0
    #: Unverified addresses forgotten because their table was full (the oldest first).
    evicted_unverified: int = 0
    #: Unverified addresses forgotten after ``Limits.login_timeout`` seconds.
    expired_unverified: int = 0


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

    *trust* lists the source ranges verified without a token (CIDR strings or
    :mod:`ipaddress` networks; ``()`` trusts nothing); a bad range raises
    :class:`ValueError`.  Leaving the ``async with`` block shuts down
    gracefully: every UDP address gets ``*** closing: server is shutting
    down`` (within its budget if unverified) and the socket closes within
    ``Limits.shutdown_timeout``.
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
        trust: Iterable[str | IPNetwork] = LOOPBACK,
    ) -> None:
        super().__init__(hub)
        self.host = host
        self.port = port
        self.strict = strict
        self.commands = commands
        #: The source ranges verified without a token.
        self.trust: tuple[IPNetwork, ...] = parse_networks(trust)
        self.max_datagram_in = max(hub.limits.max_line_bytes + 2, MAX_DATAGRAM)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._errsock: socket.socket | None = None
        self._peers: dict[tuple[str, int], UdpPeer] = {}  # members
        self._unverified: dict[tuple[str, int], UdpPeer] = {}  # oldest first
        self._secret = secrets.token_bytes(16)
        self._in_send = False
        self._send_failed = False
        self._refusal_logged = -1e9
        self._eviction_logged = -1e9
        self._counts = dict.fromkeys(
            (
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
                "trusted",
                "evicted_unverified",
                "expired_unverified",
            ),
            0,
        )

    def __repr__(self) -> str:
        where = self.address if self._transport is not None else "closed"
        return f"<UdpServer {where} peers={self.peers}{' strict' if self.strict else ''}>"

    def _addresses(self) -> list[Any]:
        if self._transport is None:
            return []
        return [self._transport.get_extra_info("sockname")]

    def _describe(self) -> str:
        trusted = ", ".join(map(str, self.trust)) or "none"
        where = f"{self.address[0]}:{self.address[1]}"
        return f"UDP{' (strict)' if self.strict else ''} on {where}; trusted sources: {trusted}"

    @property
    def peers(self) -> int:
        """Addresses currently known: members (named or not) and unverified addresses."""
        return len(self._peers) + len(self._unverified)

    def peer(self, address: Any) -> UdpPeer | None:
        """The table entry of *address* (``(host, port)``), member or unverified, or ``None``."""
        key = (address[0], address[1])
        return self._peers.get(key) or self._unverified.get(key)

    def statistics(self) -> UdpStatistics:
        """A snapshot of the server's counters."""
        return UdpStatistics(
            peers=self.peers, verified=len(self._peers), unverified=len(self._unverified), **self._counts
        )

    async def _open(self) -> None:
        self._transport, self._protocol = await self.loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._errsock = self._enable_recverr(self._transport)
        self._timer = self.loop.call_later(runtime.TICK_SECONDS, self._expire)

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
        peer = self._peers.get(key) or self._unverified.get(key)
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
        first = peer is None
        if peer is None:
            peer = self._admit(addr, key, now)
            if peer is None:
                return
        peer.received += size
        items = split_datagram(data, self.hub.limits.max_line_bytes)
        self.hub.note_input(len(items), size)
        if peer.member is None:
            rest = self._feed_unverified(peer, items, now, first=first)
            if rest is None:
                return
            items = rest  # verified: the rest of the datagram is the member's
        assert peer.member is not None
        peer.member.last_seen = now  # any datagram proves the member is alive
        self._feed(peer, items, now)

    def _admit(self, addr: Any, key: tuple[str, int], now: float) -> UdpPeer | None:
        """A new address: a member at once if trusted, else an entry of the unverified table."""
        shown, ip = _peer_name(addr)
        if self.trust and in_networks(ip, self.trust):
            peer = UdpPeer(self, addr, key, "", now)
            peer.verified = peer.trusted = True
            if not self._become_member(peer, now):
                return None
            self._counts["trusted"] += 1
            return peer
        table = self._unverified
        limit = self.hub.limits.udp_max_unverified
        while len(table) >= limit:
            oldest = table.pop(next(iter(table)))
            oldest.closed = True
            self._counts["evicted_unverified"] += 1
            if now - self._eviction_logged >= 10.0:
                self._eviction_logged = now
                logger.warning(
                    "%d unverified UDP addresses (the limit): forgetting the oldest (%d so far)",
                    limit,
                    self._counts["evicted_unverified"],
                )
        peer = UdpPeer(self, addr, key, self._token(key), now)
        table[key] = peer
        logger.debug("unverified UDP address %s", shown)
        return peer

    def _token(self, key: tuple[str, int]) -> str:
        """The address's verification token: a keyed hash, so no state is needed to check it."""
        return hmac.new(self._secret, f"{key[0]} {key[1]}".encode(), "sha256").hexdigest()[:8]

    def _become_member(self, peer: UdpPeer, now: float) -> bool:
        """Make a verified or trusted address a hub member; ``False`` if the hub refuses it."""
        shown, ip = _peer_name(peer.address)
        try:
            member = self.hub.connect(peer, kind="udp", peer=shown, ip=ip, now=now)
        except Refused as exc:
            self._counts["refused"] += 1
            if now - self._refusal_logged >= 10.0:
                self._refusal_logged = now
                logger.warning("refused UDP peer %s: %s (%d refused so far)", shown, exc, self._counts["refused"])
            peer.closed = True
            self._sendto(
                encode_with_codes(Error(str(exc), exc.code)), peer.address
            )  # verified or trusted: not a reflector
            return False
        peer.member = member
        self._peers[peer.key] = peer
        logger.debug("UDP peer %d from %s%s", member.id, shown, " (trusted)" if peer.trusted else "")
        peer.session = Session(self.hub, member, now=now, extra_commands=self.commands)
        self.hub.send(member, Notice("address verified: you receive all messages"))
        if peer.pending_name:
            peer.session.receive([peer.pending_name], now)
        return True

    def _feed_unverified(
        self, peer: UdpPeer, items: list[str | ProtocolError], now: float, *, first: bool
    ) -> list[str | ProtocolError] | None:
        """Handle an unverified address's lines; return those left for its member once it verifies."""
        strict = self.strict
        replies: list[ChatEvent] = [] if strict or not first else [_WELCOME]
        for index, item in enumerate(items):
            if not isinstance(item, str):
                if not strict:
                    replies.append(Error(str(item), item.code))
                continue
            name = peer.pending_name
            # The classic client's "alice:TOKEN" and "alice:q" (q is only for the default mode).
            line = strip_own_prefix(item, name) if strict or not name else classic_line(item, name)
            text = line.strip()
            match = _VERIFY.fullmatch(text)
            candidate = (match[1] or "") if match is not None else text if text and _same(text, peer.token) else None
            if candidate is not None:
                if _same(candidate, peer.token):
                    self._reply(peer, [reply for reply in replies if reply is not _WELCOME])
                    return items[index + 1 :] if self._verified(peer, now) else None
                peer._attempts += 1
                left = MAX_VERIFY_ATTEMPTS - peer._attempts
                if left <= 0:
                    self._drop_unverified(peer, [*replies, Closing("too many wrong verification tokens")])
                    return None
                replies.append(Error(f"wrong verification token ({left} tries left)"))
            elif strict:
                if not name and text:  # the first line is the nickname, used once verified
                    peer.pending_name = text[:64]
            elif not name:
                if text:  # a nickname attempt: checked now, held until the address verifies
                    try:
                        self._check_nick(text)
                    except ProtocolError as exc:
                        replies.append(Error(str(exc), exc.code))
                    else:
                        peer.pending_name = text
            elif text.lower() == "/quit" or text.lower().startswith("/quit "):
                self._drop_unverified(peer, [*replies, Closing("goodbye")])
                return None
        replies.append(Notice(f"to join, send /verify {peer.token}"))
        self._reply(peer, replies)
        return None

    def _check_nick(self, nick: str) -> None:
        """Raise if *nick* is invalid or in use here now (the hub decides again at login)."""
        check_nick(nick)
        if self.hub.find(nick) is not None:
            raise NameTaken(f"nickname {nick!r} is taken")

    def _verified(self, peer: UdpPeer, now: float) -> bool:
        """*peer* echoed its token: it leaves the unverified table and becomes a member if the hub agrees."""
        self._unverified.pop(peer.key, None)
        peer.verified = True
        logger.info("UDP address %s verified", _peer_name(peer.address)[0])
        return self._become_member(peer, now)

    def _drop_unverified(self, peer: UdpPeer, replies: list[ChatEvent]) -> None:
        if self._unverified.get(peer.key) is peer:
            del self._unverified[peer.key]
        peer.closed = True
        self._reply(peer, replies)

    def _feed(self, peer: UdpPeer, items: list[str | ProtocolError], now: float) -> None:
        member = peer.member
        session = peer.session
        assert member is not None
        assert session is not None
        for item in items:
            if member.closed:
                return
            if isinstance(item, str):
                line = classic_line(item, member.nick) if member.nick else item
                if _VERIFY.fullmatch(line.strip()) is not None:
                    self.hub.send(member, Notice("this address is already verified"))
                    continue
                session.receive([line], now)
            else:
                session.receive([item], now)

    def _expire(self) -> None:
        """Forget unverified addresses older than ``Limits.login_timeout`` (a timer, every tick)."""
        now = self.loop.time()
        timeout = self.hub.limits.login_timeout
        table = self._unverified
        while table:
            peer = next(iter(table.values()))  # the oldest
            if peer.created > now - timeout:
                break
            self._counts["expired_unverified"] += 1
            self._drop_unverified(peer, [Closing(f"not verified within {timeout:g} seconds")])
        self._timer = self.loop.call_later(runtime.TICK_SECONDS, self._expire)

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
        key = (addr[0], addr[1])
        unverified = self._unverified.pop(key, None)
        if unverified is not None:
            unverified.closed = True
            self._counts["unreachable"] += 1
            return
        peer = self._peers.get(key)
        if peer is None or peer.member is None:
            return
        self._counts["unreachable"] += 1
        logger.info("UDP peer %d at %s is unreachable; removing it", peer.member.id, peer.member.peer)
        self.hub.disconnect(peer.member, "unreachable", abort=True)

    # -- output

    def _reply(self, peer: UdpPeer, events: list[ChatEvent]) -> None:
        """Send *events* to an address that is not a member (within its budget if unverified)."""
        if events:
            budget = peer.budget
            if _WELCOME in events and (budget is None or len(_WELCOME_BYTES) <= budget):
                peer._greeted = True
            self._deliver(peer, b"".join(map(encode, events)))

    def _deliver(self, peer: UdpPeer, data: bytes) -> None:
        if peer._greeted and peer.member is not None:
            # The session's welcome opens its first write: this address already got one.
            peer._greeted = False
            if data.startswith(_WELCOME_BYTES):
                data = data[len(_WELCOME_BYTES) :]
        lines = split_lines(data)
        budget = peer.budget
        if budget is not None:
            kept: list[bytes] = []
            for line in lines:
                if len(line) <= budget:
                    kept.append(line)
                    budget -= len(line)
            self._counts["dropped_unverified"] += len(lines) - len(kept)
            lines = kept
        for datagram in pack_datagrams(lines):
            peer.sent += len(datagram)
            self._sendto(datagram, peer.address)

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        members = [peer.member for peer in self._peers.values() if peer.member is not None]
        self.hub.close_all(notice, members=members)
        unverified, self._unverified = list(self._unverified.values()), {}
        for peer in unverified:
            self._drop_unverified(peer, [Closing(notice)])
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
    trust: Iterable[str | IPNetwork] = LOOPBACK,
) -> UdpServer:
    """Serve *hub* over UDP; use with ``async with``.

    ``port=0`` picks a free port (read it from ``server.address``).  Sources
    in *trust* (CIDR strings or :mod:`ipaddress` networks; by default the
    loopback ranges, ``()`` for none) are verified at once; any other address
    must echo its verification token before it becomes a member.  With
    *strict*, nothing but the token is answered before that.  *commands*
    adds ``/name`` commands as for :func:`~asyncchat.tcp.serve_tcp`.  Raises
    :class:`ValueError` for a bad range in *trust*.
    """
    return UdpServer(hub, host=host, port=port, strict=strict, commands=commands, trust=trust)
