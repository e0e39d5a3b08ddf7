"""The load tool: its pure pieces, and short runs against a loopback server."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from typing import Any

import pytest

from asyncchat import Hub, InProcessNetwork, Limits
from asyncchat.bench import build_parser, main, make_plans
from asyncchat.bench.stats import (
    MIN_SIZE,
    NOT_PROBE,
    PROBE,
    WINDOW_PROBE,
    Histogram,
    MemberSpec,
    Sender,
    encode_message,
    parse_chat_line,
    read_cpu_seconds,
    read_rss_bytes,
)
from asyncchat.tcp import serve_tcp
from asyncchat.udp import serve_udp

BENCH_LIMITS = Limits(
    max_per_ip=100_000,
    max_members=100_000,
    rate_lines_per_second=1_000_000,
    rate_burst=1_000_000,
    outbox_high_water=8 * 1024 * 1024,
)

# ------------------------------------------------------------ pure pieces


def test_message_has_the_requested_size_and_parses_back() -> None:
    for size in (MIN_SIZE, 64, 1000):
        line = encode_message(12, 345, 1_234_567_890_123, size)
        assert line.endswith(b"\n")
        assert len(line) == size + 1
        assert b"*" not in line
        assert b"!" not in line
        assert parse_chat_line(b"bm1: " + line[:-1]) == (12, 345, 1_234_567_890_123)


def test_message_size_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        encode_message(1, 1, 1, MIN_SIZE - 1)


@pytest.mark.parametrize(
    "line", [b"* bob joined lobby", b"*** pong x", b"! slow down", b"alice: hello", b"bob: 1 2 zz x", b""]
)
def test_other_lines_do_not_parse_as_messages(line: bytes) -> None:
    assert parse_chat_line(line) is None


def test_histogram_is_exact_for_small_values() -> None:
    hist = Histogram.empty()
    for value in range(1, 101):
        hist.record(value)
    assert hist.total == 100
    assert hist.percentile(50) == 50
    assert hist.percentile(90) == 90
    assert hist.percentile(99) == 99
    assert hist.percentile(99.9) == 100
    assert hist.percentile(100) == 100
    assert hist.max == 100


def test_histogram_relative_error_is_bounded_for_large_values() -> None:
    values = [int(1000 * 1.07**k) for k in range(200)]
    hist = Histogram.empty()
    for value in values:
        hist.record(value)
    ordered = sorted(values)
    for p in (10, 50, 90, 99, 99.9):
        exact = ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]
        assert abs(hist.percentile(p) - exact) <= exact / 64 + 1, p
    assert hist.percentile(100) == max(values)


def test_histogram_merge_and_empty() -> None:
    a, b = Histogram.empty(), Histogram.empty()
    assert a.percentile(99) == 0
    for value in range(10):
        a.record(value)
        b.record(value + 10)
    b.record(-5)  # clamped to 0
    a.merge(b)
    assert a.total == 21
    assert a.max == 19
    assert a.percentile(50) == 9
    with pytest.raises(ValueError, match="percentile"):
        a.percentile(0)


class _Lines:
    """A stand-in for a member's connection that keeps what a sender sends."""

    spec = MemberSpec(3, "b3", 0, True)
    state = 0
    udp = True

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def test_sender_keeps_its_window_and_reopens_a_stalled_one() -> None:
    peer = _Lines()
    sender = Sender(peer, window=4, size=MIN_SIZE, rate=0, senders_total=1)
    sender.pump()
    assert peer.sent == []  # not running yet
    sender.running = True
    sender.pump()
    fields = [parse_chat_line(b"b3: " + line) for line in peer.sent[0].splitlines()]
    assert [f[:2] for f in fields if f is not None] == [(3, 1), (3, 2), (3, 3), (3, 4)]  # one write
    sender.acked = 2  # the window probe saw message 2: two more may go
    sender.pump()
    assert sender.seq == 6
    assert peer.sent[1].count(b"\n") == 2
    sender.check_stall()  # the window moved since the last check
    assert sender.resets == 0
    sender.check_stall()  # ... but not since this one: messages 3 to 6 count as lost
    assert sender.resets == 1
    assert sender.acked == 6
    assert sender.seq == 10
    sender.running = False
    sender.check_stall()
    assert sender.resets == 1


