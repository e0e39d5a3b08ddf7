"""The chat's events and replies: one vocabulary for the hub, observers, codecs and clients.

The hub emits room and member events to members and observers
(:meth:`Hub.subscribe`, :func:`asyncchat.watch`); the session answers
commands with typed replies (:class:`Names`, :class:`RoomList`,
:class:`Topic`, :class:`Pong`, :class:`Welcome`, :class:`Error` with its
stable code, ...).  Each front end's codec renders them in its own format —
:mod:`asyncchat.protocol` renders line protocol v1 and parses lines back into
events, so the server and the client share one definition of that wire
format.  All are frozen, slotted dataclasses.  ``room`` is ``None`` where a
line on the wire does not say which room it belongs to.

Member-wide events (:class:`NickChanged`, :class:`Quit`) reach each
recipient once, naming the first room the recipient shares with the member.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Action",
    "ChatEvent",
    "Closing",
    "Error",
    "Greeting",
    "Help",
    "Joined",
    "Kicked",
    "Left",
    "Message",
    "Names",
    "NickChanged",
    "Notice",
    "OperatorChanged",
    "Pong",
    "Private",
    "Quit",
    "RoomInfo",
    "RoomList",
    "Topic",
    "TopicChanged",
    "Welcome",
]


@dataclass(frozen=True, slots=True)
class Message:
    """A chat line: ``nick: text``."""

    nick: str
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """A ``/me`` line: ``* nick text``."""

    nick: str
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Joined:
    """``* nick joined room``."""

    nick: str
    room: str


@dataclass(frozen=True, slots=True)
class Left:
    """``* nick left room`` or ``* nick left room (reason)``."""

    nick: str
    room: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Quit:
    """A member left the chat (quit, disconnected, timed out): v1 ``* nick left room (reason)``.

    Sent once to each member sharing a room with the one who left; ``room``
    is the first room they share.
    """

    nick: str
    room: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Kicked:
    """``* nick was kicked from room by operator (reason)``."""

    nick: str
    room: str
    by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TopicChanged:
    """``* nick set the topic of room: text`` (or ``* nick cleared the topic of room``)."""

    nick: str
    room: str
    text: str


@dataclass(frozen=True, slots=True)
class OperatorChanged:
    """*nick* became (``operator=True``) or stopped being a room operator.

    ``by`` is the operator who did it, or ``""`` when the server did (the
    room's first member, or a hand-over when the last operator left).
    """

    nick: str
    room: str
    operator: bool
    by: str = ""


@dataclass(frozen=True, slots=True)
class NickChanged:
    """``* old is now known as new``."""

    old: str
    new: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Private:
    """A private message: ``[pm from sender] text`` / ``[pm to recipient] text``.

    On the wire the recipient sees ``[pm from sender] text`` and the sender
    sees its own copy as ``[pm to recipient] text``; whichever side is
    implied is ``""`` in a parsed event.
    """

    sender: str
    recipient: str
    text: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A server notice or command reply: ``*** text``."""

    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply: ``! text`` (``! [code] text`` for v1 clients that ask for codes).

    *code* is a stable :class:`~asyncchat.errors.ErrorCode` value (``""`` when
    a parsed line carried none).
    """

    text: str
    code: str = ""


@dataclass(frozen=True, slots=True)
class Closing:
    """The server is closing this connection: ``*** closing: reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Greeting:
    """The first reply to a new connection: choose a nickname."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The reply to a successful login: the member is now called *nick*."""

    nick: str


@dataclass(frozen=True, slots=True)
class Names:
    """The members of a room (``/who``): nicknames in join order, operators among them."""

    room: str
    nicks: tuple[str, ...]
    operators: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A room's name, member count and topic, as listed by ``/rooms``."""

    name: str
    members: int
    topic: str = ""


@dataclass(frozen=True, slots=True)
class RoomList:
    """Every room (``/rooms``), sorted by name."""

    rooms: tuple[RoomInfo, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    """A room's current topic (``""``: none), sent on join and in answer to ``/topic``."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a ping, echoing its token."""

    token: str = ""


@dataclass(frozen=True, slots=True)
class Help:
    """The answer to ``/help``; *extra* names the embedding program's own commands."""

    extra: tuple[str, ...] = ()


ChatEvent = (
    Message
    | Action
    | Joined
    | Left
    | Quit
    | Kicked
    | TopicChanged
    | OperatorChanged
    | NickChanged
    | Private
    | Notice
    | Error
    | Closing
    | Greeting
    | Welcome
    | Names
    | RoomList
    | Topic
    | Pong
    | Help
)
