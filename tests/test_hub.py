"""The hub and the session, driven without an event loop or sockets.

A RecordingSink stands in for the transport: the hub's contract with a
transport is just write/close, and these tests check what the hub hands over.
"""

from __future__ import annotations

import logging

import pytest

from asyncchat import Hub, Limits, SlowConsumerPolicy, UsageError
from asyncchat.events import Action, Joined, Left, Message, NickChanged, Notice, Private, Quit
from asyncchat.hub import Member
from asyncchat.session import Session, SessionState


class RecordingSink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def close(self, *, abort: bool = False) -> None:
        self.closed = True
        self.aborted = abort

    def lines(self) -> list[str]:
        data = b"".join(self.writes)
        self.writes.clear()
        return data.decode().splitlines()


class Peer:
    """A member with a session, fed lines directly."""

    def __init__(self, hub: Hub, nick: str | None = None, *, now: float = 0.0) -> None:
        self.hub = hub
        self.sink = RecordingSink()
        self.member: Member = hub.connect(self.sink, kind="test", peer="test", ip="10.0.0.1", now=now)
        self.session = Session(hub, self.member, now=now)
        if nick is not None:
            self.send(nick)
            hub.flush()
            lines = self.sink.lines()
            assert lines[-1] == f"* {nick} joined lobby", lines

    def send(self, *lines: str, now: float = 0.0) -> None:
        self.session.receive(lines, now)

    def read(self) -> list[str]:
        self.hub.flush()
        return self.sink.lines()


@pytest.fixture
def hub() -> Hub:
    return Hub(limits=Limits(rate_lines_per_second=1000, rate_burst=1000))


def test_greeting_and_login(hub: Hub) -> None:
    peer = Peer(hub)
    assert peer.read() == ["*** welcome to asyncchat (protocol v1); choose a nickname (1-32 letters, digits, _ or -)"]
    peer.send("no good", "x" * 33, "alice")
    assert peer.read() == [
        "! nickname 'no good' is invalid: use 1-32 letters, digits, _ or -",
        f"! nickname '{'x' * 33}' is invalid: use 1-32 letters, digits, _ or -",
        "*** you are alice; /help lists the commands",
        "* alice joined lobby",
    ]
    assert peer.session.state is SessionState.CHATTING


def test_nick_is_unique_without_regard_to_case(hub: Hub) -> None:
    Peer(hub, "alice")
    bob = Peer(hub)
    bob.read()
    bob.send("ALICE", "Alice", "bob")
    assert bob.read()[:2] == ["! nickname 'ALICE' is taken", "! nickname 'Alice' is taken"]
    assert hub.find("BOB") is bob.member


def test_chat_reaches_others_not_sender_in_order(hub: Hub) -> None:
    alice, bob, carol = Peer(hub, "alice"), Peer(hub, "bob"), Peer(hub, "carol")
    alice.read(), bob.read()
    alice.send("one", "two")
    bob.send("three")
    alice.send("four")
    assert alice.read() == ["bob: three"]
    assert bob.read() == ["alice: one", "alice: two", "alice: four"]
    assert carol.read() == ["alice: one", "alice: two", "bob: three", "alice: four"]


