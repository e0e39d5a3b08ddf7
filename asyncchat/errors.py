"""Exceptions raised by asyncchat.

Every exception derives from :class:`ChatError`::

    ChatError
    ├── ProtocolError          bad input from a peer; the peer gets an error reply
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
the session turns them into :class:`~asyncchat.events.Error` replies for that
peer and keeps serving everyone else.  Every refusal carries a stable,
machine-readable :class:`ErrorCode` (``error.code``) beside its human text, so
each front end can map it (IRC numerics, JSON fields, v1 ``! [code] text``
lines once a client asks for them with ``/codes on``) and clients never
have to match English text.  :class:`UsageError` is raised to the program that made the
call, and nothing is changed when it is raised.
"""

from __future__ import annotations

import enum

__all__ = [
    "ChatError",
    "CommandError",
    "ConnectionClosed",
    "DependencyMissing",
    "ErrorCode",
    "InvalidEncoding",
    "InvalidName",
    "LineTooLong",
    "LoginFailed",
    "NameTaken",
    "ProtocolError",
    "Refused",
    "UsageError",
]


class ErrorCode(enum.StrEnum):
    """Stable, machine-readable codes of every refusal a member can receive.

    The values are part of the public protocol (the README lists them); new
    codes may be added, existing ones never change meaning.
    """

    #: A line longer than ``Limits.max_line_bytes``.
    LINE_TOO_LONG = "line-too-long"
    #: A line that is not valid UTF-8.
    NOT_UTF8 = "not-utf8"
    #: A nickname that breaks the naming rules.
    INVALID_NICK = "invalid-nick"
    #: A room name that breaks the naming rules.
    INVALID_ROOM = "invalid-room"
    #: A nickname another member uses (compared without regard to case).
    NICK_TAKEN = "nick-taken"
    #: A command the server does not know.
    UNKNOWN_COMMAND = "unknown-command"
    #: A known command with missing or malformed arguments.
    USAGE = "usage"
    #: No member has that nickname.
    NO_SUCH_NICK = "no-such-nick"
    #: No room has that name.
    NO_SUCH_ROOM = "no-such-room"
    #: The member is not in that room (or in no room at all).
    NOT_IN_ROOM = "not-in-room"
    #: The member is already in that room.
    ALREADY_IN_ROOM = "already-in-room"
    #: The target of a kick or operator change is not in that room.
    TARGET_NOT_IN_ROOM = "target-not-in-room"
    #: Only a room operator may do that.
    NOT_OPERATOR = "not-operator"
    #: The server's room limit is reached.
    TOO_MANY_ROOMS = "too-many-rooms"
    #: A line arrived faster than the rate limit allows; it was dropped.
    RATE_LIMITED = "rate-limited"
    #: Lines for this member were dropped because it read too slowly.
    LINES_DROPPED = "lines-dropped"
    #: The server has no room for another member.
    SERVER_FULL = "server-full"
    #: Too many connections from one source address (or IPv6 prefix).
    TOO_MANY_FROM_ADDRESS = "too-many-from-address"
    #: A line that the server will not relay (e.g. an action that reads like a server line).
    FORBIDDEN = "forbidden"
    #: The command needs a nickname first (IRC's "not registered").
    NOT_LOGGED_IN = "not-logged-in"
    #: The nickname is still being checked across nodes; the line was dropped.
    PENDING = "pending"
    #: Any other refusal.
    ERROR = "error"


class ChatError(Exception):
    """Base class of every asyncchat exception."""


class ProtocolError(ChatError):
    """Input from a peer that the protocol does not allow.

    ``str(error)`` is the human text shown to that peer; :attr:`code` is its
    stable :class:`ErrorCode` (each subclass has a default; pass ``code=`` to
    be more precise).
    """

    code: ErrorCode = ErrorCode.ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class LineTooLong(ProtocolError):
    """A line longer than the configured limit."""

    code = ErrorCode.LINE_TOO_LONG

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"line of {size} bytes exceeds limit of {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidEncoding(ProtocolError):
    """A line that is not valid UTF-8."""

    code = ErrorCode.NOT_UTF8

    def __init__(self, position: int) -> None:
        super().__init__(f"line is not valid UTF-8 (bad byte at offset {position})")
        self.position = position


class InvalidName(ProtocolError):
    """A nickname or room name that breaks the naming rules."""

    code = ErrorCode.INVALID_NICK


class NameTaken(ProtocolError):
    """A nickname already in use, compared without regard to case."""

    code = ErrorCode.NICK_TAKEN


class CommandError(ProtocolError):
    """An unknown or malformed command."""

    code = ErrorCode.USAGE


class Refused(ChatError):
    """The server will not admit a new member; ``str(error)`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = {"full": ErrorCode.SERVER_FULL, "per-ip": ErrorCode.TOO_MANY_FROM_ADDRESS}.get(
            reason, ErrorCode.ERROR
        )


class LoginFailed(ChatError):
    """The server did not log the client in; ``str(error)`` says why, :attr:`code` how."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(ChatError, ConnectionError):
    """The client's connection has ended: nothing more can be sent or received."""


class UsageError(ChatError):
    """The embedding program called the API in a way it does not allow."""


class DependencyMissing(ChatError, ImportError):
    """An optional dependency is not installed; the message says which extra to add."""
