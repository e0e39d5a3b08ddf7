"""Several server nodes sharing rooms through a real redis-server.

Nodes are in-process hubs (each with its own RedisBus and TCP/UDP servers on
port 0), plus ``python -m asyncchat.tcp --redis ...`` subprocesses where a
node must die by ``kill -9``.  Heartbeats and timeouts are short here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from asyncchat import Hub, Limits
from asyncchat.cli import build_parser
from asyncchat.events import Joined, Left
from asyncchat.tcp import TcpServer, serve_tcp

from .chatclient import TIMEOUT, LineClient
from .hardening import HubEvents, watching_logs
from .redis_server import RedisServer, free_port, running_redis

pytest.importorskip("redis")
from asyncchat.redis_bus import RedisBus

HEARTBEAT = 0.5
NODE_TIMEOUT = 3.0
_namespaces = itertools.count()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"mn{os.getpid()}x{next(_namespaces)}"


@dataclass
class Node:
    hub: Hub
    bus: RedisBus
    tcp: TcpServer


def _limits() -> Limits:
    return Limits(max_per_ip=10_000, rate_lines_per_second=1_000, rate_burst=1_000)


@contextlib.asynccontextmanager
async def node(url: str, namespace: str, node_id: str, **options: float) -> AsyncIterator[Node]:
    async with RedisBus(
        url, namespace=namespace, node_id=node_id, heartbeat_interval=HEARTBEAT, node_timeout=NODE_TIMEOUT, **options
    ) as bus:
        async with asyncio.timeout(TIMEOUT):
            await bus.wait_subscribed()
        hub = Hub(limits=_limits(), bus=bus)
        async with serve_tcp(hub, port=0) as tcp:
            yield Node(hub, bus, tcp)


@contextlib.contextmanager
def subprocess_node(url: str, namespace: str, node_id: str) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    """``python -m asyncchat.tcp --redis URL`` on a free port; stopped by PID."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncchat.tcp",
            "--port",
            "0",
            "--loop",
            "asyncio",
            "--redis",
            url,
            "--redis-namespace",
            namespace,
            "--node-id",
            node_id,
            "--heartbeat",
            str(HEARTBEAT),
            "--node-timeout",
            str(NODE_TIMEOUT),
            "--max-per-ip",
            "1000",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        port = 0
        for _ in range(50):  # the first log lines: bus started, then "serving TCP on (...)"
            line = process.stderr.readline()
            match = re.search(r"serving TCP on \('127\.0\.0\.1', (\d+)\)", line)
            if match:
                port = int(match[1])
                break
        assert port, "the subprocess node did not report its port"
        yield process, ("127.0.0.1", port)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()


async def test_tcp_and_udp_members_on_two_nodes_share_the_lobby(redis_server: RedisServer, namespace: str) -> None:
    from asyncchat.client import connect_udp
    from asyncchat.udp import serve_udp

    async with (
        node(redis_server.url, namespace, "a") as a,
        node(redis_server.url, namespace, "b") as b,
        serve_udp(b.hub, port=0) as udp_b,
    ):
        alice = await LineClient.connect(a.tcp.address, "alice")
        async with connect_udp(*udp_b.address, nick="dave", keepalive=None) as dave:
            await alice.expect("* dave joined lobby")
            await alice.send("hello dave")
            async with asyncio.timeout(TIMEOUT):
                while (line := await dave.receive_line()) != "alice: hello dave":
                    pass
            await dave.say("hi alice, from UDP")
            await alice.expect("dave: hi alice, from UDP")
            await alice.send("/msg dave psst")
            await alice.expect("[pm to dave] psst")
            async with asyncio.timeout(TIMEOUT):
                while (line := await dave.receive_line()) != "[pm from alice] psst":
                    pass
            await alice.send("/who")
            await alice.expect("*** members of lobby (2): @alice, dave")
        await alice.expect("* dave left lobby (quit)")
        await alice.close()
    assert line


