"""asyncio glue shared by the transports: drives a hub from the running loop.

:func:`attach` binds a :class:`~asyncchat.hub.Hub` to the running event
loop: the hub's wake-up becomes ``loop.call_soon(hub.flush)`` (so all output
queued during one loop iteration leaves in one write per member), and one
periodic timer per hub calls :meth:`Hub.tick` for the login and idle
timeouts (one timer for the whole hub, not one per connection), every
:attr:`Runtime.tick_seconds` seconds.  The timer always re-arms: an exception
from a tick is logged at ERROR with its traceback and the next tick comes
as usual (only the first tick, in :func:`attach`, raises to the caller).
:class:`watch` turns hub events into an async iterator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType

from .events import ChatEvent
from .hub import Hub

__all__ = ["Runtime", "attach", "watch"]

logger = logging.getLogger("asyncchat")

#: Default seconds between two calls of :meth:`Hub.tick` (see :func:`attach`).
TICK_SECONDS = 1.0
#: Upper bound, in seconds, of the pause the flush pacing may insert.
MAX_FLUSH_DELAY = 0.02


class Runtime:
    """The binding of one hub to one event loop, shared by every server of the hub."""

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop, *, tick_seconds: float = TICK_SECONDS) -> None:
        _check_tick(tick_seconds)
        self.hub = hub
        self.loop = loop
        self.users = 0
        #: Ticks that raised (each logged at ERROR; the timer re-armed all the same).
        self.ticks_failed = 0
        self._tick_seconds = tick_seconds
        self._timer: asyncio.TimerHandle | None = None
        self._stats_interval = 0.0
        self._stats_timer: asyncio.TimerHandle | None = None
        self._next_flush = 0.0
        hub.set_wakeup(self._wakeup)
        try:
            # The first tick raises to attach()'s caller (a hub whose bus is not started, say).
            hub.tick(loop.time())
        except BaseException:
            hub.set_wakeup(None)
            raise
        self._timer = loop.call_later(tick_seconds, self._tick)

    @property
    def tick_seconds(self) -> float:
        """Seconds between two calls of :meth:`Hub.tick`; setting it re-arms the timer (tests use small values)."""
        return self._tick_seconds

    @tick_seconds.setter
    def tick_seconds(self, value: float) -> None:
        _check_tick(value)
        self._tick_seconds = value
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self.loop.call_later(value, self._tick)

    def _wakeup(self) -> None:
        # Flush pacing: a flush costs one write per member with pending output,
        # so in a big room it is the expensive step.  The next flush waits at
        # least as long as the previous one took (capped by MAX_FLUSH_DELAY):
        # an idle server still flushes in the same loop iteration, while a
        # busy one spends at most about half its time flushing and lets more
        # lines share each write.  Without this, a stream of joins or
        # messages that arrive one per loop iteration costs one write per
        # member each (N^2 writes for N logins into one room).
        delay = self._next_flush - self.loop.time()
        if delay > 0:
            self.loop.call_later(delay, self._flush)
        else:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        loop = self.loop
        start = loop.time()
        self.hub.flush()
        end = loop.time()
        self._next_flush = end + min(end - start, MAX_FLUSH_DELAY)

    def _tick(self) -> None:
        # Re-arm first: whatever tick() does, login and idle timeouts keep being enforced.
        self._timer = self.loop.call_later(self._tick_seconds, self._tick)
        try:
            self.hub.tick(self.loop.time())
        except Exception:
            self.ticks_failed += 1
            logger.exception("tick of %r failed; the next one is in %g seconds", self.hub, self._tick_seconds)

    def log_statistics(self, interval: float) -> None:
        """Log the hub's statistics at INFO every *interval* seconds (0 stops)."""
        if self._stats_timer is not None:
            self._stats_timer.cancel()
            self._stats_timer = None
        self._stats_interval = interval
        if interval > 0:
            self._stats_timer = self.loop.call_later(interval, self._log_stats)

    def _log_stats(self) -> None:
        logger.info("statistics %s", self.hub.statistics())
        self._stats_timer = self.loop.call_later(self._stats_interval, self._log_stats)

    def release(self) -> None:
        """One server stopped using the hub; unbind when none is left."""
        self.users -= 1
        if self.users > 0:
            return
        for timer in (self._timer, self._stats_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._stats_timer = None
        self.hub.flush()
        self.hub.set_wakeup(None)
        _runtimes.pop(self.hub, None)
        # The hub's last server closed: every watch of it ends once it has handed over what it holds.
        for watcher in list(_watches.pop(self.hub, ())):
            watcher._end()


def _check_tick(value: float) -> None:
    if not value > 0:
        raise ValueError(f"tick_seconds must be > 0, not {value!r}")


_runtimes: dict[Hub, Runtime] = {}
#: The open watches of each hub, ended when the hub's runtime is released.
_watches: dict[Hub, list[watch]] = {}


def attach(hub: Hub, *, tick_seconds: float | None = None) -> Runtime:
    """Bind *hub* to the running loop (or reuse the binding); call ``release()`` when done.

    *tick_seconds* (default :data:`TICK_SECONDS`, one second) sets how often
    :meth:`Hub.tick` runs; given for a hub that is already bound, it changes
    the existing binding's interval.  Servers call ``attach(hub)`` themselves,
    so a test that wants fast timeouts attaches first::

        runtime = attach(hub, tick_seconds=0.05)
        try:
            async with serve_tcp(hub, port=0) as server:
                ...
        finally:
            runtime.release()

    Raises :class:`RuntimeError` if the hub is bound to another, still
    running loop, :class:`ValueError` if *tick_seconds* is not positive, and
    whatever the hub's first :meth:`~Hub.tick` raises (for example
    :class:`~asyncchat.errors.UsageError` for a bus that is not started).
    """
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(hub)
    if runtime is not None and runtime.loop is not loop:
        if runtime.loop.is_running():
            raise RuntimeError(f"{hub!r} is already served by another event loop")
        runtime = None
    if runtime is None:
        runtime = Runtime(hub, loop, tick_seconds=TICK_SECONDS if tick_seconds is None else tick_seconds)
        _runtimes[hub] = runtime
    elif tick_seconds is not None:
        runtime.tick_seconds = tick_seconds
    runtime.users += 1
    return runtime


class watch:
    """Observe a hub's events as an async iterator.

    ::

        async with watch(hub) as events:
            async for event in events:
                ...

    Events are buffered up to *maxsize*; past that the oldest are dropped and
    counted in :attr:`dropped` (an observer that stops reading never costs the
    chat memory or speed).

    The iteration ends (``StopAsyncIteration``) when the hub's servers have
    all closed — when the hub's :class:`Runtime` is released — after the
    events buffered so far, the leaves of the shutdown included.
    """

    def __init__(self, hub: Hub, *, maxsize: int = 1024) -> None:
        self.hub = hub
        self.maxsize = maxsize
        self.dropped = 0
        self._queue: asyncio.Queue[ChatEvent | None] = asyncio.Queue()
        self._unsubscribe: Callable[[], None] | None = None
        self._ended = False

    def _put(self, event: ChatEvent) -> None:
        if self._queue.qsize() >= self.maxsize:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def _end(self) -> None:
        """Stop observing; the iterator ends after the events already buffered."""
        if self._ended:
            return
        self._ended = True
        self._stop()
        self._queue.put_nowait(None)  # past maxsize on purpose: the end is never dropped

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        watchers = _watches.get(self.hub)
        if watchers is not None and self in watchers:
            watchers.remove(self)
            if not watchers:
                del _watches[self.hub]

    async def __aenter__(self) -> watch:
        self._unsubscribe = self.hub.subscribe(self._put)
        _watches.setdefault(self.hub, []).append(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def __aiter__(self) -> watch:
        return self

    async def __anext__(self) -> ChatEvent:
        if self._unsubscribe is None and not self._ended:
            raise RuntimeError("use 'async with watch(hub) as events' before iterating")
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # ended: every later call ends too
            raise StopAsyncIteration
        return event
