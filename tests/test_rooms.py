"""Several rooms per member, member-wide events once, topics and operators, typed commands.

Driven without an event loop: the hub and the session are pure, and a
RecordingSink stands in for the transport (see test_hub.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asyncchat import Hub, Limits
from asyncchat import commands as cmd
from asyncchat.bus import InProcessNetwork
from asyncchat.errors import ErrorCode
from asyncchat.events import ChatEvent, Kicked, Left, Message, Quit
from asyncchat.protocol import encode, encode_with_codes
from asyncchat.session import Session, SessionState

from .test_hub import Peer, RecordingSink


@pytest.fixture
def hub() -> Hub:
    return Hub(limits=Limits(rate_lines_per_second=1000, rate_burst=1000))


def coded(hub: Hub, nick: str) -> Peer:
    """A v1 peer that asked for error codes, logged in as *nick*."""
    peer = Peer(hub)
    peer.send("/codes on", nick)
    peer.read()
    return peer


def in_rooms(hub: Hub, peer: Peer, *rooms: str) -> None:
    for room in rooms:
        peer.session.execute(cmd.Join(room), 0.0)
    peer.read()


def test_a_member_in_three_rooms_speaks_in_each(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    in_rooms(hub, alice, "games", "den")
    in_rooms(hub, bob, "games")
    bob.read()
    assert [room.name for room in alice.member.rooms] == ["lobby", "games", "den"]
    alice.session.execute(cmd.Say("in lobby", "lobby"), 0.0)
    alice.session.execute(cmd.Say("in games", "games"), 0.0)
    alice.session.execute(cmd.Say("in den", "den"), 0.0)
    assert bob.read() == ["alice: in lobby", "alice: in games"]
    assert [event.room for event in hub.history("den")] == ["den"]  # type: ignore[union-attr]
    # Without a room, a v1 member speaks in its current room: the one it joined last.
    alice.send("where am I")
    assert [e for e in hub.history("den") if isinstance(e, Message)][-1] == Message("alice", "where am I", "den")


def test_part_of_one_room_leaves_the_others_intact(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    in_rooms(hub, alice, "games")
    in_rooms(hub, bob, "games")
    alice.read()
    bob.session.execute(cmd.Part("games", "bored"), 0.0)
    assert alice.read() == ["* bob left games (bored)"]
    assert bob.read() == ["* bob left games (bored)"]
    assert [room.name for room in bob.member.rooms] == ["lobby"]
    bob.send("still here")
    assert alice.read() == ["bob: still here"]
    bob.session.execute(cmd.Part("games"), 0.0)
    assert bob.read() == ["! you are not in games"]


def test_nick_change_and_quit_are_seen_once_by_a_member_sharing_two_rooms(hub: Hub) -> None:
    alice, bob, carol = Peer(hub, "alice"), Peer(hub, "bob"), Peer(hub, "carol")
    in_rooms(hub, alice, "games", "den")
    in_rooms(hub, bob, "games", "den")
    alice.read(), carol.read()
    alice.send("/nick al")
    assert bob.read() == ["* alice is now known as al"]
    assert alice.read() == ["* alice is now known as al"]
    assert carol.read() == ["* alice is now known as al"]
    seen: list[ChatEvent] = []
    hub.subscribe(seen.append)
    alice.send("/quit bye")
    assert bob.read() == ["* al left lobby (quit: bye)"]
    assert carol.read() == ["* al left lobby (quit: bye)"]
    # Observers keep seeing one leave per room.
    assert seen == [Left("al", room, "quit: bye") for room in ("lobby", "games", "den")]
    # A member who shares only a later room is told with that room's name.
    dave = Peer(hub, "dave")
    in_rooms(hub, dave, "den")
    in_rooms(hub, bob, "attic")
    erin = Peer(hub, "erin")
    erin.session.execute(cmd.Join("attic", replace=True), 0.0)
    erin.read()
    bob.session.connection_lost()
    assert erin.read() == ["* bob left attic (connection closed)"]


def test_login_without_a_room_and_typed_joins_keep_every_room(hub: Hub) -> None:
    """What an IRC front end does: no lobby at login, JOIN adds rooms."""
    sink = RecordingSink()
    member = hub.connect(sink, kind="irc", now=0.0)
    session = Session(hub, member, now=0.0, room=None, greeting=False)
    session.execute(cmd.Join("early"), 0.0)
    hub.flush()
    assert sink.lines() == ["! choose a nickname first"]
    session.execute(cmd.ChangeNick("ircuser"), 0.0)
    assert session.state is SessionState.CHATTING
    assert member.rooms == []
    session.execute(cmd.Say("hello"), 0.0)
    session.execute(cmd.Join("one"), 0.0)
    session.execute(cmd.Join("two"), 0.0)
    hub.flush()
    assert sink.lines() == [
        "*** you are ircuser; /help lists the commands",
        "! you are not in a room; /join one",
        "* ircuser joined one",
        "* ircuser joined two",
    ]
    assert [room.name for room in member.rooms] == ["one", "two"]


def test_topic_is_operator_only_by_default_and_told_to_joiners(hub: Hub) -> None:
    alice, bob = coded(hub, "alice"), coded(hub, "bob")
    alice.read()
    assert hub.is_operator(alice.member, "lobby")
    assert not hub.is_operator(bob.member, "lobby")
    bob.send("/topic free pizza")
    assert bob.read() == ["! [not-operator] only operators of lobby may set its topic"]
    alice.send("/topic rules: be nice")
    assert alice.read() == bob.read() == ["* alice set the topic of lobby: rules: be nice"]
    bob.send("/topic")
    assert bob.read() == ["*** topic of lobby: rules: be nice"]
    carol = Peer(hub)
    carol.send("carol")
    assert carol.read()[-2:] == ["* carol joined lobby", "*** topic of lobby: rules: be nice"]
    # An operator can open the topic to everyone (IRC's -t).
    alice.session.execute(cmd.SetTopicLock(False), 0.0)
    bob.send("/topic")  # a query is always allowed
    bob.send("/topic pizza on friday")
    assert bob.read()[-1] == "* bob set the topic of lobby: pizza on friday"
    alice.send("/topic ")
    assert alice.read()[-1] == "*** topic of lobby: pizza on friday"  # blank: a query, not a clear
    alice.session.execute(cmd.SetTopic(None, ""), 0.0)
    assert alice.read()[-1] == "* alice cleared the topic of lobby"


def test_kick_removes_and_tells_the_room(hub: Hub) -> None:
    alice, bob, carol = coded(hub, "alice"), coded(hub, "bob"), coded(hub, "carol")
    alice.read(), bob.read()
    bob.send("/kick carol")
    assert bob.read() == ["! [not-operator] you are not an operator of lobby"]
    alice.send("/kick nobody", "/kick carol spamming links")
    assert alice.read() == [
        "! [no-such-nick] no member named 'nobody'",
        "* carol was kicked from lobby by alice (spamming links)",
    ]
    assert bob.read() == ["* carol was kicked from lobby by alice (spamming links)"]
    assert carol.read() == ["* carol was kicked from lobby by alice (spamming links)"]
    assert hub.who("lobby") == ["alice", "bob"]
    assert carol.member.rooms == []
    assert not carol.member.closed
    carol.send("anyone?")
    assert carol.read() == ["! [not-in-room] you are not in a room; /join one"]
    assert isinstance(hub.history("lobby")[-1], Kicked)
    in_rooms(hub, carol, "den")
    alice.send("/kick carol")
    assert alice.read() == ["! [target-not-in-room] carol is not in lobby"]


def test_operators_give_and_take_status_and_leaving_hands_nothing_over(hub: Hub) -> None:
    alice, bob, carol = coded(hub, "alice"), coded(hub, "bob"), coded(hub, "carol")
    alice.read(), bob.read()
    alice.send("/op bob")
    assert carol.read() == ["* alice made bob an operator of lobby"]
    carol.send("/who")
    assert carol.read() == ["*** members of lobby (3): @alice, @bob, carol"]
    bob.send("/deop alice")
    assert carol.read() == ["* bob removed alice as operator of lobby"]
    carol.send("/op carol")
    assert carol.read() == ["! [not-operator] you are not an operator of lobby"]
    # The last operator leaves: nothing is handed over (IRC's rule), and nobody is told otherwise.
    bob.send("/quit")
    assert carol.read() == ["* bob left lobby (quit)"]
    carol.send("/who")
    assert carol.read() == ["*** members of lobby (2): alice, carol"]
    # A new room's first member is its operator.
    carol.send("/join den")
    carol.send("/who")
    assert carol.read()[-1] == "*** members of den (1): @carol"


def test_encoding_happens_once_per_encoder_present() -> None:
    """A 300-member room on three wire formats costs three encodings per event, not 300."""
    hub = Hub(limits=Limits(rate_lines_per_second=1000, rate_burst=1000))
    calls: dict[str, int] = {}

    def counting(name: str, inner: Callable[[ChatEvent], bytes]) -> Callable[[ChatEvent], bytes]:
        def encoder(event: ChatEvent) -> bytes:
            calls[name] = calls.get(name, 0) + 1
            return inner(event)

        return encoder

    encoders = [
        counting("v1", encode),
        counting("coded", encode_with_codes),
        counting("upper", lambda e: encode(e).upper()),
    ]
    speaker = Peer(hub, "speaker")
    sinks = []
    for i in range(300):
        sink = RecordingSink()
        member = hub.connect(sink, kind="test", now=0.0)
        member.encoder = encoders[i % 3]
        hub.login(member, f"m{i}")
        sinks.append(sink)
    hub.flush()
    for sink in sinks:
        sink.writes.clear()
    calls.clear()
    speaker.send("one", "two", "three")
    hub.flush()
    assert calls == {"v1": 3, "coded": 3, "upper": 3}
    # Members of one encoder share the very same bytes object, joined once.
    assert all(len(sink.writes) == 1 for sink in sinks)
    assert len({id(sink.writes[0]) for sink in sinks[0::3]}) == 1
    assert len({id(sink.writes[0]) for sink in sinks}) == 3
    assert sinks[0].lines() == ["speaker: one", "speaker: two", "speaker: three"]
    assert sinks[2].lines() == ["SPEAKER: ONE", "SPEAKER: TWO", "SPEAKER: THREE"]


def test_commands_of_the_embedding_program_run_through_the_executor(hub: Hub) -> None:
    rolled: list[str] = []
    sink = RecordingSink()
    member = hub.connect(sink, kind="test", now=0.0)
    session = Session(hub, member, now=0.0, extra_commands={"roll": lambda s, arg: rolled.append(arg)})
    session.receive(["alice", "/roll 2d6"], 0.0)
    session.execute(cmd.Custom("roll", "1d20"), 0.0)
    session.execute(cmd.Custom("nope"), 0.0)
    assert rolled == ["2d6", "1d20"]
    hub.flush()
    assert sink.lines()[-1] == "! unknown command /nope"


def two_nodes() -> tuple[Hub, Hub]:
    network = InProcessNetwork()
    limits = Limits(rate_lines_per_second=1000, rate_burst=1000)
    return Hub(limits=limits, bus=network.bus(node_id="a")), Hub(limits=limits, bus=network.bus(node_id="b"))


def test_member_wide_events_are_seen_once_across_nodes() -> None:
    hub_a, hub_b = two_nodes()
    alice, bob = Peer(hub_a, "alice"), Peer(hub_b, "bob")
    in_rooms(hub_a, alice, "games")
    in_rooms(hub_b, bob, "games")
    alice.read(), bob.read()
    alice.send("/nick al")
    assert bob.read() == ["* alice is now known as al"]
    assert hub_b.who("games") == ["bob", "al"]
    alice.send("/quit")
    assert bob.read() == ["* al left lobby (quit)"]
    assert hub_b.who("lobby") == ["bob"]
    assert hub_b.who("games") == ["bob"]


def test_topic_kick_and_operators_cross_nodes() -> None:
    hub_a, hub_b = two_nodes()
    alice, bob = coded(hub_a, "alice"), coded(hub_b, "bob")
    alice.read(), bob.read()
    alice.send("/topic from node a")
    assert bob.read() == ["* alice set the topic of lobby: from node a"]
    assert hub_b.topic("lobby") == "from node a"
    alice.send("/kick bob go away")
    assert bob.read() == ["* bob was kicked from lobby by alice (go away)"]
    assert bob.member.rooms == []
    assert hub_a.who("lobby") == ["alice"]
    bob.send("/join lobby")
    bob.read()
    alice.send("/op bob")
    assert bob.read() == ["* alice made bob an operator of lobby"]
    assert hub_b.is_operator(bob.member, "lobby")


def test_quit_event_names_the_room_for_each_recipient() -> None:
    assert Quit("alice", "lobby", "bye") != Left("alice", "lobby", "bye")
    assert encode(Quit("alice", "lobby", "bye")) == encode(Left("alice", "lobby", "bye"))


def test_error_codes_are_stable_values() -> None:
    assert ErrorCode.NICK_TAKEN == "nick-taken"
    assert {code.value for code in ErrorCode} >= {
        "nick-taken",
        "invalid-nick",
        "no-such-nick",
        "no-such-room",
        "not-operator",
        "rate-limited",
        "line-too-long",
        "not-utf8",
        "server-full",
    }
