"""The runtime's tick: an injectable interval, and a timer that re-arms whatever a tick does."""

from __future__ import annotations

import asyncio
import logging

import pytest

from asyncchat import Hub, Limits
from asyncchat.events import ChatEvent, Joined, Left, Message
from asyncchat.runtime import TICK_SECONDS, attach, watch
from asyncchat.tcp import serve_tcp

from .chatclient import TIMEOUT, LineClient
from .hardening import watching_logs


class FlakyHub(Hub):
    """A hub whose second tick raises; it counts its ticks and lets a test await one."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ticks = 0
        self.ticked = asyncio.Event()

    def tick(self, now: float) -> None:
        self.ticks += 1
        self.ticked.set()
        if self.ticks == 2:
            raise ZeroDivisionError("a bug in tick")
        super().tick(now)

    async def wait_ticks(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while self.ticks < count:
                self.ticked.clear()
                await self.ticked.wait()


async def test_a_tick_that_raises_is_logged_and_the_timer_re_arms() -> None:
    hub = FlakyHub(limits=Limits(login_timeout=0.3))
    with watching_logs() as logs:
        runtime = attach(hub, tick_seconds=0.05)
        try:
            async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
                await hub.wait_ticks(2)
                (failed,) = await logs.wait(r"tick of .* failed")
                assert failed.levelno == logging.ERROR
                assert failed.exc_info is not None
                assert runtime.ticks_failed == 1
                # Later ticks still come, and still enforce the login timeout.
                async with await LineClient.connect(server.address) as silent:
                    assert await silent.eof() == ["*** closing: no nickname within 0.3 seconds"]
                assert hub.ticks > 2
        finally:
            runtime.release()


async def test_the_tick_interval_is_injectable() -> None:
    hub = FlakyHub()
    hub.ticks = 10  # never raises
    runtime = attach(hub, tick_seconds=0.01)
    try:
        assert runtime.tick_seconds == 0.01
        await hub.wait_ticks(20)
        assert attach(hub) is runtime  # the servers' attach() keeps the interval
        assert runtime.tick_seconds == 0.01
        runtime.release()
        assert attach(hub, tick_seconds=0.02).tick_seconds == 0.02  # and a later one may change it
        runtime.tick_seconds = TICK_SECONDS
        with pytest.raises(ValueError, match="tick_seconds must be > 0, not 0"):
            runtime.tick_seconds = 0
    finally:
        runtime.release()


async def test_the_first_tick_raises_to_the_caller_of_attach() -> None:
    class BrokenHub(Hub):
        def tick(self, now: float) -> None:
            raise ZeroDivisionError("broken at once")

    hub = BrokenHub()
    with pytest.raises(ZeroDivisionError, match="broken at once"):
        attach(hub)
    with pytest.raises(ZeroDivisionError, match="broken at once"):
        async with serve_tcp(hub, host="127.0.0.1", port=0):
            pass


async def test_watch_ends_when_the_hubs_servers_close() -> None:
    hub = Hub(limits=Limits(shutdown_timeout=TIMEOUT))
    async with watch(hub) as events:
        server = serve_tcp(hub, port=0)
        await server.start()
        try:
            async with await LineClient.connect(server.address, "alice") as alice:
                await alice.send("hello")
                async with asyncio.timeout(TIMEOUT):
                    assert await anext(events) == Joined("alice", "lobby")
                    assert await anext(events) == Message("alice", "hello", "lobby")
                await server.aclose()
                assert (await alice.eof())[-1] == "*** closing: server is shutting down"
        finally:
            await server.aclose()
        seen: list[ChatEvent] = []
        async with asyncio.timeout(TIMEOUT):
            async for event in events:  # ends by itself: the runtime was released
                seen.append(event)
        assert seen == [Left("alice", "lobby", "server shutting down")]
        with pytest.raises(StopAsyncIteration):
            await anext(events)