async def test_kill_9_of_a_node_removes_its_members(redis_server: RedisServer, namespace: str) -> None:
    async with node(redis_server.url, namespace, "a") as a:
        alice = await LineClient.connect(a.tcp.address, "alice")
        with subprocess_node(redis_server.url, namespace, "doomed") as (process, address):
            bob = await LineClient.connect(address, "bob")
            await alice.expect("* bob joined lobby")
            await alice.send("hi bob")
            await bob.expect("alice: hi bob")  # node a's member list reached the new node before this
            await bob.send("/who")
            assert await bob.line() == "*** members of lobby (2): @bob, alice"
            await alice.send("/msg bob are you there?")
            await bob.expect("[pm from alice] are you there?")
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=TIMEOUT)
            await alice.expect("* bob left lobby (node timed out)")
            await bob.close()
        await alice.send("/who")
        await alice.expect("*** members of lobby (1): @alice")
        await alice.send("/msg bob still there?")
        await alice.expect("! no member named 'bob'")
        # bob's name expires with its claim (node_timeout after the last heartbeat).
        for _ in range(int(3 * NODE_TIMEOUT / 0.2)):
            again = await LineClient.connect(a.tcp.address)
            await again.send("bob")
            reply = await again.line()
            if reply == "*** you are bob; /help lists the commands":
                break
            assert reply == "! nickname 'bob' is taken"
            await again.close()
            await asyncio.sleep(0.2)  # waiting for a Redis key to expire: nothing to synchronise on
        else:
            pytest.fail("bob's nickname was never freed")
        await again.close()
        await alice.close()


async def test_redis_restart_mid_conversation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asyncchat")
    with running_redis() as server, watching_logs("asyncchat.redis") as logs:
        namespace = "restart"
        async with (
            node(server.url, namespace, "a", max_backoff=0.2) as a,
            node(server.url, namespace, "b", max_backoff=0.2) as b,
        ):
            alice = await LineClient.connect(a.tcp.address, "alice")
            carol = await LineClient.connect(a.tcp.address, "carol")
            bob = await LineClient.connect(b.tcp.address, "bob")
            await alice.expect("* bob joined lobby")
            await alice.send("before")
            await bob.expect("alice: before")
            server.stop()
            # Local members keep being served while Redis is down.
            for i in range(20):
                await alice.send(f"during {i}")
            for i in range(20):
                await carol.expect(f"alice: during {i}")
            # Both nodes notice: each subscriber logs its failure (every failure is logged, at
            # WARNING for the first of an outage, at DEBUG after that).
            await logs.wait(r"^node a: .*subscription failed")
            await logs.wait(r"^node b: .*subscription failed")
            assert not a.bus.connected
            assert not b.bus.connected
            server.start()
            # Cross-node traffic resumes once Redis confirms both subscriptions; then order holds.
            async with asyncio.timeout(TIMEOUT):
                await a.bus.wait_subscribed()
                await b.bus.wait_subscribed()
            for i in range(30):
                await alice.send(f"after {i}")
            seen = []
            while len(seen) < 30:
                line = await bob.line()
                if line.startswith("alice: after"):
                    seen.append(line)
            assert seen == [f"alice: after {i}" for i in range(30)]
            await bob.send("back")
            await alice.expect("bob: back")
            for client in (alice, bob, carol):
                await client.close()
        outages = [r for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.getMessage()]
        per_node = sorted(r.getMessage().split(":")[0] for r in outages)
        assert per_node == ["node a", "node b"], per_node
        assert a.bus.outages == b.bus.outages == 1


async def test_nickname_race_across_nodes_has_one_winner(redis_server: RedisServer, namespace: str) -> None:
    async with node(redis_server.url, namespace, "a") as a, node(redis_server.url, namespace, "b") as b:
        for round_ in range(15):
            nick = f"racer{round_}"
            one = await LineClient.connect(a.tcp.address)
            two = await LineClient.connect(b.tcp.address)
            await asyncio.gather(one.send(nick), two.send(nick))
            replies = sorted([await one.line(), await two.line()])
            assert replies == sorted([f"*** you are {nick}; /help lists the commands", f"! nickname '{nick}' is taken"])
            await one.close()
            await two.close()


