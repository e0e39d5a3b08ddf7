"""The records the hub keeps: members, their outboxes, rooms, and the hub's statistics.

A :class:`Member` is anything with a name, rooms, an encoder (its front
end's wire format) and a :class:`Sink` — a non-blocking place to hand
outgoing bytes.  TCP connections, UDP peers, IRC and WebSocket clients and
in-process bots are members of the same kind, so they share rooms.  These
are plain records: :mod:`asyncchat.hub` changes members and rooms, and
:mod:`asyncchat.broadcast` alone changes an :class:`Outbox`.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .events import ChatEvent, RoomInfo
from .protocol import encode, fold

__all__ = [
    "BotSink",
    "Encoder",
    "HubStatistics",
    "Member",
    "Observer",
    "Outbox",
    "Room",
    "RoomInfo",
    "Sink",
    "encode_for_bot",
]

Encoder = Callable[[ChatEvent], bytes]
Observer = Callable[[ChatEvent], None]


class Sink(Protocol):
    """The transport side of a member: where its bytes go."""

    def write(self, data: bytes) -> None:
        """Accept *data* without blocking (the transport buffers or sends it)."""

    def close(self, *, abort: bool = False) -> None:
        """Close after sending what was written, or at once if *abort*."""


class Outbox:
    """A member's unsent output: bytes queued in the hub, bounded, written once per flush.

    Only :mod:`asyncchat.broadcast` changes it.  ``write`` is what a flush
    calls with the member's bytes: ``sink.write``, or the transport's own
    write when the adapter can hand it over directly.
    """

    __slots__ = ("chunks", "dirty", "dropped", "evicted", "nbytes", "paused", "write")

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self.write = write
        self.chunks: list[bytes] = []
        #: Bytes in ``chunks``.
        self.nbytes = 0
        #: The transport is full: output stays here until it resumes.
        self.paused = False
        #: Already in the broadcaster's list of members to write at the next flush.
        self.dirty = False
        #: Lines dropped (slow-consumer policy DROP) and not yet reported to the member.
        self.dropped = 0
        #: Marked for eviction at the next flush (slow-consumer policy DISCONNECT).
        self.evicted = False

    def __repr__(self) -> str:
        state = " paused" if self.paused else ""
        return f"<Outbox {self.nbytes} bytes in {len(self.chunks)} chunks{state}>"


class Member:
    """One participant: a connection, a UDP peer or a bot.

    Created by :meth:`Hub.connect`; named by :meth:`Hub.login`.  Adapters
    call :meth:`Hub.pause` / :meth:`Hub.resume` when the transport's buffer
    passes its own marks.  *encoder* turns events into the member's wire
    format; members with the same encoder share each room batch's bytes.
    """

    __slots__ = (
        "__weakref__",
        "closed",
        "connected_at",
        "encoder",
        "id",
        "ip",
        "key",
        "kind",
        "last_seen",
        "nick",
        "outbox",
        "peer",
        "rooms",
        "sink",
    )

    def __init__(self, member_id: int, sink: Sink, kind: str, peer: str, ip: str, now: float) -> None:
        self.id = member_id
        self.sink = sink
        self.outbox = Outbox(sink.write)
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

    def __repr__(self) -> str:
        room = self.rooms[0].name if self.rooms else "-"
        nick = repr(self.nick) if self.nick else "(no nick)"
        state = " closed" if self.closed else ""
        return f"<Member {self.id} {nick} {self.kind} {self.peer} {room}{state}>"

    @property
    def room(self) -> str | None:
        """The first room the member is in, or ``None`` (a v1 session tracks its own current room)."""
        return self.rooms[0].name if self.rooms else None

    @property
    def logged_in(self) -> bool:
        """Whether the member has a nickname."""
        return bool(self.nick)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued in the hub for this member and not yet handed to its sink."""
        return self.outbox.nbytes


class Room:
    """A named room: members in join order, operators, topic, recent history, pending batch."""

    __slots__ = (
        "_batch",
        "_cursors",
        "_encoded",
        "_excluded",
        "history",
        "key",
        "members",
        "name",
        "operators",
        "topic",
        "topic_locked",
    )

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.key = fold(name)
        self.members: dict[Member, None] = {}
        #: Members of this node who are the room's operators.
        self.operators: set[Member] = set()
        self.topic = ""
        #: Whether only operators may set the topic (IRC's ``+t``; the default).
        self.topic_locked = True
        self.history: deque[ChatEvent] = deque(maxlen=history)
        self._batch: list[ChatEvent] = []
        # The batch encoded once per encoder present, filled as needed: encoder -> bytes per event.
        self._encoded: dict[Encoder, list[bytes]] = {}
        # Batch positions hidden from one member (its own chat lines, or a member-wide
        # event it already got through another room).
        self._excluded: list[tuple[int, Member]] = []
        # Members that already hold batch[:n] (they joined, or were caught up, mid-batch).
        self._cursors: dict[Member, int] = {}

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self.members)}>"

    def info(self) -> RoomInfo:
        """The room's name, member count and topic."""
        return RoomInfo(self.name, len(self.members), self.topic)


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


_FRAME = struct.Struct(">I")


def encode_for_bot(event: ChatEvent) -> bytes:
    """A bot member's encoder: the event itself, length-prefixed, for :class:`BotSink` to load.

    Bots take the one broadcast path like every member (room batches, their
    own chat lines hidden, one write per flush), but what they receive is
    the typed events, room included, not a wire format parsed back: no
    text a peer sends can be mistaken for another event.  ``pickle`` only
    ever loads bytes this function produced: a bot's sink is written by its
    outbox alone, and everything in an outbox comes from the member's encoder.
    """
    import pickle  # only when a bot exists (pickle's own import of Jython's org.python.core fails)

    data = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


class BotSink:
    """The sink of an in-process bot: hands each event (see :func:`encode_for_bot`) to a callback."""

    __slots__ = ("_on_event",)

    def __init__(self, on_event: Observer | None) -> None:
        self._on_event = on_event

    def write(self, data: bytes) -> None:
        import pickle  # see encode_for_bot

        view = memoryview(data)
        offset, end = 0, len(view)
        while offset < end and self._on_event is not None:
            (size,) = _FRAME.unpack_from(view, offset)
            offset += _FRAME.size
            event: ChatEvent = pickle.loads(view[offset : offset + size])  # only our own bytes (see encode_for_bot)
            offset += size
            self._on_event(event)

    def close(self, *, abort: bool = False) -> None:
        self._on_event = None
