"""A :class:`~asyncchat.bus.Bus` over Redis pub/sub: one chat across several processes.

This is the only module that imports :mod:`redis` (the ``redis`` package's
asyncio client, installed with ``pip install 'asyncchat[redis]'``)::

    async with RedisBus("redis://127.0.0.1:6379/0") as bus:
        hub = Hub(bus=bus)
        async with serve_tcp(hub, port=8080) as server:
            await server.serve_forever()

How it maps onto Redis:

* every node publishes its envelopes (JSON, :func:`~asyncchat.bus.encode_envelope`)
  on one channel, ``{namespace}:bus``, and subscribes to it;
* :meth:`RedisBus.publish` never blocks: it appends to a bounded buffer
  (``max_buffer`` envelopes) that one publisher task sends in FIFO order,
  pipelining whatever accumulated, so one sender's messages keep their order;
* a nickname is claimed with an atomic script on ``{namespace}:nick:{key}``
  (set if absent, value = node id, expiring after ``node_timeout`` seconds;
  heartbeats refresh it, logout and shutdown delete it).  A node killed with
  ``kill -9`` frees its names when they expire.

When Redis goes away every node keeps serving its own members.  The outage
is logged once at WARNING; the bus reconnects with exponential backoff (up
to ``max_backoff`` seconds); envelopes beyond ``max_buffer`` are dropped
and counted in :attr:`RedisBus.dropped`; a nickname claim that cannot reach
Redis within ``claim_timeout`` seconds is decided by this node alone (the
replica of other nodes is still checked).  When Redis returns, traffic
resumes and the next heartbeats repair presence (pub/sub does not replay
what was published while a node was disconnected).

Whatever a failure looks like (a :class:`~redis.exceptions.RedisError`, an
:class:`OSError`, or, under uvloop, a :class:`RuntimeError` from a transport
that closed during redis-py's reconnect), the publisher and subscriber tasks
never end while the bus runs: each failure is counted
(:attr:`RedisBus.subscriber_failures`, :attr:`RedisBus.publisher_failures`,
:attr:`RedisBus.script_failures`), logged (at WARNING for the first of an
outage, at DEBUG after that) and followed by a reconnect with backoff.  A
nickname claim is always answered.

The bus must be started before its hub uses it: :meth:`~RedisBus.claim`,
:meth:`~RedisBus.publish`, :meth:`~RedisBus.release` and
:meth:`~RedisBus.refresh` on a bus that is not started raise
:class:`~asyncchat.errors.UsageError` (so does a claim on a closed bus;
what is published after :meth:`~RedisBus.aclose` is dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Collection
from types import TracebackType
from typing import Any

from .bus import (
    HEARTBEAT_INTERVAL,
    NODE_TIMEOUT,
    ClaimCallback,
    Envelope,
    EnvelopeKind,
    Receiver,
    decode_envelope,
    encode_envelope,
    new_node_id,
)
from .errors import DependencyMissing, UsageError

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - exercised in a subprocess test
    raise DependencyMissing(
        "the Redis bus needs the redis package: install asyncchat[redis] (pip install 'asyncchat[redis]')"
    ) from None

__all__ = ["RedisBus"]

logger = logging.getLogger("asyncchat.redis")

# KEYS[1] = nick key, ARGV[1] = node id, ARGV[2] = ttl ms: granted if free or ours.
_CLAIM = """
local owner = redis.call('get', KEYS[1])
if not owner then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# Delete KEYS[i] that ARGV[1] owns.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then redis.call('del', key) end
end
return 1
"""
# Extend (or take again, if they expired) the claims in KEYS that nobody else holds.
_REFRESH = """
for _, key in ipairs(KEYS) do
  local owner = redis.call('get', key)
  if not owner or owner == ARGV[1] then redis.call('set', key, ARGV[1], 'PX', ARGV[2]) end
