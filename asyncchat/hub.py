"""The hub: membership registry, rooms, operators and topics, history, and the chat's actions.

The hub is pure and synchronous: it never awaits and does no I/O.  It keeps
the members (:mod:`asyncchat.members`), their nicknames and rooms, each
room's operators, topic and history, and counters; its methods are what a
session (or the embedding program) does: log in, join, part, say, send
privately, set a topic, kick, give operator status, leave.  Everything it
says goes out through its one :class:`~asyncchat.broadcast.Broadcaster`
(room batches, bounded outboxes, one write per member per flush — read that
module for the fast path and the ordering rules).

A member may sit in several rooms.  Member-wide events — a nick change, a
quit — reach each recipient once, naming the first room they share.

Rooms and operators: a room's first member becomes its operator.  Operators
may set the topic (operators only by default, like IRC's ``+t``; an
operator can open it with :meth:`Hub.set_topic_lock`), kick members and
give or take operator status.  When the last operator leaves, nothing is
handed over: the room has no operator until it empties and someone creates
it again (IRC's rule; the default room ``lobby`` too).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

from .broadcast import Broadcaster
from .bus import Bus
from .cluster import Cluster
from .errors import ErrorCode, NameTaken, ProtocolError, Refused, UsageError
from .events import (
    Action,
    ChatEvent,
    Closing,
    Error,
    Joined,
    Kicked,
    Left,
    Message,
    Names,
    NickChanged,
    Notice,
    OperatorChanged,
    Private,
    Quit,
    RoomInfo,
    Topic,
    TopicChanged,
    Welcome,
)
from .limits import Limits
from .members import BotSink, HubStatistics, Member, Observer, Room, Sink, encode_for_bot
from .netaddr import source_key
from .protocol import DEFAULT_ROOM, check_nick, check_room, fold

__all__ = ["Hub", "HubStatistics", "Member", "RoomInfo", "Sink"]

logger = logging.getLogger("asyncchat.hub")


class Hub:
    """Membership registry and broadcast routine shared by every transport.

    All methods are synchronous and never block.  Methods that act for a
    peer raise :class:`~asyncchat.errors.ProtocolError` subclasses (each
    with its stable code), which the session turns into error replies;
    misuse by the embedding program raises :class:`~asyncchat.errors.UsageError`.
    """

    def __init__(self, *, limits: Limits | None = None, name: str = "asyncchat", bus: Bus | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self.name = name
        self._out = Broadcaster(self.limits, self._evict)
        # Multi-node (asyncchat.cluster): with a bus, room events are also published
        # and other nodes' events arrive through deliver().  None: single node.
        self._cluster = Cluster(self, bus) if bus is not None else None
        self._relaying = False
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

        Observers see a member who leaves the chat as one
        :class:`~asyncchat.events.Left` per room.  They run synchronously
        inside the hub and must not block; an exception from one is logged
        and does not affect the chat.  Returns a function that unsubscribes.
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

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Install the callback that makes the event loop call :meth:`flush` soon.

        The adapters install ``loop.call_soon``-based wake-ups; a hub used
        without an event loop can leave it unset and call :meth:`flush` itself.
        """
        self._out.set_wakeup(wakeup)

    def flush(self) -> None:
        """Hand every member's queued output to its sink, one write per member."""
        self._out.flush()

    def send(self, member: Member, event: ChatEvent) -> None:
        """Queue one event (a reply, a notice) for one member, after everything queued for it."""
        self._out.send(member, event)

    def pause(self, member: Member) -> None:
        """The member's transport is full: keep its output in the hub's bounded outbox."""
        self._out.pause(member)

    def resume(self, member: Member) -> None:
        """The member's transport drained: flush its outbox soon (and report drops)."""
        self._out.resume(member)

    @property
    def lines_out(self) -> int:
        """Lines handed to members' outboxes so far (a delivery counts once per member)."""
        return self._out.lines_out

    @property
    def writes(self) -> int:
        """Writes made to members' sinks so far; ``lines_out / writes`` is the coalescing factor."""
        return self._out.writes

    # -------------------------------------------------------------- membership

    def connect(self, sink: Sink, *, kind: str, now: float, peer: str = "", ip: str = "") -> Member:
        """Admit a new, not yet named member; *now* is the loop's clock (for timeouts).

        Raises :class:`~asyncchat.errors.Refused` if ``max_members`` or
        ``max_per_ip`` (for *ip*) would be exceeded; nothing is changed then.
        """
        limits = self.limits
        if len(self._members) >= limits.max_members:
            self._count(self._refused, "full")
            raise Refused("full", f"server is full ({limits.max_members} members)")
        if ip:
            source = source_key(ip, limits.ipv6_prefix_bits)  # an IPv6 /64 is one source
            count = self._per_ip.get(source, 0)
            if count >= limits.max_per_ip:
                self._count(self._refused, "per-ip")
                raise Refused("per-ip", f"too many connections from {source} (limit {limits.max_per_ip})")
            self._per_ip[source] = count + 1
        member = Member(next(self._ids), sink, kind, peer or ip or kind, ip, now)
        self._members[member] = None
        logger.debug("connect %r", member)
        return member

    def login(
        self,
        member: Member,
        nick: str,
        *,
        room: str | None = DEFAULT_ROOM,
        on_login: Callable[[bool], None] | None = None,
    ) -> None:
        """Name *member*, welcome it, and put it in *room* (history, join line, topic).

        *room* is the front end's choice: v1 and UDP members start in
        ``lobby``, IRC members in no room (``None``).  Raises
        :class:`~asyncchat.errors.InvalidName` or
        :class:`~asyncchat.errors.NameTaken`; the member stays unnamed then.
        With a bus the nickname is first claimed across nodes, which may
        answer later: *on_login* is called with ``True`` once the member is
        logged in (before this returns when no round trip is needed), or
        with ``False`` when another node holds the name (the member then got
        an error reply with code ``nick-taken``).
        """
        if member.closed:
            raise UsageError(f"{member!r} is closed")
        if member.nick:
            raise UsageError(f"{member!r} is already logged in")
        # Multi-node: claim the name cluster-wide first; login() is called again once granted.
        if self._cluster is not None and not self._cluster_claim(
            member, nick, lambda: self.login(member, nick, room=room, on_login=on_login), on_login
        ):
            return
        self._claim(member, nick)
        self.send(member, Welcome(nick))
        if room is not None:
            self.join(member, room)
        if on_login is not None:
            on_login(True)

    def add_bot(self, nick: str, on_event: Observer | None = None, *, room: str = DEFAULT_ROOM) -> Member:
        """Log in an in-process member called *nick*; *on_event* gets what it receives.

        *on_event* is called with the typed events themselves (a
        :class:`~asyncchat.events.Message` with its room, a
        :class:`~asyncchat.events.Quit`, a
        :class:`~asyncchat.events.Private`, ...): exactly what a connected
        member is shown, in the same order, without the bot's own chat lines.

        The bot appears in ``/who`` like anyone else and speaks with
        :meth:`say`.  Remove it with :meth:`disconnect`.  Raises
        :class:`~asyncchat.errors.UsageError` if the nickname is invalid or
        taken, or if it cannot join *room* (an invalid name, too many
        rooms); nothing is left behind then.
        """
        member = self.connect(BotSink(on_event), kind="bot", peer="bot", now=0.0)
        member.encoder = encode_for_bot  # typed events, room included (see BotSink)
        try:
            self._claim(member, nick)
            self.join(member, room)
        except ProtocolError as exc:
            # join() raises before changing anything: drop the name and the member.
            # (A bot's name is not claimed across nodes, so there is nothing to release there.)
            if member.key and self._nicks.get(member.key) is member:
                del self._nicks[member.key]
            self._members.pop(member, None)
            member.closed = True
            raise UsageError(str(exc)) from None
        return member

    def rename(self, member: Member, new: str) -> None:
        """Change *member*'s nickname; everyone sharing a room with it sees it once."""
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
        if member.rooms:
            self._member_wide(member.rooms, lambda room: NickChanged(old, new, room.name), presence=False)
        else:
            self.send(member, NickChanged(old, new))
        if self._cluster is not None and not self._relaying:
            self._cluster.publish_member(NickChanged(old, new))
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
        (granted) or the member gets an error reply with code ``nick-taken``.
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
                    self.send(member, Error(str(exc), exc.code))
                if key not in self._nicks:
                    cluster.release(key)
            else:
                self.send(member, Error(f"nickname {nick!r} is taken", ErrorCode.NICK_TAKEN))
            if on_login is not None:
                on_login(False)

        cluster.claim(key, answered)
        return False

    def join(self, member: Member, room_name: str, *, history: bool = True) -> None:
        """Add *member* to a room (created if needed), keeping its other rooms.

        The member gets the room's history (unless *history* is false), then
        the join line, then the topic if one is set.  The first member of a
        room becomes its operator.  Raises
        :class:`~asyncchat.errors.InvalidName`, or
        :class:`~asyncchat.errors.ProtocolError` when the member is already
        there or the room limit is reached.
        """
        if not member.nick:
            raise UsageError(f"{member!r} must log in before joining a room")
        room = self._room(room_name, create=True)
        if member in room.members:
            raise ProtocolError(f"you are already in {room.name}", code=ErrorCode.ALREADY_IN_ROOM)
        out = self._out
        for other in member.rooms:
            out.catch_up(member, other)
        if history and room.history:
            out.send_many(member, room.history)
        if not room.members:
            room.operators.add(member)
        room.members[member] = None
        member.rooms.append(room)
        if room._batch:  # what the room said before this join is not for this member
            room._cursors[member] = len(room._batch)
        self._announce(room, Joined(member.nick, room.name), member)
        if room.topic:
            self.send(member, Topic(room.name, room.topic))
        self._notify(Joined(member.nick, room.name))

    def move(self, member: Member, room_name: str) -> None:
        """Leave every room and join *room_name* (v1's ``/join``); raises before leaving if it cannot."""
        room = self._room(room_name, create=True)
        if member.rooms == [room]:
            raise ProtocolError(f"you are already in {room.name}", code=ErrorCode.ALREADY_IN_ROOM)
        for old in list(member.rooms):
            if old is not room:
                self._leave(member, old, "")
        if member not in room.members:
            self.join(member, room.name)

    def leave(self, member: Member, room_name: str, reason: str = "") -> None:
        """Remove *member* from one room (its other rooms stay); the room and the member see it leave."""
        room = self._rooms.get(fold(room_name))
        if room is None or member not in room.members:
            raise ProtocolError(f"you are not in {room_name}", code=ErrorCode.NOT_IN_ROOM)
        self._leave(member, room, reason)

    def _leave(self, member: Member, room: Room, reason: str) -> None:
        event = Left(member.nick, room.name, reason)
        self._announce(room, event, member)
        self._detach(member, room)
        self._notify(event)

    def _detach(self, member: Member, room: Room) -> None:
        """Take *member* out of *room* after handing it everything the room said so far."""
        self._out.catch_up(member, room)
        del room.members[member]
        room.operators.discard(member)
        room._cursors.pop(member, None)
        member.rooms.remove(room)
        if not room.members and room.key != DEFAULT_ROOM:
            del self._rooms[room.key]  # its pending batch has no recipient left

    def disconnect(self, member: Member, reason: str = "closed", *, notice: str = "", abort: bool = False) -> None:
        """Remove *member* from the hub and close its sink.

        *reason* is counted in :meth:`statistics` and shown in the leave line
        its rooms see; *notice*, if given, is the last line the member gets
        (``*** closing: notice``).  Unsent output is flushed first unless
        *abort*: then it is discarded, and the notice alone is handed
        straight to the transport before the abort (best effort).  Calling
        it again for the same member does nothing.
        """
        shown = {"closed": "connection closed", "quit": "quit"}.get(reason, reason)
        self._remove(member, reason, shown, notice=notice, abort=abort)

    def quit(self, member: Member, reason: str = "") -> None:
        """Handle a quit: the member's rooms see ``left ROOM (quit: reason)``, then the sink closes."""
        self._remove(member, "quit", f"quit: {reason}" if reason else "quit", notice="goodbye")

    def _remove(self, member: Member, reason: str, shown: str, *, notice: str, abort: bool = False) -> None:
        if member.closed:
            return
        if notice and not abort:
            self.send(member, Closing(notice))
        self._count(self._disconnects, reason)
        self._quit_rooms([member], shown)
        self._forget(member)
        if abort:
            self._out.discard(member)
            if notice:  # best effort: straight to the transport, then the abort
                self._out.write_now(member, Closing(notice))
        else:
            self._out.flush_member(member)
        member.sink.close(abort=abort)
        logger.debug("disconnect %r (%s)", member, reason)

    def _quit_rooms(self, leaving: Sequence[Member], shown: str) -> None:
        """Take *leaving* out of all their rooms; every member who stays sees each of them leave once.

        All of *leaving* are taken out before anything is announced, so
        members closed together get none of each other's leave lines.
        """
        gone: list[tuple[str, list[Room]]] = []
        for member in leaving:
            rooms = list(member.rooms)
            for room in rooms:
                self._detach(member, room)
            if rooms and member.nick:
                gone.append((member.nick, rooms))
        for nick, rooms in gone:
            self._announce_quit(nick, [room for room in rooms if room.members], shown)
            if self._cluster is not None:
                self._cluster.publish_member(Quit(nick, "", shown))
            for room in rooms:
                self._notify(Left(nick, room.name, shown))

    def _announce_quit(self, nick: str, rooms: Sequence[Room], reason: str) -> None:
        self._member_wide(rooms, lambda room: Quit(nick, room.name, reason), presence=True)

    def _member_wide(self, rooms: Sequence[Room], make: Callable[[Room], ChatEvent], *, presence: bool) -> None:
        """Show a member-wide event once to each member of *rooms*, naming the first room shared.

        With *presence*, rooms larger than ``Limits.presence_max_members``
        do not announce it (like joins and leaves).
        """
        limit = self.limits.presence_max_members
        seen: set[Member] = set()
        for index, room in enumerate(rooms):
            if presence and len(room.members) > limit:
                continue
            repeated = [m for m in room.members if m in seen] if seen else None
            self._out.room_event(room, make(room), exclude=repeated)
            if index < len(rooms) - 1:
                seen.update(room.members)

    def _forget(self, member: Member) -> None:
        member.closed = True
        self._members.pop(member, None)
        if member.key and self._nicks.get(member.key) is member:
            del self._nicks[member.key]
            if self._cluster is not None:  # multi-node: free the name cluster-wide
                self._cluster.release(member.key)
        ip = member.ip
        if ip:
            ip = source_key(ip, self.limits.ipv6_prefix_bits)  # the key connect() counted (limits are frozen)
            left = self._per_ip.get(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    def _evict(self, member: Member, reason: str) -> None:
        # A slow consumer is told why (best effort: its transport is full); a failing sink is not.
        notice = f"too slow: more than {self.limits.outbox_high_water} bytes unsent" if reason == "slow" else ""
        self.disconnect(member, reason, notice=notice, abort=True)

    # ----------------------------------------------------------------- speech

    def say(self, member: Member, text: str, room_name: str | None = None) -> None:
        """Broadcast a chat line from *member* to the other members of a room (default: its first)."""
        room = self._member_room(member, room_name)
        event = Message(member.nick, text, room.name)
        room.history.append(event)
        self._room_event(room, event, exclude=member)
        self._notify(event)

    def act(self, member: Member, text: str, room_name: str | None = None) -> None:
        """Broadcast ``* nick text`` from *member* to the other members of a room (default: its first)."""
        room = self._member_room(member, room_name)
        event = Action(member.nick, text, room.name)
        room.history.append(event)
        self._room_event(room, event, exclude=member)
        self._notify(event)

    def private(self, member: Member, nick: str, text: str) -> None:
        """Send *text* from *member* to the member called *nick* (any room, any node)."""
        if fold(nick) == member.key:
            raise ProtocolError("you cannot send a private message to yourself", code=ErrorCode.FORBIDDEN)
        target = self._nicks.get(fold(nick))
        if target is None:
            # Multi-node: a member of another node gets it through the bus.
            remote = self._cluster.locate(nick) if self._cluster is not None else None
            if remote is None:
                raise ProtocolError(f"no member named {nick[:40]!r}", code=ErrorCode.NO_SUCH_NICK)
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

    # ---------------------------------------------------------- operators

    def is_operator(self, member: Member, room_name: str) -> bool:
        """Whether *member* is an operator of the room."""
        room = self._rooms.get(fold(room_name))
        return room is not None and member in room.operators

    def topic(self, room_name: str) -> str:
        """A room's topic (``""``: none); raises if there is no such room."""
        return self._room(room_name, create=False).topic

    def set_topic(self, member: Member, room_name: str, text: str) -> None:
        """Set (``""``: clear) a room's topic; the room sees who set it.

        Raises :class:`~asyncchat.errors.ProtocolError` (``not-in-room``,
        ``not-operator`` while the topic is locked).
        """
        room = self._member_room(member, room_name)
        if room.topic_locked and member not in room.operators:
            raise ProtocolError(f"only operators of {room.name} may set its topic", code=ErrorCode.NOT_OPERATOR)
        room.topic = text
        event = TopicChanged(member.nick, room.name, text)
        room.history.append(event)
        self._room_event(room, event)
        self._notify(event)

    def set_topic_lock(self, member: Member, room_name: str, locked: bool) -> None:
        """Make a room's topic operator-only (*locked*) or open to every member (operators only)."""
        room = self._operator_room(member, room_name)
        room.topic_locked = locked

    def kick(self, member: Member, room_name: str, nick: str, reason: str = "") -> None:
        """Remove the member called *nick* from a room (operators only); everyone there sees it.

        Raises :class:`~asyncchat.errors.ProtocolError` (``not-operator``,
        ``no-such-nick``, ``target-not-in-room``).
        """
        room = self._operator_room(member, room_name)
        target, shown = self._target(room, nick)
        event = Kicked(shown, room.name, member.nick, reason)
        room.history.append(event)
        self._room_event(room, event)
        if target is not None:
            self._detach(target, room)
        elif self._cluster is not None:
            self._cluster.kicked(room.name, shown)
        self._notify(event)

    def set_operator(self, member: Member, room_name: str, nick: str, operator: bool) -> None:
        """Give (*operator*) or take a room's operator status from *nick* (operators only)."""
        room = self._operator_room(member, room_name)
        target, shown = self._target(room, nick)
        if target is not None:
            if (target in room.operators) == operator:
                return
            if operator:
                room.operators.add(target)
            else:
                room.operators.discard(target)
        event = OperatorChanged(shown, room.name, operator, member.nick)
        self._room_event(room, event)
        self._notify(event)

    def _operator_room(self, member: Member, room_name: str) -> Room:
        room = self._member_room(member, room_name)
        if member not in room.operators:
            raise ProtocolError(f"you are not an operator of {room.name}", code=ErrorCode.NOT_OPERATOR)
        return room

    def _target(self, room: Room, nick: str) -> tuple[Member | None, str]:
        """The local member called *nick* in *room* (or ``None`` if it is another node's), and its name."""
        target = self._nicks.get(fold(nick))
        if target is not None:
            if target not in room.members:
                raise ProtocolError(f"{target.nick} is not in {room.name}", code=ErrorCode.TARGET_NOT_IN_ROOM)
            return target, target.nick
        if self._cluster is not None:
            for shown in self._cluster.who(room.name):
                if fold(shown) == fold(nick):
                    return None, shown
            if self._cluster.locate(nick) is not None:
                raise ProtocolError(f"{nick} is not in {room.name}", code=ErrorCode.TARGET_NOT_IN_ROOM)
        raise ProtocolError(f"no member named {nick[:40]!r}", code=ErrorCode.NO_SUCH_NICK)

    # ------------------------------------------------------------ multi-node

    def deliver(self, room_name: str | None, event: ChatEvent) -> None:
        """Show an event that happened on another node (the bus calls this from the loop).

        A room event reaches this node's members of the room through the
        same batched broadcast as local ones (chat lines also go into the
        room's history; a topic, kick or operator change also applies here)
        and is not published again; a room with no member here ignores it.
        A :class:`~asyncchat.events.Private` (with ``room_name=None``) goes
        to its local recipient, if still here.
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
        if isinstance(event, Message | Action | TopicChanged | Kicked):
            room.history.append(event)
        self._relaying = True
        try:
            if isinstance(event, Joined | Left):
                self._announce(room, event, None)
            else:
                self._room_event(room, event)
            self._apply_remote(room, event)
        finally:
            self._relaying = False
        self._notify(event)

    def _apply_remote(self, room: Room, event: ChatEvent) -> None:
        if isinstance(event, TopicChanged):
            room.topic = event.text
        elif isinstance(event, Kicked | OperatorChanged):
            target = self._nicks.get(fold(event.nick))
            if target is None or target not in room.members:
                return
            if isinstance(event, Kicked):
                self._detach(target, room)
            elif event.operator:
                room.operators.add(target)
            else:
                room.operators.discard(target)

    def deliver_member(self, rooms: Sequence[str], event: NickChanged | Quit) -> None:
        """Show a member-wide event of another node's member once to each local member of *rooms*."""
        local = [room for name in rooms if (room := self._rooms.get(fold(name))) is not None]
        if isinstance(event, NickChanged):
            old, new = event.old, event.new
            self._member_wide(local, lambda room: NickChanged(old, new, room.name), presence=False)
            self._notify(NickChanged(old, new, local[0].name if local else None))
        else:
            self._announce_quit(event.nick, local, event.reason)
            for room in local:
                self._notify(Left(event.nick, room.name, event.reason))

    def local_presence(self) -> dict[str, list[str]]:
        """``{room name: [nick, ...]}`` of this node's logged-in members (for heartbeats)."""
        return {room.name: [m.nick for m in room.members] for room in self._rooms.values() if room.members}

    def is_local(self, key: str) -> bool:
        """Whether a member of this node holds the nickname whose folded form is *key*."""
        return key in self._nicks

    # ---------------------------------------------------------- broadcasting

    def _publish(self, room: Room, event: ChatEvent) -> None:
        # Multi-node: every room event produced here is published (not the ones deliver() relays).
        if self._cluster is not None and not self._relaying:
            self._cluster.publish(room.name, event)

    def _room_event(self, room: Room, event: ChatEvent, exclude: Member | None = None) -> None:
        self._publish(room, event)
        self._out.room_event(room, event, exclude)

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
        self._publish(room, event)
        if member is not None and member in room.members:
            self.send(member, event)

    def _member_room(self, member: Member, room_name: str | None) -> Room:
        """The room *member* acts in: *room_name*, or its first room."""
        if room_name is None:
            if not member.rooms:
                raise ProtocolError("you are not in a room; /join one", code=ErrorCode.NOT_IN_ROOM)
            return member.rooms[0]
        room = self._rooms.get(fold(room_name))
        if room is None or member not in room.members:
            raise ProtocolError(f"you are not in {room_name[:40]}", code=ErrorCode.NOT_IN_ROOM)
        return room

    # ------------------------------------------------------------------ queries

    def rooms(self) -> list[RoomInfo]:
        """Every room with its member count and topic, sorted by name (with a bus: on every node)."""
        infos = {room.key: room.info() for room in self._rooms.values()}
        if self._cluster is not None:
            merged = []
            for name, count in self._cluster.merge_rooms(infos.values()):
                local = infos.get(fold(name))
                merged.append(RoomInfo(name, count, local.topic if local is not None else ""))
            return sorted(merged, key=lambda i: fold(i.name))
        return sorted(infos.values(), key=lambda i: i.name.casefold())

    def who(self, room_name: str) -> list[str]:
        """Nicknames in a room, in the order they joined; ``[]`` if no such room.

        With a bus, members of other nodes follow this node's members.
        """
        room = self._rooms.get(fold(room_name))
        nicks = [m.nick for m in room.members] if room is not None else []
        if self._cluster is not None:
            nicks += self._cluster.who(room_name)
        return nicks

    def names(self, room_name: str) -> Names:
        """A room's members (:meth:`who`) and its operators, as one reply event."""
        room = self._rooms.get(fold(room_name))
        if room is None and (self._cluster is None or not self._cluster.who(room_name)):
            raise ProtocolError(f"no room named {room_name[:40]!r}", code=ErrorCode.NO_SUCH_ROOM)
        operators = frozenset(m.nick for m in room.operators) if room is not None else frozenset()
        return Names(room.name if room is not None else room_name, tuple(self.who(room_name)), operators)

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
        out = self._out
        return HubStatistics(
            members=len(self._members),
            logged_in=len(self._nicks),
            rooms=len(self._rooms),
            lines_in=self.lines_in,
            bytes_in=self.bytes_in,
            lines_out=out.lines_out,
            bytes_out=out.bytes_out,
            writes=out.writes,
            lines_dropped=out.lines_dropped,
            errors_sent=out.errors_sent,
            rate_limited=self.rate_limited,
            disconnects=dict(self._disconnects),
            refused=dict(self._refused),
        )

    def _room(self, name: str, *, create: bool) -> Room:
        key = fold(name)
        room = self._rooms.get(key)
        if room is None:
            if not create:
                raise ProtocolError(f"no room named {name[:40]!r}", code=ErrorCode.NO_SUCH_ROOM)
            check_room(name)
            if len(self._rooms) >= self.limits.max_rooms:
                raise ProtocolError(f"too many rooms (limit {self.limits.max_rooms})", code=ErrorCode.TOO_MANY_ROOMS)
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
        transport) see each of them leave once.  Returns the members closed.
        """
        closing = [m for m in (self._members if members is None else members) if not m.closed]
        for member in closing:
            self.send(member, Closing(notice))
        self._quit_rooms(closing, "server shutting down")
        for member in closing:
            self._count(self._disconnects, "shutdown")
            self._forget(member)
            self._out.flush_member(member)
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