async def test_a_burst_of_logins_does_not_look_like_an_outage(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """300 nickname claims at once exceed redis-py's pool (100 connections) unless they queue."""
    caplog.set_level(logging.WARNING, logger="asyncchat")
    async with node(redis_server.url, namespace, "a") as a:
        events = HubEvents(a.hub)
        clients = await asyncio.gather(*(LineClient.connect(a.tcp.address) for _ in range(300)))
        await asyncio.gather(*(client.send(f"burst{i}") for i, client in enumerate(clients)))
        for i, client in enumerate(clients):
            assert await client.line() == f"*** you are burst{i}; /help lists the commands"
        await asyncio.gather(*(client.close() for client in clients))
        await events.wait(lambda seen: sum(isinstance(event, Left) for event in seen) == 300)
        events.close()
        assert a.hub.statistics().members == 0
        assert a.bus.outages == 0
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]


async def test_lines_sent_before_the_claim_is_answered_are_kept(redis_server: RedisServer, namespace: str) -> None:
    async with node(redis_server.url, namespace, "a") as a, node(redis_server.url, namespace, "b") as b:
        events = HubEvents(a.hub)
        bob = await LineClient.connect(b.tcp.address, "bob")
        # Node a knows bob (its /who lists him) once b's join envelope arrived there.
        await events.wait(lambda seen: Joined("bob", "lobby") in seen)
        events.close()
        alice = await LineClient.connect(a.tcp.address)
        await alice.send_raw(b"bob\nalice\nfirst\n/who\n")  # one write: taken, then alice, then chat
        assert await alice.line() == "! nickname 'bob' is taken"
        await alice.expect("* alice joined lobby")
        await alice.expect("*** members of lobby (2): @alice, bob")
        await bob.expect("alice: first")
        await alice.close()
        await bob.close()


async def test_invalid_envelopes_are_counted_and_ignored(redis_server: RedisServer, namespace: str) -> None:
    import redis.asyncio as aioredis

    async with node(redis_server.url, namespace, "a") as a, node(redis_server.url, namespace, "b") as b:
        alice = await LineClient.connect(a.tcp.address, "alice")
        bob = await LineClient.connect(b.tcp.address, "bob")
        await alice.expect("* bob joined lobby")
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.publish(
                b.bus.channel, b'{"n":"evil","s":1,"k":"event","r":"lobby","e":["Message","x","a\\nb"]}'
            )
            await client.publish(b.bus.channel, b"\xff not json")
        finally:
            await client.aclose()
        await alice.send("still fine")
        await bob.expect("alice: still fine")
        assert b.bus.invalid == 2
        await alice.close()
        await bob.close()


async def test_publish_is_bounded_while_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncchat")
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", node_id="lonely", max_buffer=100, max_backoff=0.1)
    hub = Hub(limits=_limits(), bus=bus)
    async with bus, serve_tcp(hub, port=0) as server:
        alice = await LineClient.connect(server.address, "alice")  # the claim is decided locally
        bob = await LineClient.connect(server.address, "bob")
        await alice.expect("* bob joined lobby")
        for i in range(300):
            await alice.send(f"line {i}")
        for i in range(300):
            await bob.expect(f"alice: line {i}")
        assert len(bus._buffer) <= 100
        assert bus.dropped >= 300 + 2 - 100
        await alice.close()
        await bob.close()
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_every_server_command_has_the_redis_options() -> None:
    for tcp, udp in ((True, False), (False, True), (True, True)):
        args = build_parser("x", tcp=tcp, udp=udp).parse_args(
            ["--redis", "redis://127.0.0.1:1/0", "--node-timeout", "4", "--heartbeat", "1"]
        )
        assert (args.redis, args.node_timeout, args.heartbeat) == ("redis://127.0.0.1:1/0", 4.0, 1.0)


def test_without_redis_package_one_sentence_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import asyncchat\n"
        "try:\n"
        "    asyncchat.RedisBus\n"
        "except asyncchat.DependencyMissing as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "install asyncchat[redis]" in result.stdout
    assert result.stdout.count(".") <= 2  # one sentence
