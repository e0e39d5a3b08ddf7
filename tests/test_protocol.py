"""Protocol v1 rendering, parsing and naming rules (pure)."""

from __future__ import annotations

import pytest

from asyncchat.errors import CommandError, InvalidName
from asyncchat.events import Action, Closing, Error, Joined, Left, Message, NickChanged, Notice, Private
from asyncchat.protocol import check_nick, check_room, encode, parse, parse_command, render

EVENTS = [
    (Message("alice", "hi there"), "alice: hi there"),
    (Message("bob", "a: b: c"), "bob: a: b: c"),
    (Action("alice", "waves"), "* alice waves"),
    (Joined("alice", "lobby"), "* alice joined lobby"),
    (Left("alice", "lobby"), "* alice left lobby"),
    (Left("alice", "lobby", "quit: bye"), "* alice left lobby (quit: bye)"),
    (NickChanged("alice", "alicia"), "* alice is now known as alicia"),
    (Private("alice", "", "psst"), "[pm from alice] psst"),
    (Private("", "bob", "psst"), "[pm to bob] psst"),
    (Notice("members of lobby (1): alice"), "*** members of lobby (1): alice"),
    (Closing("server is shutting down"), "*** closing: server is shutting down"),
    (Error("unknown command /x"), "! unknown command /x"),
]


@pytest.mark.parametrize(("event", "line"), EVENTS)
def test_render_and_parse_round_trip(event: object, line: str) -> None:
    assert render(event) == line  # type: ignore[arg-type]
    assert parse(line) == event
    assert encode(event) == (line + "\n").encode()  # type: ignore[arg-type]


def test_unparseable_line_is_a_notice() -> None:
    assert parse("what is this") == Notice("what is this")


@pytest.mark.parametrize("nick", ["a", "Alice_1", "-dash-", "x" * 32, "UPPER"])
def test_valid_nicks(nick: str) -> None:
    assert check_nick(nick) == nick


@pytest.mark.parametrize("nick", ["", "x" * 33, "*star", "!bang", "has space", "é", "a:b", "[pm", "tab\t"])
def test_invalid_nicks(nick: str) -> None:
    with pytest.raises(InvalidName, match=r"nickname .* is invalid: use 1-32 letters, digits, _ or -"):
        check_nick(nick)


def test_room_names() -> None:
    assert check_room("games") == "games"
    with pytest.raises(InvalidName):
        check_room("no spaces")


@pytest.mark.parametrize(
    ("line", "name", "arg"),
    [
        ("hello", "", "hello"),
        ("//slash", "", "/slash"),
        ("/nick  bob ", "nick", "bob"),
        ("/JOIN games", "join", "games"),
        ("/msg bob hi there", "msg", "bob hi there"),
        ("/quit", "quit", ""),
        ("/quit see you", "quit", "see you"),
        ("/me waves", "me", "waves"),
        ("/me left lobby early today", "me", "left lobby early today"),
    ],
)
def test_parse_command(line: str, name: str, arg: str) -> None:
    command = parse_command(line)
    assert (command.name, command.arg) == (name, arg)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/nick", "usage: /nick NEW"),
        ("/join", "usage: /join ROOM"),
        ("/msg bob", "usage: /msg NICK TEXT"),
        ("/me joined lobby", "would read like a server line"),
        ("/me left lobby (kicked)", "would read like a server line"),
        ("/me is now known as admin", "would read like a server line"),
    ],
)
def test_bad_commands(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        parse_command(line)
