"""Pure pieces of the load tool: message format, latency histogram, plans, pacing, /proc readers.

Nothing here touches the network or the event loop, so it is unit-tested
directly (``tests/test_bench.py``).

Message format: a benchmark chat line's text is ASCII ``"S Q T "`` in
lowercase hex — sender index, sequence number (from 1), and the send time
(or the *scheduled* send time in rate mode) in nanoseconds of
``time.monotonic_ns()`` — padded with ``.`` to the requested size.  Every
process of the load tool runs on one machine, and ``CLOCK_MONOTONIC`` is
shared by all its processes, so a receiver in another worker can subtract.
The text holds no ``*`` or ``!``, so any such byte in received data marks
a line that is not a benchmark chat line (a join, an error, a notice).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "MIN_SIZE",
    "NOT_PROBE",
    "PROBE",
    "WINDOW_PROBE",
    "Errors",
    "Group",
    "Histogram",
    "MemberSpec",
    "Peer",
    "Sender",
    "WorkerPlan",
    "encode_message",
    "parse_chat_line",
    "read_cpu_seconds",
    "read_rss_bytes",
]

#: Smallest message text accepted: room for the three hex fields.
MIN_SIZE = 40

_PAD = b"." * 65536
_ERROR_SAMPLES = 5

#: A member's probe role: none, latency probe, or latency and window probe.
NOT_PROBE, PROBE, WINDOW_PROBE = range(3)


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One member a worker runs: its room, role, transport and node."""

    index: int
    nick: str
    room: int
    sender: bool
    probe: int = NOT_PROBE
    #: Over UDP (else TCP).
    udp: bool = False
    #: Index into the plan's ``tcp_nodes`` or ``udp_nodes``.
    node: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPlan:
    """Everything a worker needs (picklable: it crosses the process boundary)."""

    worker: int
    #: ``(host, port)`` of each node, for TCP members and for UDP members.
    tcp_nodes: tuple[tuple[str, int], ...]
    udp_nodes: tuple[tuple[str, int], ...]
    loop: str
    cpu: int | None
    mode: str
    rooms: tuple[str, ...]
    members: tuple[MemberSpec, ...]
    senders_total: int
    window: int
    size: int
    rate_per_sender: float
    connect_timeout: float
    setup_timeout: float
    drain_timeout: float
    deadline: float
    token: str
    parallel_connects: int = 500
    #: UDP: logins in progress at once (the server's receive buffer is small).
    parallel_udp_logins: int = 64
    #: UDP: ``SO_RCVBUF`` asked for each member socket, in bytes.
    udp_rcvbuf: int = 1 << 20
    #: UDP: seconds between keepalive ``/ping`` lines.
    keepalive: float = 30.0


