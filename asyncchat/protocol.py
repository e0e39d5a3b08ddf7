"""Line protocol v1: naming rules, commands, and every line the server renders.

This module is pure.  The server renders events with :func:`render` and
:func:`encode`; the client turns lines back into the same events with
:func:`parse`.  The wire format, in short (the README has the full text):

* ``nick: text``                  chat in the current room
* ``* nick text``                 an action (``/me``)
* ``* nick joined room``          ``* nick left room [(reason)]``
* ``* old is now known as new``
* ``[pm from nick] text``         ``[pm to nick] text`` (your own copy)
* ``*** text``                    a server notice or a command reply
* ``*** closing: reason``         the server is about to close the connection
* ``! text``                      an error

Nicknames are 1-32 ASCII letters, digits, ``_`` and ``-``, so a chat line can
never start with ``*``, ``!`` or ``[``.  An action that would read like a
join, leave or nick-change line is refused, so those lines cannot be forged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CommandError, InvalidName
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

__all__ = [
    "COMMANDS",
    "DEFAULT_ROOM",
    "MAX_NAME_LENGTH",
    "Command",
    "check_nick",
    "check_room",
    "encode",
    "fold",
    "parse",
    "parse_command",
    "render",
]

PROTOCOL_VERSION = 1
DEFAULT_ROOM = "lobby"
MAX_NAME_LENGTH = 32
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NAME_RULE = "1-32 letters, digits, _ or -"

#: Command name -> (argument synopsis, description); ``/help`` renders this.
COMMANDS: dict[str, tuple[str, str]] = {
    "nick": ("NEW", "change your nickname"),
    "join": ("ROOM", "leave this room and join (or create) ROOM"),
    "rooms": ("", "list rooms with their member counts"),
    "who": ("", "list the members of this room"),
    "msg": ("NICK TEXT", "send TEXT privately to NICK"),
    "me": ("ACTION", "act: shown as '* nick ACTION'"),
    "ping": ("[TOKEN]", "ask the server to answer 'pong'"),
    "quit": ("[REASON]", "leave the chat"),
    "help": ("", "show this help"),
}

# Action texts that would render exactly like a membership line.
_FORGED_ACTION = re.compile(r"(?:joined \S+|left \S+(?: \(.*\))?|is now known as \S+)\Z", re.DOTALL)


def fold(name: str) -> str:
    """The case-insensitive key of a nickname or room name."""
    return name.casefold()


def check_nick(nick: str) -> str:
    """Return *nick* if it is a valid nickname; raise :class:`InvalidName` if not."""
    if _NAME.fullmatch(nick) is None:
        shown = nick if len(nick) <= 40 else nick[:40] + "..."
        raise InvalidName(f"nickname {shown!r} is invalid: use {_NAME_RULE}")
    return nick


def check_room(room: str) -> str:
    """Return *room* if it is a valid room name; raise :class:`InvalidName` if not."""
    if _NAME.fullmatch(room) is None:
        shown = room if len(room) <= 40 else room[:40] + "..."
        raise InvalidName(f"room name {shown!r} is invalid: use {_NAME_RULE}")
    return room


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed input line: ``name`` is ``""`` for plain chat text."""

    name: str
    arg: str


def parse_command(line: str) -> Command:
    """Parse one input line (already decoded and sanitised).

    ``//text`` is chat text ``/text``.  Raises :class:`CommandError` for an
    unknown command or a missing argument.
    """
    if not line.startswith("/"):
        return Command("", line)
    if line.startswith("//"):
        return Command("", line[1:])
    name, _, arg = line[1:].partition(" ")
    name = name.lower()
    arg = arg.strip()
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{name[:40]}; /help lists the commands")
    synopsis = COMMANDS[name][0]
    if synopsis and not synopsis.startswith("[") and not arg:
        raise CommandError(f"usage: /{name} {synopsis}")
    if name == "msg" and " " not in arg:
        raise CommandError("usage: /msg NICK TEXT")
    if name == "me" and _FORGED_ACTION.match(arg):
        raise CommandError("that action would read like a server line; reword it")
    return Command(name, arg)


