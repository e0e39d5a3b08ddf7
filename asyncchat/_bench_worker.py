"""One process of the load tool: members, senders and probes on one event loop.

The coordinator (:mod:`asyncchat.bench`) starts one worker per ``--workers``
and drives it over a pipe, in steps::

    parent -> ("login",)             (once every worker process is up)
    worker -> ("ready", info)        every member connected and saw its own join line
    parent -> ("sync",)              (not in idle mode)
    worker -> ("synced", info)       every member saw the pong of its /ping
    parent -> ("start", t0, tw, te)  monotonic ns: send from t0, measure tw..te
    worker -> ("progress", lines, messages)   twice a second until te
    worker -> ("sent", per_room_messages)
    parent -> ("expect", per_room_messages_of_all_workers)
    worker -> ("result", info)       after every expected line arrived, or the drain timeout
    parent -> ("stop",)              close everything and exit

The receive path is the hot path: each member is an
:class:`asyncio.BufferedProtocol` reading into one shared buffer, counting
lines with ``bytearray.count(b"\\n")``.  A byte ``*`` or ``!`` in a chunk
means a line that is not a benchmark message (see :mod:`._bench_stats`);
only then is the chunk split into lines.  Only *probe* members (a few per
room) parse the timestamps, for latency and for the senders' windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ._bench_stats import Histogram, encode_message, parse_chat_line

__all__ = ["MemberSpec", "WorkerPlan", "worker_main"]

LOGIN, READY, SYNC, COUNTING, CLOSED = range(5)
NOT_PROBE, PROBE, WINDOW_PROBE = range(3)

_BUF = bytearray(256 * 1024)
_VIEW = memoryview(_BUF)
_ERROR_SAMPLES = 5
_PROGRESS_SECONDS = 0.5


class Stopped(Exception):
    """The coordinator said stop (or went away)."""


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One member this worker runs."""

    index: int
    nick: str
    room: int
    sender: bool
    probe: int = NOT_PROBE


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPlan:
    """Everything a worker needs (picklable: it crosses the process boundary)."""

    worker: int
    host: str
    port: int
    loop: str
    cpu: int | None
    mode: str
    rooms: tuple[str, ...]
    members: tuple[MemberSpec, ...]
    senders_total: int
    window: int
    size: int
    rate_per_sender: float
    connect_timeout: float
    setup_timeout: float
    drain_timeout: float
    deadline: float
    token: str
    parallel_connects: int = 500


@dataclass(slots=True)
class Errors:
    """Error counts by kind, with a few sample texts."""

    counts: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.samples) < _ERROR_SAMPLES:
            self.samples.append(f"{kind}: {text}"[:200])


class Group:
    """The members of one room in this worker, with their shared counters."""

    __slots__ = ("hi", "hist", "lines", "lo", "local", "name", "room", "senders")

    def __init__(self, room: int, name: str) -> None:
        self.room = room
        self.name = name
        self.lines = 0  # benchmark lines received by the group's members
        self.local = 0  # members of the room in this worker
        self.senders: dict[int, Sender] = {}
        self.hist = Histogram.empty()
        self.lo = 0  # latency is recorded for messages stamped in [lo, hi)
        self.hi = 0