@dataclass(slots=True)
class Errors:
    """Error counts by kind, with a few sample texts."""

    counts: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        """Count one error of *kind*; keep *text* if few samples are kept yet."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.samples) < _ERROR_SAMPLES:
            self.samples.append(f"{kind}: {text}"[:200])


def encode_message(sender: int, seq: int, stamp_ns: int, size: int) -> bytes:
    """One message line (with ``\\n``) whose text is exactly *size* bytes.

    Raises :class:`ValueError` if *size* is below :data:`MIN_SIZE` or the
    fields do not fit.
    """
    if size < MIN_SIZE:
        raise ValueError(f"message size {size} is below the minimum of {MIN_SIZE} bytes")
    head = b"%x %x %x " % (sender, seq, stamp_ns)
    pad = size - len(head)
    if pad < 0:
        raise ValueError(f"message fields need {len(head)} bytes, more than the size {size}")
    return head + _PAD[:pad] + b"\n" if pad <= len(_PAD) else head + b"." * pad + b"\n"


def parse_chat_line(line: bytes) -> tuple[int, int, int] | None:
    """``(sender, seq, stamp_ns)`` of a received ``nick: text`` benchmark line, else ``None``."""
    colon = line.find(b": ")
    if colon < 0:
        return None
    fields = line[colon + 2 :].split(b" ", 3)
    if len(fields) < 4:
        return None
    try:
        return int(fields[0], 16), int(fields[1], 16), int(fields[2], 16)
    except ValueError:
        return None


# Histogram: values (microseconds) below 128 have their own bucket; above,
# each power of two is split into 64 buckets, so a bucket is at most 1/64
# (1.6 %) of its value wide.  Buckets are kept sparse in a dict.
_SUB_BITS = 6
_SUB = 1 << _SUB_BITS
_EXACT = 2 * _SUB


def _bucket(value: int) -> int:
    if value < _EXACT:
        return value if value > 0 else 0
    shift = value.bit_length() - _SUB_BITS - 1
    return _EXACT + (shift - 1) * _SUB + ((value >> shift) - _SUB)


def _bucket_bounds(index: int) -> tuple[int, int]:
    """Lowest and highest value of bucket *index*."""
    if index < _EXACT:
        return index, index
    shift = (index - _EXACT) // _SUB + 1
    low = ((index - _EXACT) % _SUB + _SUB) << shift
    return low, low + (1 << shift) - 1


@dataclass(slots=True)
class Histogram:
    """A mergeable latency histogram of non-negative integers (microseconds).

    Percentiles use the nearest-rank rule and are exact below 128; above,
    they are the middle of a bucket at most 1.6 % wide (never above ``max``);
    the 100th percentile is ``max`` exactly.
    """

    counts: dict[int, int]
    total: int = 0
    max: int = 0

    @classmethod
    def empty(cls) -> Histogram:
        """A histogram with no samples."""
        return cls({})

    def record(self, value: int) -> None:
        """Add one sample (negative values count as 0)."""
        index = _bucket(value)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        self.total += 1
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        """Add every sample of *other*."""
        counts = self.counts
        for index, count in other.counts.items():
            counts[index] = counts.get(index, 0) + count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> int:
        """The *p*-th percentile (0 < p <= 100); 0 for an empty histogram."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {p}")
        if not self.total:
            return 0
        rank = max(1, math.ceil(p / 100 * self.total))
        if rank >= self.total:
            return self.max
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = _bucket_bounds(index)
                return min((low + high) // 2, self.max)
        return self.max  # pragma: no cover - rank <= total


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_rss_bytes(pid: int) -> int:
    """Resident set size of process *pid* (``VmRSS`` in ``/proc/PID/status``), in bytes.

    Raises :class:`OSError` if the process does not exist or has no ``VmRSS``.
    """
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS in /proc/{pid}/status")


def read_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process *pid* so far (``/proc/PID/stat``), in seconds.

    Raises :class:`OSError` if the process does not exist.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        text = stat.read()
    # The command name (field 2) may contain spaces; fields resume after ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


# ------------------------------------------------------------------ pacing


class Peer(Protocol):
    """What a :class:`Sender` needs of its member's connection."""

    @property
    def spec(self) -> MemberSpec: ...

    @property
    def state(self) -> int: ...

    @property
    def udp(self) -> bool: ...

    def send(self, data: bytes) -> None:
        """Send *data* (whole lines) unless closed."""


class Group:
    """The members of one room in this worker, with their shared counters."""

    __slots__ = ("hi", "hist", "lines", "lo", "local", "name", "room", "senders", "udp_lines")

    def __init__(self, room: int, name: str) -> None:
        self.room = room
        self.name = name
        self.lines = 0  # benchmark lines received by the group's members
        self.udp_lines = 0  # of which by UDP members
        self.local = 0  # members of the room in this worker
        self.senders: dict[int, Sender] = {}
        self.hist = Histogram.empty()
        self.lo = 0  # latency is recorded for messages stamped in [lo, hi)
        self.hi = 0


class Sender:
    """The sending side of a member: saturation window or fixed-rate schedule."""

    __slots__ = (
        "acked",
        "checked",
        "index",
        "interval",
        "peer",
        "phase",
        "resets",
        "running",
        "seq",
        "size",
        "t0",
        "window",
    )

    def __init__(self, peer: Peer, *, window: int, size: int, rate: float, senders_total: int) -> None:
        self.peer = peer
        self.index = peer.spec.index
        self.window = window
        self.size = size
        self.seq = 0  # last sequence number sent
        self.acked = 0  # highest sequence number the window probe has seen
        self.checked = -1  # acked at the last stall check
        self.resets = 0  # windows taken as lost (UDP)
        self.running = False
        self.t0 = 0
        self.interval = int(1e9 / rate) if rate > 0 else 0
        # Stagger the senders' schedules evenly over one interval.
        self.phase = self.interval * self.index // max(1, senders_total)

    def pump(self) -> None:
        """Saturation: send every message the window allows, in one write."""
        if not self.running:
            return
        limit = self.acked + self.window
        first = self.seq + 1
        if limit < first:
            return
        now = time.monotonic_ns()
        index, size = self.index, self.size
        self.peer.send(b"".join([encode_message(index, seq, now, size) for seq in range(first, limit + 1)]))
        self.seq = limit

    def check_stall(self) -> None:
        """Saturation over UDP: a window that has not moved since the last check is lost; reopen it."""
        if self.running and self.seq > self.acked and self.acked == self.checked:
            self.acked = self.seq
            self.resets += 1
            self.pump()
        self.checked = self.acked

    def send_due(self, now: int, end: int) -> int:
        """Fixed rate: send the messages scheduled up to *now* (stamped with their schedule).

        Returns the time the next message is due.
        """
        base, interval = self.t0 + self.phase, self.interval
        due = (now - base) // interval + 1  # messages scheduled at or before now
        limit = min(due, (end - base - 1) // interval + 1)
        if limit > self.seq:
            index, size = self.index, self.size
            self.peer.send(
                b"".join(
                    [
                        encode_message(index, seq, base + (seq - 1) * interval, size)
                        for seq in range(self.seq + 1, limit + 1)
                    ]
                )
            )
            self.seq = limit
        return base + self.seq * interval
