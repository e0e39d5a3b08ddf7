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


@pytest.fixture(scope="session", params=LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Run each async test once per event loop implementation."""
    if request.param == "uvloop":
        if uvloop is None:
            if os.environ.get("CI"):
                pytest.fail("uvloop is required in CI")
            pytest.skip("uvloop is not installed")
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def hub() -> Hub:
    return Hub(limits=Limits(max_per_ip=10_000, rate_lines_per_second=1_000, rate_burst=1_000))


@pytest.fixture
async def tcp_server(hub: Hub) -> AsyncIterator[TcpServer]:
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        yield server
