"""Shared fixtures: every async test runs under the default loop and under uvloop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a test dependency
    uvloop = None

from asyncchat import Hub, Limits
from asyncchat.tcp import TcpServer, serve_tcp

LOOPS = ["asyncio", "uvloop"]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run each async test once per event loop implementation (ids: [asyncio], [uvloop])."""
    factories: dict[str, object] = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    elif os.environ.get("CI"):
        raise pytest.UsageError("uvloop is required in CI: pip install -e '.[test]'")
    return factories


@pytest.fixture
def hub() -> Hub:
    return Hub(limits=Limits(max_per_ip=10_000, rate_lines_per_second=1_000, rate_burst=1_000))


@pytest.fixture
async def tcp_server(hub: Hub) -> AsyncIterator[TcpServer]:
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        yield server
