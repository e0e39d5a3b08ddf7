"""The records the hub keeps: members, rooms, and the hub's statistics.

A :class:`Member` is anything with a name, rooms and a :class:`Sink` — a
non-blocking place to hand outgoing bytes.  TCP connections, UDP peers and
in-process bots are members of the same kind, so they share rooms.  These
are plain records; :mod:`asyncchat.hub` and :mod:`asyncchat.broadcast`
change them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .events import ChatEvent
from .protocol import encode, fold, parse

__all__ = ["BotSink", "Encoder", "HubStatistics", "Member", "Observer", "Room", "RoomInfo", "Sink"]

Encoder = Callable[[ChatEvent], bytes]
Observer = Callable[[ChatEvent], None]


class Sink(Protocol):
    """The transport side of a member: where its bytes go."""

    def write(self, data: bytes) -> None:
        """Accept *data* without blocking (the transport buffers or sends it)."""

    def close(self, *, abort: bool = False) -> None:
        """Close after sending what was written, or at once if *abort*."""


class Member:
    """One participant: a connection, a UDP peer or a bot.

    Created by :meth:`Hub.connect`; named by :meth:`Hub.login`.  Adapters
    call :meth:`Hub.pause` / :meth:`Hub.resume` when the transport's buffer
    passes its own marks.
    """

    __slots__ = (
        "__weakref__",
        "_dirty",
        "_dropped",
        "_evicted",
        "_out",
        "_out_bytes",
        "_paused",
        "_write",
        "closed",
        "connected_at",
        "encoder",
        "id",
        "ip",
        "key",
        "kind",
        "last_seen",
        "nick",
        "peer",
        "rooms",
        "sink",
    )

    def __init__(self, member_id: int, sink: Sink, kind: str, peer: str, ip: str, now: float) -> None:
        self.id = member_id
        self.sink = sink
        # What a flush calls with the member's bytes: sink.write, or the
        # transport's own write when the adapter can hand it over directly.
        self._write: Callable[[bytes], object] = sink.write
        self.kind = kind
        self.peer = peer
        self.ip = ip
        self.nick = ""
        self.key = ""
        self.rooms: list[Room] = []
        self.encoder: Encoder = encode
        self.connected_at = now
        self.last_seen = now
        self.closed = False
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._paused = False
        self._dirty = False
        self._dropped = 0
        self._evicted = False

    def __repr__(self) -> str:
        room = self.rooms[0].name if self.rooms else "-"
        nick = repr(self.nick) if self.nick else "(no nick)"
        state = " closed" if self.closed else ""
        return f"<Member {self.id} {nick} {self.kind} {self.peer} {room}{state}>"

    @property
    def room(self) -> str | None:
        """The member's current room (the first it joined), or ``None``."""
        return self.rooms[0].name if self.rooms else None

    @property
    def logged_in(self) -> bool:
        """Whether the member has a nickname."""
        return bool(self.nick)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued in the hub for this member and not yet handed to its sink."""
        return self._out_bytes


class Room:
    """A named room: members in join order, recent history, pending batch."""

    __slots__ = ("_batch", "_cursors", "_excluded", "_pieces", "history", "key", "members", "name")

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.key = fold(name)
        self.members: dict[Member, None] = {}
        self.history: deque[ChatEvent] = deque(maxlen=history)
        self._batch: list[ChatEvent] = []
        # The batch encoded with the default encoder, filled as needed: each event is encoded once.
        self._pieces: list[bytes] = []
        # Batch positions hidden from one member (its own chat lines).
        self._excluded: list[tuple[int, Member]] = []
        # Members that already hold batch[:n] (they joined, or were caught up, mid-batch).
        self._cursors: dict[Member, int] = {}

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self.members)}>"


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A room's name and member count, as listed by ``/rooms``."""

    name: str
    members: int


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """Counters of one hub since it was created (see :meth:`Hub.statistics`)."""

    members: int
    logged_in: int
    rooms: int
    lines_in: int
    bytes_in: int
    lines_out: int
    bytes_out: int
    writes: int
    lines_dropped: int
    errors_sent: int
    rate_limited: int
    disconnects: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


class BotSink:
    """A sink that parses lines back into events for an in-process callback."""

    __slots__ = ("_on_event",)

    def __init__(self, on_event: Observer | None) -> None:
        self._on_event = on_event

    def write(self, data: bytes) -> None:
        if self._on_event is None:
            return
        for line in data.decode().splitlines():
            self._on_event(parse(line))

    def close(self, *, abort: bool = False) -> None:
        self._on_event = None
