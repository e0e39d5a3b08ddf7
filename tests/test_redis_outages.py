"""The Redis bus survives any failure of its connections, and refuses to be used when not started.

Node ``a`` reaches a real redis-server through a TCP forwarder that the test
cuts (every connection reset) and restores; node ``b`` is connected
directly.  Cross-node traffic must resume after each cut, whatever the
failure looked like to redis-py (under uvloop a connection that dies during
a reconnect raises ``RuntimeError``, not a ``RedisError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asyncchat import Hub, Limits
from asyncchat.errors import UsageError
from asyncchat.tcp import serve_tcp

from .chatclient import TIMEOUT, LineClient
from .forwarder import Forwarder
from .redis_server import RedisServer, running_redis

pytest.importorskip("redis")
from asyncchat.redis_bus import RedisBus

_namespaces = itertools.count()
#: What redis-server sends a client when its SUBSCRIBE took effect (RESP2).
SUBSCRIBED = b"subscribe\r\n"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"out{os.getpid()}x{next(_namespaces)}"


def _limits() -> Limits:
    return Limits(max_per_ip=10_000, rate_lines_per_second=1_000, rate_burst=1_000)


@contextlib.asynccontextmanager
async def two_nodes(
    url_a: str, url_b: str, namespace: str
) -> AsyncIterator[tuple[RedisBus, RedisBus, LineClient, LineClient]]:
    """Nodes a and b (a RedisBus, a hub, a TCP server each) with alice on a and bob on b."""
    options: dict[str, Any] = {"namespace": namespace, "heartbeat_interval": 0.5, "node_timeout": 30.0}
    async with (
        RedisBus(url_a, node_id="a", max_backoff=0.1, **options) as bus_a,
        RedisBus(url_b, node_id="b", max_backoff=0.1, **options) as bus_b,
    ):
        async with asyncio.timeout(TIMEOUT):
            await bus_a.wait_subscribed()
            await bus_b.wait_subscribed()
        hub_a, hub_b = Hub(limits=_limits(), bus=bus_a), Hub(limits=_limits(), bus=bus_b)
        async with serve_tcp(hub_a, port=0) as server_a, serve_tcp(hub_b, port=0) as server_b:
            alice = await LineClient.connect(server_a.address, "alice")
            bob = await LineClient.connect(server_b.address, "bob")
            await alice.expect("* bob joined lobby")
            async with alice, bob:
                yield bus_a, bus_b, alice, bob


async def talk_both_ways(alice: LineClient, bob: LineClient, tag: str) -> None:
    await alice.send(f"a {tag}")
    await bob.expect(f"alice: a {tag}")
    await bob.send(f"b {tag}")
    await alice.expect(f"bob: b {tag}")


@pytest.mark.parametrize("how", ["refuse", "cut-after-reply"])
async def test_traffic_resumes_after_connections_die_during_a_reconnect(
    redis_server: RedisServer, namespace: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncchat")
    async with Forwarder(("127.0.0.1", redis_server.port)) as forwarder:
        url_a = f"redis://127.0.0.1:{forwarder.address[1]}/0"
        async with two_nodes(url_a, redis_server.url, namespace) as (bus_a, _bus_b, alice, bob):
            await talk_both_ways(alice, bob, "before")
            for round_ in range(3):
                accepted, refused = forwarder.accepted, forwarder.refused
                # Cut every connection of node a; the reconnects die too (reset at once, or
                # reset right after the server's first answer, in the middle of the handshake).
                forwarder.cut(refuse=how == "refuse", cut_after_reply=how == "cut-after-reply")
                if how == "refuse":
                    await forwarder.wait_refused(refused + 3)
                else:
                    await forwarder.wait_accepted(accepted + 3)
                await alice.send(f"during {round_}")  # buffered by node a's publisher
                forwarder.restore()
                # Node a listens again once redis-server confirms a new subscription.
                await forwarder.wait_seen(SUBSCRIBED)
                await bob.expect(f"alice: during {round_}")
                await talk_both_ways(alice, bob, f"after {round_}")
            assert bus_a.subscriber_failures + bus_a.publisher_failures >= 3
            assert bus_a.outages >= 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_any_exception_in_the_subscriber_is_logged_counted_and_retried(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only RedisError and OSError: the subscriber task must never end while the bus runs."""
    from redis.asyncio.client import PubSub

    caplog.set_level(logging.WARNING, logger="asyncchat")
    async with two_nodes(redis_server.url, redis_server.url, namespace) as (bus_a, _bus_b, alice, bob):
        real = PubSub.get_message
        failures = iter([RuntimeError("unable to perform operation on <TCPTransport closed=True>")])

        async def failing(self: PubSub, *args: Any, **kwargs: Any) -> Any:
            if self.connection_pool is bus_a._client.connection_pool:  # node a's subscriber only
                exc = next(failures, None)
                if exc is not None:
                    raise exc
            return await real(self, *args, **kwargs)

        monkeypatch.setattr(PubSub, "get_message", failing)
        # Node a's subscriber is blocked in the real get_message: a message makes it call again, and fail.
        await bob.send("wake a's subscriber")
        await alice.expect("bob: wake a's subscriber")
        async with asyncio.timeout(TIMEOUT):
            await bus_a.wait_subscribed()  # cleared by the failure, set again by the new subscription
        await talk_both_ways(alice, bob, "after")
        assert bus_a.subscriber_failures == 1
    logged = [r for r in caplog.records if "RuntimeError" in r.getMessage() or r.exc_info]
    assert logged, [r.getMessage() for r in caplog.records]