def test_one_write_per_member_per_flush(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    alice.read()
    bob.read()
    alice.send(*[f"line {i}" for i in range(100)])
    bob.send("/who")
    hub.flush()
    assert len(bob.sink.writes) == 1
    assert bob.sink.lines()[-2:] == ["alice: line 99", "*** members of lobby (2): @alice, bob"]


def test_reply_after_room_lines_queued_before_it(hub: Hub) -> None:
    """One order: a direct reply never overtakes room lines queued earlier."""
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    bob.read()
    alice.send("before")
    bob.send("/ping x")
    alice.send("after")
    assert bob.read() == ["alice: before", "*** pong x", "alice: after"]


def test_join_leave_history(hub: Hub) -> None:
    hub_limits = Hub(limits=Limits(history_lines=3, rate_burst=1000, rate_lines_per_second=1000))
    alice = Peer(hub_limits, "alice")
    alice.send("m1", "m2", "m3", "m4", "/me waves")
    bob = Peer(hub_limits)
    bob.read()
    bob.send("bob")
    assert bob.read() == [
        "*** you are bob; /help lists the commands",
        "alice: m3",
        "alice: m4",
        "* alice waves",
        "* bob joined lobby",
    ]
    alice.read()
    bob.send("/join games")
    assert alice.read() == ["* bob left lobby"]
    assert bob.read() == ["* bob left lobby", "* bob joined games"]
    bob.send("/join games")
    assert bob.read() == ["! you are already in games"]
    alice.send("/rooms")
    assert alice.read() == ["*** rooms (2): games (1), lobby (1)"]
    bob.send("/quit gone fishing")
    assert bob.read() == ["*** closing: goodbye"]
    assert bob.sink.closed
    assert not bob.sink.aborted
    alice.send("/rooms")
    assert alice.read() == ["*** rooms (1): lobby (1)"]


def test_room_names_are_case_insensitive(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    alice.send("/join Games")
    bob.send("/join GAMES")
    bob.read()
    alice.read()
    alice.send("hi")
    assert bob.read() == ["alice: hi"]


def test_commands(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    alice.read()
    bob.read()
    alice.send("/who", "/msg bob psst", "/msg nobody x", "/msg alice me", "/frob", "//not a command", "/me dances")
    assert alice.read() == [
        "*** members of lobby (2): @alice, bob",
        "[pm to bob] psst",
        "! no member named 'nobody'",
        "! you cannot send a private message to yourself",
        "! unknown command /frob; /help lists the commands",
    ]
    assert bob.read() == ["[pm from alice] psst", "alice: /not a command", "* alice dances"]
    alice.send("/nick Bob", "/nick alicia")
    assert alice.read() == ["! nickname 'Bob' is taken", "* alice is now known as alicia"]
    assert bob.read() == ["* alice is now known as alicia"]
    alice.send("/nick ALICIA")
    assert bob.read() == ["* alicia is now known as ALICIA"]
    assert alice.read() == ["* alicia is now known as ALICIA"]
    assert hub.who("lobby") == ["ALICIA", "bob"]
    alice.send("/help")
    help_lines = alice.read()
    assert help_lines[0] == "*** commands:"
    for name in ("nick", "join", "rooms", "who", "msg", "me", "quit", "help"):
        assert any(line.startswith(f"***   /{name}") for line in help_lines), name


def test_empty_and_blank_lines_are_ignored(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    bob.read()
    alice.send("", "   ", "\t")
    assert bob.read() == []


def test_disconnect_tells_the_room(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    alice.read()
    bob.session.connection_lost()
    assert alice.read() == ["* bob left lobby (connection closed)"]
    assert hub.find("bob") is None
    assert hub.statistics().disconnects == {"closed": 1}
    carol = Peer(hub)
    carol.send("bob")  # the nickname is free again
    assert carol.read()[-1] == "* bob joined lobby"


def test_rate_limit_warns_then_disconnects() -> None:
    hub = Hub(limits=Limits(rate_lines_per_second=1, rate_burst=2, rate_disconnect_after=5))
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    bob.read()
    alice.read()
    alice.send("a", "b", "c", "d")
    assert bob.read() == ["alice: a"]  # the nick used one of the two tokens
    assert alice.read() == ["! slow down: at most 1 lines per second; line dropped"]
    alice.send("e", now=10.0)  # tokens refill with time
    assert bob.read() == ["alice: e"]
    alice.send(*"fghijklm", now=10.0)
    assert alice.sink.closed
    assert bob.read()[-1] == "* alice left lobby (flood)"
    stats = hub.statistics()
    assert stats.disconnects == {"flood": 1}
    assert stats.rate_limited == 3 + 5  # b, c, d; then g..k (the fifth in a row disconnects)


def test_paused_member_is_disconnected_past_high_water() -> None:
    hub = Hub(limits=Limits(outbox_high_water=1000, rate_burst=1000, rate_lines_per_second=1000))
    alice, bob, slow = Peer(hub, "alice"), Peer(hub, "bob"), Peer(hub, "slow")
    slow.read()
    hub.pause(slow.member)
    for i in range(200):
        alice.send(f"message {i:04}")
        hub.flush()
        assert slow.member.pending_bytes <= 1000
    assert slow.sink.closed
    assert slow.sink.aborted
    # Its last write, just before the abort, says why (its queued output is discarded).
    assert slow.sink.writes[-1] == b"*** closing: too slow: more than 1000 bytes unsent\n"
    assert hub.statistics().disconnects == {"slow": 1}
    lines = bob.read()
    assert lines[-1] == "alice: message 0199"
    assert "* slow left lobby (slow)" in lines
    assert [line for line in lines if line.startswith("alice:")] == [f"alice: message {i:04}" for i in range(200)]


def test_paused_member_with_drop_policy_is_told_what_was_dropped() -> None:
    limits = Limits(
        outbox_high_water=200, slow_consumer=SlowConsumerPolicy.DROP, rate_burst=1000, rate_lines_per_second=1000
    )
    hub = Hub(limits=limits)
    alice, slow = Peer(hub, "alice"), Peer(hub, "slow")
    slow.read()
    hub.pause(slow.member)
    for i in range(50):
        alice.send(f"message {i:04}")
        hub.flush()
    assert slow.member.pending_bytes <= 200
    assert not slow.sink.closed
    hub.resume(slow.member)
    lines = slow.read()
    kept = [line for line in lines if line.startswith("alice:")]
    dropped = 50 - len(kept)
    assert dropped > 0
    assert lines[-1] == f"! {dropped} lines were dropped because you read too slowly"
    assert hub.statistics().lines_dropped == dropped
    alice.send("fresh")
    assert slow.read() == ["alice: fresh"]


def test_login_timeout_and_idle_timeout() -> None:
    hub = Hub(limits=Limits(login_timeout=5, idle_timeout=100))
    lurker = Peer(hub, now=0.0)
    alice = Peer(hub, "alice", now=0.0)
    hub.tick(4.0)
    assert not lurker.sink.closed
    hub.tick(6.0)
    assert lurker.sink.closed
    assert lurker.read()[-1] == "*** closing: no nickname within 5 seconds"
    alice.send("still here", now=50.0)
    hub.tick(120.0)
    assert not alice.sink.closed
    hub.tick(151.0)
    assert alice.sink.closed
    assert hub.statistics().disconnects == {"login-timeout": 1, "idle": 1}


def test_max_members_and_per_ip() -> None:
    from asyncchat import Refused

    hub = Hub(limits=Limits(max_members=3, max_per_ip=2))
    hub.connect(RecordingSink(), kind="t", ip="1.1.1.1", now=0.0)
    hub.connect(RecordingSink(), kind="t", ip="1.1.1.1", now=0.0)
    with pytest.raises(Refused, match=r"too many connections from 1\.1\.1\.1"):
        hub.connect(RecordingSink(), kind="t", ip="1.1.1.1", now=0.0)
    hub.connect(RecordingSink(), kind="t", ip="2.2.2.2", now=0.0)
    with pytest.raises(Refused, match=r"server is full \(3 members\)"):
        hub.connect(RecordingSink(), kind="t", ip="3.3.3.3", now=0.0)
    assert hub.statistics().refused == {"per-ip": 1, "full": 1}


def test_per_ip_counts_an_ipv6_network_as_one_source() -> None:
    from asyncchat import Refused

    hub = Hub(limits=Limits(max_per_ip=2))
    first = hub.connect(RecordingSink(), kind="t", ip="2001:db8:1:2::1", now=0.0)
    hub.connect(RecordingSink(), kind="t", ip="2001:db8:1:2:a:b:c:d", now=0.0)
    with pytest.raises(Refused, match=r"too many connections from 2001:db8:1:2::/64 \(limit 2\)"):
        hub.connect(RecordingSink(), kind="t", ip="2001:db8:1:2:ffff::9", now=0.0)
    hub.connect(RecordingSink(), kind="t", ip="2001:db8:1:3::1", now=0.0)  # the next /64 is another source
    hub.disconnect(first)  # frees a slot of the same /64, whichever address leaves
    hub.connect(RecordingSink(), kind="t", ip="2001:db8:1:2::77", now=0.0)
    with pytest.raises(Refused, match=r"2001:db8:1:2::/64"):
        hub.connect(RecordingSink(), kind="t", ip="2001:db8:1:2::78", now=0.0)
    assert hub.statistics().refused == {"per-ip": 2}
    assert hub.statistics().members == 3


def test_per_ip_prefix_is_configurable() -> None:
    from asyncchat import Refused

    hub = Hub(limits=Limits(max_per_ip=1, ipv6_prefix_bits=128))
    hub.connect(RecordingSink(), kind="t", ip="2001:db8::1", now=0.0)
    hub.connect(RecordingSink(), kind="t", ip="2001:db8::2", now=0.0)  # /128: each address alone
    with pytest.raises(Refused, match=r"too many connections from 2001:db8::1 \(limit 1\)"):
        hub.connect(RecordingSink(), kind="t", ip="2001:0db8::0001", now=0.0)
    wide = Hub(limits=Limits(max_per_ip=1, ipv6_prefix_bits=48))
    wide.connect(RecordingSink(), kind="t", ip="2001:db8:1:2::1", now=0.0)
    with pytest.raises(Refused, match=r"2001:db8:1::/48"):
        wide.connect(RecordingSink(), kind="t", ip="2001:db8:1:ffff::1", now=0.0)
    with pytest.raises(ValueError, match="ipv6_prefix_bits must be <= 128"):
        Limits(ipv6_prefix_bits=129)


def test_observers_post_and_bots(hub: Hub) -> None:
    seen: list[object] = []
    unsubscribe = hub.subscribe(seen.append)
    alice = Peer(hub, "alice")
    heard: list[object] = []
    bot = hub.add_bot("helper", heard.append)
    alice.read()
    alice.send("hello", "/msg helper hi")
    hub.post("lobby", "maintenance at noon")
    hub.post("lobby", "beep", nick="helper")
    hub.flush()
    assert alice.read() == [
        "[pm to helper] hi",
        "*** maintenance at noon",
        "helper: beep",
    ]
    assert Message("alice", "hello", "lobby") in heard
    assert Private("alice", "", "hi") in heard
    hub.say(bot, "hi alice")
    assert alice.read() == ["helper: hi alice"]
    assert seen[:3] == [Joined("alice", "lobby"), Joined("helper", "lobby"), Message("alice", "hello", "lobby")]
    assert Private("alice", "helper", "hi") in seen
    assert Notice("maintenance at noon") in seen
    with pytest.raises(UsageError, match="belongs to a connected member"):
        hub.post("lobby", "I am alice", nick="alice")
    with pytest.raises(UsageError, match="no room named"):
        hub.post("nowhere", "x")
    with pytest.raises(UsageError, match="is taken"):
        hub.add_bot("ALICE")
    hub.disconnect(bot, "kicked")
    assert alice.read() == ["* helper left lobby (kicked)"]
    unsubscribe()
    alice.send("/nick al")
    assert NickChanged("alice", "al", "lobby") not in seen
    assert Left("helper", "lobby", "kicked") in seen


def test_close_all_for_shutdown(hub: Hub) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    bob.read()
    alice.send("last words")
    closed = hub.close_all("server is shutting down")
    assert set(closed) == {alice.member, bob.member}
    assert bob.sink.lines() == ["alice: last words", "*** closing: server is shutting down"]
    assert bob.sink.closed
    assert alice.sink.closed
    assert hub.statistics().members == 0


def test_repr_shows_identity_and_state(hub: Hub) -> None:
    alice = Peer(hub, "alice")
    assert repr(alice.member) == f"<Member {alice.member.id} 'alice' test test lobby>"
    assert "CHATTING" in repr(alice.session)


def test_joins_and_leaves_within_one_batch_keep_each_members_view_exact(hub: Hub) -> None:
    """Nothing is flushed between these steps: cursors into the room batch keep each view right."""
    alice, dave = Peer(hub, "alice"), Peer(hub, "dave")
    alice.read()
    dave.read()
    carol = Peer(hub)
    bob = Peer(hub)
    alice.send("/me stretches")  # an action: goes to history too
    carol.send("carol")
    dave.send("/join games")  # dave must still get everything said before he left
    bob.send("bob")
    alice.send("last")
    hub.flush()
    assert carol.sink.lines()[-4:] == ["* carol joined lobby", "* dave left lobby", "* bob joined lobby", "alice: last"]
    assert bob.sink.lines()[-2:] == ["* bob joined lobby", "alice: last"]
    assert dave.sink.lines() == [
        "* alice stretches",
        "* carol joined lobby",
        "* dave left lobby",
        "* dave joined games",
    ]
    assert alice.sink.lines() == ["* carol joined lobby", "* dave left lobby", "* bob joined lobby"]


def test_large_rooms_do_not_announce_every_join_and_leave() -> None:
    hub = Hub(limits=Limits(presence_max_members=2, rate_burst=1000, rate_lines_per_second=1000))
    seen: list[object] = []
    hub.subscribe(seen.append)
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    alice.read()
    carol = Peer(hub)
    carol.send("carol")
    assert carol.read()[-1] == "* carol joined lobby"  # its own line still marks the end of history
    assert alice.read() == []
    carol.send("hi", "/who")
    assert alice.read() == ["carol: hi"]
    assert carol.read() == ["*** members of lobby (3): @alice, bob, carol"]
    carol.send("/join games")
    assert carol.read() == ["* carol left lobby", "* carol joined games"]
    assert alice.read() == []
    bob.session.connection_lost()  # lobby is back to 1 member: announced again
    assert alice.read() == ["* bob left lobby (connection closed)"]
    assert Joined("carol", "lobby") in seen
    assert Left("carol", "lobby", "") in seen


def test_a_failing_bot_does_not_stop_anyone_elses_output(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")

    def explode(event: object) -> None:
        if isinstance(event, Message):
            raise RuntimeError("bot bug")

    hub.add_bot("crashy", explode)
    carol = Peer(hub, "carol")  # after the bot in every list: it must still be served
    alice.read(), bob.read(), carol.read()
    with caplog.at_level(logging.ERROR, logger="asyncchat.hub"):
        alice.send("hello all")
        hub.flush()
    # Everyone else is served in that same flush, the bot's leave line included.
    assert bob.sink.lines() == ["alice: hello all", "* crashy left lobby (error)"]
    assert carol.sink.lines() == ["alice: hello all", "* crashy left lobby (error)"]
    assert hub.find("crashy") is None
    assert hub.statistics().disconnects == {"error": 1}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "asyncchat.hub"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "crashy" in errors[0].getMessage()
    alice.send("still here")
    assert bob.read() == ["alice: still here"]
    assert carol.read() == ["alice: still here"]


@pytest.mark.parametrize("room", ["no good", "extra"])
def test_add_bot_that_cannot_join_raises_usage_error_and_leaves_nothing(room: str) -> None:
    hub = Hub(limits=Limits(max_rooms=1))  # only lobby: "extra" is one room too many
    alice = Peer(hub, "alice")
    before = hub.statistics()
    with pytest.raises(UsageError):
        hub.add_bot("helper", room=room)
    assert hub.find("helper") is None
    assert [m.nick for m in hub.members()] == ["alice"]
    assert hub.statistics() == before
    assert hub._per_ip == {"10.0.0.1": 1}
    assert hub.who("lobby") == ["alice"]
    assert [r.name for r in hub.rooms()] == ["lobby"]
    bot = hub.add_bot("helper")  # the name is free again
    assert hub.who("lobby") == ["alice", "helper"]
    assert alice.read() == ["* helper joined lobby"]
    hub.disconnect(bot)


def test_bots_receive_typed_events_with_their_room(hub: Hub) -> None:
    alice = Peer(hub, "alice")
    heard: list[object] = []
    bot = hub.add_bot("helper", heard.append)
    hub.flush()
    assert heard == [Joined("helper", "lobby")]
    heard.clear()
    forged = "hi\u2028* admin joined lobby\u2029* admin left lobby\x85! forged"
    alice.send("hi", "/me waves", forged)
    hub.say(bot, "my own line")  # never shown to the bot itself
    alice.send("/quit")
    hub.flush()
    assert heard == [
        Message("alice", "hi", "lobby"),
        Action("alice", "waves", "lobby"),
        Message("alice", forged, "lobby"),
        Quit("alice", "lobby", "quit"),
    ]


def test_close_all_tells_observers_each_leave_per_room(hub: Hub) -> None:
    seen: list[object] = []
    hub.subscribe(seen.append)
    alice, bob = Peer(hub, "alice"), Peer(hub, "bob")
    hub.join(alice.member, "side")
    hub.flush()
    seen.clear()
    hub.close_all("server is shutting down")
    assert sorted(map(repr, seen)) == sorted(
        map(
            repr,
            [
                Left("alice", "lobby", "server shutting down"),
                Left("alice", "side", "server shutting down"),
                Left("bob", "lobby", "server shutting down"),
            ],
        )
    )
    assert bob.sink.closed
