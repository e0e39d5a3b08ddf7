"""Line protocol v1: naming rules, the v1 command parser, and every line the server renders.

This module is the v1 codec and is pure.  :func:`parse_command` turns an
input line into a typed :mod:`command <asyncchat.commands>`; the server
renders events and replies with :func:`render` and :func:`encode`; the
client turns lines back into the same events with :func:`parse`.  The wire
format, in short (the README has the full text):

* ``nick: text``                  chat in the current room
* ``* nick text``                 an action (``/me``)
* ``* nick joined room``          ``* nick left room [(reason)]``
* ``* old is now known as new``
* ``* nick set the topic of room: text``   ``* nick cleared the topic of room``
* ``* nick was kicked from room by op [(reason)]``
* ``* op made nick an operator of room``  ``* op removed nick as operator of room``
* ``* nick is now an operator of room``   (the server gave it: first member, hand-over)
* ``[pm from nick] text``         ``[pm to nick] text`` (your own copy)
* ``*** text``                    a server notice or a command reply
* ``*** closing: reason``         the server is about to close the connection
* ``! text``                      an error (``! [code] text`` after ``/codes on``)

Nicknames are 1-32 ASCII letters, digits, ``_`` and ``-``, so a chat line can
never start with ``*``, ``!`` or ``[``.  An action that would read like one
of the server's ``* ...`` lines is refused, so those lines cannot be forged.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from . import commands as cmd
from .errors import CommandError, ErrorCode, InvalidName
from .events import (
    Action,
    ChatEvent,
    Closing,
    Error,
    Greeting,
    Help,
    Joined,
    Kicked,
    Left,
    Message,
    Names,
    NickChanged,
    Notice,
    OperatorChanged,
    Pong,
    Private,
    Quit,
    RoomList,
    Topic,
    TopicChanged,
    Welcome,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_ROOM",
    "MAX_NAME_LENGTH",
    "check_nick",
    "check_room",
    "encode",
    "encode_with_codes",
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
    "who": ("[ROOM]", "list the members of this room (@ marks operators)"),
    "msg": ("NICK TEXT", "send TEXT privately to NICK"),
    "me": ("ACTION", "act: shown as '* nick ACTION'"),
    "topic": ("[TEXT]", "show this room's topic, or set it (operators)"),
    "kick": ("NICK [REASON]", "remove NICK from this room (operators)"),
    "op": ("NICK", "make NICK an operator of this room (operators)"),
    "deop": ("NICK", "take operator status from NICK (operators)"),
    "codes": ("on|off", "start error lines with a [code] for programs"),
    "ping": ("[TOKEN]", "ask the server to answer 'pong'"),
    "quit": ("[REASON]", "leave the chat"),
    "help": ("", "show this help"),
}

# Action texts that would render exactly like one of the server's "* ..." lines.
_FORGED_ACTION = re.compile(
    r"(?:joined \S+"
    r"|left \S+(?: \(.*\))?"
    r"|is now known as \S+"
    r"|set the topic of \S+: .*"
    r"|cleared the topic of \S+"
    r"|was kicked from \S+ by \S+(?: \(.*\))?"
    r"|made \S+ an operator of \S+"
    r"|removed \S+ as operator of \S+"
    r"|is (?:now|no longer) an operator of \S+"
    r")\Z",
    re.DOTALL,
)


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
        raise InvalidName(f"room name {shown!r} is invalid: use {_NAME_RULE}", code=ErrorCode.INVALID_ROOM)
    return room


def parse_command(line: str, custom: Collection[str] = frozenset()) -> cmd.Command:
    """Parse one v1 input line (already decoded and sanitised) into a typed command.

    Plain text is :class:`~asyncchat.commands.Say`; ``//text`` says
    ``/text``.  A name in *custom* (the embedding program's commands) wins
    over a built-in one and becomes :class:`~asyncchat.commands.Custom`.
    Raises :class:`CommandError` for an unknown command or a missing argument.
    """
    if not line.startswith("/"):
        return cmd.Say(line)
    if line.startswith("//"):
        return cmd.Say(line[1:])
    name, _, arg = line[1:].partition(" ")
    name = name.lower()
    arg = arg.strip()
    if name in custom:
        return cmd.Custom(name, arg)
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{name[:40]}; /help lists the commands", code=ErrorCode.UNKNOWN_COMMAND)
    synopsis = COMMANDS[name][0]
    if synopsis and not synopsis.startswith("[") and not arg:
        raise CommandError(f"usage: /{name} {synopsis}")
    first, _, rest = arg.partition(" ")
    rest = rest.strip()
    match name:
        case "nick":
            return cmd.ChangeNick(arg)
        case "join":
            return cmd.Join(arg, replace=True)
        case "rooms":
            return cmd.ListRooms()
        case "who":
            return cmd.Who(arg or None)
        case "msg":
            if not rest:
                raise CommandError("usage: /msg NICK TEXT")
            return cmd.SendPrivate(first, rest)
        case "me":
            if _FORGED_ACTION.match(arg):
                raise CommandError("that action would read like a server line; reword it", code=ErrorCode.FORBIDDEN)
            return cmd.Act(arg)
        case "topic":
            return cmd.SetTopic(None, arg or None)
        case "kick":
            return cmd.Kick(first, None, rest)
        case "op" | "deop":
            return cmd.SetOperator(first, name == "op")
        case "codes":
            if arg.lower() not in ("on", "off"):
                raise CommandError("usage: /codes on|off")
            return cmd.ErrorCodes(arg.lower() == "on")
        case "ping":
            return cmd.Ping(arg)
        case "quit":
            return cmd.QuitChat(arg)
    return cmd.Help()


def _names(event: Names) -> str:
    ops = event.operators
    shown = ", ".join(f"@{nick}" if nick in ops else nick for nick in event.nicks)
    return f"*** members of {event.room} ({len(event.nicks)}): {shown}"


def _help(event: Help) -> str:
    lines = ["*** commands:"]
    for name, (synopsis, text) in COMMANDS.items():
        usage = f"/{name} {synopsis}".rstrip()
        lines.append(f"***   {usage:<18} {text}")
    lines.append("***   //TEXT             send a line starting with /")
    lines.extend(f"***   /{name}" for name in event.extra)
    return "\n".join(lines)


def render(event: ChatEvent) -> str:
    """The protocol v1 text (without final newline) that shows *event*.

    Most events are one line; :class:`~asyncchat.events.Help` is several.
    """
    match event:
        case Message(nick, text):
            return f"{nick}: {text}"
        case Action(nick, text):
            return f"* {nick} {text}"
        case Joined(nick, room):
            return f"* {nick} joined {room}"
        case Left(nick, room, reason) | Quit(nick, room, reason):
            return f"* {nick} left {room} ({reason})" if reason else f"* {nick} left {room}"
        case NickChanged(old, new):
            return f"* {old} is now known as {new}"
        case Kicked(nick, room, by, reason):
            line = f"* {nick} was kicked from {room} by {by}"
            return f"{line} ({reason})" if reason else line
        case TopicChanged(nick, room, text):
            return f"* {nick} set the topic of {room}: {text}" if text else f"* {nick} cleared the topic of {room}"
        case OperatorChanged(nick, room, operator, by):
            if by:
                if operator:
                    return f"* {by} made {nick} an operator of {room}"
                return f"* {by} removed {nick} as operator of {room}"
            return f"* {nick} is {'now' if operator else 'no longer'} an operator of {room}"
        case Private(sender, recipient, text):
            return f"[pm to {recipient}] {text}" if not sender else f"[pm from {sender}] {text}"
        case Notice(text):
            return f"*** {text}"
        case Closing(reason):
            return f"*** closing: {reason}"
        case Error(text):
            return f"! {text}"
        case Greeting():
            return f"*** welcome to asyncchat (protocol v{PROTOCOL_VERSION}); choose a nickname ({_NAME_RULE})"
        case Welcome(nick):
            return f"*** you are {nick}; /help lists the commands"
        case Names():
            return _names(event)
        case RoomList(rooms):
            listing = ", ".join(f"{r.name} ({r.members})" for r in rooms)
            return f"*** rooms ({len(rooms)}): {listing}"
        case Topic(room, text):
            return f"*** topic of {room}: {text}" if text else f"*** {room} has no topic"
        case Pong(token):
            return f"*** pong {token}".rstrip()
        case Help():
            return _help(event)
    raise TypeError(f"not a chat event: {event!r}")  # pragma: no cover


def encode(event: ChatEvent) -> bytes:
    """*event* rendered as ``\\n``-terminated UTF-8 line(s): the v1 encoder."""
    return (render(event) + "\n").encode()


def encode_with_codes(event: ChatEvent) -> bytes:
    """Like :func:`encode`, but an error line carries its code: ``! [nick-taken] text``.

    The encoder of v1 members that sent ``/codes on`` (programs such as
    :mod:`asyncchat.client`); ``nc`` users keep the plain lines.
    """
    if isinstance(event, Error) and event.code:
        return f"! [{event.code}] {event.text}\n".encode()
    return (render(event) + "\n").encode()


_N = r"[A-Za-z0-9_-]{1,32}"
_MEMBERSHIP = re.compile(
    rf"\* (?P<nick>{_N}) (?:"
    r"joined (?P<joined>\S+)"
    r"|left (?P<left>\S+)(?: \((?P<reason>.*)\))?"
    rf"|is now known as (?P<new>{_N})"
    r"|set the topic of (?P<topic_room>\S+): (?P<topic>.*)"
    r"|cleared the topic of (?P<cleared>\S+)"
    rf"|was kicked from (?P<kicked>\S+) by (?P<by>{_N})(?: \((?P<kick_reason>.*)\))?"
    rf"|made (?P<opped>{_N}) an operator of (?P<op_room>\S+)"
    rf"|removed (?P<deopped>{_N}) as operator of (?P<deop_room>\S+)"
    r"|is (?P<now>now|no longer) an operator of (?P<self_room>\S+)"
    r")\Z",
    re.DOTALL,
)
_ACTION = re.compile(rf"\* (?P<nick>{_N}) (?P<text>.*)\Z", re.DOTALL)
_CHAT = re.compile(rf"(?P<nick>{_N}): (?P<text>.*)\Z", re.DOTALL)
_PM = re.compile(rf"\[pm (?P<dir>from|to) (?P<nick>{_N})\] (?P<text>.*)\Z", re.DOTALL)
_CODED_ERROR = re.compile(r"! \[(?P<code>[a-z0-9-]{1,40})\] (?P<text>.*)\Z", re.DOTALL)


def _membership(m: re.Match[str]) -> ChatEvent:
    nick = m["nick"]
    if m["joined"] is not None:
        return Joined(nick, m["joined"])
    if m["left"] is not None:
        return Left(nick, m["left"], m["reason"] or "")
    if m["new"] is not None:
        return NickChanged(nick, m["new"])
    if m["topic_room"] is not None:
        return TopicChanged(nick, m["topic_room"], m["topic"])
    if m["cleared"] is not None:
        return TopicChanged(nick, m["cleared"], "")
    if m["kicked"] is not None:
        return Kicked(nick, m["kicked"], m["by"], m["kick_reason"] or "")
    if m["opped"] is not None:
        return OperatorChanged(m["opped"], m["op_room"], True, nick)
    if m["deopped"] is not None:
        return OperatorChanged(m["deopped"], m["deop_room"], False, nick)
    return OperatorChanged(nick, m["self_room"], m["now"] == "now")


def parse(line: str) -> ChatEvent:
    """Parse one server line (without newline) into the event it shows.

    Never raises: a line that fits no rule is returned as a :class:`Notice`
    (command replies such as ``/who`` stay notices on the client side).
    """
    if line.startswith("*** "):
        text = line[4:]
        if text.startswith("closing: "):
            return Closing(text[9:])
        return Notice(text)
    if line.startswith("! "):
        m = _CODED_ERROR.match(line)
        if m is not None:
            return Error(m["text"], m["code"])
        return Error(line[2:])
    if line.startswith("* "):
        m = _MEMBERSHIP.match(line)
        if m is not None:
            return _membership(m)
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