end
return 1
"""

_FAILURES = (RedisError, OSError, TimeoutError)

#: Nickname scripts (claim, release, refresh) in flight at once; more wait their turn.
MAX_CONCURRENT_EVALS = 16
#: Seconds of the first pause before reconnecting (doubled after each failure, up to ``max_backoff``).
INITIAL_BACKOFF = 0.05

_NOT_STARTED = "RedisBus is not started: use 'async with bus' or await bus.start()"
_CLOSED = "RedisBus is closed: stop the servers of its hub before closing the bus"


def _without_password(url: str) -> str:
    """*url* safe for logs: a password, if any, is replaced by ``***``."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, auth = head.rpartition("//")
    user = auth.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"


class RedisBus:
    """The Redis implementation of :class:`~asyncchat.bus.Bus` (see the module docstring).

    Use it as ``async with RedisBus(url) as bus`` (or :meth:`start` /
    :meth:`aclose`) around the servers of the hub that uses it.  Starting
    does not fail when Redis is down: the bus keeps retrying.  Raises
    :class:`ValueError` for out-of-range options.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        node_id: str | None = None,
        namespace: str = "asyncchat",
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        node_timeout: float = NODE_TIMEOUT,
        max_buffer: int = 10_000,
        max_backoff: float = 5.0,
        claim_timeout: float = 2.0,
    ) -> None:
        if not 0 < heartbeat_interval < node_timeout:
            raise ValueError(f"need 0 < heartbeat_interval < node_timeout, not {heartbeat_interval} and {node_timeout}")
        for name, value in (("max_buffer", max_buffer), ("max_backoff", max_backoff), ("claim_timeout", claim_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, not {value!r}")
        self.url = url
        self._shown_url = _without_password(url)
        self.node_id = node_id or f"{os.getpid()}-{new_node_id()}"  # the process id helps operators
        self.namespace = namespace
        self.channel = f"{namespace}:bus"
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.max_buffer = max_buffer
        self.max_backoff = max_backoff
        self.claim_timeout = claim_timeout
        #: Envelopes published to Redis, received from other nodes, dropped (buffer full), and invalid ones ignored.
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.invalid = 0
        #: Times the connection to Redis was lost (one outage may span many failures).
        self.outages = 0
        #: Failures of the subscriber's connection, of a publish, of a nickname script
        #: (claim, release, refresh), whatever the exception; each is logged and retried.
        self.subscriber_failures = 0
        self.publisher_failures = 0
        self.script_failures = 0
        self._receiver: Receiver | None = None
        self._buffer: deque[Envelope] = deque()
        self._client: aioredis.Redis | None = None
        self._wake: asyncio.Event | None = None
        self._evals: asyncio.Semaphore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._claimed: set[str] = set()
        self._up = False
        self._down_logged = False
        self._subscribed: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._closing = False

    def __repr__(self) -> str:
        state = "up" if self._up else ("closed" if self._closing else "down")
        return (
            f"<RedisBus {self.node_id!r} {self._shown_url} {state} buffered={len(self._buffer)} dropped={self.dropped}>"
        )

    @property
    def connected(self) -> bool:
        """Whether the last exchange with Redis succeeded."""
        return self._up

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the publisher and subscriber tasks on the running loop (returns at once)."""
        if self._tasks:
            raise RuntimeError(f"{self!r} is already started")
        if self._closing:
            raise RuntimeError(f"{self!r} is closed: create a new RedisBus")
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.claim_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),  # one immediate retry on a fresh connection; backoff is ours
        )
        self._wake = asyncio.Event()
        # Claims, releases and refreshes share a few connections: a burst of
        # logins must queue here, not open a connection each (redis-py's pool
        # refuses past its limit, which would look like an outage).
        self._evals = asyncio.Semaphore(MAX_CONCURRENT_EVALS)
        self._subscribed = asyncio.Event()
        self._drained = asyncio.Event()
        if self._buffer:
            self._wake.set()
        self._tasks = [
            asyncio.create_task(self._publisher(), name=f"asyncchat-redis-publish-{self.node_id}"),
            asyncio.create_task(self._subscriber(), name=f"asyncchat-redis-subscribe-{self.node_id}"),
        ]

    async def wait_subscribed(self) -> None:
        """Wait until the bus listens on Redis (useful in tests and at start-up)."""
        if self._subscribed is None:
            raise RuntimeError("the bus is not started")
        await self._subscribed.wait()

    async def aclose(self) -> None:
        """Say goodbye, flush what is buffered (within ``claim_timeout``), free this node's names, stop."""
        if self._closing:
            return
        self._closing = True
        self._buffer.append(Envelope(self.node_id, 0, EnvelopeKind.BYE))
        if self._wake is not None:
            self._wake.set()
        client = self._client
        if client is not None and self._up:
            with contextlib.suppress(TimeoutError, *_FAILURES):
                async with asyncio.timeout(self.claim_timeout):
                    if self._buffer and self._drained is not None:
                        self._drained.clear()
                        await self._drained.wait()
                    if self._claimed:
                        await client.eval(
                            _RELEASE, len(self._claimed), *map(self._key, sorted(self._claimed)), self.node_id
                        )
        for task in [*self._tasks, *self._pending]:
            task.cancel()
        for task in [*self._tasks, *self._pending]:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug: say so, and still close the connections
                logger.exception("task %s of the Redis bus had failed", task.get_name())
        self._tasks = []
        self._receiver = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        logger.info(
            "Redis bus of node %s closed (published %d, dropped %d)", self.node_id, self.published, self.dropped
        )

    async def __aenter__(self) -> RedisBus:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --------------------------------------------------------- Bus interface

    def bind(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def publish(self, envelope: Envelope) -> None:
        """See :meth:`Bus.publish`; raises :class:`UsageError` before :meth:`start`, drops after :meth:`aclose`."""
        self._check_started()
        if self._closing or len(self._buffer) >= self.max_buffer:
            self.dropped += 1
            return
        self._buffer.append(envelope)
        if self._wake is not None:
            self._wake.set()

    def claim(self, key: str, callback: ClaimCallback) -> None:
        """See :meth:`Bus.claim`; raises :class:`UsageError` before :meth:`start` and once closing."""
        self._check_started()
        if self._closing:
            raise UsageError(_CLOSED)
        self._spawn(self._claim(key, callback))

    def release(self, key: str) -> None:
        """See :meth:`Bus.release`; raises :class:`UsageError` before :meth:`start` (after close: nothing to do)."""
        self._check_started()
        if key in self._claimed and not self._closing:
            self._claimed.discard(key)
            self._spawn(self._eval(_RELEASE, [self._key(key)], self.node_id))

    def refresh(self, keys: Collection[str]) -> None:
        """See :meth:`Bus.refresh`; raises :class:`UsageError` before :meth:`start` (after close: nothing to do)."""
        self._check_started()
        if self._closing:
            return
        self._claimed.update(keys)
        if keys and self._up:
            ttl = str(int(self.node_timeout * 1000))
            self._spawn(self._eval(_REFRESH, [self._key(k) for k in keys], self.node_id, ttl))

    async def settle(self) -> None:
        """Wait until every nickname script sent so far (claim, release, refresh) is answered.

        Claims of several nodes race in Redis; a program (or a test) that must
        know a release is done before another node claims the name awaits this.
        """
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # ------------------------------------------------------------- internals

    def _check_started(self) -> None:
        if self._client is None and not self._closing:
            raise UsageError(_NOT_STARTED)

    def _key(self, key: str) -> str:
        return f"{self.namespace}:nick:{key}"

    def _spawn(self, coro: Any) -> None:
        if self._client is None or self._closing:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _eval(self, script: str, keys: list[str], *args: str) -> None:
        assert self._client is not None
        assert self._evals is not None
        async with self._evals:
            try:
                async with asyncio.timeout(self.claim_timeout):
                    await self._client.eval(script, len(keys), *keys, *args)
            except Exception as exc:  # anything but cancellation: the claim expires by itself
                self.script_failures += 1
                self._down(exc, "nickname script")

    async def _claim(self, key: str, callback: ClaimCallback) -> None:
        assert self._client is not None
        assert self._evals is not None
        ttl = str(int(self.node_timeout * 1000))
        try:
            async with self._evals, asyncio.timeout(self.claim_timeout):
                granted = bool(await self._client.eval(_CLAIM, 1, self._key(key), self.node_id, ttl))
        except Exception as exc:  # anything but cancellation: the claim is still answered
            self.script_failures += 1
            self._down(exc, "claim")
            logger.debug("claim of %r decided locally: Redis unavailable", key)
            granted = True  # Redis is down: this node decides alone (replica already checked)
        else:
            self._up_again()
        if granted:
            self._claimed.add(key)
        try:
            callback(granted)
        except Exception:
            logger.exception("the callback of the claim of %r failed", key)

    def _down(self, exc: BaseException, where: str) -> None:
        """Log a failure: at WARNING for the first of an outage, at DEBUG after that.

        A failure that is neither a Redis nor a socket error (uvloop raises
        :class:`RuntimeError` for a transport that closed under redis-py) is
        logged with its traceback, but it is handled the same way.
        """
        expected = isinstance(exc, _FAILURES)
        first = self._up or not self._down_logged
        if first:
            self.outages += 1
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "node %s: Redis at %s unavailable (%s failed: %s); serving local members only, retrying with backoff",
            self.node_id,
            self._shown_url,
            where,
            (str(exc) or type(exc).__name__) if expected else f"{type(exc).__name__}: {exc}",
            exc_info=None if expected else exc,
        )
        self._up = False
        self._down_logged = True

    def _up_again(self) -> None:
        if not self._up:
            if self._down_logged:
                logger.info("node %s: Redis at %s is back; cross-node traffic resumes", self.node_id, self._shown_url)
            self._down_logged = False
            self._up = True

    async def _backoff(self, delay: float) -> float:
        await asyncio.sleep(delay)
        return min(delay * 2, self.max_backoff)

    def _encode(self, batch: list[Envelope]) -> list[bytes]:
        payloads = []
        for envelope in batch:
            try:
                payloads.append(encode_envelope(envelope))
            except Exception:  # a bug: drop this envelope rather than retry it for ever
                self.dropped += 1
                logger.exception("cannot encode %r; dropped", envelope)
        return payloads

    async def _publisher(self) -> None:
        assert self._client is not None
        assert self._wake is not None
        assert self._drained is not None
        client, wake, buffer = self._client, self._wake, self._buffer
        delay = INITIAL_BACKOFF
        subscribed = self._subscribed
        assert subscribed is not None
        while True:
            if not buffer:
                wake.clear()
                await wake.wait()
            # Listen before speaking: an answer to what we publish (another node's
            # heartbeat, sent when it first hears of us) must not be missed.
            await subscribed.wait()
            batch = list(buffer)
            payloads = self._encode(batch)
            try:
                if payloads:
                    async with client.pipeline(transaction=False) as pipe:
                        for payload in payloads:
                            pipe.publish(self.channel, payload)
                        await pipe.execute()
            except Exception as exc:  # anything but cancellation: keep the batch, retry after a pause
                self.publisher_failures += 1
                self._down(exc, "publish")
                delay = await self._backoff(delay)
                continue
            self._up_again()
            delay = INITIAL_BACKOFF
            for _ in batch:
                buffer.popleft()
            self.published += len(payloads)
            if not buffer:
                self._drained.set()

    async def _subscriber(self) -> None:
        assert self._client is not None
        assert self._subscribed is not None
        delay = INITIAL_BACKOFF
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "message":
                        self._received(message["data"])
                    elif kind == "subscribe":  # Redis confirmed: from now on this node hears every envelope
                        self._up_again()
                        self._subscribed.set()
                        delay = INITIAL_BACKOFF
            except Exception as exc:  # anything but cancellation: the task must live on, so reconnect
                self._subscribed.clear()
                self.subscriber_failures += 1
                self._down(exc, "subscription")
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            delay = await self._backoff(delay)

    def _received(self, data: bytes) -> None:
        try:
            envelope = decode_envelope(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            self.invalid += 1
            if self.invalid == 1 or self.invalid % 1000 == 0:
                logger.warning("ignoring invalid envelope on %s (%d so far): %s", self.channel, self.invalid, exc)
            return
        if envelope.node == self.node_id:
            return
        self.received += 1
        receiver = self._receiver
        if receiver is not None:
            try:
                receiver(envelope)
            except Exception:
                logger.exception("delivering %r failed", envelope)