def render(event: ChatEvent) -> str:
    """The protocol v1 line (without newline) that shows *event*."""
    match event:
        case Message(nick, text):
            return f"{nick}: {text}"
        case Action(nick, text):
            return f"* {nick} {text}"
        case Joined(nick, room):
            return f"* {nick} joined {room}"
        case Left(nick, room, reason):
            return f"* {nick} left {room} ({reason})" if reason else f"* {nick} left {room}"
        case NickChanged(old, new):
            return f"* {old} is now known as {new}"
        case Private(sender, recipient, text):
            return f"[pm to {recipient}] {text}" if not sender else f"[pm from {sender}] {text}"
        case Notice(text):
            return f"*** {text}"
        case Closing(reason):
            return f"*** closing: {reason}"
        case Error(text):
            return f"! {text}"
    raise TypeError(f"not a chat event: {event!r}")  # pragma: no cover


def encode(event: ChatEvent) -> bytes:
    """*event* rendered as one ``\\n``-terminated UTF-8 line."""
    return (render(event) + "\n").encode()


_MEMBERSHIP = re.compile(
    r"\* (?P<nick>[A-Za-z0-9_-]{1,32}) (?:"
    r"joined (?P<joined>\S+)"
    r"|left (?P<left>\S+)(?: \((?P<reason>.*)\))?"
    r"|is now known as (?P<new>[A-Za-z0-9_-]{1,32})"
    r")\Z",
    re.DOTALL,
)
_ACTION = re.compile(r"\* (?P<nick>[A-Za-z0-9_-]{1,32}) (?P<text>.*)\Z", re.DOTALL)
_CHAT = re.compile(r"(?P<nick>[A-Za-z0-9_-]{1,32}): (?P<text>.*)\Z", re.DOTALL)
_PM = re.compile(r"\[pm (?P<dir>from|to) (?P<nick>[A-Za-z0-9_-]{1,32})\] (?P<text>.*)\Z", re.DOTALL)


def parse(line: str) -> ChatEvent:
    """Parse one server line (without newline) into the event it shows.

    Never raises: a line that fits no rule is returned as a :class:`Notice`.
    """
    if line.startswith("*** "):
        text = line[4:]
        if text.startswith("closing: "):
            return Closing(text[9:])
        return Notice(text)
    if line.startswith("! "):
        return Error(line[2:])
    if line.startswith("* "):
        m = _MEMBERSHIP.match(line)
        if m is not None:
            nick = m["nick"]
            if m["joined"] is not None:
                return Joined(nick, m["joined"])
            if m["left"] is not None:
                return Left(nick, m["left"], m["reason"] or "")
            return NickChanged(nick, m["new"])
        m = _ACTION.match(line)
        if m is not None:
            return Action(m["nick"], m["text"])
    elif line.startswith("[pm "):
        m = _PM.match(line)
        if m is not None:
            if m["dir"] == "from":
                return Private(m["nick"], "", m["text"])
            return Private("", m["nick"], m["text"])
    else:
        m = _CHAT.match(line)
        if m is not None:
            return Message(m["nick"], m["text"])
    return Notice(line)


def greeting() -> Notice:
    """The first line a new connection receives."""
    return Notice(f"welcome to asyncchat (protocol v{PROTOCOL_VERSION}); choose a nickname ({_NAME_RULE})")


def help_lines() -> list[Notice]:
    """The reply to ``/help``, one notice per command."""
    lines = [Notice("commands:")]
    for name, (synopsis, text) in COMMANDS.items():
        usage = f"/{name} {synopsis}".rstrip()
        lines.append(Notice(f"  {usage:<18} {text}"))
    lines.append(Notice("  //TEXT             send a line starting with /"))
    return lines
