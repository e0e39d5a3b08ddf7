"""The chat's events: one vocabulary for the hub, observers and clients.

The hub emits these to observers (:meth:`Hub.subscribe`, :func:`asyncchat.watch`);
:mod:`asyncchat.protocol` renders them as lines of protocol v1 and parses
lines back into them, so the server and the client share one definition of
the wire format.  All are frozen, slotted dataclasses.  ``room`` is ``None``
where a line on the wire does not say which room it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Action",
    "ChatEvent",
    "Closing",
    "Error",
    "Joined",
    "Left",
    "Message",
    "NickChanged",
    "Notice",
    "Private",
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
    """An error reply: ``! text``."""

    text: str


@dataclass(frozen=True, slots=True)
class Closing:
    """The server is closing this connection: ``*** closing: reason``."""

    reason: str


ChatEvent = Message | Action | Joined | Left | NickChanged | Private | Notice | Error | Closing
