"""``python -m asyncchat.bench``: the load generator for any asyncchat deployment.

It speaks line protocol v1 over the network only, so it measures whatever
server answers at ``--host``/``--port``.  Start the server under test with
limits high enough not to throttle the benchmark, for example::

    python -m asyncchat.tcp --port 7000 --max-per-ip 100000 --max-members 100000 \\
        --rate 1000000 --rate-burst 1000000 --outbox-high-water 8388608 --log-level warning

Members: ``--members`` in total, spread round-robin over ``--rooms`` (room 0
is ``lobby``, the others ``bench-TOKEN-N``); the first ``--senders`` of them
also send.  A sender's own lines are not echoed back, so every message is
expected by every *other* member of its room: expected deliveries are
``messages x (room members - 1)``.

Transports: ``--transport tcp`` (the default), ``udp`` (``--port`` is then
the UDP port), or ``mixed`` (even-numbered members over TCP, odd-numbered
over UDP; needs ``--udp-port``), against a server such as::

    python -m asyncchat --port 7000 --udp-port 7001 --max-per-ip 100000 --max-members 100000 \\
        --rate 1000000 --rate-burst 1000000 --outbox-high-water 8388608 --log-level warning

Each UDP member has its own socket (source port), verifies its address like
:func:`asyncchat.client.connect_udp`, and pings every ``--keepalive``
seconds.  UDP loses datagrams when a socket buffer is full: the loss is
reported per transport, and the exit status is 1 for any TCP loss but for
UDP loss only above ``--max-loss`` (a fraction, default 0).

Nodes: ``--node HOST:PORT`` (repeatable; ``--udp-node`` gives each node's UDP
address, in the same order) replaces ``--host``/``--port``.  Senders connect
to the first node; the receivers are dealt round-robin over all nodes, so
with two nodes about half the deliveries cross the bus (e.g. Redis).

Modes:

* ``saturation`` — each sender keeps at most ``--window`` messages in
  flight: it sends message *i* only after a *window probe* (a receiver of
  the same room in the same worker process) has seen message *i - window*.
  So the server's queues cannot absorb the load and hide it: throughput is
  what the server delivers end to end.
* ``rate`` — ``--rate`` messages per second in total, spread evenly over the
  senders and staggered; latency is measured from each message's
  *scheduled* send time, so a server (or generator) that falls behind shows
  up as latency, not as a lower rate.
* ``idle`` — log ``--members`` in, hold them for ``--duration`` seconds, and
  report the login time and, with ``--server-pid``, the server's memory per
  member (``VmRSS`` after all logged in minus before the first connect).

Measuring: all members log in (each sees its own join line), then each sends
``/ping`` and waits for its pong, so no join line is in flight when counting
starts.  Senders start together; the first ``--warmup`` seconds are not
measured, then ``--duration`` seconds are.  After the senders stop, the tool
waits (up to ``--drain-timeout``) for every expected line; what is missing is
loss.  Receivers count lines with ``bytearray.count``; a few *probes* per
room parse the timestamps (latency percentiles cover the messages sent in
the measured window).  The tool reports its own CPU use; above 90 % of a core
the generator, not the server, may be the limit — add ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from .coordinator import Coordinator
from .stats import MIN_SIZE, PROBE, WINDOW_PROBE, MemberSpec, WorkerPlan

__all__ = ["build_parser", "describe", "failed", "main", "make_plans"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m asyncchat.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m asyncchat.bench",
        description=(
            "Load-test an asyncchat server (or any server speaking line protocol v1). "
            "Start the server with high limits, e.g.: python -m asyncchat.tcp --port 7000 "
            "--max-per-ip 100000 --max-members 100000 --rate 1000000 --rate-burst 1000000 "
            "--outbox-high-water 8388608 --log-level warning"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=int, default=8080, help="server port (TCP; UDP with --transport udp)")
    parser.add_argument("--udp-port", type=int, default=None, help="server UDP port (needed for --transport mixed)")
    parser.add_argument(
        "--transport",
        choices=["tcp", "udp", "mixed"],
        default="tcp",
        help="how members connect (mixed: even-numbered members TCP, odd ones UDP)",
    )
    parser.add_argument(
        "--node",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="a server node (repeat for several; replaces --host/--port): senders use the first, "
        "receivers are spread round-robin over all",
    )
    parser.add_argument(
        "--udp-node",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="the UDP address of each --node, in the same order (mixed mode; replaces --udp-port)",
    )
    parser.add_argument(
        "--max-loss",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="UDP: fraction of expected UDP deliveries that may be lost without exit status 1 (TCP loss always fails)",
    )
    parser.add_argument(
        "--udp-rcvbuf", type=int, default=1 << 20, metavar="BYTES", help="UDP: SO_RCVBUF of each member socket"
    )
    parser.add_argument("--keepalive", type=float, default=30.0, help="UDP: seconds between keepalive /ping lines")
    parser.add_argument("--mode", choices=["saturation", "rate", "idle"], default="saturation")
    parser.add_argument("--members", type=int, default=100, help="members in total (senders included)")
    parser.add_argument("--senders", type=int, default=1, help="members that also send")
    parser.add_argument("--rooms", type=int, default=1, help="rooms the members are spread over")
    parser.add_argument("--rate", type=float, default=1000.0, help="rate mode: messages per second in total")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (idle: seconds held)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--window", type=int, default=32, help="saturation: messages in flight per sender")
    parser.add_argument(
        "--window-probe",
        choices=["first", "last"],
        default="last",
        help="saturation: the window counts messages not yet seen by the first or the last member to join",
    )
    parser.add_argument("--size", type=int, default=64, help=f"bytes of text per message (at least {MIN_SIZE})")
    parser.add_argument("--workers", type=int, default=1, help="load-generator processes")
    parser.add_argument("--probes", type=int, default=3, help="latency probes per room and worker")
    parser.add_argument("--server-pid", type=int, default=None, help="report this process's CPU and memory")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help="the tool's event loop")
    parser.add_argument("--cpu", type=int, default=None, metavar="N", help="pin the tool's processes to CPU N")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds per connection attempt")
    parser.add_argument(
        "--setup-timeout", type=float, default=60.0, help="seconds for all members to log in (and to sync)"
    )
    parser.add_argument("--drain-timeout", type=float, default=5.0, help="seconds to wait for late lines")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.members < 1 or args.rooms < 1 or args.workers < 1:
        parser.error("--members, --rooms and --workers must be at least 1")
    if args.mode != "idle" and not 1 <= args.senders < args.members:
        parser.error("--senders must be at least 1 and below --members (someone has to receive)")
    if args.rooms > args.members:
        parser.error(f"--rooms {args.rooms} is more than --members {args.members}")
    if args.size < MIN_SIZE:
        parser.error(f"--size must be at least {MIN_SIZE}")
    if args.window < 1 or args.probes < 1:
        parser.error("--window and --probes must be at least 1")
    if args.mode == "rate" and not args.rate > 0:
        parser.error("--rate must be positive")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    if not 0 <= args.max_loss <= 1:
        parser.error("--max-loss must be a fraction between 0 and 1")
    if args.keepalive <= 0 or args.udp_rcvbuf < 1:
        parser.error("--keepalive and --udp-rcvbuf must be positive")
    try:
        tcp_nodes, udp_nodes = nodes(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.transport != "tcp" and not udp_nodes:
        parser.error("--transport mixed needs --udp-port (or --udp-node)")
    if args.transport == "mixed" and len(udp_nodes) != len(tcp_nodes):
        parser.error(f"{len(tcp_nodes)} --node but {len(udp_nodes)} --udp-node: give one UDP address per node")


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def nodes(args: argparse.Namespace) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """The ``(host, port)`` of each node for TCP members and for UDP members.

    Without ``--node``: one node, ``--host``/``--port``.  Over UDP only,
    ``--node``/``--port`` are UDP addresses (``--udp-node``/``--udp-port``
    take precedence); in mixed mode the UDP addresses come from
    ``--udp-node`` or ``--udp-port`` (on each node's host).  Raises
    :class:`ValueError` for a malformed address.
    """
    tcp = tuple(_endpoint(n) for n in args.node) if args.node else ((args.host, args.port),)
    if args.udp_node:
        udp = tuple(_endpoint(n) for n in args.udp_node)
    elif args.udp_port is not None:
        udp = tuple((host, args.udp_port) for host, _ in tcp)
    elif args.transport == "udp":
        udp = tcp
    else:
        udp = ()
    return tcp, udp


def make_plans(args: argparse.Namespace, token: str) -> list[WorkerPlan]:
    """Split the members over the workers: room ``i % rooms``, worker ``i % workers``.

    Member *i* is a sender if ``i < senders``.  With ``--transport mixed``,
    odd-numbered members use UDP, even-numbered ones TCP.  Senders connect to
    the first node; the receivers (non-senders, in index order) are dealt
    round-robin over all the nodes, so with several nodes most deliveries
    cross the bus.  In each worker, the non-senders of each room include up to
    ``--probes`` latency probes, evenly spaced; one of them (the first or last
    receiver, by ``--window-probe``, preferring TCP receivers in mixed mode)
    is the window probe of that room's senders there.  Raises
    :class:`ValueError` if a sender has no receiving member of its room in
    its own worker (needed for its window).
    """
    senders = 0 if args.mode == "idle" else args.senders
    tcp_nodes, udp_nodes = nodes(args)
    node_count = len(tcp_nodes)
    node = [0 if i < senders else (i - senders) % node_count for i in range(args.members)]
    udp = [args.transport == "udp" or (args.transport == "mixed" and i % 2 == 1) for i in range(args.members)]
    rooms = tuple("lobby" if r == 0 else f"bench-{token}-{r}" for r in range(args.rooms))
    per_worker: list[list[int]] = [[] for _ in range(args.workers)]
    for i in range(args.members):
        per_worker[i % args.workers].append(i)
    plans = []
    for w, indices in enumerate(per_worker):
        probes: dict[int, int] = {}
        if args.mode != "idle":
            by_room: dict[int, list[int]] = {}
            for i in indices:
                if i >= senders:
                    by_room.setdefault(i % args.rooms, []).append(i)
            for i in indices:
                if i < senders and not by_room.get(i % args.rooms):
                    raise ValueError(
                        f"sender {i} has no receiver of room {i % args.rooms} in worker {w}: "
                        "use more members, fewer rooms or fewer workers"
                    )
            for receivers in by_room.values():
                count = min(args.probes, len(receivers))
                for k in range(count):  # the last receiver first, then spread towards the first
                    probes[receivers[len(receivers) - 1 - k * len(receivers) // count]] = PROBE
                if args.mode == "saturation":
                    reliable = [i for i in receivers if not udp[i]] or receivers
                    probes[reliable[0 if args.window_probe == "first" else -1]] = WINDOW_PROBE
        members = tuple(
            MemberSpec(i, f"b{token}m{i}", i % args.rooms, i < senders, probes.get(i, 0), udp[i], node[i])
            for i in indices
        )
        plans.append(
            WorkerPlan(
                worker=w,
                tcp_nodes=tcp_nodes,
                udp_nodes=udp_nodes,
                loop=args.loop,
                cpu=args.cpu,
                mode=args.mode,
                rooms=rooms,
                members=members,
                senders_total=senders,
                window=args.window,
                size=args.size,
                rate_per_sender=args.rate / senders if args.mode == "rate" else 0.0,
                connect_timeout=args.connect_timeout,
                setup_timeout=args.setup_timeout,
                drain_timeout=args.drain_timeout,
                deadline=2 * args.setup_timeout + args.warmup + args.duration + args.drain_timeout + 30,
                token=token,
                udp_rcvbuf=args.udp_rcvbuf,
                keepalive=args.keepalive,
            )
        )
    return plans


_CONFIG_KEYS = (
    "host",
    "port",
    "udp_port",
    "transport",
    "mode",
    "members",
    "senders",
    "rooms",
    "rate",
    "duration",
    "warmup",
    "window",
    "size",
    "workers",
    "max_loss",
)


def _loop_name(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def describe(result: dict[str, Any]) -> str:
    """The plain-text summary of a result."""
    c = result["config"]
    lines = [
        f"asyncchat bench: {c['mode']} mode, {c['transport']}, {c['members']} members"
        + (f" ({c['senders']} senders)" if c["mode"] != "idle" else "")
        + f" in {c['rooms']} room(s), {c['workers']} worker(s), {c['loop']} loop",
        "nodes:      " + ", ".join([f"tcp {n}" for n in c["nodes"]] + [f"udp {n}" for n in c["udp_nodes"]]),
        f"login:      {result['logged_in']} of {c['members']} members in {result['login_seconds']:.3f} s",
    ]
    if "held" in result:
        lines.append(f"held:       {result['held']} members still logged in after {c['duration']:g} s")
    if c["mode"] != "idle":
        what = f"window {c['window']}" if c["mode"] == "saturation" else f"rate {c['rate']:g}/s"
        lat = result["latency_ms"]
        lines += [
            f"load:       {c['size']}-byte messages, {what}, warmup {c['warmup']:g} s, measured {c['duration']:g} s",
            f"throughput: {result['deliveries_per_s']:,.0f} deliveries/s, {result['messages_per_s']:,.1f} messages/s",
            f"latency ms: p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"p99.9 {lat['p99.9']:.3f}  max {lat['max']:.3f}  ({lat['samples']} samples)",
            f"loss:       {result['loss']:,} of {result['expected']:,} expected deliveries"
            + (f" ({result['extra']:,} unexpected extra)" if result["extra"] else ""),
        ]
        udp = result["udp"]
        if c["transport"] != "tcp":
            lines.append(
                f"udp:        {udp['loss']:,} of {udp['expected']:,} UDP deliveries lost "
                f"({100 * udp['loss_fraction']:.3f}%, allowed {100 * c['max_loss']:.3f}%), "
                f"{udp['window_resets']} windows reopened, {udp['retries']} login/sync steps resent"
            )
        gen = result["generator"]
        cpu = ", ".join(f"{100 * x:.0f}%" for x in gen["cpu"])
        note = "  <- SATURATED: the generator may be the limit; add --workers" if gen["saturated"] else ""
        lines.append(f"generator:  cpu {cpu} of one core per worker{note}")
    errors = result["errors"]
    lines.append("errors:     " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
    lines += [f"            {sample}" for sample in result["error_samples"]]
    server = result.get("server")
    if server:
        text = f"server:     pid {server['pid']}"
        if "cpu_percent" in server:
            text += f", cpu {server['cpu_percent']:.0f}% of one core"
        if server.get("rss_after_login_bytes") is not None:
            text += f", rss {server['rss_after_login_bytes'] / 2**20:.1f} MiB after login"
        if "memory_per_member_bytes" in server:
            text += f", {server['memory_per_member_bytes'] / 1024:.2f} KiB per member"
        lines.append(text)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load tool; return 0, or 1 if the run failed or lost lines."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    token = secrets.token_hex(3)
    try:
        plans = make_plans(args, token)
    except ValueError as exc:
        parser.error(str(exc))
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    progress = sys.stderr if sys.stderr.isatty() and args.mode != "idle" else None
    coordinator = Coordinator(args, plans, progress)
    try:
        result = coordinator.run()
    except (RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        coordinator.stop()
    config = {key: getattr(args, key) for key in _CONFIG_KEYS}
    config["loop"] = _loop_name(args.loop)
    tcp_nodes, udp_nodes = nodes(args)
    config["nodes"] = [f"{host}:{port}" for host, port in tcp_nodes] if args.transport != "udp" else []
    config["udp_nodes"] = [f"{host}:{port}" for host, port in udp_nodes] if args.transport != "tcp" else []
    result["config"] = config
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(describe(result))
    return 1 if failed(result, args) else 0


def failed(result: dict[str, Any], args: argparse.Namespace) -> bool:
    """The exit status rule: a member not logged in, an error, any TCP loss, or UDP loss over ``--max-loss``."""
    if result["logged_in"] < args.members or result["errors"]:
        return True
    if args.mode == "idle":
        return bool(result["held"] < args.members)
    return bool(result["loss_by_transport"]["tcp"]) or result["udp"]["loss_fraction"] > args.max_loss
