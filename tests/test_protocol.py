"""Protocol v1 rendering, parsing and naming rules (pure)."""

from __future__ import annotations

import pytest

from asyncchat import commands as cmd
from asyncchat.errors import CommandError, ErrorCode, InvalidName
from asyncchat.events import (
    Action,
    Closing,
    Error,
    Joined,
    Kicked,
    Left,
    Message,
    Names,
    NickChanged,
    Notice,
    OperatorChanged,
    Private,
    Topic,
    TopicChanged,
)
from asyncchat.protocol import check_nick, check_room, encode, encode_with_codes, parse, parse_command, render

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
    (TopicChanged("alice", "lobby", "news: all good"), "* alice set the topic of lobby: news: all good"),
    (TopicChanged("alice", "lobby", ""), "* alice cleared the topic of lobby"),
    (Kicked("bob", "lobby", "alice"), "* bob was kicked from lobby by alice"),
    (Kicked("bob", "lobby", "alice", "spam (again)"), "* bob was kicked from lobby by alice (spam (again))"),
    (OperatorChanged("bob", "lobby", True, "alice"), "* alice made bob an operator of lobby"),
    (OperatorChanged("bob", "lobby", False, "alice"), "* alice removed bob as operator of lobby"),
    (OperatorChanged("bob", "lobby", True), "* bob is now an operator of lobby"),
    (OperatorChanged("bob", "lobby", False), "* bob is no longer an operator of lobby"),
]


def test_replies_render_as_notices() -> None:
    names = Names("lobby", ("alice", "bob", "carol"), frozenset({"alice", "carol"}))
    assert render(names) == "*** members of lobby (3): @alice, bob, @carol"
    assert render(Topic("lobby", "")) == "*** lobby has no topic"
    assert render(Topic("lobby", "hi")) == "*** topic of lobby: hi"


def test_error_codes_only_for_clients_that_ask() -> None:
    error = Error("nickname 'bob' is taken", ErrorCode.NICK_TAKEN)
    assert encode(error) == b"! nickname 'bob' is taken\n"
    assert encode_with_codes(error) == b"! [nick-taken] nickname 'bob' is taken\n"
    assert parse("! [nick-taken] nickname 'bob' is taken") == error
    assert encode_with_codes(Message("a", "b")) == encode(Message("a", "b"))


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
    ("line", "command"),
    [
        ("hello", cmd.Say("hello")),
        ("//slash", cmd.Say("/slash")),
        ("/nick  bob ", cmd.ChangeNick("bob")),
        ("/JOIN games", cmd.Join("games", replace=True)),
        ("/msg bob hi there", cmd.SendPrivate("bob", "hi there")),
        ("/quit", cmd.QuitChat("")),
        ("/quit see you", cmd.QuitChat("see you")),
        ("/me waves", cmd.Act("waves")),
        ("/me left lobby early today", cmd.Act("left lobby early today")),
        ("/who", cmd.Who()),
        ("/who games", cmd.Who("games")),
        ("/rooms", cmd.ListRooms()),
        ("/topic", cmd.SetTopic()),
        ("/topic  fresh news ", cmd.SetTopic(None, "fresh news")),
        ("/kick bob", cmd.Kick("bob")),
        ("/kick bob spamming links", cmd.Kick("bob", None, "spamming links")),
        ("/op bob", cmd.SetOperator("bob", True)),
        ("/deop bob", cmd.SetOperator("bob", False)),
        ("/ping", cmd.Ping()),
        ("/codes ON", cmd.ErrorCodes(True)),
        ("/help", cmd.Help()),
    ],
)
def test_parse_command(line: str, command: cmd.Command) -> None:
    assert parse_command(line) == command


def test_custom_commands_win_over_builtin_ones() -> None:
    assert parse_command("/roll 2d6", {"roll"}) == cmd.Custom("roll", "2d6")
    assert parse_command("/who", {"who"}) == cmd.Custom("who", "")


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
        ("/me set the topic of lobby: free pizza", "would read like a server line"),
        ("/me was kicked from lobby by admin", "would read like a server line"),
        ("/me made mallory an operator of lobby", "would read like a server line"),
        ("/me is now an operator of lobby", "would read like a server line"),
        ("/kick", "usage: /kick NICK"),
        ("/codes maybe", "usage: /codes on|off"),
    ],
)
def test_bad_commands(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        parse_command(line)
