"""Helpers shared by the hardening tests: an ERROR-log tripwire and a chat check."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from asyncchat import Hub
from asyncchat.events import ChatEvent

from .chatclient import TIMEOUT, LineClient

_nicks = itertools.count(1)

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class ErrorRecords(logging.Handler):
    """Keeps every record at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def fail_on_error_logs(*names: str) -> Iterator[ErrorRecords]:
    """Fail if a record at ERROR or above reaches the ``asyncchat`` or ``asyncio`` loggers."""
    handler = ErrorRecords()
    loggers = [logging.getLogger(name) for name in (names or ("asyncchat", "asyncio"))]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    shown = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in handler.records]
    assert not shown, f"ERROR log records: {shown}"


def fresh_nick(prefix: str = "user") -> str:
    """A nickname no other test client uses."""
    return f"{prefix}{next(_nicks)}"


async def client_from(opener: Opener, nick: str | None = None) -> LineClient:
    """A :class:`LineClient` over whatever stream *opener* opens; greeted and optionally logged in."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await opener()
    return await LineClient.start(reader, writer, nick)


async def check_chat(opener: Opener) -> None:
    """Two fresh clients join and chat both ways: the server still serves."""
    first, second = fresh_nick("fresh"), fresh_nick("fresh")
    async with await client_from(opener, first) as a, await client_from(opener, second) as b:
        await a.expect(f"* {second} joined lobby")
        await a.send("hello after the attack")
        assert await b.expect(f"{first}: hello after the attack") == []
        await b.send("/msg " + first + " still here")
        await a.expect(f"[pm from {second}] still here")


def tcp_opener(address: tuple[str, int], **kwargs: object) -> Opener:
    """An opener of TCP connections to *address* (``kwargs`` go to ``open_connection``)."""

    def opener() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return asyncio.open_connection(address[0], address[1], limit=1 << 22, **kwargs)  # type: ignore[arg-type]

    return opener


def open_fds() -> int:
    """File descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


async def wait_for(condition: Callable[[], bool], *, timeout: float = TIMEOUT, step: float = 0.02) -> None:
    """Poll *condition* until it holds (for server-side state no line announces)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(step)


class LogWaiter(logging.Handler):
    """Keeps the records of a logger so a test can await one (instead of polling)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed: asyncio.Event | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self._changed is not None:
            self._changed.set()

    def matching(self, pattern: str) -> list[logging.LogRecord]:
        """Records whose message matches *pattern* (a regular expression), at any level."""
        return [r for r in self.records if re.search(pattern, r.getMessage())]

    async def wait(self, pattern: str, *, count: int = 1, timeout: float = TIMEOUT) -> list[logging.LogRecord]:
        """Wait (bounded) until *count* records match *pattern*; return them."""
        self._changed = self._changed or asyncio.Event()
        async with asyncio.timeout(timeout):
            while len(found := self.matching(pattern)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


@contextmanager
def watching_logs(name: str = "asyncchat", level: int = logging.DEBUG) -> Iterator[LogWaiter]:
    """A :class:`LogWaiter` on logger *name*, which logs at *level* meanwhile."""
    waiter = LogWaiter()
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.setLevel(level)
    logger.addHandler(waiter)
    try:
        yield waiter
    finally:
        logger.removeHandler(waiter)
        logger.setLevel(old_level)


class HubEvents:
    """Records what a hub's observers see, so a test can await an event (instead of polling)."""

    def __init__(self, hub: Hub) -> None:
        self.events: list[ChatEvent] = []
        self._changed = asyncio.Event()
        self._unsubscribe = hub.subscribe(self._seen)

    def _seen(self, event: ChatEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait(self, condition: Callable[[list[ChatEvent]], bool], *, timeout: float = TIMEOUT) -> None:
        """Wait (bounded) until *condition* holds for the events seen so far."""
        async with asyncio.timeout(timeout):
            while not condition(self.events):
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self._unsubscribe()
