"""The chat session of one member: nickname, commands, rate limit.

A :class:`Session` is pure: the adapter feeds it decoded lines (and line
errors) from :class:`~asyncchat.framing.LineDecoder`, with the loop's clock
as ``now``; the session acts on the :class:`~asyncchat.hub.Hub`, which queues
every reply in the member's one outbox.

States and transitions — all of them are here::

    NAMING  --valid, free nickname-->  CHATTING  --/quit, disconnect-->  CLOSED
       |                                                                   ^
       +---------------------- disconnect, login timeout -----------------+

* In NAMING every non-empty line is a nickname attempt; a bad or taken one
  gets an error line and another try.
* In CHATTING a line is chat text, ``//text`` (chat text ``/text``) or a
  command; an empty line is ignored.
* In any state a line error (too long, bad UTF-8) gets an error line and
  the stream goes on; nothing a peer sends raises out of :meth:`Session.receive`.
* Every line costs one token of the member's rate bucket; a line without a
  token is dropped with a warning, and ``Limits.rate_disconnect_after``
  dropped lines in a row disconnect the member.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from .errors import ProtocolError
from .events import Error, Notice
from .hub import Hub, Member
from .protocol import greeting, help_lines, parse_command

__all__ = ["Session", "SessionState"]

CommandHandler = Callable[["Session", str], None]


class SessionState(enum.Enum):
    """Where a session is in its life."""

    NAMING = "naming"
    CHATTING = "chatting"
    CLOSED = "closed"


class Session:
    """One member's protocol state machine (see the module docstring).

    *extra_commands* maps a command name (without ``/``) to a handler
    ``handler(session, arg)`` that the embedding program provides; a handler
    may raise :class:`~asyncchat.errors.ProtocolError` to answer with an error.
    """

    __slots__ = ("_extra", "_held", "_naming", "_refused", "_stamp", "_tokens", "hub", "member", "state")

    def __init__(
        self,
        hub: Hub,
        member: Member,
        *,
        now: float,
        extra_commands: dict[str, CommandHandler] | None = None,
    ) -> None:
        self.hub = hub
        self.member = member
        self.state = SessionState.NAMING
        self._extra = extra_commands
        self._tokens = float(hub.limits.rate_burst)
        self._stamp = now
        self._refused = 0
        # Multi-node: while a nickname claim is in flight (NAMING), input lines
        # are held here (at most Limits.rate_burst) and replayed when it is answered.
        self._naming = False
        self._held: list[str] | None = None  # created only when a line must wait
        hub.send(member, greeting())

    def __repr__(self) -> str:
        return f"<Session {self.state.name} {self.member!r}>"

    def receive(self, items: Iterable[str | ProtocolError], now: float) -> None:
        """Handle decoded input lines (and line errors) in order."""
        member = self.member
        for item in items:
            if self.state is SessionState.CLOSED or member.closed:
                self.state = SessionState.CLOSED
                return
            member.last_seen = now
            if not self._take_token(now):
                continue
            if isinstance(item, ProtocolError):
                self.hub.send(member, Error(str(item)))
                continue
            try:
                self._line(item)
            except ProtocolError as exc:
                self.hub.send(member, Error(str(exc)))

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
                Error(f"slow down: at most {limits.rate_lines_per_second:g} lines per second; line dropped"),
            )
        elif self._refused >= limits.rate_disconnect_after:
            self.close("flood", notice=f"{self._refused} lines over the rate limit")
        return False

    def _line(self, line: str) -> None:
        if self.state is SessionState.NAMING:
            if self._naming:  # a cluster-wide nickname claim is in flight
                if self._held is None:
                    self._held = []
                if len(self._held) >= self.hub.limits.rate_burst:
                    raise ProtocolError("still checking your nickname; line dropped")
                self._held.append(line)
                return
            nick = line.strip()
            if not nick:
                return
            self._naming = True
            try:
                self.hub.login(self.member, nick, on_login=self._named)
            except BaseException:
                self._naming = False
                raise
            return
        if not line or line.isspace():
            return
        extra = self._extra
        if extra and line.startswith("/") and not line.startswith("//"):
            name, _, arg = line[1:].partition(" ")
            handler = extra.get(name.lower())
            if handler is not None:
                handler(self, arg.strip())
                return
        command = parse_command(line)
        _COMMANDS[command.name](self, command.arg)

    def close(self, reason: str = "closed", *, notice: str = "", abort: bool = False) -> None:
        """End the session and remove the member from the hub (idempotent)."""
        self.state = SessionState.CLOSED
        self.hub.disconnect(self.member, reason, notice=notice, abort=abort)

    def connection_lost(self) -> None:
        """The transport is gone; the member's rooms see it leave."""
        self.close("closed")

    def _named(self, ok: bool) -> None:
        """The hub's answer to a login: chat if *ok*, then replay lines held meanwhile."""
        self._naming = False
        held, self._held = self._held or [], None
        if self.state is SessionState.CLOSED or self.member.closed:
            return
        if ok:
            self.state = SessionState.CHATTING
        for index, line in enumerate(held):
            if self._naming or self.state is SessionState.CLOSED:
                self._held = held[index:] + (self._held or [])
                return
            try:
                self._line(line)
            except ProtocolError as exc:
                self.hub.send(self.member, Error(str(exc)))

    # ------------------------------------------------------------- commands

    def _say(self, text: str) -> None:
        self.hub.say(self.member, text)

    def _nick(self, arg: str) -> None:
        self.hub.rename(self.member, arg)

    def _join(self, arg: str) -> None:
        # Protocol v1 keeps one current room per member.
        self.hub.move(self.member, arg)

    def _rooms(self, arg: str) -> None:
        rooms = self.hub.rooms()
        listing = ", ".join(f"{r.name} ({r.members})" for r in rooms)
        self.hub.send(self.member, Notice(f"rooms ({len(rooms)}): {listing}"))

    def _who(self, arg: str) -> None:
        room = self.member.room
        if room is None:
            raise ProtocolError("you are not in a room; /join one")
        nicks = self.hub.who(room)
        self.hub.send(self.member, Notice(f"members of {room} ({len(nicks)}): {', '.join(nicks)}"))

    def _msg(self, arg: str) -> None:
        nick, _, text = arg.partition(" ")
        text = text.strip()
        if not text:
            raise ProtocolError("usage: /msg NICK TEXT")
        if nick.casefold() == self.member.nick.casefold():
            raise ProtocolError("you cannot send a private message to yourself")
        self.hub.private(self.member, nick, text)

    def _me(self, arg: str) -> None:
        self.hub.act(self.member, arg)

    def _ping(self, arg: str) -> None:
        self.hub.send(self.member, Notice(f"pong {arg}".rstrip()))

    def _quit(self, arg: str) -> None:
        self.state = SessionState.CLOSED
        self.hub.quit(self.member, arg)

    def _help(self, arg: str) -> None:
        for line in help_lines():
            self.hub.send(self.member, line)
        if self._extra:
            for name in sorted(self._extra):
                self.hub.send(self.member, Notice(f"  /{name}"))


_COMMANDS: dict[str, CommandHandler] = {
    "": Session._say,
    "nick": Session._nick,
    "join": Session._join,
    "rooms": Session._rooms,
    "who": Session._who,
    "msg": Session._msg,
    "me": Session._me,
    "ping": Session._ping,
    "quit": Session._quit,
    "help": Session._help,
}
