"""Command-line front end shared by ``python -m asyncchat[.tcp|.udp]``.

Options, logging set-up, event-loop choice (uvloop when available), the
open-file limit and signal handling live here; the transports only provide
``serve_*``.
SIGINT and SIGTERM shut down gracefully: every member receives
``*** closing: server is shutting down`` and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._version import __version__
from .hub import Hub
from .limits import Limits, SlowConsumerPolicy
from .netaddr import LOOPBACK, IPNetwork, parse_networks
from .server import FD_RESERVE, Server, open_file_limit

__all__ = [
    "build_parser",
    "check_open_file_limit",
    "limits_from_args",
    "new_event_loop",
    "raise_open_file_limit",
    "run",
    "server_tls_context",
    "udp_trust_from_args",
]

logger = logging.getLogger("asyncchat")

#: File descriptors the process needs besides members, listening sockets and the
#: servers' FD_RESERVE: standard streams, the event loop's own, Redis, a UDP error socket.
FD_OVERHEAD = 16

# Limits field -> (flag, metavar, help).  Every field of Limits has a flag.
_LIMIT_FLAGS: dict[str, tuple[str, str, str]] = {
    "max_line_bytes": ("--max-line-bytes", "BYTES", "longest accepted input line"),
    "history_lines": ("--history", "N", "chat lines per room replayed to a member who joins"),
    "outbox_high_water": (
        "--outbox-high-water",
        "BYTES",
        "unsent output per member before the slow-consumer policy applies",
    ),
    "slow_consumer": (
        "--slow-consumer",
        "POLICY",
        "what to do with a member over the high-water mark: disconnect or drop",
    ),
    "rate_lines_per_second": ("--rate", "LINES", "sustained input lines per second per member"),
    "rate_burst": ("--rate-burst", "LINES", "lines per member allowed in a burst above --rate"),
    "rate_disconnect_after": (
        "--rate-disconnect-after",
        "LINES",
        "lines refused in a row by the rate limit before disconnecting",
    ),
    "max_members": ("--max-members", "N", "members across all transports"),
    "max_per_ip": (
        "--max-per-ip",
        "N",
        "connections (or UDP members) per source: an IPv4 address, or an IPv6 network of --ipv6-prefix bits",
    ),
    "ipv6_prefix_bits": ("--ipv6-prefix", "BITS", "IPv6 sources in one network of this prefix count as one source"),
    "presence_max_members": (
        "--presence-max-members",
        "N",
        "largest room that announces every join and leave to everyone (bigger rooms: only to the member itself)",
    ),
    "max_rooms": ("--max-rooms", "N", "rooms that may exist at once"),
    "login_timeout": ("--login-timeout", "SECONDS", "time a new connection has to choose a nickname"),
    "idle_timeout": ("--idle-timeout", "SECONDS", "silence after which a TCP member is disconnected"),
    "udp_idle_timeout": ("--udp-idle-timeout", "SECONDS", "silence after which a UDP member expires"),
    "udp_max_unverified": (
        "--udp-max-unverified",
        "N",
        "UDP addresses waiting to be verified (not counted in --max-members); when full the oldest is forgotten",
    ),
    "shutdown_timeout": ("--shutdown-timeout", "SECONDS", "time allowed for flushing output at shutdown"),
}


def build_parser(prog: str, *, tcp: bool, udp: bool) -> argparse.ArgumentParser:
    """The argument parser of one of the server commands."""
    what = " and ".join(name for name, on in (("TCP", tcp), ("UDP", udp)) if on)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"Serve an asyncchat chat room over {what}. Connect with e.g. "
        + ("'nc 127.0.0.1 8080'." if tcp else "'nc -u 127.0.0.1 8000'."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asyncchat {__version__}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (e.g. ::1, 0.0.0.0)")
    if tcp:
        parser.add_argument("--port", type=int, default=8080, help="TCP port (0 picks a free one; the log says which)")
        parser.add_argument(
            "--unix", metavar="PATH", default=None, help="listen on this Unix domain socket instead of --host/--port"
        )
        parser.add_argument(
            "--tls-cert", metavar="FILE", default=None, help="serve TLS with this PEM certificate (needs --tls-key)"
        )
        parser.add_argument("--tls-key", metavar="FILE", default=None, help="the PEM private key of --tls-cert")
    if udp:
        # Served alone, UDP takes --port (and still accepts --udp-port).
        flags = ["--udp-port"] if tcp else ["--port", "--udp-port"]
        parser.add_argument(*flags, dest="udp_port", type=int, default=8000, help="UDP port (0 picks a free one)")
        parser.add_argument(
            "--udp-strict",
            action="store_true",
            help="a UDP address must echo its verification token before its nickname is accepted",
        )
        parser.add_argument(
            "--udp-trust",
            action="append",
            metavar="CIDR",
            default=None,
            help="UDP sources in this range are verified without a token (repeatable; replaces the default "
            "127.0.0.0/8 and ::1, which cannot be forged from another host; 'none' trusts nothing)",
        )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level (INFO: connections; DEBUG: every line)",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop: auto uses uvloop when it is installed",
    )
    parser.add_argument(
        "--stats-interval", type=float, default=0.0, metavar="SECONDS", help="log statistics every SECONDS (0: never)"
    )
    # Multi-node (asyncchat.redis_bus): several servers share rooms through Redis.
    nodes = parser.add_argument_group("multi-node (needs asyncchat[redis])")
    nodes.add_argument(
        "--redis", metavar="URL", default=None, help="join the cluster on this Redis, e.g. redis://127.0.0.1:6379/0"
    )
    nodes.add_argument(
        "--redis-namespace", default="asyncchat", metavar="NAME", help="prefix of Redis keys and channel"
    )
    nodes.add_argument("--node-id", default=None, metavar="ID", help="this node's id (default: pid and random bits)")
    nodes.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS", help="seconds between heartbeats")
    nodes.add_argument(
        "--node-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="silence after which another node's members are removed",
    )
    limits = parser.add_argument_group("limits")
    defaults = Limits()
    for field in dataclasses.fields(Limits):
        flag, metavar, text = _LIMIT_FLAGS[field.name]
        default = getattr(defaults, field.name)
        if isinstance(default, SlowConsumerPolicy):
            limits.add_argument(
                flag, dest=field.name, choices=[p.value for p in SlowConsumerPolicy], default=default.value, help=text
            )
        else:
            limits.add_argument(flag, dest=field.name, type=type(default), default=default, metavar=metavar, help=text)
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` the parsed options describe (raises ``ValueError`` if out of range)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Limits):
        value = getattr(args, field.name)
        values[field.name] = SlowConsumerPolicy(value) if field.name == "slow_consumer" else value
    return Limits(**values)


def udp_trust_from_args(values: Sequence[str] | None) -> tuple[IPNetwork, ...]:
    """The trusted UDP ranges that ``--udp-trust`` options describe (raises ``ValueError`` if malformed).

    No option means the loopback ranges; ``none`` (alone) means no range.
    """
    if values is None:
        return LOOPBACK
    if any(value.strip().lower() == "none" for value in values):
        if len(values) > 1:
            raise ValueError("--udp-trust none cannot be combined with address ranges")
        return ()
    try:
        return parse_networks(values)
    except ValueError as exc:
        raise ValueError(f"--udp-trust: {exc}") from None


def server_tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context for *cert* and *key* (PEM files), or ``None`` if neither is given.

    Raises :class:`ValueError` if only one is given, :class:`OSError` or
    :class:`ssl.SSLError` if they cannot be loaded.
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key must be given together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def new_event_loop(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for *choice* (``auto``, ``asyncio`` or ``uvloop``)."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--loop uvloop needs uvloop: pip install 'asyncchat[uvloop]'") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit (``RLIMIT_NOFILE``) to the hard one where allowed; return the soft limit.

    Returns ``None`` where the platform has no such limit or it is unlimited.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
            logger.debug("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return open_file_limit()


def check_open_file_limit(max_members: int, listening: int) -> bool:
    """Log a WARNING if the open-file limit cannot hold *max_members* connections; return whether it can.

    What is needed: one descriptor per member, *listening* sockets,
    :data:`~asyncchat.server.FD_RESERVE` and :data:`FD_OVERHEAD`.
    """
    limit = open_file_limit()
    needed = max_members + listening + FD_RESERVE + FD_OVERHEAD
    if limit is None or needed <= limit:
        return True
    logger.warning(
        "the open-file limit is %d, but --max-members %d needs about %d (%d members + %d listening sockets + %d spare):"
        " about %d connections can be served; raise the limit (ulimit -n) or lower --max-members",
        limit,
        max_members,
        needed,
        max_members,
        listening,
        FD_RESERVE + FD_OVERHEAD,
        max(0, limit - listening - FD_RESERVE - FD_OVERHEAD),
    )
    return False


def setup_logging(level: str) -> None:
    """Log to stderr with timestamps at *level*."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(
    args: argparse.Namespace,
    hub: Hub,
    *,
    tcp: bool,
    udp: bool,
    bus: Any = None,
    tls: ssl.SSLContext | None = None,
    trust: tuple[IPNetwork, ...] = LOOPBACK,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if bus is not None:  # multi-node: closed after the servers, so it can say goodbye
            await stack.enter_async_context(bus)
            logger.info("node %s joining the cluster through Redis", bus.node_id)
        servers: list[Server] = []
        if tcp:
            from .tcp import serve_tcp

            servers.append(
                await stack.enter_async_context(serve_tcp(hub, host=args.host, port=args.port, unix=args.unix, ssl=tls))
            )
        if udp:
            from .udp import serve_udp

            servers.append(
                await stack.enter_async_context(
                    serve_udp(hub, host=args.host, port=args.udp_port, strict=args.udp_strict, trust=trust)
                )
            )
        check_open_file_limit(hub.limits.max_members, sum(len(server.addresses) for server in servers))
        if args.stats_interval > 0:
            from .runtime import attach

            runtime = attach(hub)
            runtime.log_statistics(args.stats_interval)
            stack.callback(runtime.release)
        logger.info("asyncchat %s running on %s loop; Ctrl-C stops", __version__, type(loop).__module__.split(".")[0])
        await stop.wait()
        logger.info("shutting down")
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


