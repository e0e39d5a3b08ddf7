"""The hub: membership registry, rooms, history and the one broadcast routine.

The hub is pure and synchronous: it never awaits and does no I/O.  A member
is anything with a name, rooms and a :class:`Sink` — a non-blocking place to
hand outgoing bytes.  TCP connections, UDP peers and in-process bots are all
members of the same kind, so they share rooms.

How output leaves (the fast path of a chat server is fan-out):

1. A room event (chat line, join, leave, ...) is appended to the room's
   *batch* in O(1), whatever the number of members.
2. Once per event-loop iteration :meth:`Hub.flush` runs (the adapter arranges
   it through the wake-up callback).  Each dirty room's batch is encoded and
   joined **once** and the same bytes are appended to every member's outbox
   (members excluded from some lines — their own chat — get their own copy).
3. Every member with pending output gets exactly one ``sink.write()``: all
   lines queued for it in that iteration leave in one write.

Order: a room's batch is materialised into its members' outboxes before any
line is addressed to one of its members directly and before its membership
changes, so every member sees every line in the order the hub produced it,
and all members of a room see the room's lines in the same order.

Bounds: a member's outbox is bounded by ``Limits.outbox_high_water``.  A
member whose transport cannot keep up is *paused* by its adapter; its output
then stays in the outbox, and when that passes the high-water mark the
slow-consumer policy applies to that member alone.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .errors import NameTaken, ProtocolError, Refused, UsageError
from .events import (
    Action,
    ChatEvent,
    Closing,
    Error,
    Joined,
    Left,
    Message,
    NickChanged,
    Notice,
    Private,
)
from .limits import Limits, SlowConsumerPolicy
from .protocol import DEFAULT_ROOM, check_nick, check_room, encode, fold, parse

if TYPE_CHECKING:
    from .bus import Bus, Cluster

__all__ = ["Hub", "HubStatistics", "Member", "RoomInfo", "Sink"]

logger = logging.getLogger("asyncchat.hub")

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
    lines_dropped: int
    errors_sent: int
    rate_limited: int
    disconnects: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


class _BotSink:
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


class Hub:
    """Membership registry and broadcast routine shared by every transport.

    All methods are synchronous and never block.  Methods that act for a
    peer raise :class:`~asyncchat.errors.ProtocolError` subclasses, which the
    session turns into error lines; misuse by the embedding program raises
    :class:`~asyncchat.errors.UsageError`.
    """

    def __init__(self, *, limits: Limits | None = None, name: str = "asyncchat", bus: Bus | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self.name = name
        # Multi-node (asyncchat.bus): with a bus, room events are also published
        # and other nodes' events arrive through deliver().  None: single node.
        self._cluster: Cluster | None = None
        self._relaying = False
        if bus is not None:
            from .bus import Cluster

            self._cluster = Cluster(self, bus)
        self._ids = itertools.count(1)
        self._members: dict[Member, None] = {}
        self._nicks: dict[str, Member] = {}
        self._per_ip: dict[str, int] = {}
        self._rooms: dict[str, Room] = {}
        self._dirty_rooms: list[Room] = []
        self._dirty: list[Member] = []
        self._evictions: list[Member] = []
        self._scheduled = False
        self._wakeup: Callable[[], None] | None = None
        self._observers: list[Observer] = []
        self._disconnects: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self.lines_in = 0
        self.bytes_in = 0
        self.rate_limited = 0
        self._lines_out = 0
        self._bytes_out = 0
        self._lines_dropped = 0
        self._errors_sent = 0
        self._room(DEFAULT_ROOM, create=True)

    def __repr__(self) -> str:
        return f"<Hub {self.name!r} members={len(self._members)} rooms={len(self._rooms)}>"

    # ------------------------------------------------------------------ wiring

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Install the callback that makes the event loop call :meth:`flush` soon.

        The adapters install ``loop.call_soon``-based wake-ups; a hub used
        without an event loop can leave it unset and call :meth:`flush` itself.
        """
        self._wakeup = wakeup

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer* with every room event, private message and nick change.

        Observers run synchronously inside the hub and must not block; an
        exception from one is logged and does not affect the chat.  Returns a
        function that unsubscribes.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def _notify(self, event: ChatEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                logger.exception("observer %r failed on %r", observer, event)

    # -------------------------------------------------------------- membership

    def connect(self, sink: Sink, *, kind: str, peer: str = "", ip: str = "", now: float = 0.0) -> Member:
        """Admit a new, not yet named member.

        Raises :class:`~asyncchat.errors.Refused` if ``max_members`` or
        ``max_per_ip`` (for *ip*) would be exceeded; nothing is changed then.
        """
        limits = self.limits
        if len(self._members) >= limits.max_members:
            self._count(self._refused, "full")
            raise Refused("full", f"server is full ({limits.max_members} members)")
        if ip:
            count = self._per_ip.get(ip, 0)
            if count >= limits.max_per_ip:
                self._count(self._refused, "per-ip")
                raise Refused("per-ip", f"too many connections from {ip} (limit {limits.max_per_ip})")
            self._per_ip[ip] = count + 1
        member = Member(next(self._ids), sink, kind, peer or ip or kind, ip, now)
        self._members[member] = None
        logger.debug("connect %r", member)
        return member

    def login(self, member: Member, nick: str, *, on_login: Callable[[bool], None] | None = None) -> None:
        """Name *member* and put it in the default room (history, then join line).

        Raises :class:`~asyncchat.errors.InvalidName` or
        :class:`~asyncchat.errors.NameTaken`; the member stays unnamed then.
        With a bus the nickname is first claimed across nodes, which may
        answer later: *on_login* is called with ``True`` once the member is
        logged in (before this returns when no round trip is needed), or
        with ``False`` when another node holds the name (the member then got
        ``! nickname 'x' is taken``).
        """
        if member.closed:
            raise UsageError(f"{member!r} is closed")
        if member.nick:
            raise UsageError(f"{member!r} is already logged in")
        # Multi-node: claim the name cluster-wide first; login() is called again once granted.
        if self._cluster is not None and not self._cluster_claim(
            member, nick, lambda: self.login(member, nick, on_login=on_login), on_login
        ):
            return
        self._claim(member, nick)
        self.send(member, Notice(f"you are {nick}; /help lists the commands"))
        self.join(member, DEFAULT_ROOM)
        if on_login is not None:
            on_login(True)

    def add_bot(self, nick: str, on_event: Observer | None = None, *, room: str = DEFAULT_ROOM) -> Member:
        """Log in an in-process member called *nick*; *on_event* gets what it receives.

        The bot appears in ``/who`` like anyone else and speaks with
        :meth:`say`.  Remove it with :meth:`disconnect`.  Raises
        :class:`~asyncchat.errors.UsageError` if the nickname is invalid or taken.
        """
        member = self.connect(_BotSink(on_event), kind="bot", peer="bot")
        try:
            self._claim(member, nick)
        except ProtocolError as exc:
            self._forget(member)
            raise UsageError(str(exc)) from None
        self.join(member, room)
        return member

    def rename(self, member: Member, new: str) -> None:
        """Change *member*'s nickname; its rooms see ``* old is now known as new``."""
        old, old_key = member.nick, member.key
        if new == old:
            return
        # Multi-node: a new name (not just new case) is claimed cluster-wide first.
        if (
            self._cluster is not None
            and fold(new) != old_key
            and not self._cluster_claim(member, new, lambda: self.rename(member, new), None)
        ):
            return
        self._claim(member, new)
        if old_key != member.key:
            self._nicks.pop(old_key, None)
            if self._cluster is not None:
                self._cluster.release(old_key)
        for room in member.rooms:
            self._room_event(room, NickChanged(old, new, room.name))
        if not member.rooms:
            self.send(member, NickChanged(old, new))
        self._notify(NickChanged(old, new, member.room))

    def _claim(self, member: Member, nick: str) -> None:
        check_nick(nick)
        key = fold(nick)
        if key == nick:
            key = nick  # one string, not two, for an already folded nickname
        owner = self._nicks.get(key)
        if owner is not None and owner is not member:
            raise NameTaken(f"nickname {nick!r} is taken")
        member.nick = nick
        member.key = key
        self._nicks[key] = member

    def _cluster_claim(
        self, member: Member, nick: str, proceed: Callable[[], None], on_login: Callable[[bool], None] | None
    ) -> bool:
        """Multi-node: whether *nick* is already this node's; if not, claim it and return ``False``.

        Raises at once if the name is invalid or visibly taken (here or in the
        replica of other nodes).  When the bus answers, *proceed* is called
        (granted) or the member gets ``! nickname 'x' is taken``.
        """
        assert self._cluster is not None
        cluster = self._cluster
        check_nick(nick)
        key = fold(nick)
        owner = self._nicks.get(key)
        if owner is not None and owner is not member:
            raise NameTaken(f"nickname {nick!r} is taken")
        if owner is member or cluster.holds(key):
            return True
        if cluster.locate(nick) is not None:
            raise NameTaken(f"nickname {nick!r} is taken")

        def answered(granted: bool) -> None:
            if member.closed:
                if granted and key not in self._nicks:
                    cluster.release(key)
                return
            if granted:
                try:
                    proceed()
                    return
                except ProtocolError as exc:
                    self.send(member, Error(str(exc)))
                if key not in self._nicks:
                    cluster.release(key)
            else:
                self.send(member, Error(f"nickname {nick!r} is taken"))
            if on_login is not None:
                on_login(False)

        cluster.claim(key, answered)
        return False

    def join(self, member: Member, room_name: str) -> None:
        """Add *member* to a room (created if needed); it gets history, then the join line.

        Raises :class:`~asyncchat.errors.InvalidName`, or
        :class:`~asyncchat.errors.ProtocolError` when the room limit is reached.
        """
        if not member.nick:
            raise UsageError(f"{member!r} must log in before joining a room")
        room = self._room(room_name, create=True)
        if member in room.members:
            raise ProtocolError(f"you are already in {room.name}")
        for other in member.rooms:
            self._catch_up(member, other)
        for event in room.history:
            self._enqueue(member, member.encoder(event), 1)
        room.members[member] = None
        member.rooms.append(room)
        if room._batch:  # what the room said before this join is not for this member
            room._cursors[member] = len(room._batch)
        self._announce(room, Joined(member.nick, room.name), member)
        self._notify(Joined(member.nick, room.name))

    def move(self, member: Member, room_name: str) -> None:
        """Leave every room and join *room_name* (``/join``); raises before leaving if it cannot."""
        room = self._room(room_name, create=True)
        if member.rooms == [room]:
            raise ProtocolError(f"you are already in {room.name}")
        for old in list(member.rooms):
            if old is not room:
                self._leave(member, old, "", tell_member=True)
        if member not in room.members:
            self.join(member, room.name)

    def leave(self, member: Member, room_name: str, reason: str = "") -> None:
        """Remove *member* from a room; the room (and the member) see the leave line."""
        room = self._rooms.get(fold(room_name))
        if room is None or member not in room.members:
            raise ProtocolError(f"you are not in {room_name}")
        self._leave(member, room, reason, tell_member=True)

    def _leave(self, member: Member, room: Room, reason: str, *, tell_member: bool) -> None:
        event = Left(member.nick, room.name, reason)
        if tell_member:
            self._announce(room, event, member)
            self._catch_up(member, room)
            del room.members[member]
        else:
            self._catch_up(member, room)
            del room.members[member]
            self._announce(room, event, None)
        room._cursors.pop(member, None)
        member.rooms.remove(room)
        if not room.members and room.key != DEFAULT_ROOM:
            del self._rooms[room.key]  # its pending batch has no recipient left
        self._notify(event)

    def disconnect(self, member: Member, reason: str = "closed", *, notice: str = "", abort: bool = False) -> None:
        """Remove *member* from the hub and close its sink.

        *reason* is counted in :meth:`statistics` and shown in the leave line
        its rooms see; *notice*, if given, is the last line the member gets
        (``*** closing: notice``).  Unsent output is flushed first unless
        *abort*.  Calling it again for the same member does nothing.
        """
        if member.closed:
            return
        if notice:
            self.send(member, Closing(notice))
        self._count(self._disconnects, reason)
        shown = {"closed": "connection closed", "quit": "quit"}.get(reason, reason)
        for room in list(member.rooms):
            self._leave(member, room, shown, tell_member=False)
        self._forget(member)
        if abort:
            member._out.clear()
            member._out_bytes = 0
        else:
            self._flush_member(member)
        member.sink.close(abort=abort)
        logger.debug("disconnect %r (%s)", member, reason)

    def quit(self, member: Member, reason: str = "") -> None:
        """Handle ``/quit``: the rooms see ``left ROOM (quit: reason)``, then the sink closes."""
        if member.closed:
            return
        shown = f"quit: {reason}" if reason else "quit"
        self.send(member, Closing("goodbye"))
        self._count(self._disconnects, "quit")
        for room in list(member.rooms):
            self._leave(member, room, shown, tell_member=False)
        self._forget(member)
        self._flush_member(member)
        member.sink.close()

    def _forget(self, member: Member) -> None:
        member.closed = True
        self._members.pop(member, None)
        if member.key and self._nicks.get(member.key) is member:
            del self._nicks[member.key]
            if self._cluster is not None:  # multi-node: free the name cluster-wide
                self._cluster.release(member.key)
        ip = member.ip
        if ip:
            left = self._per_ip.get(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    # ----------------------------------------------------------------- speech

    def say(self, member: Member, text: str, room_name: str | None = None) -> None:
        """Broadcast a chat line from *member* to the other members of its room."""
        room = self._speaking_room(member, room_name)
        event = Message(member.nick, text, room.name)
        room.history.append(event)
        self._room_event(room, event, exclude=member)
        self._notify(event)

    def act(self, member: Member, text: str, room_name: str | None = None) -> None:
        """Broadcast ``* nick text`` from *member* to the other members of its room."""
        room = self._speaking_room(member, room_name)
        event = Action(member.nick, text, room.name)
        room.history.append(event)
        self._room_event(room, event, exclude=member)
        self._notify(event)

    def private(self, member: Member, nick: str, text: str) -> None:
        """Send *text* from *member* to the member called *nick* (any room)."""
        target = self._nicks.get(fold(nick))
        if target is None:
            # Multi-node: a member of another node gets it through the bus.
            remote = self._cluster.locate(nick) if self._cluster is not None else None
            if remote is None:
                raise ProtocolError(f"no member named {nick[:40]!r}")
            node, shown = remote
            assert self._cluster is not None
            self._cluster.send_private(node, Private(member.nick, shown, text))
            self.send(member, Private("", shown, text))
            self._notify(Private(member.nick, shown, text))
            return
        self.send(target, Private(member.nick, "", text))
        self.send(member, Private("", target.nick, text))
        self._notify(Private(member.nick, target.nick, text))

    def post(self, room_name: str, text: str, *, nick: str | None = None) -> None:
        """Post into a room as the server (``*** text``) or as a named bot (``nick: text``).

        Raises :class:`~asyncchat.errors.UsageError` if the room does not
        exist, or if *nick* is invalid or belongs to another member.
        """
        room = self._rooms.get(fold(room_name))
        if room is None:
            raise UsageError(f"no room named {room_name!r}")
        if "\n" in text or "\r" in text:
            raise UsageError("a posted line must not contain CR or LF")
        event: ChatEvent
        if nick is None:
            event = Notice(text)
        else:
            try:
                check_nick(nick)
            except ProtocolError as exc:
                raise UsageError(str(exc)) from None
            owner = self._nicks.get(fold(nick))
            if owner is not None and owner.kind != "bot":
                raise UsageError(f"nickname {nick!r} belongs to a connected member")
            event = Message(nick, text, room.name)
            room.history.append(event)
        self._room_event(room, event)
        self._notify(event)

    def send(self, member: Member, event: ChatEvent) -> None:
        """Queue one event for one member, after everything already queued for it."""
        if member.closed:
            return
        for room in member.rooms:
            self._catch_up(member, room)
        if isinstance(event, Error):
            self._errors_sent += 1
        self._enqueue(member, member.encoder(event), 1)

    def deliver(self, room_name: str | None, event: ChatEvent) -> None:
        """Show an event that happened on another node (the bus calls this from the loop).

        A room event reaches this node's members of the room through the
        same batched broadcast as local ones (chat lines also go into the
        room's history) and is not published again; a room with no member
        here ignores it.  A :class:`~asyncchat.events.Private` (with
        ``room_name=None``) goes to its local recipient, if still here.
        """
        if isinstance(event, Private):
            target = self._nicks.get(fold(event.recipient))
            if target is not None:
                self.send(target, Private(event.sender, "", event.text))
                self._notify(event)
            return
        room = self._rooms.get(fold(room_name)) if room_name is not None else None
        if room is None:
            return
        if isinstance(event, Message | Action):
            room.history.append(event)
        self._relaying = True
        try:
            if isinstance(event, Joined | Left):
                self._announce(room, event, None)
            else:
                self._room_event(room, event)
        finally:
            self._relaying = False
        self._notify(event)

    def _speaking_room(self, member: Member, room_name: str | None) -> Room:
        if not member.rooms:
            raise ProtocolError("you are not in a room; /join one")
        if room_name is None:
            return member.rooms[0]
        room = self._rooms.get(fold(room_name))
        if room is None or member not in room.members:
            raise ProtocolError(f"you are not in {room_name}")
        return room

    # ------------------------------------------------------------------ queries

    def rooms(self) -> list[RoomInfo]:
        """Every room with its member count, sorted by name (with a bus: on every node)."""
        local = (RoomInfo(r.name, len(r.members)) for r in self._rooms.values())
        if self._cluster is not None:
            local = (RoomInfo(name, count) for name, count in self._cluster.merge_rooms(local))
        return sorted(local, key=lambda i: fold(i.name))

    def who(self, room_name: str) -> list[str]:
        """Nicknames in a room, in the order they joined; ``[]`` if no such room.

        With a bus, members of other nodes follow this node's members.
        """
        room = self._rooms.get(fold(room_name))
        nicks = [m.nick for m in room.members] if room is not None else []
        if self._cluster is not None:
            nicks += self._cluster.who(room_name)
        return nicks

    def members(self) -> list[Member]:
        """Every member, logged in or not, in the order they connected."""
        return list(self._members)

    def find(self, nick: str) -> Member | None:
        """The member called *nick* (case-insensitively), or ``None``."""
        return self._nicks.get(fold(nick))

    def history(self, room_name: str) -> list[ChatEvent]:
        """A room's history, oldest first."""
        room = self._rooms.get(fold(room_name))
        return list(room.history) if room is not None else []

    def statistics(self) -> HubStatistics:
        """A snapshot of the hub's counters."""
        return HubStatistics(
            members=len(self._members),
            logged_in=len(self._nicks),
            rooms=len(self._rooms),
            lines_in=self.lines_in,
            bytes_in=self.bytes_in,
            lines_out=self._lines_out,
            bytes_out=self._bytes_out,
            lines_dropped=self._lines_dropped,
            errors_sent=self._errors_sent,
            rate_limited=self.rate_limited,
            disconnects=dict(self._disconnects),
            refused=dict(self._refused),
        )

    def _room(self, name: str, *, create: bool) -> Room:
        key = fold(name)
        room = self._rooms.get(key)
        if room is None:
            if not create:
                raise ProtocolError(f"no room named {name[:40]!r}")
            check_room(name)
            if len(self._rooms) >= self.limits.max_rooms:
                raise ProtocolError(f"too many rooms (limit {self.limits.max_rooms})")
            room = Room(name, self.limits.history_lines)
            self._rooms[key] = room
        return room

    # ------------------------------------------------------- output machinery

    def _announce(self, room: Room, event: Joined | Left, member: Member | None) -> None:
        """A join or leave line: the whole room sees it, unless the room is large.

        In a room of more than ``Limits.presence_max_members`` members, only
        *member* itself (if given and still in the room) sees its own line:
        announcing every arrival to everyone costs N^2 lines for N members
        (Twitch's IRC stops sending JOIN/PART above 1,000 chatters for the
        same reason).  Observers, other nodes and ``/who`` still see it all.
        """
        if len(room.members) <= self.limits.presence_max_members:
            self._room_event(room, event)
            return
        if self._cluster is not None and not self._relaying:
            self._cluster.publish(room.name, event)
        if member is not None and member in room.members:
            self.send(member, event)

    def _room_event(self, room: Room, event: ChatEvent, exclude: Member | None = None) -> None:
        # Multi-node: every room event produced here is published (not the ones deliver() relays).
        if self._cluster is not None and not self._relaying:
            self._cluster.publish(room.name, event)
        batch = room._batch
        if not batch:
            self._dirty_rooms.append(room)
            self._wake()
        if exclude is not None:
            room._excluded.append((len(batch), exclude))
        batch.append(event)

    def _materialize(self, room: Room) -> None:
        """Move a room's pending batch into its members' outboxes.

        The batch is encoded once and joined once, and the same bytes go to
        every member; a member with its own view of the batch — a cursor
        because it joined (or was caught up) mid-batch, or its own chat
        lines to hide — gets a slice of its own.
        """
        batch = room._batch
        if not batch:
            return
        members = room.members
        if members:
            cursors = room._cursors
            hidden: dict[Member, set[int]] = {}
            for index, member in room._excluded:
                hidden.setdefault(member, set()).add(index)
            lines = len(batch)
            pieces = self._pieces(room)
            chunk = b"".join(pieces)
            offsets: list[int] = []
            enqueue = self._enqueue
            for member in members:
                if member.encoder is not encode:
                    self._slice(member, room, cursors.get(member, 0), hidden.get(member))
                elif member in hidden:
                    self._slice(member, room, cursors.get(member, 0), hidden[member])
                elif member in cursors:
                    start = cursors[member]
                    if start < lines:
                        if not offsets:
                            offsets = [0, *itertools.accumulate(map(len, pieces))]
                        enqueue(member, chunk[offsets[start] :], lines - start)
                else:
                    enqueue(member, chunk, lines)
        room._batch = []
        room._pieces = []
        if room._excluded:
            room._excluded = []
        if room._cursors:
            room._cursors = {}

    @staticmethod
    def _pieces(room: Room) -> list[bytes]:
        """The room's batch encoded with the default encoder (each event encoded once)."""
        pieces = room._pieces
        batch = room._batch
        if len(pieces) < len(batch):
            pieces.extend(map(encode, batch[len(pieces) :]))
        return pieces

    def _slice(self, member: Member, room: Room, start: int, skip: set[int] | None) -> None:
        """Queue the room's ``batch[start:]`` for *member*, without the positions in *skip*."""
        if member.encoder is encode:
            pieces = self._pieces(room)
            if skip:
                chosen = [piece for i, piece in enumerate(pieces) if i >= start and i not in skip]
            else:
                chosen = pieces[start:]
            if chosen:
                self._enqueue(member, b"".join(chosen), len(chosen))
            return
        events = [event for i, event in enumerate(room._batch) if i >= start and not (skip and i in skip)]
        if events:
            self._enqueue(member, b"".join(map(member.encoder, events)), len(events))

    def _catch_up(self, member: Member, room: Room) -> None:
        """Hand *member* the part of *room*'s batch it does not hold yet, in O(batch).

        Called before a line goes to one member directly and before the
        member's rooms change, so its outbox keeps the order in which the hub
        produced everything, without materialising the batch for the whole room.
        """
        end = len(room._batch)
        if not end:
            return
        start = room._cursors.get(member, 0)
        if start < end:
            skip = {i for i, m in room._excluded if m is member and i >= start}
            self._slice(member, room, start, skip)
            room._cursors[member] = end

    def _enqueue(self, member: Member, data: bytes, lines: int) -> None:
        if member.closed or member._evicted:
            return
        out = member._out
        # A member that is not paused is flushed every iteration, so only a
        # paused member's outbox can grow across iterations: bound that one.
        if member._paused and member._out_bytes + len(data) > self.limits.outbox_high_water:
            self._over_high_water(member, lines)
            return
        if member._dropped:
            self._report_drops(member)
        if not member._dirty and not member._paused:
            member._dirty = True
            self._dirty.append(member)
            self._wake()
        out.append(data)
        member._out_bytes += len(data)
        self._lines_out += lines

    def _over_high_water(self, member: Member, lines: int) -> None:
        limits = self.limits
        if limits.slow_consumer is SlowConsumerPolicy.DISCONNECT:
            logger.warning(
                "disconnecting slow consumer %r: %d bytes unsent exceeds limit of %d bytes",
                member,
                member._out_bytes,
                limits.outbox_high_water,
            )
            # Never mutate rooms from inside a broadcast: evict at the next flush.
            member._evicted = True
            self._evictions.append(member)
            self._wake()
            return
        if not member._dropped:
            logger.warning(
                "dropping lines for slow consumer %r: outbox of %d bytes is at its limit of %d bytes",
                member,
                member._out_bytes,
                limits.outbox_high_water,
            )
        member._dropped += lines
        self._lines_dropped += lines

    def _report_drops(self, member: Member) -> None:
        dropped, member._dropped = member._dropped, 0
        notice = member.encoder(Error(f"{dropped} lines were dropped because you read too slowly"))
        member._out.append(notice)
        member._out_bytes += len(notice)
        self._errors_sent += 1

    def pause(self, member: Member) -> None:
        """The member's transport is full: keep its output in the outbox for now."""
        member._paused = True

    def resume(self, member: Member) -> None:
        """The member's transport drained: flush its outbox soon (and report drops)."""
        if member.closed or not member._paused:
            return
        member._paused = False
        if member._dropped:
            self._report_drops(member)
        if member._out and not member._dirty:
            member._dirty = True
            self._dirty.append(member)
            self._wake()

    def _wake(self) -> None:
        if not self._scheduled and self._wakeup is not None:
            self._scheduled = True
            self._wakeup()

    def flush(self) -> None:
        """Hand every member's queued output to its sink, one write per member."""
        self._scheduled = False
        while self._dirty_rooms:
            rooms, self._dirty_rooms = self._dirty_rooms, []
            for room in rooms:
                self._materialize(room)
        while self._evictions:
            evicted, self._evictions = self._evictions, []
            for member in evicted:
                self.disconnect(member, "slow", abort=True)
            for room in self._dirty_rooms:
                self._materialize(room)
            self._dirty_rooms.clear()
        dirty, self._dirty = self._dirty, []
        for member in dirty:
            member._dirty = False
            if not member._paused:
                self._flush_member(member)

    def _flush_member(self, member: Member) -> None:
        out = member._out
        if not out or (member._paused and not member.closed):
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        member._out_bytes = 0
        self._bytes_out += len(data)
        member.sink.write(data)

    # ------------------------------------------------------------ maintenance

    def tick(self, now: float) -> None:
        """Expire members that timed out: no nickname in time, or silent too long.

        The adapters call this about once a second with the loop's clock.
        With a bus it also sends heartbeats and expires silent nodes.
        """
        if self._cluster is not None:
            self._cluster.tick(now)
        limits = self.limits
        login_deadline = now - limits.login_timeout
        idle_deadline = now - limits.idle_timeout
        udp_deadline = now - limits.udp_idle_timeout
        for member in list(self._members):
            if member.kind == "bot":
                continue
            if not member.nick:
                if member.connected_at < login_deadline:
                    self.disconnect(
                        member, "login-timeout", notice=f"no nickname within {limits.login_timeout:g} seconds"
                    )
            elif member.last_seen < (udp_deadline if member.kind == "udp" else idle_deadline):
                self.disconnect(member, "idle", notice="idle for too long")

    def close_all(self, notice: str, *, members: Iterable[Member] | None = None) -> list[Member]:
        """Close many members at once (shutdown): each gets ``*** closing: notice``.

        *members* defaults to every member.  Members closed together do not
        get each other's leave lines; members who stay (say, on another
        transport) see them leave.  Returns the members closed.
        """
        closing = [m for m in (self._members if members is None else members) if not m.closed]
        rooms: dict[Room, list[Member]] = {}
        for member in closing:
            self.send(member, Closing(notice))
            for room in member.rooms:
                rooms.setdefault(room, []).append(member)
        for room, leaving in rooms.items():
            self._materialize(room)
            for member in leaving:
                del room.members[member]
                member.rooms.remove(room)
            if room.members:
                for member in leaving:
                    self._announce(room, Left(member.nick, room.name, "server shutting down"), None)
            elif room.key != DEFAULT_ROOM:
                del self._rooms[room.key]
        for member in closing:
            self._count(self._disconnects, "shutdown")
            self._forget(member)
            self._flush_member(member)
            member.sink.close()
        return closing

    def note_input(self, lines: int, nbytes: int) -> None:
        """Count input received from peers (adapters call this)."""
        self.lines_in += lines
        self.bytes_in += nbytes

    @staticmethod
    def _count(counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1
