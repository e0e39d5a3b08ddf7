"""Every limit has a finite default, a CLI flag, and acts over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator

import pytest

from asyncchat import Hub, Limits, SlowConsumerPolicy
from asyncchat.cli import _LIMIT_FLAGS, build_parser, limits_from_args
from asyncchat.runtime import attach
from asyncchat.tcp import serve_tcp

from .chatclient import TIMEOUT, LineClient
from .hardening import fail_on_error_logs, fresh_nick, watching_logs


@pytest.fixture(autouse=True)
def no_error_logs() -> Iterator[None]:
    with fail_on_error_logs():
        yield


# ------------------------------------------------------------- the table


def test_every_limit_is_finite_and_positive() -> None:
    defaults = Limits()
    for field in dataclasses.fields(Limits):
        value = getattr(defaults, field.name)
        if isinstance(value, SlowConsumerPolicy):
            assert value is SlowConsumerPolicy.DISCONNECT
            continue
        assert isinstance(value, int | float), field.name
        assert math.isfinite(value), field.name
        assert value > 0, field.name


@pytest.mark.parametrize("program", [(True, False), (False, True), (True, True)], ids=["tcp", "udp", "both"])
def test_every_limit_has_a_flag_with_the_same_default(program: tuple[bool, bool]) -> None:
    parser = build_parser("asyncchat", tcp=program[0], udp=program[1])
    assert set(_LIMIT_FLAGS) == {field.name for field in dataclasses.fields(Limits)}
    assert limits_from_args(parser.parse_args([])) == Limits()
    options = {opt for action in parser._actions for opt in action.option_strings}
    for flag, _, _ in _LIMIT_FLAGS.values():
        assert flag in options


def _other_value(value: object, name: str = "") -> str:
    if name == "ipv6_prefix_bits":  # at most 128
        return "48"
    if isinstance(value, SlowConsumerPolicy):
        return "drop"
    if isinstance(value, float):
        return repr(value * 2 + 0.5)
    assert isinstance(value, int)
    return str(value * 2 + 1)


def test_every_flag_sets_its_field() -> None:
    parser = build_parser("asyncchat", tcp=True, udp=True)
    defaults = Limits()
    for name, (flag, _, _) in _LIMIT_FLAGS.items():
        text = _other_value(getattr(defaults, name), name)
        limits = limits_from_args(parser.parse_args([flag, text]))
        expected = SlowConsumerPolicy.DROP if text == "drop" else type(getattr(defaults, name))(text)
        assert getattr(limits, name) == expected, flag
        assert getattr(limits, name) != getattr(defaults, name), flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-line-bytes", "10"], "max_line_bytes must be >= 64"),
        (["--rate", "0"], "rate_lines_per_second must be > 0"),
        (["--login-timeout", "-1"], "login_timeout must be > 0"),
        (["--ipv6-prefix", "129"], "ipv6_prefix_bits must be <= 128"),
        (["--udp-max-unverified", "0"], "udp_max_unverified must be > 0"),
        (["--slow-consumer", "ignore"], "invalid choice"),
        (["--tls-cert", "only.pem"], "--tls-cert and --tls-key must be given together"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from asyncchat.cli import run

    with pytest.raises(SystemExit) as info:
        run(argv, prog="asyncchat", tcp=True, udp=False)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_transport_flags_exist() -> None:
    args = build_parser("asyncchat", tcp=True, udp=False).parse_args(
        ["--unix", "/tmp/x.sock", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--host", "::1"]
    )
    assert (args.unix, args.tls_cert, args.tls_key, args.host) == ("/tmp/x.sock", "c.pem", "k.pem", "::1")


# ------------------------------------------------------- limits in action


async def test_idle_timeout_disconnects_a_silent_member() -> None:
    hub = Hub(limits=Limits(idle_timeout=1.0))
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        nick = fresh_nick("idle")
        async with await LineClient.connect(server.address, nick) as client:
            assert await client.eof() == ["*** closing: idle for too long"]
        assert hub.statistics().disconnects == {"idle": 1}


async def test_max_members_refuses_with_the_numbers() -> None:
    hub = Hub(limits=Limits(max_members=2))
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        async with (
            await LineClient.connect(server.address, fresh_nick("m")),
            await LineClient.connect(server.address),
        ):
            reader, writer = await asyncio.open_connection(*server.address)
            async with asyncio.timeout(TIMEOUT):
                assert await reader.read() == b"! [server-full] server is full (2 members)\n"
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        assert hub.statistics().refused == {"full": 1}


async def test_max_line_bytes_is_reported_with_the_numbers() -> None:
    hub = Hub(limits=Limits(max_line_bytes=100))
    async with (
        serve_tcp(hub, host="127.0.0.1", port=0) as server,
        await LineClient.connect(server.address, fresh_nick("long")) as client,
    ):
        await client.send("x" * 101, "x" * 100 + "\u00e9")
        assert await client.lines(2) == [
            "! line of 101 bytes exceeds limit of 100 bytes",
            "! line of 102 bytes exceeds limit of 100 bytes",
        ]


async def test_max_rooms() -> None:
    hub = Hub(limits=Limits(max_rooms=2))  # the lobby and one more
    async with (
        serve_tcp(hub, host="127.0.0.1", port=0) as server,
        await LineClient.connect(server.address, fresh_nick("rooms")) as client,
    ):
        await client.send("/join second")
        await client.expect(f"* {client_nick(hub)} joined second")
        await client.send("/join third")
        assert await client.line() == "! too many rooms (limit 2)"


def client_nick(hub: Hub) -> str:
    (member,) = [m for m in hub.members() if m.nick]
    return member.nick


async def test_statistics_are_logged_periodically(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "asyncchat")
    hub = Hub()
    async with serve_tcp(hub, host="127.0.0.1", port=0) as server:
        runtime = attach(hub)
        try:
            with watching_logs() as logs:
                runtime.log_statistics(0.05)
                async with await LineClient.connect(server.address, fresh_nick("stats")) as client:
                    await client.send("counted")
                    await logs.wait(r"^statistics .*lines_in=2,")
            runtime.log_statistics(0)
        finally:
            runtime.release()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics ")]
    assert lines
    assert all(r.levelno == logging.INFO for r in caplog.records if r.getMessage().startswith("statistics "))