def run(argv: Sequence[str] | None, *, prog: str, tcp: bool, udp: bool) -> int:
    """Parse *argv*, serve until SIGINT/SIGTERM, and return the exit code."""
    parser = build_parser(prog, tcp=tcp, udp=udp)
    args = parser.parse_args(argv)
    try:
        limits = limits_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    trust = LOOPBACK
    if udp:
        try:
            trust = udp_trust_from_args(args.udp_trust)
        except ValueError as exc:
            parser.error(str(exc))
    tls = None
    if tcp:
        try:
            tls = server_tls_context(args.tls_cert, args.tls_key)
        except (ValueError, OSError, ssl.SSLError) as exc:
            parser.error(f"cannot use the TLS certificate: {exc}" if not isinstance(exc, ValueError) else str(exc))
    bus = None
    if args.redis:  # multi-node: the bus is started and stopped by _serve()
        from .errors import DependencyMissing

        try:
            from .redis_bus import RedisBus

            bus = RedisBus(
                args.redis,
                namespace=args.redis_namespace,
                node_id=args.node_id,
                heartbeat_interval=args.heartbeat,
                node_timeout=args.node_timeout,
            )
        except (DependencyMissing, ValueError) as exc:
            parser.error(str(exc))
    setup_logging(args.log_level)
    raise_open_file_limit()
    hub = Hub(limits=limits, bus=bus)
    try:
        with asyncio.Runner(loop_factory=new_event_loop(args.loop)) as runner:
            runner.run(_serve(args, hub, tcp=tcp, udp=udp, bus=bus, tls=tls, trust=trust))
    except OSError as exc:
        logger.error("cannot serve: %s", exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0
