"""Exceptions raised by asyncchat.

Every exception derives from :class:`ChatError`::

    ChatError
    ├── ProtocolError          bad input from a peer; the peer gets an error line
    │   ├── LineTooLong        a line exceeds Limits.max_line_bytes
    │   ├── InvalidEncoding    a line is not valid UTF-8
    │   ├── InvalidName        a nickname or room name breaks the naming rules
    │   ├── NameTaken          a nickname is already used (case-insensitively)
    │   └── CommandError       a command is unknown or malformed
    ├── Refused                the server will not admit a connection (limits)
    ├── LoginFailed            the client was not logged in (see asyncchat.client)
    ├── ConnectionClosed       the client's connection has ended (also a ConnectionError)
    ├── UsageError             the embedding program misused the API (raised to it)
    └── DependencyMissing      an optional extra is not installed

Peer errors (:class:`ProtocolError`) never escape to the embedding program:
the session turns them into ``! ...`` lines for that peer and keeps serving
everyone else.  :class:`UsageError` is raised to the program that made the
call, and nothing is changed when it is raised.
"""

from __future__ import annotations

__all__ = [
    "ChatError",
    "CommandError",
    "ConnectionClosed",
    "DependencyMissing",
    "InvalidEncoding",
    "InvalidName",
    "LineTooLong",
    "LoginFailed",
    "NameTaken",
    "ProtocolError",
    "Refused",
    "UsageError",
]


class ChatError(Exception):
    """Base class of every asyncchat exception."""


class ProtocolError(ChatError):
    """Input from a peer that the protocol does not allow.

    ``str(error)`` is the text shown to that peer after ``! ``.
    """


class LineTooLong(ProtocolError):
    """A line longer than the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"line of {size} bytes exceeds limit of {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidEncoding(ProtocolError):
    """A line that is not valid UTF-8."""

    def __init__(self, position: int) -> None:
        super().__init__(f"line is not valid UTF-8 (bad byte at offset {position})")
        self.position = position


class InvalidName(ProtocolError):
    """A nickname or room name that breaks the naming rules."""


class NameTaken(ProtocolError):
    """A nickname already in use, compared without regard to case."""


class CommandError(ProtocolError):
    """An unknown or malformed command."""


class Refused(ChatError):
    """The server will not admit a new member; ``str(error)`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LoginFailed(ChatError):
    """The server did not log the client in; ``str(error)`` says why."""


class ConnectionClosed(ChatError, ConnectionError):
    """The client's connection has ended: nothing more can be sent or received."""


class UsageError(ChatError):
    """The embedding program called the API in a way it does not allow."""


class DependencyMissing(ChatError, ImportError):
    """An optional dependency is not installed; the message says which extra to add."""
