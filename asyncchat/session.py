"""The chat session of one member: naming, the command executor, rate limit.

A :class:`Session` is pure.  Its front end feeds it either decoded v1 lines
(:meth:`Session.receive`, from :class:`~asyncchat.framing.LineDecoder`) or
typed commands (:meth:`Session.execute`, from its own codec), with the
loop's clock as ``now``; the session acts on the
:class:`~asyncchat.hub.Hub`, which queues every reply — a typed event — in
the member's one outbox, rendered by the member's encoder.  Every front end
runs the same :meth:`~Session.execute`: what a command means is decided here
and in the hub, once.

States and transitions — all of them are here::

    NAMING  --valid, free nickname-->  CHATTING  --/quit, disconnect-->  CLOSED
       |                                                                   ^
       +---------------------- disconnect, login timeout -----------------+

* In NAMING a :class:`~asyncchat.commands.ChangeNick` is a login attempt
  (for v1 every non-empty line is one); a bad or taken nickname gets an
  error reply and another try; other commands are refused.
* In CHATTING commands act on the hub; v1 lines are chat text, ``//text``
  (chat text ``/text``) or a ``/command``; an empty line is ignored.
* The *current room* is a v1 notion: the room a v1 member joined last.
  Commands whose ``room`` is ``None`` act there; other front ends name rooms.
* In any state a line error (too long, bad UTF-8) gets an error reply and
  the stream goes on; nothing a peer sends raises out of :meth:`Session.receive`
  or :meth:`Session.execute`.
* Every line or command costs one token of the member's rate bucket; one
  without a token is dropped with an error reply (code ``rate-limited``),
  and ``Limits.rate_disconnect_after`` dropped in a row disconnect the member.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from . import commands as cmd
from .errors import ErrorCode, ProtocolError
from .events import Error, Greeting, Help, Pong, RoomList, Topic
from .hub import Hub, Member
from .protocol import DEFAULT_ROOM, encode, encode_with_codes, fold, parse_command

__all__ = ["Session", "SessionState"]

CommandHandler = Callable[["Session", str], None]


class SessionState(enum.Enum):
    """Where a session is in its life."""

    NAMING = "naming"
    CHATTING = "chatting"
    CLOSED = "closed"


class Session:
    """One member's state machine and command executor (see the module docstring).

    *extra_commands* maps a command name (without ``/``) to a handler
    ``handler(session, arg)`` that the embedding program provides; a handler
    may raise :class:`~asyncchat.errors.ProtocolError` to answer with an error.
    *room* is where the member starts after login (``None``: no room, as IRC
    clients expect); with *greeting*, the member is sent a :class:`~asyncchat.events.Greeting` at once.
    """

    __slots__ = (
        "_current",
        "_extra",
        "_held",
        "_naming",
        "_refused",
        "_stamp",
        "_start_room",
        "_tokens",
        "hub",
        "member",
        "state",
    )

    def __init__(
        self,
        hub: Hub,
        member: Member,
        *,
        now: float,
        extra_commands: dict[str, CommandHandler] | None = None,
        room: str | None = DEFAULT_ROOM,
        greeting: bool = True,
    ) -> None:
        self.hub = hub
        self.member = member
        self.state = SessionState.NAMING
        self._extra = extra_commands
        self._tokens = float(hub.limits.rate_burst)
        self._stamp = now
        self._refused = 0
        self._start_room = room
        self._current: str | None = None
        # Multi-node: while a nickname claim is in flight (NAMING), input is held
        # here (at most Limits.rate_burst items) and replayed when it is answered.
        self._naming = False
        self._held: list[str | cmd.Command] | None = None  # created only when input must wait
        if greeting:
            hub.send(member, Greeting())

    def __repr__(self) -> str:
        return f"<Session {self.state.name} {self.member!r}>"

    @property
    def room(self) -> str | None:
        """The current room (v1): the room joined last that the member is still in, else its first."""
        rooms = self.member.rooms
        current = self._current
        if current is not None:
            key = fold(current)
            for room in rooms:
                if room.key == key:
                    return room.name
        return rooms[0].name if rooms else None

    # ------------------------------------------------------------ input

    def receive(self, items: Iterable[str | ProtocolError], now: float) -> None:
        """Handle decoded v1 input lines (and line errors) in order."""
        member = self.member
        for item in items:
            if self.state is SessionState.CLOSED or member.closed:
                self.state = SessionState.CLOSED
                return
            member.last_seen = now
            if not self._take_token(now):
                continue
            if isinstance(item, ProtocolError):
                self._error(item)
                continue
            try:
                self._line(item)
            except ProtocolError as exc:
                self._error(exc)

    def execute(self, command: cmd.Command, now: float) -> None:
        """Run one typed command from any front end (rate-limited like a line)."""
        member = self.member
        if self.state is SessionState.CLOSED or member.closed:
            self.state = SessionState.CLOSED
            return
        member.last_seen = now
        if not self._take_token(now):
            return
        try:
            self._execute(command)
        except ProtocolError as exc:
            self._error(exc)

    def _error(self, exc: ProtocolError) -> None:
        self.hub.send(self.member, Error(str(exc), exc.code))

    def _take_token(self, now: float) -> bool:
        limits = self.hub.limits
        tokens = self._tokens + (now - self._stamp) * limits.rate_lines_per_second
        self._stamp = now
        if tokens > limits.rate_burst:
            tokens = limits.rate_burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self._refused = 0
            return True
        self._tokens = tokens
        self._refused += 1
        self.hub.rate_limited += 1
        if self._refused == 1:
            self.hub.send(
                self.member,
                Error(
                    f"slow down: at most {limits.rate_lines_per_second:g} lines per second; line dropped",
                    ErrorCode.RATE_LIMITED,
                ),
            )
        elif self._refused >= limits.rate_disconnect_after:
            self.close("flood", notice=f"{self._refused} lines over the rate limit")
        return False

    def _line(self, line: str) -> None:
        """One v1 line: a nickname attempt while naming, else chat or a ``/command``."""
        if self.state is SessionState.NAMING:
            if self._naming:  # a cluster-wide nickname claim is in flight: keep the raw line
                self._hold(line)
            elif line.startswith("/codes "):  # v1: a program may ask for error codes before its nickname
                self._execute(parse_command(line))
            elif nick := line.strip():
                self._execute(cmd.ChangeNick(nick))
            return
        if not line or line.isspace():
            return
        self._execute(parse_command(line, frozenset(self._extra) if self._extra else frozenset()))

    def _execute(self, command: cmd.Command) -> None:
        if self.state is SessionState.NAMING:
            self._naming_command(command)
            return
        match command:
            case cmd.Say():
                self._say(command)
            case cmd.Act():
                self._act(command)
            case cmd.SendPrivate():
                self._private(command)
            case cmd.ChangeNick():
                self._nick(command)
            case cmd.Join():
                self._join(command)
            case cmd.Part():
                self._part(command)
            case cmd.Who():
                self._who(command)
            case cmd.ListRooms():
                self._rooms(command)
            case cmd.SetTopic():
                self._topic(command)
            case cmd.SetTopicLock():
                self._topic_lock(command)
            case cmd.Kick():
                self._kick(command)
            case cmd.SetOperator():
                self._operator(command)
            case cmd.Ping():
                self._ping(command)
            case cmd.QuitChat():
                self._quit(command)
            case cmd.Help():
                self._help(command)
            case cmd.ErrorCodes():
                self._codes(command)
            case cmd.Custom():
                self._custom(command)

    def _naming_command(self, command: cmd.Command) -> None:
        if self._naming:  # a cluster-wide nickname claim is in flight
            self._hold(command)
            return
        if isinstance(command, cmd.ErrorCodes):
            self._codes(command)
            return
        if isinstance(command, cmd.QuitChat):
            self._quit(command)
            return
        if isinstance(command, cmd.Ping):
            self._ping(command)
            return
        if not isinstance(command, cmd.ChangeNick):
            raise ProtocolError("choose a nickname first", code=ErrorCode.NOT_LOGGED_IN)
        self._naming = True
        try:
            self.hub.login(self.member, command.nick, room=self._start_room, on_login=self._named)
        except BaseException:
            self._naming = False
            raise

    def _hold(self, item: str | cmd.Command) -> None:
        if self._held is None:
            self._held = []
        if len(self._held) >= self.hub.limits.rate_burst:
            raise ProtocolError("still checking your nickname; line dropped", code=ErrorCode.PENDING)
        self._held.append(item)

    def close(self, reason: str = "closed", *, notice: str = "", abort: bool = False) -> None:
        """End the session and remove the member from the hub (idempotent)."""
        self.state = SessionState.CLOSED
        self.hub.disconnect(self.member, reason, notice=notice, abort=abort)

    def connection_lost(self) -> None:
        """The transport is gone; the member's rooms see it leave."""
        self.close("closed")

    def _named(self, ok: bool) -> None:
        """The hub's answer to a login: chat if *ok*, then replay input held meanwhile."""
        self._naming = False
        held, self._held = self._held or [], None
        if self.state is SessionState.CLOSED or self.member.closed:
            return
        if ok:
            self.state = SessionState.CHATTING
            self._current = self._start_room
        for index, item in enumerate(held):
            if self._naming or self.state is SessionState.CLOSED:
                self._held = held[index:] + (self._held or [])
                return
            try:
                if isinstance(item, str):
                    self._line(item)
                else:
                    self._execute(item)
            except ProtocolError as exc:
                self._error(exc)

    # ------------------------------------------------------------- commands

    def _room_of(self, room: str | None) -> str:
        if room is not None:
            return room
        current = self.room
        if current is None:
            raise ProtocolError("you are not in a room; /join one", code=ErrorCode.NOT_IN_ROOM)
        return current

    def _say(self, command: cmd.Say) -> None:
        self.hub.say(self.member, command.text, self._room_of(command.room))

    def _act(self, command: cmd.Act) -> None:
        self.hub.act(self.member, command.text, self._room_of(command.room))

    def _private(self, command: cmd.SendPrivate) -> None:
        if not command.text:
            raise ProtocolError("usage: /msg NICK TEXT", code=ErrorCode.USAGE)
        self.hub.private(self.member, command.nick, command.text)

    def _nick(self, command: cmd.ChangeNick) -> None:
        self.hub.rename(self.member, command.nick)

    def _join(self, command: cmd.Join) -> None:
        if command.replace:
            self.hub.move(self.member, command.room)
        else:
            self.hub.join(self.member, command.room)
        self._current = command.room

    def _part(self, command: cmd.Part) -> None:
        self.hub.leave(self.member, self._room_of(command.room), command.reason)

    def _who(self, command: cmd.Who) -> None:
        self.hub.send(self.member, self.hub.names(self._room_of(command.room)))

    def _rooms(self, command: cmd.ListRooms) -> None:
        self.hub.send(self.member, RoomList(tuple(self.hub.rooms())))

    def _topic(self, command: cmd.SetTopic) -> None:
        room = self._room_of(command.room)
        if command.text is None:
            self.hub.send(self.member, Topic(room, self.hub.topic(room)))
        else:
            self.hub.set_topic(self.member, room, command.text)

    def _topic_lock(self, command: cmd.SetTopicLock) -> None:
        self.hub.set_topic_lock(self.member, self._room_of(command.room), command.locked)

    def _kick(self, command: cmd.Kick) -> None:
        self.hub.kick(self.member, self._room_of(command.room), command.nick, command.reason)

    def _operator(self, command: cmd.SetOperator) -> None:
        self.hub.set_operator(self.member, self._room_of(command.room), command.nick, command.operator)

    def _ping(self, command: cmd.Ping) -> None:
        self.hub.send(self.member, Pong(command.token))

    def _quit(self, command: cmd.QuitChat) -> None:
        self.state = SessionState.CLOSED
        self.hub.quit(self.member, command.reason)

    def _help(self, command: cmd.Help) -> None:
        self.hub.send(self.member, Help(tuple(sorted(self._extra or ()))))

    def _custom(self, command: cmd.Custom) -> None:
        handler = (self._extra or {}).get(command.name)
        if handler is None:
            raise ProtocolError(f"unknown command /{command.name[:40]}", code=ErrorCode.UNKNOWN_COMMAND)
        handler(self, command.arg)

    def _codes(self, command: cmd.ErrorCodes) -> None:
        """v1 ``/codes on|off``: error lines carry their code (for programs) or not (for people)."""
        member = self.member
        if member.encoder in (encode, encode_with_codes):  # another front end's encoder is left alone
            member.encoder = encode_with_codes if command.on else encode