class Peer(asyncio.BufferedProtocol):
    """One member's connection: login, the ping barrier, then counting."""

    __slots__ = ("_bol", "_marker", "_tail", "group", "probe", "spec", "state", "transport", "worker")

    def __init__(self, worker: Worker, spec: MemberSpec, group: Group) -> None:
        self.worker = worker
        self.spec = spec
        self.group = group
        self.probe = spec.probe
        self.state = LOGIN
        self.transport: asyncio.Transport | None = None
        self._marker = f"* {spec.nick} joined {group.name}\n".encode()
        self._tail = b""
        self._bol = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == COUNTING:
            buf = _BUF
            lines = buf.count(b"\n", 0, nbytes)
            if buf.find(b"*", 0, nbytes) >= 0 or buf.find(b"!", 0, nbytes) >= 0:
                lines -= self._odd(nbytes)
            self._bol = buf[nbytes - 1] == 10
            self.group.lines += lines
            if self.probe:
                self._probe(nbytes)
        elif self.state != READY:
            self._setup(bytes(_VIEW[:nbytes]))

    def _setup(self, chunk: bytes) -> None:
        data = self._tail + chunk
        marker = self._marker
        found = data.find(marker)
        if found >= 0:
            rest = data[found + len(marker) :]
            self._tail = b""
            if self.state == LOGIN:
                self.state = READY
                self.worker.member_ready(self, True)
            else:
                self.state = COUNTING
                self._bol = True
                if rest:  # nothing is expected after the pong; classify it anyway
                    self.group.lines += rest.count(b"\n") - self._classify(rest)
                    self._bol = rest.endswith(b"\n")
                self.worker.member_synced(self)
            return
        if self.state == LOGIN and (data.startswith(b"! ") or b"\n! " in data):
            start = data.find(b"! ")
            self.worker.errors.add("login", data[start : data.find(b"\n", start)].decode(errors="replace"))
            self.state = CLOSED
            if self.transport is not None:
                self.transport.abort()
            self.worker.member_ready(self, False)
            return
        self._tail = data[-len(marker) :]

    def start_sync(self, token: bytes) -> None:
        self.state = SYNC
        self._marker = b"*** pong " + token + b"\n"
        self._tail = b""
        self.send(b"/ping " + token + b"\n")

    def send(self, data: bytes) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(data)

    def _odd(self, nbytes: int) -> int:
        return self._classify(bytes(_VIEW[:nbytes]))

    def _classify(self, data: bytes) -> int:
        """Count (and report) the lines starting in *data* that are not benchmark messages."""
        lines = data.split(b"\n")
        if not self._bol:
            lines = lines[1:]
        odd = 0
        for line in lines:
            if line[:1] not in (b"*", b"!"):
                continue
            odd += 1
            text = line.decode(errors="replace")
            if line.startswith(b"! "):
                self.worker.errors.add("server-error", text)
            elif line.startswith(b"*** closing"):
                self.worker.errors.add("closed-by-server", text)
            elif b" left " in line:
                self.worker.errors.add("member-left", text)
            else:
                self.worker.other_lines += 1
        return odd

    def _probe(self, nbytes: int) -> None:
        data = self._tail + bytes(_VIEW[:nbytes])
        lines = data.split(b"\n")
        self._tail = lines.pop()
        now = time.monotonic_ns()
        group = self.group
        lo, hi, hist = group.lo, group.hi, group.hist
        senders = group.senders if self.probe == WINDOW_PROBE else None
        acked: set[Sender] = set()
        for line in lines:
            fields = parse_chat_line(line)
            if fields is None:
                continue
            sender, seq, stamp = fields
            if lo <= stamp < hi:
                hist.record((now - stamp) // 1000)
            if senders:
                owner = senders.get(sender)
                if owner is not None and seq > owner.acked:
                    owner.acked = seq
                    acked.add(owner)
        for owner in acked:
            owner.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, CLOSED
        if state == CLOSED or self.worker.closing:
            return
        self.worker.errors.add("connection-lost", f"{self.spec.nick}: {exc or 'closed by server'}")
        if state == LOGIN:
            self.worker.member_ready(self, False)
        elif state == SYNC:
            self.worker.member_synced(self)


class Sender:
    """The sending side of a member: saturation window or fixed-rate schedule."""

    __slots__ = ("acked", "index", "interval", "peer", "phase", "running", "seq", "size", "t0", "window")

    def __init__(self, peer: Peer, *, window: int, size: int, rate: float, senders_total: int) -> None:
        self.peer = peer
        self.index = peer.spec.index
        self.window = window
        self.size = size
        self.seq = 0  # last sequence number sent
        self.acked = 0  # highest sequence number the window probe has seen
        self.running = False
        self.t0 = 0
        self.interval = int(1e9 / rate) if rate > 0 else 0
        # Stagger the senders' schedules evenly over one interval.
        self.phase = self.interval * self.index // max(1, senders_total)

    def pump(self) -> None:
        """Saturation: send every message the window allows, in one write."""
        if not self.running:
            return
        limit = self.acked + self.window
        first = self.seq + 1
        if limit < first:
            return
        now = time.monotonic_ns()
        index, size = self.index, self.size
        self.peer.send(b"".join([encode_message(index, seq, now, size) for seq in range(first, limit + 1)]))
        self.seq = limit

    def send_due(self, now: int, end: int) -> int:
        """Fixed rate: send the messages scheduled up to *now* (stamped with their schedule).

        Returns the time the next message is due.
        """
        base, interval = self.t0 + self.phase, self.interval
        due = (now - base) // interval + 1  # messages scheduled at or before now
        limit = min(due, (end - base - 1) // interval + 1)
        if limit > self.seq:
            index, size = self.index, self.size
            self.peer.send(
                b"".join(
                    [
                        encode_message(index, seq, base + (seq - 1) * interval, size)
                        for seq in range(self.seq + 1, limit + 1)
                    ]
                )
            )
            self.seq = limit
        return base + self.seq * interval


class Worker:
    """Runs one :class:`WorkerPlan` under the coordinator's commands."""

    def __init__(self, conn: Connection, plan: WorkerPlan) -> None:
        self.conn = conn
        self.plan = plan
        self.errors = Errors()
        self.other_lines = 0
        self.closing = False
        self.groups = {r: Group(r, name) for r, name in enumerate(plan.rooms)}
        self.peers: list[Peer] = []
        self.senders: list[Sender] = []
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

    def member_ready(self, peer: Peer, ok: bool) -> None:
        self._count_down()

    def member_synced(self, peer: Peer) -> None:
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
        try:
            async with asyncio.timeout(self.plan.deadline):
                await self._phases()
        finally:
            self.closing = True
            loop.remove_reader(self.conn.fileno())
            for peer in self.peers:
                if peer.transport is not None:
                    peer.transport.abort()
            await asyncio.sleep(0)

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
        expected = await self._drain(expected_rooms)
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

        async def connect(spec: MemberSpec) -> None:
            group = self.groups[spec.room]
            peer = Peer(self, spec, group)
            async with limit:
                try:
                    async with asyncio.timeout(plan.connect_timeout):
                        await loop.create_connection(lambda: peer, plan.host, plan.port)
                except (OSError, TimeoutError) as exc:
                    self.errors.add("connect", f"{plan.host}:{plan.port}: {exc or 'timed out'}")
                    peer.state = CLOSED
                    self.member_ready(peer, False)
                    return
            self.peers.append(peer)
            group.local += 1
            login = spec.nick + "\n"
            if group.name != "lobby":
                login += f"/join {group.name}\n"
            peer.send(login.encode())
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

    async def _drain(self, room_messages: list[int]) -> int:
        """Wait until every member got every message of its room; return the lines expected."""
        own = [0] * len(self.plan.rooms)
        for sender in self.senders:
            own[sender.peer.spec.room] += sender.seq
        expected = {
            g.room: room_messages[g.room] * sum(1 for p in self.peers if p.group is g and p.state == COUNTING)
            - own[g.room]
            for g in self.groups.values()
        }
        total = sum(expected.values())
        deadline = time.monotonic() + self.plan.drain_timeout
        while time.monotonic() < deadline:
            if all(g.lines >= expected[g.room] for g in self.groups.values()):
                break
            await asyncio.sleep(0.01)
        return total


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sleep_until(when_ns: int) -> None:
    delay = (when_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def worker_main(conn: Connection, plan: WorkerPlan) -> None:
    """Process entry point: run *plan*, reporting over *conn*; exits when told or orphaned."""
    from .cli import new_event_loop

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
