"""The load tool's members: one TCP or UDP connection each, counting what arrives.

The receive path is the hot path.  A TCP member (:class:`BenchTcpMember`) is an
:class:`asyncio.BufferedProtocol` reading into one shared buffer; a UDP
member (:class:`BenchUdpMember`) is an :class:`asyncio.DatagramProtocol` on its own
connected socket (its own source port, ``SO_RCVBUF`` enlarged).  Both count
lines with ``count(b"\\n")``.  A byte ``*`` or ``!`` in a chunk means a line
that is not a benchmark message (see :mod:`.stats`), and over UDP a
``+`` means a continuation piece of a split line; only then is the chunk
split into lines.  Only *probe* members (a few per room) parse the
timestamps, for latency and for the senders' windows.  The worker that
drives them (:mod:`.worker`) is seen here only as a :class:`Host`.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Protocol

from .stats import (
    WINDOW_PROBE,
    Errors,
    Group,
    MemberSpec,
    Sender,
    parse_chat_line,
)

__all__ = ["BenchMember", "BenchTcpMember", "BenchUdpMember", "Host", "Stopped"]

LOGIN, READY, SYNC, COUNTING, CLOSED = range(5)

#: Largest datagram the tool sends (the server's own datagram size).
MAX_DATAGRAM = 1200
#: UDP: seconds without an answer after which a login or sync step is sent again.
RETRY_SECONDS = 1.0
#: UDP: seconds a saturation window may stand still before it is taken as lost.
WINDOW_STALL_SECONDS = 1.0
#: UDP: seconds without any new line after which draining stops early.
UDP_DRAIN_QUIET_SECONDS = 0.5

_BUF = bytearray(256 * 1024)
_VIEW = memoryview(_BUF)
_PROGRESS_SECONDS = 0.5
_UPKEEP_SECONDS = 0.1
#: The first UDP datagram: a blank line padded to 64 bytes (buys the server's first reply).
_UDP_PROBE = b" " * 63 + b"\n"
_TOKEN = re.compile(rb"send /verify (\S+)")
_VERIFIED = b"*** address verified"
_KEEPALIVE = b"/ping keepalive\n"


class Stopped(Exception):
    """The coordinator said stop (or went away)."""


class Host(Protocol):
    """What a member needs of the worker that runs it (:class:`~asyncchat.bench.worker.Worker`)."""

    errors: Errors
    #: Lines received that are neither benchmark messages nor expected server lines.
    other_lines: int
    #: The worker is stopping: lost connections are no longer errors.
    closing: bool

    def member_ready(self, peer: BenchMember | None, ok: bool) -> None:
        """A member's login ended (*ok*: it saw its own join line)."""

    def member_synced(self, peer: BenchMember) -> None:
        """A member saw the pong of its ``/ping`` (or was lost while waiting for it)."""


