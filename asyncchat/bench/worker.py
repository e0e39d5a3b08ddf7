"""One process of the load tool: members, senders and probes on one event loop.

The coordinator (:mod:`.coordinator`) starts one worker per ``--workers``
and drives it over a pipe, in steps::

    parent -> ("login",)             (once every worker process is up)
    worker -> ("ready", info)        every member connected and saw its own join line
    parent -> ("report",)            idle mode only, after the hold; then "stop"
    worker -> ("held", info)         members still connected, errors so far
    parent -> ("sync",)              (not in idle mode)
    worker -> ("synced", info)       every member saw the pong of its /ping
    parent -> ("start", t0, tw, te)  monotonic ns: send from t0, measure tw..te
    worker -> ("progress", lines, messages)   twice a second until te
    worker -> ("sent", per_room_messages)
    parent -> ("expect", per_room_messages_of_all_workers)
    worker -> ("result", info)       after every expected line arrived, or the drain timeout
    parent -> ("stop",)              close everything and exit

The members themselves (the receive path) are in :mod:`.members`.

UDP members log in as :mod:`asyncchat.client._udp` does: a padded blank
probe, then (in one datagram) ``/verify TOKEN``, the nickname and the
``/join``; every step is sent again after :data:`RETRY_SECONDS` without an
answer.  They send ``/ping`` every ``keepalive`` seconds and ``/quit`` when
the worker stops.  Senders pack as many messages as fit in
:data:`MAX_DATAGRAM` bytes into one datagram.  A saturation window that has
not moved for :data:`WINDOW_STALL_SECONDS` in a worker with UDP members is
taken as lost (every message in flight counted as seen) and counted in
``window_resets``, so a lost datagram cannot stall a sender for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .members import (
    _KEEPALIVE,
    _PROGRESS_SECONDS,
    _UPKEEP_SECONDS,
    COUNTING,
    READY,
    UDP_DRAIN_QUIET_SECONDS,
    WINDOW_STALL_SECONDS,
    BenchMember,
    BenchTcpMember,
    BenchUdpMember,
    Stopped,
)
from .stats import Errors, Group, Histogram, MemberSpec, Sender, WorkerPlan

__all__ = ["Worker", "worker_main"]


class Worker:
    """Runs one :class:`WorkerPlan` under the coordinator's commands."""

    def __init__(self, conn: Connection, plan: WorkerPlan) -> None:
        self.conn = conn
        self.plan = plan
        self.errors = Errors()
        self.other_lines = 0
        self.closing = False
        self.groups = {r: Group(r, name) for r, name in enumerate(plan.rooms)}
        self.peers: list[BenchMember] = []
        self.udp_peers: list[BenchUdpMember] = []
        self.senders: list[Sender] = []
        self.udp_retries = 0
        self._waiting = 0
        self._done: asyncio.Event | None = None
        self._inbox: asyncio.Queue[tuple[Any, ...] | None] | None = None

    # -- coordination

    def _on_pipe(self) -> None:
        assert self._inbox is not None
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            message = None  # the coordinator is gone
        self._inbox.put_nowait(message)

    async def _expect(self, kind: str) -> tuple[Any, ...]:
        assert self._inbox is not None
        message = await self._inbox.get()
        if message is None or message[0] == "stop":
            raise Stopped(f"stopped while waiting for {kind}")
        if message[0] != kind:
            raise RuntimeError(f"expected {kind!r} from the coordinator, got {message[0]!r}")
        return message

    def _tell(self, *message: Any) -> None:
        self.conn.send(message)

    def member_ready(self, peer: BenchMember | None, ok: bool) -> None:
        self._count_down()

    def member_synced(self, peer: BenchMember) -> None:
        self._count_down()

    def _count_down(self) -> None:
        self._waiting -= 1
        if self._waiting <= 0 and self._done is not None:
            self._done.set()

    async def _wait_all(self, count: int, start: Callable[[], None], what: str) -> None:
        self._waiting = count
        self._done = asyncio.Event()
        start()
        if self._waiting <= 0:
            return
        try:
            async with asyncio.timeout(self.plan.setup_timeout):
                await self._done.wait()
        except TimeoutError:
            self.errors.add("timeout", f"{self._waiting} members not {what} after {self.plan.setup_timeout:g} s")

    # -- phases

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        loop.add_reader(self.conn.fileno(), self._on_pipe)
        self._tell("up", os.getpid())
        upkeep = asyncio.create_task(self._upkeep())
        try:
            async with asyncio.timeout(self.plan.deadline):
                await self._phases()
        finally:
            self.closing = True
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            loop.remove_reader(self.conn.fileno())
            for udp_peer in self.udp_peers:
                udp_peer.send(b"/quit\n")  # UDP has no end of stream: say goodbye
            for peer in self.peers:
                peer.abort()
            await asyncio.sleep(0)

    async def _upkeep(self) -> None:
        """UDP only: resend unanswered login and sync steps, keep members alive, reopen lost windows."""
        keepalive = stall = time.monotonic()
        while True:
            await asyncio.sleep(_UPKEEP_SECONDS)
            if not self.udp_peers:
                continue
            now = time.monotonic()
            for peer in self.udp_peers:
                if peer.retry(now):
                    self.udp_retries += 1
            if now - keepalive >= self.plan.keepalive:
                keepalive = now
                for peer in self.udp_peers:
                    if peer.state in (READY, COUNTING):
                        peer.send(_KEEPALIVE)
            if self.plan.mode == "saturation" and now - stall >= WINDOW_STALL_SECONDS:
                stall = now
                for sender in self.senders:
                    sender.check_stall()

    async def _phases(self) -> None:
        plan = self.plan
        await self._expect("login")
        first = time.monotonic_ns()
        self._waiting = len(plan.members)
        self._done = asyncio.Event()
        await self._connect_all()
        if self._waiting > 0:
            try:
                async with asyncio.timeout(plan.setup_timeout):
                    await self._done.wait()
            except TimeoutError:
                self.errors.add("timeout", f"{self._waiting} members not logged in after {plan.setup_timeout:g} s")
        ready = [p for p in self.peers if p.state == READY]
        self._tell("ready", {"first": first, "last": time.monotonic_ns(), "ready": len(ready), **self._errors()})
        if plan.mode == "idle":
            await self._expect("report")
            self._tell("held", {"held": sum(p.state == READY for p in self.peers), **self._errors()})
            await self._expect("stop")
            return
        await self._expect("sync")
        token = f"{plan.token}w{plan.worker}".encode()

        def start_sync() -> None:
            for peer in ready:
                peer.start_sync(token)

        await self._wait_all(len(ready), start_sync, "synced")
        self._tell("synced", {"counting": sum(p.state == COUNTING for p in self.peers), **self._errors()})
        _, t0, tw, te = await self._expect("start")
        sent_warm, lines_warm, cpu_warm = await self._measure(t0, tw, te)
        per_room = [0] * len(plan.rooms)
        for sender in self.senders:
            per_room[sender.peer.spec.room] += sender.seq
        sent_end = sum(s.seq for s in self.senders)
        lines_end = sum(g.lines for g in self.groups.values())
        cpu = (_cpu_seconds() - cpu_warm) / max(1e-9, (te - tw) / 1e9)
        self._tell("sent", per_room)
        _, expected_rooms = await self._expect("expect")
        expected, expected_udp = await self._drain(expected_rooms)
        hist = Histogram.empty()
        for group in self.groups.values():
            hist.merge(group.hist)
        received = sum(g.lines for g in self.groups.values())
        self._tell(
            "result",
            {
                "window_messages": sent_end - sent_warm,
                "window_deliveries": lines_end - lines_warm,
                "messages": sent_end,
                "deliveries": received,
                "expected": expected,
                "deliveries_udp": sum(g.udp_lines for g in self.groups.values()),
                "expected_udp": expected_udp,
                "window_resets": sum(s.resets for s in self.senders),
                "udp_retries": self.udp_retries,
                "cpu": cpu,
                "hist": hist,
                "other_lines": self.other_lines,
                **self._errors(),
            },
        )
        await self._expect("stop")

    def _errors(self) -> dict[str, Any]:
        return {"errors": dict(self.errors.counts), "samples": list(self.errors.samples)}

    async def _connect_all(self) -> None:
        plan = self.plan
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(plan.parallel_connects)
        udp_limit = asyncio.Semaphore(plan.parallel_udp_logins)
        udp_addresses = [await _resolve(loop, host, port) for host, port in plan.udp_nodes]

        async def connect_tcp(spec: MemberSpec, group: Group) -> BenchMember | None:
            host, port = plan.tcp_nodes[spec.node]
            peer = BenchTcpMember(self, spec, group)
            async with limit:
                try:
                    async with asyncio.timeout(plan.connect_timeout):
                        await loop.create_connection(lambda: peer, host, port)
                except (OSError, TimeoutError) as exc:
                    self.errors.add("connect", f"{host}:{port}: {exc or 'timed out'}")
                    return None
            self.peers.append(peer)
            peer.send(peer.login_lines())
            return peer

        async def connect_udp(spec: MemberSpec, group: Group) -> BenchMember | None:
            family, address = udp_addresses[spec.node]
            peer = BenchUdpMember(self, spec, group)
            await udp_limit.acquire()
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, plan.udp_rcvbuf)
                    sock.setblocking(False)
                    sock.connect(address)
                    await loop.create_datagram_endpoint(lambda: peer, sock=sock)
                except OSError as exc:
                    sock.close()
                    self.errors.add("connect", f"udp {address[0]}:{address[1]}: {exc}")
                    return None
                self.peers.append(peer)
                self.udp_peers.append(peer)
                peer.send(peer.pending)
                # Hold the slot until this login ends (or the setup timeout, counted elsewhere).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(plan.setup_timeout):
                        await peer.logged_in.wait()
            finally:
                udp_limit.release()
            return peer

        async def connect(spec: MemberSpec) -> None:
            group = self.groups[spec.room]
            peer = await (connect_udp if spec.udp else connect_tcp)(spec, group)
            if peer is None:
                self.member_ready(None, False)
                return
            group.local += 1
            if spec.sender:
                sender = Sender(
                    peer,
                    window=plan.window,
                    size=plan.size,
                    rate=plan.rate_per_sender,
                    senders_total=plan.senders_total,
                )
                group.senders[spec.index] = sender
                self.senders.append(sender)

        await asyncio.gather(*(connect(spec) for spec in plan.members))

    async def _measure(self, t0: int, tw: int, te: int) -> tuple[int, int, float]:
        for group in self.groups.values():
            group.lo, group.hi = tw, te
        senders = [s for s in self.senders if s.peer.state == COUNTING]
        for sender in senders:
            sender.t0 = t0
        await _sleep_until(t0)
        for sender in senders:
            sender.running = True
        pacer = None
        if self.plan.mode == "saturation":
            for sender in senders:
                sender.pump()
        elif senders:
            pacer = asyncio.create_task(self._pace(senders, te))
        progress = asyncio.create_task(self._progress(te))
        try:
            await _sleep_until(tw)
            sent_warm = sum(s.seq for s in self.senders)
            lines_warm = sum(g.lines for g in self.groups.values())
            cpu_warm = _cpu_seconds()
            await _sleep_until(te)
            for sender in self.senders:
                sender.running = False
        finally:
            for task in (pacer, progress):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return sent_warm, lines_warm, cpu_warm

    async def _pace(self, senders: list[Sender], end: int) -> None:
        while True:
            now = time.monotonic_ns()
            due = min(sender.send_due(now, end) for sender in senders)
            if due >= end:
                return
            await asyncio.sleep(max(0, due - time.monotonic_ns()) / 1e9)

    async def _progress(self, end: int) -> None:
        while time.monotonic_ns() < end:
            await asyncio.sleep(_PROGRESS_SECONDS)
            self._tell("progress", sum(g.lines for g in self.groups.values()), sum(s.seq for s in self.senders))

    async def _drain(self, room_messages: list[int]) -> tuple[int, int]:
        """Wait until every member got every message of its room; return the lines expected (all, UDP).

        TCP lines cannot be lost, so draining waits for them up to the
        drain timeout; UDP lines can, so once only UDP lines are missing it
        stops after :data:`UDP_DRAIN_QUIET_SECONDS` without a new one.
        """
        own = {(False, r): 0 for r in range(len(self.plan.rooms))} | {(True, r): 0 for r in range(len(self.plan.rooms))}
        for sender in self.senders:
            own[sender.peer.udp, sender.peer.spec.room] += sender.seq
        counting = {key: 0 for key in own}
        for peer in self.peers:
            if peer.state == COUNTING:
                counting[peer.udp, peer.spec.room] += 1
        expected = {key: room_messages[key[1]] * counting[key] - own[key] for key in own}
        groups = list(self.groups.values())
        deadline = time.monotonic() + self.plan.drain_timeout
        seen, quiet_since = -1, time.monotonic()
        while (now := time.monotonic()) < deadline:
            tcp_done = all(g.lines - g.udp_lines >= expected[False, g.room] for g in groups)
            if tcp_done and all(g.udp_lines >= expected[True, g.room] for g in groups):
                break
            lines = sum(g.lines for g in groups)
            if lines != seen:
                seen, quiet_since = lines, now
            elif tcp_done and now - quiet_since >= UDP_DRAIN_QUIET_SECONDS:
                break
            await asyncio.sleep(0.01)
        return sum(expected.values()), sum(n for (udp, _), n in expected.items() if udp)


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> tuple[int, Any]:
    """The address family and socket address of a UDP node."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}:{port}")
    family, _, _, _, address = infos[0]
    return family, address


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sleep_until(when_ns: int) -> None:
    delay = (when_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def worker_main(conn: Connection, plan: WorkerPlan) -> None:
    """Process entry point: run *plan*, reporting over *conn*; exits when told or orphaned."""
    from ..cli import new_event_loop

    if plan.cpu is not None:
        os.sched_setaffinity(0, {plan.cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        with asyncio.Runner(loop_factory=new_event_loop(plan.loop)) as runner:
            runner.run(Worker(conn, plan).run())
    except (Stopped, KeyboardInterrupt):
        pass
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"worker {plan.worker}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()