def test_proc_readers_see_this_process() -> None:
    assert read_rss_bytes(os.getpid()) > 1024 * 1024
    assert read_cpu_seconds(os.getpid()) > 0


def _args(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def test_plans_split_members_rooms_senders_and_probes() -> None:
    plans = make_plans(_args("--members", "40", "--senders", "4", "--rooms", "2", "--workers", "2"), "t0")
    assert len(plans) == 2
    specs = [m for plan in plans for m in plan.members]
    assert sorted(m.index for m in specs) == list(range(40))
    assert len({m.nick for m in specs}) == 40
    assert sum(m.sender for m in specs) == 4
    assert plans[0].rooms == ("lobby", "bench-t0-1")
    for plan in plans:
        for room in range(2):
            local = [m for m in plan.members if m.room == room]
            probes = [m for m in local if m.probe != NOT_PROBE]
            if any(m.sender for m in local):
                assert [m.probe for m in probes].count(WINDOW_PROBE) == 1
            assert all(not m.sender for m in probes)
            assert len(probes) <= 3


def test_rate_mode_has_no_window_probes() -> None:
    plans = make_plans(_args("--mode", "rate", "--members", "10", "--senders", "2", "--rate", "100"), "t1")
    probes = [m.probe for m in plans[0].members if m.probe]
    assert probes
    assert set(probes) == {PROBE}
    assert plans[0].rate_per_sender == 50


def test_mixed_members_alternate_and_the_window_probe_is_tcp() -> None:
    plans = make_plans(_args("--transport", "mixed", "--udp-port", "9", "--members", "10", "--senders", "2"), "t4")
    members = plans[0].members
    assert [m.udp for m in members] == [i % 2 == 1 for i in range(10)]
    window = [m for m in members if m.probe == WINDOW_PROBE]
    assert len(window) == 1
    assert not window[0].udp  # the reliable transport paces the senders
    assert window[0].index == 8  # the last TCP receiver
    assert plans[0].tcp_nodes == (("127.0.0.1", 8080),)
    assert plans[0].udp_nodes == (("127.0.0.1", 9),)


def test_udp_transport_uses_the_port_as_udp_address() -> None:
    plans = make_plans(_args("--transport", "udp", "--port", "7001", "--members", "4"), "t5")
    assert all(m.udp for m in plans[0].members)
    assert plans[0].udp_nodes == (("127.0.0.1", 7001),)


def test_senders_use_the_first_node_and_receivers_all_nodes() -> None:
    argv = ["--members", "11", "--senders", "3", "--workers", "2"]
    argv += ["--node", "127.0.0.1:7001", "--node", "[::1]:7002", "--node", "localhost:7003"]
    plans = make_plans(_args(*argv), "t6")
    assert plans[0].tcp_nodes == (("127.0.0.1", 7001), ("::1", 7002), ("localhost", 7003))
    specs = sorted((m for plan in plans for m in plan.members), key=lambda m: m.index)
    assert [m.node for m in specs] == [0, 0, 0, 0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    "argv",
    [
        ["--transport", "mixed"],  # no UDP address
        ["--node", "127.0.0.1"],  # no port
        ["--transport", "mixed", "--node", "h:1", "--node", "h:2", "--udp-node", "h:3"],  # one UDP node short
        ["--max-loss", "2"],
    ],
)
def test_bad_node_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_sender_without_a_local_receiver_is_refused() -> None:
    with pytest.raises(ValueError, match="has no receiver"):
        make_plans(_args("--members", "3", "--senders", "2", "--workers", "2"), "t2")


# ---------------------------------------------------------- the tool itself


async def _bench(*argv: str) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m asyncchat.bench ARGV --json``; return (exit code, result, stderr).

    The tool runs on the same kind of event loop as the test's server.
    """
    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncchat.bench",
        *argv,
        "--json",
        "--loop",
        loop,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    result = json.loads(out) if out.strip() else {}
    return proc.returncode, result, err.decode()


@pytest.mark.parametrize(
    "mode_args",
    [
        ("--mode", "saturation", "--window", "8"),
        ("--mode", "rate", "--rate", "200"),
    ],
)
async def test_bench_delivers_every_message(mode_args: tuple[str, ...]) -> None:
    async with serve_tcp(Hub(limits=BENCH_LIMITS), port=0) as server:
        port = server.address[1]
        code, result, err = await _bench(
            "--port",
            str(port),
            "--members",
            "20",
            "--senders",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--server-pid",
            str(os.getpid()),
            *mode_args,
        )
    assert code == 0, (err, {k: v for k, v in result.items() if k != "config"})
    assert result["logged_in"] == 20
    assert result["counting"] == 20
    assert result["messages"] > 0
    assert result["deliveries"] > 0
    # Every message reaches the 19 other members of the room, none twice.
    assert result["expected"] == result["messages"] * 19
    assert result["deliveries"] == result["expected"]
    assert result["loss"] == 0
    assert result["errors"] == {}
    latency = result["latency_ms"]
    assert set(latency) == {"p50", "p90", "p99", "p99.9", "max", "samples"}
    assert latency["samples"] > 0
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert result["deliveries_per_s"] > 0
    assert result["messages_per_s"] > 0
    assert len(result["generator"]["cpu"]) == 1
    assert isinstance(result["generator"]["saturated"], bool)
    assert result["server"]["pid"] == os.getpid()
    assert "cpu_percent" in result["server"]


async def test_bench_with_workers_and_rooms() -> None:
    async with serve_tcp(Hub(limits=BENCH_LIMITS), port=0) as server:
        code, result, err = await _bench(
            "--port",
            str(server.address[1]),
            "--mode",
            "rate",
            "--rate",
            "400",
            "--members",
            "24",
            "--senders",
            "4",
            "--rooms",
            "2",
            "--workers",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0",
        )
    assert code == 0, (err, {k: v for k, v in result.items() if k != "config"})
    assert result["logged_in"] == 24
    # Two rooms of 12: each message reaches 11 members.
    assert result["expected"] == result["messages"] * 11
    assert result["deliveries"] == result["expected"]
    assert result["loss"] == 0
    assert len(result["generator"]["cpu"]) == 2


async def test_bench_idle_reports_memory_per_member() -> None:
    hub = Hub(limits=BENCH_LIMITS)
    async with serve_tcp(hub, port=0) as server:
        code, result, err = await _bench(
            "--port",
            str(server.address[1]),
            "--mode",
            "idle",
            "--members",
            "50",
            "--duration",
            "0.2",
            "--server-pid",
            str(os.getpid()),
        )
        assert hub.statistics().disconnects.get("closed", 0) <= 50
    assert code == 0, (err, {k: v for k, v in result.items() if k != "config"})
    assert result["logged_in"] == 50
    assert result["held"] == 50
    assert result["errors"] == {}
    server_info = result["server"]
    assert server_info["rss_after_login_bytes"] > 0
    assert "memory_per_member_bytes" in server_info


async def test_bench_reports_connect_errors_and_exits_1() -> None:
    async with serve_tcp(Hub(limits=BENCH_LIMITS), port=0) as server:
        port = server.address[1]
    # The server is closed: nothing listens on the port any more.
    code, result, _ = await _bench(
        "--port", str(port), "--mode", "idle", "--members", "3", "--duration", "0.1", "--connect-timeout", "2"
    )
    assert code == 1
    assert result["logged_in"] == 0
    assert result["errors"] == {"connect": 3}


@pytest.mark.parametrize(("choice", "position"), [("last", -1), ("first", 0)])
def test_window_probe_is_the_first_or_last_receiver(choice: str, position: int) -> None:
    plans = make_plans(_args("--members", "10", "--senders", "1", "--window-probe", choice), "t3")
    receivers = [m for m in plans[0].members if not m.sender]
    assert receivers[position].probe == WINDOW_PROBE
    assert [m.probe for m in receivers].count(WINDOW_PROBE) == 1
    assert receivers[-1].probe != NOT_PROBE  # the last to join is always a latency probe


# ------------------------------------------------------ UDP, mixed, nodes

SHORT = ("--duration", "0.3", "--warmup", "0", "--drain-timeout", "3")


def _check_result(code: int, result: dict[str, Any], err: str, *, members: int) -> None:
    assert code == 0, (err, {k: v for k, v in result.items() if k != "config"})
    assert result["logged_in"] == members
    assert result["counting"] == members
    assert result["messages"] > 0
    assert result["deliveries"] > 0
    assert result["errors"] == {}
    assert result["loss_by_transport"]["tcp"] == 0
    assert result["loss"] == result["loss_by_transport"]["udp"]
    assert result["deliveries"] + result["loss"] == result["expected"]
    assert set(result["udp"]) == {"deliveries", "expected", "loss", "loss_fraction", "window_resets", "retries"}
    assert result["latency_ms"]["samples"] > 0


async def test_bench_over_udp() -> None:
    async with serve_udp(Hub(limits=BENCH_LIMITS), port=0) as server:
        port = server.address[1]
        code, result, err = await _bench(
            "--transport", "udp", "--port", str(port), "--members", "20", "--senders", "2",
            "--window", "8", "--max-loss", "0.5", *SHORT,
        )  # fmt: skip
    _check_result(code, result, err, members=20)
    assert result["config"]["udp_nodes"] == [f"127.0.0.1:{port}"]
    # Every member is on UDP: one room of 20, each message expected by 19.
    assert result["udp"]["expected"] == result["expected"] == result["messages"] * 19
    assert result["udp"]["deliveries"] == result["deliveries"]


async def test_bench_mixed_tcp_and_udp_on_one_hub() -> None:
    hub = Hub(limits=BENCH_LIMITS)
    async with serve_tcp(hub, port=0) as tcp, serve_udp(hub, port=0) as udp:
        code, result, err = await _bench(
            "--transport", "mixed", "--port", str(tcp.address[1]), "--udp-port", str(udp.address[1]),
            "--mode", "rate", "--rate", "200", "--members", "20", "--senders", "2", "--max-loss", "0.5", *SHORT,
        )  # fmt: skip
    _check_result(code, result, err, members=20)
    # Ten UDP members, one of them a sender: its own lines are not expected back.
    assert result["expected"] == result["messages"] * 19
    assert 0 < result["udp"]["expected"] < result["expected"]
    assert result["udp"]["deliveries"] > 0


def _disconnects(hub: Hub) -> int:
    return sum(hub.statistics().disconnects.values())


async def test_bench_over_two_nodes() -> None:
    network = InProcessNetwork()
    hub_a, hub_b = Hub(limits=BENCH_LIMITS, bus=network.bus()), Hub(limits=BENCH_LIMITS, bus=network.bus())
    async with serve_tcp(hub_a, port=0) as a, serve_tcp(hub_b, port=0) as b:
        nodes = [f"127.0.0.1:{a.address[1]}", f"127.0.0.1:{b.address[1]}"]
        code, result, err = await _bench(
            "--node", nodes[0], "--node", nodes[1],
            "--members", "21", "--senders", "1", "--window", "8", *SHORT,
        )  # fmt: skip
        # The 20 receivers are split 10/10; the sender is on node a.  Each
        # member disconnects once, when the tool exits.
        async with asyncio.timeout(10):
            while _disconnects(hub_a) < 11 or _disconnects(hub_b) < 10:
                await asyncio.sleep(0.01)
        assert (_disconnects(hub_a), _disconnects(hub_b)) == (11, 10)
    _check_result(code, result, err, members=21)
    assert result["loss"] == 0
    assert result["expected"] == result["messages"] * 20
    assert result["config"]["nodes"] == nodes


async def test_bench_idle_over_udp_keeps_members_alive_and_reports_expiry() -> None:
    limits = Limits(max_per_ip=1000, udp_idle_timeout=0.5)
    async with serve_udp(Hub(limits=limits), port=0) as server:
        idle = ("--transport", "udp", "--port", str(server.address[1]), "--mode", "idle", "--members", "5")
        # Two runs at once: with keepalives, and without (the server's tick runs once a second).
        (code, result, err), (code2, result2, _) = await asyncio.gather(
            _bench(*idle, "--duration", "1.8", "--keepalive", "0.2"),
            _bench(*idle, "--duration", "1.8", "--keepalive", "60"),
        )
    assert code == 0, (err, result)
    assert result["held"] == 5
    assert code2 == 1
    assert result2["logged_in"] == 5
    assert result2["held"] == 0
    assert result2["errors"] == {"closed-by-server": 5}
