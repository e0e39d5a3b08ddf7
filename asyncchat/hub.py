"""The hub: membership registry, rooms, history, and the chat's actions.

The hub is pure and synchronous: it never awaits and does no I/O.  It keeps
the members (:mod:`asyncchat.members`), their nicknames and rooms, each room's
history, and counters; its methods are what a session (or the embedding
program) does: log in, join, say, send privately, post, leave.  Everything
it says goes out through the one broadcast routine it inherits from
:class:`~asyncchat.broadcast.Broadcast` (room batches, bounded outboxes, one
write per member per flush — read that module for the fast path and the
ordering rules).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .broadcast import Broadcast
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
from .limits import Limits
from .members import BotSink, HubStatistics, Member, Observer, Room, RoomInfo, Sink
from .protocol import DEFAULT_ROOM, check_nick, check_room, fold

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["Hub", "HubStatistics", "Member", "RoomInfo", "Sink"]

logger = logging.getLogger("asyncchat.hub")


class Hub(Broadcast):
    """Membership registry and broadcast routine shared by every transport.

    All methods are synchronous and never block.  Methods that act for a
    peer raise :class:`~asyncchat.errors.ProtocolError` subclasses, which the
    session turns into error lines; misuse by the embedding program raises
    :class:`~asyncchat.errors.UsageError`.
    """

    def __init__(self, *, limits: Limits | None = None, name: str = "asyncchat", bus: Bus | None = None) -> None:
        super().__init__(limits if limits is not None else Limits())
        self.name = name
        if bus is not None:
            from .bus import Cluster

            self._cluster = Cluster(self, bus)
        self._ids = itertools.count(1)
        self._members: dict[Member, None] = {}
        self._nicks: dict[str, Member] = {}
        self._per_ip: dict[str, int] = {}
        self._rooms: dict[str, Room] = {}
        self._observers: list[Observer] = []
        self._disconnects: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self.lines_in = 0
        self.bytes_in = 0
        self.rate_limited = 0
        self._room(DEFAULT_ROOM, create=True)

    def __repr__(self) -> str:
        return f"<Hub {self.name!r} members={len(self._members)} rooms={len(self._rooms)}>"

    # ------------------------------------------------------------------ wiring

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
        member = self.connect(BotSink(on_event), kind="bot", peer="bot")
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

    def _free_key(self, member: Member, nick: str) -> str:
        """The key of *nick*; raises if it is invalid or another member's here."""
        check_nick(nick)
        key = fold(nick)
        if key == nick:
            key = nick  # one string, not two, for an already folded nickname
        owner = self._nicks.get(key)
        if owner is not None and owner is not member:
            raise NameTaken(f"nickname {nick!r} is taken")
        return key

    def _claim(self, member: Member, nick: str) -> None:
        key = self._free_key(member, nick)
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
        key = self._free_key(member, nick)
        if self._nicks.get(key) is member or cluster.holds(key):
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
        if room.history:
            self._enqueue(member, b"".join(map(member.encoder, room.history)), len(room.history))
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
        shown = {"closed": "connection closed", "quit": "quit"}.get(reason, reason)
        self._remove(member, reason, shown, notice=notice, abort=abort)

    def quit(self, member: Member, reason: str = "") -> None:
        """Handle ``/quit``: the rooms see ``left ROOM (quit: reason)``, then the sink closes."""
        self._remove(member, "quit", f"quit: {reason}" if reason else "quit", notice="goodbye")

    def _remove(self, member: Member, reason: str, shown: str, *, notice: str, abort: bool = False) -> None:
        if member.closed:
            return
        if notice:
            self.send(member, Closing(notice))
        self._count(self._disconnects, reason)
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
            writes=self._writes,
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

    def note_refused(self, reason: str) -> None:
        """Count a peer an adapter refused before :meth:`connect` (``statistics().refused[reason]``)."""
        self._count(self._refused, reason)

    @staticmethod
    def _count(counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1
