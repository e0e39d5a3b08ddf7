"""The typed commands every front end produces, executed by one session.

A front end's codec turns wire input into these (line protocol v1 in
:func:`asyncchat.protocol.parse_command`; IRC and WebSocket codecs likewise)
and hands them to :meth:`Session.execute <asyncchat.session.Session.execute>`:
what a command *means* is decided once, there and in the hub.

``room=None`` means the session's current room (a v1 notion: the room it
joined last); front ends that always name a room pass it.  All are frozen,
slotted dataclasses and carry text already decoded and sanitised.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Act",
    "ChangeNick",
    "Command",
    "Custom",
    "ErrorCodes",
    "Help",
    "Join",
    "Kick",
    "ListRooms",
    "Part",
    "Ping",
    "QuitChat",
    "Say",
    "SendPrivate",
    "SetOperator",
    "SetTopic",
    "SetTopicLock",
    "Who",
]


@dataclass(frozen=True, slots=True)
class Say:
    """Send a chat line to a room."""

    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Act:
    """Send an action (``/me``) to a room."""

    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class SendPrivate:
    """Send *text* privately to the member called *nick*."""

    nick: str
    text: str


@dataclass(frozen=True, slots=True)
class Join:
    """Join (or create) a room; with *replace*, leave every other room first (v1's ``/join``)."""

    room: str
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Part:
    """Leave one room, keeping the others."""

    room: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChangeNick:
    """Log in as *nick* (before login) or change the nickname."""

    nick: str


@dataclass(frozen=True, slots=True)
class Who:
    """List a room's members (answered with :class:`~asyncchat.events.Names`)."""

    room: str | None = None


@dataclass(frozen=True, slots=True)
class ListRooms:
    """List every room (answered with :class:`~asyncchat.events.RoomList`)."""


@dataclass(frozen=True, slots=True)
class SetTopic:
    """Show a room's topic (*text* ``None``) or set it (``""`` clears it)."""

    room: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class SetTopicLock:
    """Make the topic operator-only (*locked*, the default) or open to every member."""

    locked: bool
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Kick:
    """Remove *nick* from a room (operators only)."""

    nick: str
    room: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SetOperator:
    """Give (*operator* ``True``) or take operator status in a room (operators only)."""

    nick: str
    operator: bool
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Ask for a :class:`~asyncchat.events.Pong` with the same token."""

    token: str = ""


@dataclass(frozen=True, slots=True)
class QuitChat:
    """Leave the chat; the member's rooms see it leave with *reason*."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Help:
    """Ask for the list of commands."""


@dataclass(frozen=True, slots=True)
class ErrorCodes:
    """v1 ``/codes on|off``: whether this member's error lines carry their code (allowed before login)."""

    on: bool


@dataclass(frozen=True, slots=True)
class Custom:
    """A command of the embedding program (``commands={"roll": handler}``)."""

    name: str
    arg: str = ""


Command = (
    Say
    | Act
    | SendPrivate
    | Join
    | Part
    | ChangeNick
    | Who
    | ListRooms
    | SetTopic
    | SetTopicLock
    | Kick
    | SetOperator
    | Ping
    | QuitChat
    | Help
    | ErrorCodes
    | Custom
)