class BenchMember:
    """What TCP and UDP members share: login, the ping barrier, classifying and probing."""

    __slots__ = ("_bol", "_marker", "_tail", "group", "probe", "spec", "state", "worker")

    udp = False

    def __init__(self, worker: Host, spec: MemberSpec, group: Group) -> None:
        self.worker = worker
        self.spec = spec
        self.group = group
        self.probe = spec.probe
        self.state = LOGIN
        self._marker = f"* {spec.nick} joined {group.name}\n".encode()
        self._tail = b""
        self._bol = True

    def login_lines(self) -> bytes:
        """The nickname and, outside the lobby, the ``/join``."""
        login = self.spec.nick + "\n"
        if self.group.name != "lobby":
            login += f"/join {self.group.name}\n"
        return login.encode()

    def send(self, data: bytes) -> None:
        """Send *data* (whole lines) unless closed."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close the connection at once."""
        raise NotImplementedError

    def _ready(self, ok: bool) -> None:
        self.worker.member_ready(self, ok)

    def _setup(self, chunk: bytes) -> None:
        data = self._tail + chunk
        marker = self._marker
        found = data.find(marker)
        if found >= 0:
            rest = data[found + len(marker) :]
            self._tail = b""
            if self.state == LOGIN:
                self.state = READY
                self._ready(True)
            else:
                self.state = COUNTING
                self._bol = True
                if rest:  # nothing is expected after the pong; classify it anyway
                    lines = rest.count(b"\n") - self._classify(rest)
                    self.group.lines += lines
                    if self.udp:
                        self.group.udp_lines += lines
                    self._bol = rest.endswith(b"\n")
                self.worker.member_synced(self)
            return
        if self.state == LOGIN and (data.startswith(b"! ") or b"\n! " in data):
            start = data.find(b"! ")
            self.worker.errors.add("login", data[start : data.find(b"\n", start)].decode(errors="replace"))
            self.state = CLOSED
            self.abort()
            self._ready(False)
            return
        self._tail = data[-len(marker) :]

    def start_sync(self, token: bytes) -> None:
        """Send ``/ping TOKEN``; counting starts after its pong."""
        self.state = SYNC
        self._marker = b"*** pong " + token + b"\n"
        self._tail = b""
        self.send(b"/ping " + token + b"\n")

    def _classify(self, data: bytes) -> int:
        """Count (and report) the lines starting in *data* that are not benchmark messages."""
        lines = data.split(b"\n")
        if not self._bol:
            lines = lines[1:]
        odd = 0
        for line in lines:
            first = line[:1]
            if first == b"+" and self.udp and line.startswith(b"+ "):
                odd += 1  # the continuation of a split line
                continue
            if first not in (b"*", b"!"):
                continue
            odd += 1
            if line.startswith(b"! "):
                self.worker.errors.add("server-error", line.decode(errors="replace"))
            elif line.startswith(b"*** closing"):
                self.worker.errors.add("closed-by-server", line.decode(errors="replace"))
            elif b" left " in line:
                self.worker.errors.add("member-left", line.decode(errors="replace"))
            elif not line.startswith(b"*** pong "):  # keepalive pongs are expected
                self.worker.other_lines += 1
        return odd

    def _probe(self, chunk: bytes) -> None:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        now = time.monotonic_ns()
        group = self.group
        lo, hi, hist = group.lo, group.hi, group.hist
        senders = group.senders if self.probe == WINDOW_PROBE else None
        acked: set[Sender] = set()
        for line in lines:
            fields = parse_chat_line(line)
            if fields is None:
                continue
            sender, seq, stamp = fields
            if lo <= stamp < hi:
                hist.record((now - stamp) // 1000)
            if senders:
                owner = senders.get(sender)
                if owner is not None and seq > owner.acked:
                    owner.acked = seq
                    acked.add(owner)
        for owner in acked:
            owner.pump()

    def _lost(self, kind: str, exc: Exception | None) -> None:
        state, self.state = self.state, CLOSED
        if state == CLOSED or self.worker.closing:
            return
        self.worker.errors.add(kind, f"{self.spec.nick}: {exc or 'closed by server'}")
        if state == LOGIN:
            self._ready(False)
        elif state == SYNC:
            self.worker.member_synced(self)


class BenchTcpMember(BenchMember, asyncio.BufferedProtocol):
    """One TCP member: reads into the worker's shared buffer."""

    __slots__ = ("transport",)

    def __init__(self, worker: Host, spec: MemberSpec, group: Group) -> None:
        super().__init__(worker, spec, group)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == COUNTING:
            buf = _BUF
            lines = buf.count(b"\n", 0, nbytes)
            if buf.find(b"*", 0, nbytes) >= 0 or buf.find(b"!", 0, nbytes) >= 0:
                lines -= self._classify(bytes(_VIEW[:nbytes]))
            self._bol = buf[nbytes - 1] == 10
            self.group.lines += lines
            if self.probe:
                self._probe(bytes(_VIEW[:nbytes]))
        elif self.state != READY:
            self._setup(bytes(_VIEW[:nbytes]))

    def send(self, data: bytes) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("connection-lost", exc)


class BenchUdpMember(BenchMember, asyncio.DatagramProtocol):
    """One UDP member on its own connected socket: verifies its address, then counts."""

    __slots__ = ("logged_in", "pending", "sent_at", "transport")

    udp = True

    def __init__(self, worker: Host, spec: MemberSpec, group: Group) -> None:
        super().__init__(worker, spec, group)
        self.transport: asyncio.DatagramTransport | None = None
        #: What to send again if no answer comes (login and sync steps).
        self.pending = _UDP_PROBE
        self.sent_at = 0.0
        #: Set when the login ends (either way): bounds the logins in progress.
        self.logged_in = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.state == COUNTING:
            lines = data.count(b"\n")
            if b"*" in data or b"!" in data or b"+" in data:
                lines -= self._classify(data)
            group = self.group
            group.lines += lines
            group.udp_lines += lines
            if self.probe:
                self._probe(data)
        elif self.state == LOGIN:
            if self.pending is _UDP_PROBE:
                token = _TOKEN.search(data)
                if token is not None:
                    self.pending = b"/verify " + token[1] + b"\n" + self.login_lines()
                    self.send(self.pending)
                elif _VERIFIED in data:  # a trusted source (the server's loopback default): no token
                    self.pending = self.login_lines()
                    self.send(self.pending)
            self._setup(data)
        elif self.state == SYNC:
            self._setup(data)
        elif data.startswith(b"*** closing") or b"\n*** closing" in data:  # READY: idle mode, or expired
            start = data.find(b"*** closing")
            self.state = CLOSED
            if not self.worker.closing:
                self.worker.errors.add(
                    "closed-by-server", data[start : data.find(b"\n", start)].decode(errors="replace")
                )

    def start_sync(self, token: bytes) -> None:
        super().start_sync(token)
        self.pending = b"/ping " + token + b"\n"

    def retry(self, now: float) -> bool:
        """Send the pending login or sync step again if unanswered for long; return whether sent."""
        if self.state in (LOGIN, SYNC) and now - self.sent_at >= RETRY_SECONDS:
            self.send(self.pending)
            return True
        return False

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        self.sent_at = time.monotonic()
        while len(data) > MAX_DATAGRAM:  # whole lines, as many as fit (a longer line alone)
            cut = data.rfind(b"\n", 0, MAX_DATAGRAM) + 1 or data.find(b"\n") + 1 or len(data)
            transport.sendto(data[:cut])
            data = data[cut:]
        if data:
            transport.sendto(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _ready(self, ok: bool) -> None:
        self.logged_in.set()
        super()._ready(ok)

    def error_received(self, exc: Exception) -> None:
        self.worker.errors.add("udp-error", f"{self.spec.nick}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("connection-lost", exc)