async def test_any_exception_in_the_publisher_is_logged_counted_and_retried(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio.client import Pipeline

    async with two_nodes(redis_server.url, redis_server.url, namespace) as (bus_a, _bus_b, alice, bob):
        real = Pipeline.execute
        failures = iter([RuntimeError("the handler is closed")])

        async def failing(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
            exc = next(failures, None)
            if exc is not None:
                raise exc
            return await real(self, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "execute", failing)
        await alice.send("kept in order 1")
        await alice.send("kept in order 2")
        await bob.expect("alice: kept in order 1")
        assert await bob.line() == "alice: kept in order 2"
        await talk_both_ways(alice, bob, "after")
        assert bus_a.publisher_failures == 1


async def test_any_exception_in_a_claim_still_answers_it(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio import Redis

    async with two_nodes(redis_server.url, redis_server.url, namespace) as (bus_a, _bus_b, alice, _bob):
        real = Redis.eval
        failures = iter([RuntimeError("the handler is closed")])

        async def failing(self: Redis, *args: Any, **kwargs: Any) -> Any:
            exc = next(failures, None)
            if exc is not None:
                raise exc
            return await real(self, *args, **kwargs)  # type: ignore[misc]

        monkeypatch.setattr(Redis, "eval", failing)
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        bus_a.claim("carol", answer.set_result)
        async with asyncio.timeout(TIMEOUT):
            assert await answer is True  # decided locally, as when Redis is unreachable
        assert bus_a.script_failures == 1
        await alice.send("/ping still here")
        await alice.expect("*** pong still here")


# ------------------------------------------------------------ not started


async def test_a_bus_that_is_not_started_refuses_to_be_used() -> None:
    bus = RedisBus("redis://127.0.0.1:1/0", node_id="idle")
    from asyncchat.bus import Envelope, EnvelopeKind

    for call in (
        lambda: bus.claim("alice", lambda granted: None),
        lambda: bus.publish(Envelope("idle", 1, EnvelopeKind.HEARTBEAT)),
        lambda: bus.release("alice"),
        lambda: bus.refresh(["alice"]),
    ):
        with pytest.raises(UsageError, match=r"RedisBus is not started: use 'async with bus' or await bus.start\(\)"):
            call()
    with pytest.raises(RuntimeError, match="not started"):
        await bus.wait_subscribed()


async def test_serving_a_hub_whose_bus_is_not_started_fails_at_once() -> None:
    bus = RedisBus("redis://127.0.0.1:1/0", node_id="idle")
    hub = Hub(bus=bus)
    with pytest.raises(UsageError, match="RedisBus is not started"):
        async with serve_tcp(hub, port=0):
            pass


async def test_a_closed_bus_cannot_be_started_again(redis_server: RedisServer) -> None:
    bus = RedisBus(redis_server.url, node_id="gone", namespace="closed")
    async with bus:
        pass
    with pytest.raises(RuntimeError, match="is closed: create a new RedisBus"):
        await bus.start()


async def test_an_envelope_nested_too_deep_is_counted_as_invalid(redis_server: RedisServer, namespace: str) -> None:
    """json.loads raises RecursionError (not ValueError) for deep nesting: it must not stop the subscriber."""
    import redis.asyncio as aioredis

    async with two_nodes(redis_server.url, redis_server.url, namespace) as (_bus_a, bus_b, alice, bob):
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.publish(bus_b.channel, b"[" * 100_000)
        finally:
            await client.aclose()
        await talk_both_ways(alice, bob, "after")
        assert bus_b.invalid == 1
        assert bus_b.subscriber_failures == 0
