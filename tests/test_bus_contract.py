"""One contract for every Bus implementation: the in-process bus and the Redis bus.

The Redis runs need a real ``redis-server`` (see tests/redis_server.py); the
same tests then also run hubs linked by each bus, with real TCP clients.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from asyncchat import Hub, Limits
from asyncchat.bus import (
    Envelope,
    EnvelopeKind,
    InProcessBus,
    InProcessNetwork,
    decode_envelope,
    encode_envelope,
)
from asyncchat.errors import UsageError
from asyncchat.events import Action, Joined, Left, Message, NickChanged, Notice, Private
from asyncchat.tcp import serve_tcp

from .chatclient import LineClient
from .redis_server import RedisServer, running_redis

TIMEOUT = 10.0
_namespaces = itertools.count()


class Collector:
    """A receiver that records envelopes and lets a test wait for a count."""

    def __init__(self) -> None:
        self.got: list[Envelope] = []
        self._changed = asyncio.Event()

    def __call__(self, envelope: Envelope) -> None:
        self.got.append(envelope)
        self._changed.set()

    async def wait(self, count: int, *, kind: EnvelopeKind | None = None) -> list[Envelope]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                matching = [e for e in self.got if kind is None or e.kind is kind]
                if len(matching) >= count:
                    return matching
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await make_bus(node_id=...)``: a started bus of one cluster (per test)."""
    buses: list[Any] = []
    if request.param == "memory":
        network = InProcessNetwork()

        async def make(**options: Any) -> InProcessBus:
            bus = network.bus(**options)
            buses.append(bus)
            return bus

        yield make
        for bus in buses:
            bus.close()
        return
    from asyncchat.redis_bus import RedisBus

    server: RedisServer = request.getfixturevalue("redis_server")
    namespace = f"contract{next(_namespaces)}"

    async def make_redis(**options: Any) -> RedisBus:
        bus = RedisBus(server.url, namespace=namespace, **options)
        buses.append(bus)
        await bus.start()
        async with asyncio.timeout(TIMEOUT):
            await bus.wait_subscribed()
        return bus

    yield make_redis
    for bus in buses:
        await bus.aclose()


async def claim(bus: Any, key: str) -> bool:
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    bus.claim(key, lambda granted: answer.done() or answer.set_result(granted))
    async with asyncio.timeout(TIMEOUT):
        return await answer


async def settled(bus: Any) -> None:
    """Wait until *bus* has sent its nickname scripts (the in-process bus acts at once)."""
    settle = getattr(bus, "settle", None)
    if settle is not None:
        await settle()


def message(node: str, seq: int, text: str) -> Envelope:
    return Envelope(node, seq, EnvelopeKind.EVENT, "lobby", Message("alice", text, "lobby"))


async def test_publish_reaches_every_other_node_in_order(make_bus: Callable[..., Awaitable[Any]]) -> None:
    a, b, c = await make_bus(node_id="a"), await make_bus(node_id="b"), await make_bus(node_id="c")
    got = {name: Collector() for name in "abc"}
    for name, bus in zip("abc", (a, b, c), strict=True):
        bus.bind(got[name])
    sent = [message("a", i, f"m{i}") for i in range(1, 301)]
    for envelope in sent:
        a.publish(envelope)
    assert await got["b"].wait(300) == sent
    assert await got["c"].wait(300) == sent
    # A marker from b arrives at a after anything a could have heard of its own.
    b.publish(message("b", 1, "marker"))
    assert await got["a"].wait(1) == [message("b", 1, "marker")]


async def test_every_kind_of_envelope_arrives_unchanged(make_bus: Callable[..., Awaitable[Any]]) -> None:
    a, b = await make_bus(node_id="a"), await make_bus(node_id="b")
    got = Collector()
    b.bind(got)
    events = [
        Message("alice", "hi \t there ✓", "lobby"),
        Action("alice", "waves", "lobby"),
        Joined("alice", "lobby"),
        Left("alice", "lobby", "quit: bye"),
        NickChanged("alice", "al", "lobby"),
        Notice("server says hi"),
    ]
    sent = [Envelope("a", i, EnvelopeKind.EVENT, "lobby", event) for i, event in enumerate(events, 1)]
    sent.append(Envelope("a", 7, EnvelopeKind.PRIVATE, None, Private("alice", "bob", "psst"), "b"))
    sent.append(Envelope("a", 8, EnvelopeKind.HEARTBEAT, presence=(("lobby", ("alice", "carol")), ("x", ("dave",)))))
    for envelope in sent:
        a.publish(envelope)
    assert await got.wait(len(sent)) == sent


async def test_first_claim_wins_and_release_frees_the_name(make_bus: Callable[..., Awaitable[Any]]) -> None:
    a, b = await make_bus(node_id="a"), await make_bus(node_id="b")
    assert await claim(a, "alice") is True
    assert await claim(b, "alice") is False
    assert await claim(a, "alice") is True  # a node may re-claim its own name
    b.release("alice")  # not b's: nothing happens
    assert await claim(b, "alice") is False
    a.release("alice")
    await settled(a)  # a release is sent, not awaited: let it reach Redis before b claims
    assert await claim(b, "alice") is True
    assert await claim(a, "alice") is False


