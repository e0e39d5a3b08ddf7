"""The terminal client paces what it sends below the server's rate limit, so a piped file arrives whole."""

from __future__ import annotations

import asyncio
import io
import random

import pytest

from asyncchat import Hub, Limits
from asyncchat.client._pacing import DEFAULT_BURST, DEFAULT_RATE, Pacer
from asyncchat.tcp import serve_tcp

from .chatclient import TIMEOUT, LineClient

# ------------------------------------------------------------ the bucket (no clock)


def test_a_burst_then_the_rate() -> None:
    pacer = Pacer(10.0, 3, now=100.0)
    for _ in range(3):
        assert pacer.delay(100.0) == 0.0
        pacer.take(100.0)
    assert pacer.delay(100.0) == pytest.approx(0.1)
    assert pacer.delay(100.05) == pytest.approx(0.05)
    pacer.take(100.1)
    assert pacer.delay(100.1) == pytest.approx(0.1)
    # Idle time refills the bucket, up to the burst only.
    assert pacer.delay(200.0) == 0.0
    for _ in range(3):
        pacer.take(200.0)
    assert pacer.delay(200.0) == pytest.approx(0.1)


def test_a_line_sent_a_little_early_is_paid_back() -> None:
    pacer = Pacer(10.0, 1, now=0.0)
    pacer.take(0.0)
    pacer.take(0.099)  # a timer fired 1 ms early
    assert pacer.delay(0.099) == pytest.approx(0.1 + 0.001)


def test_rate_zero_does_not_pace() -> None:
    pacer = Pacer(0.0, 1)
    for _ in range(1000):
        assert pacer.delay(0.0) == 0.0
        pacer.take(0.0)


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 5), (1.0, 0)])
def test_bad_options(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Pacer(rate, burst)


class ServerBucket:
    """The server's rule (asyncchat.session): one token per line, refilled at the rate, capped at the burst."""

    def __init__(self, limits: Limits) -> None:
        self.rate = limits.rate_lines_per_second
        self.burst = limits.rate_burst
        self.tokens = float(self.burst)
        self.stamp = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.3])
def test_the_default_pace_never_meets_the_default_server_limit(jitter: float) -> None:
    """1,000 lines as fast as the pacer allows, delivered with up to *jitter* seconds of delay each."""
    rng = random.Random(7)
    server = ServerBucket(Limits())
    assert server.take(0.0)  # the nickname
    pacer = Pacer(DEFAULT_RATE, DEFAULT_BURST, now=0.0)
    now = arrived = 0.0
    for _ in range(1000):
        now += pacer.delay(now)
        pacer.take(now)
        arrived = max(arrived, now + rng.uniform(0.0, jitter))  # TCP keeps the order
        assert server.take(arrived)
    assert Limits().rate_lines_per_second > DEFAULT_RATE
    assert Limits().rate_burst > DEFAULT_BURST


# ------------------------------------------------------------ end to end


def _loop_name() -> str:
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


async def test_a_piped_file_well_over_the_burst_arrives_whole() -> None:
    from asyncchat.client._terminal import main

    # A server ten times faster than the default, and a client told so, keep the test short.
    limits = Limits(max_per_ip=10_000, rate_lines_per_second=200, rate_burst=40)
    hub = Hub(limits=limits)
    count = 120
    text = "".join(f"line {i}\n" for i in range(count))
    async with (
        serve_tcp(hub, host="127.0.0.1", port=0) as server,
        await LineClient.connect(server.address, "dave") as dave,
    ):
        host, port = server.address
        argv = ["--host", host, "--port", str(port), "--name", "carol", "--loop", _loop_name()]
        argv += ["--rate", "180", "--rate-burst", "30"]
        stdout = io.StringIO()
        client = asyncio.create_task(asyncio.to_thread(main, argv, stdin=io.StringIO(text), stdout=stdout))
        await dave.expect("* carol joined lobby")
        for i in range(count):
            assert await dave.line() == f"carol: line {i}"
        assert await dave.line() == "* carol left lobby (quit)"
        async with asyncio.timeout(TIMEOUT):
            assert await client == 0
    assert hub.statistics().rate_limited == 0
    assert "slow down" not in stdout.getvalue()