async def test_concurrent_claims_have_exactly_one_winner(make_bus: Callable[..., Awaitable[Any]]) -> None:
    buses = [await make_bus(node_id=f"n{i}") for i in range(3)]
    for round_ in range(20):
        answers = await asyncio.gather(*(claim(bus, f"race{round_}") for bus in buses))
        assert sorted(answers) == [False, False, True]


async def test_closing_a_node_says_goodbye(make_bus: Callable[..., Awaitable[Any]]) -> None:
    a, b = await make_bus(node_id="a"), await make_bus(node_id="b")
    got = Collector()
    b.bind(got)
    assert await claim(a, "alice") is True
    if isinstance(a, InProcessBus):
        a.close()
    else:
        await a.aclose()
    (bye,) = await got.wait(1, kind=EnvelopeKind.BYE)
    assert bye.node == "a"
    assert await claim(b, "alice") is True  # a's names were released


async def test_a_closed_bus_refuses_claims_and_drops_what_is_published(
    make_bus: Callable[..., Awaitable[Any]],
) -> None:
    a = await make_bus(node_id="a")
    assert await claim(a, "alice") is True
    if isinstance(a, InProcessBus):
        a.close()
    else:
        await a.aclose()
    with pytest.raises(UsageError, match=r"is closed: stop the servers of its hub before closing the bus"):
        a.claim("bob", lambda granted: None)
    dropped = a.dropped
    a.publish(message("a", 1, "too late"))
    assert a.dropped == dropped + 1
    a.release("alice")  # nothing to do: closing released every name
    a.refresh(["alice"])
    b = await make_bus(node_id="b")
    assert await claim(b, "alice") is True


def test_envelope_codec_refuses_injection() -> None:
    good = encode_envelope(message("a", 1, "hello"))
    assert decode_envelope(good) == message("a", 1, "hello")
    for bad in (
        good.replace(b"hello", b"hello\\nbob: forged"),
        good.replace(b"hello", b"\\u001b[2Jclear"),
        good.replace(b'"alice"', b'"al ice"'),
        good.replace(b'"lobby"', b'"lob\\rby"'),
        b"[1, 2]",
        b"not json",
        good.replace(b'"k":"event"', b'"k":"nope"'),
    ):
        with pytest.raises(ValueError, match=r"."):
            decode_envelope(bad)


# --------------------------------------------------------- hubs on each bus


def _limits() -> Limits:
    return Limits(max_per_ip=10_000, rate_lines_per_second=1_000, rate_burst=1_000)


async def test_hubs_share_rooms_across_nodes(make_bus: Callable[..., Awaitable[Any]]) -> None:
    hub_a = Hub(limits=_limits(), bus=await make_bus(node_id="a"))
    hub_b = Hub(limits=_limits(), bus=await make_bus(node_id="b"))
    async with serve_tcp(hub_a, port=0) as server_a, serve_tcp(hub_b, port=0) as server_b:
        alice = await LineClient.connect(server_a.address, "alice")
        bob = await LineClient.connect(server_b.address, "bob")
        await alice.expect("* bob joined lobby")
        # The name is taken cluster-wide, whatever the case.
        carol = await LineClient.connect(server_b.address)
        await carol.send("ALICE")
        assert await carol.line() == "! nickname 'ALICE' is taken"
        await carol.send("carol")
        await carol.expect("* carol joined lobby")
        await alice.expect("* carol joined lobby")
        await bob.expect("* carol joined lobby")
        for i in range(50):
            await alice.send(f"line {i}")
        for i in range(50):
            assert await bob.line() == f"alice: line {i}"
        await carol.send("/who")
        await carol.expect("*** members of lobby (3): @bob, carol, alice")
        await bob.send("/join den")
        await alice.expect("* bob left lobby")
        await alice.send("/rooms")
        await alice.expect("*** rooms (2): den (1), lobby (2)")
        await alice.send("/msg BOB psst")
        await alice.expect("[pm to bob] psst")
        await bob.expect("[pm from alice] psst")
        await bob.send("/me waves")
        await bob.send("/nick bobby")
        await bob.expect("* bob is now known as bobby")
        await bob.send("/msg alice renamed")
        await alice.expect("[pm from bobby] renamed")  # node b's rename reached node a before this
        await alice.send("/msg bob hello?")
        assert await alice.line() == "! no member named 'bob'"
        # History replay on node a includes what was said on node b (lobby always exists on a).
        heard = asyncio.Event()
        hub_a.add_bot("watcher", lambda event: heard.set() if event == Message("carol", "said on b", "lobby") else None)
        await carol.send("said on b")
        async with asyncio.timeout(TIMEOUT):
            await heard.wait()
        await alice.send("/join den")
        await alice.send("/join lobby")
        before = await alice.expect("* alice joined lobby")
        assert "carol: said on b" in before
        # A member who quits on b leaves a's /who at once.
        await carol.send("/quit")
        await alice.expect("* carol left lobby (quit)")
        await alice.send("/who")
        await alice.expect("*** members of lobby (2): watcher, alice")
        for client in (alice, bob, carol):
            await client.close()
