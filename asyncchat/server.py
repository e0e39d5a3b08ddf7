"""The life cycle every front end shares: start, serve, shut down gracefully.

A front end (:class:`~asyncchat.tcp.TcpServer`,
:class:`~asyncchat.udp.UdpServer`, later IRC and WebSocket) subclasses
:class:`Server` and fills in the template methods:

* ``_open()`` binds the sockets and starts accepting (raise :class:`OSError`
  if it cannot; nothing is left open then);
* ``_addresses()`` lists the bound socket addresses;
* ``_describe()`` says what is served, for the ``serving ...`` log line;
* ``_close(notice)`` stops accepting, closes every member with
  ``*** closing: notice`` and waits (at most ``Limits.shutdown_timeout``)
  for their output to leave.

The base class does the rest once for all: it binds the hub to the running
loop (:func:`asyncchat.runtime.attach`) while the server runs, logs
``serving ...`` and ``... server closed``, makes :meth:`Server.aclose` safe to
call twice, and provides ``async with``, :meth:`Server.serve_forever`,
:attr:`Server.address` and :attr:`Server.closing` (set as soon as shutdown
begins, so a connection that arrives late is refused, not greeted).

Running out of file descriptors (``RLIMIT_NOFILE``), for servers that accept
connections: a connection whose descriptor falls into the last
:data:`FD_RESERVE` below the limit is refused with an error line
(:meth:`Server._fd_exhausted`), so the process keeps descriptors for
everything else.  When ``accept()`` itself fails with ``EMFILE`` or
``ENFILE``, asyncio reports it to the loop's exception handler (as an ERROR
with a traceback) and retries a second later; :meth:`Server._watch_accept`
turns that report into a rate-limited WARNING.  uvloop (libuv) reports
nothing: it accepts and closes the pending connections itself.  Both are
counted in ``hub.statistics().refused["fd-limit"]``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, ClassVar, Self

from .errors import ErrorCode
from .events import Error
from .hub import Hub
from .protocol import encode_with_codes
from .runtime import Runtime, attach

__all__ = ["FD_RESERVE", "WARNING_INTERVAL", "Server", "open_file_limit"]

#: Warnings about refused peers are logged at most once per this many seconds (per kind), with a count.
WARNING_INTERVAL = 10.0
#: File descriptors a stream server keeps free for everything but connections
#: (listening and UDP sockets, Redis, log files, DNS, the loop's own).
FD_RESERVE = 16

_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def open_file_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` of this process, or ``None`` where there is none (or no finite one)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class Server:
    """A running front end for one hub; use it as ``async with serve_...(hub)``.

    Leaving the ``async with`` block (or :meth:`aclose`) shuts down
    gracefully: stop accepting, tell every member of this server
    ``*** closing: server is shutting down``, flush within
    ``Limits.shutdown_timeout`` seconds, then close what is left.
    """

    #: What is served, in log lines: ``"TCP"``, ``"UDP"``.
    kind: ClassVar[str] = "chat"
    #: Where the server logs.
    logger: ClassVar[logging.Logger] = logging.getLogger("asyncchat")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runtime: Runtime | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._notice = ""
        # Rate-limited warnings: {kind: (last logged at, not logged since)}.
        self._warned: dict[str, tuple[float, int]] = {}
        self._fd_limit: int | None = None
        self._accept_hook: tuple[_ExceptionHandler, _ExceptionHandler | None] | None = None
        self._accept_failing = False

    # -- what subclasses provide

    async def _open(self) -> None:
        """Bind and start accepting; raise :class:`OSError` (leaving nothing open) if that fails."""
        raise NotImplementedError

    def _addresses(self) -> list[Any]:
        """The bound socket addresses (empty once closed)."""
        raise NotImplementedError

    def _describe(self) -> str:
        """What is served where, e.g. ``TCP (TLS) on ('127.0.0.1', 8080)``."""
        raise NotImplementedError

    async def _close(self, notice: str) -> None:
        """Stop accepting, close every member with *notice*, wait for their output to leave."""
        raise NotImplementedError

    # -- the life cycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (set by :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("the server is not started")
        return self._loop

    @property
    def closing(self) -> bool:
        """Whether shutdown has begun (:meth:`aclose`); from then on new peers are refused."""
        return self._closing

    @property
    def addresses(self) -> list[Any]:
        """The bound socket addresses: ``(host, port[, ...])`` tuples, or Unix paths."""
        if self._closed is None or self._closed.done():
            return []
        return self._addresses()

    @property
    def address(self) -> tuple[str, int]:
        """The first bound ``(host, port)``, e.g. to learn the port chosen for ``port=0``."""
        for addr in self.addresses:
            if isinstance(addr, tuple):
                return addr[0], addr[1]
        raise RuntimeError(f"the server is not listening on {self.kind}")

    async def start(self) -> None:
        """Bind and start serving.

        Raises :class:`OSError` if binding fails (the server can then be
        started again), :class:`RuntimeError` if it was started before.
        """
        if self._closed is not None:
            raise RuntimeError(f"{self!r} was already started")
        loop = asyncio.get_running_loop()
        runtime = attach(self.hub)
        self._loop = loop
        try:
            await self._open()
        except BaseException:
            runtime.release()
            raise
        self._runtime = runtime
        self._closed = loop.create_future()
        self.logger.info("serving %s", self._describe())

    async def aclose(self, notice: str = "server is shutting down") -> None:
        """Shut down gracefully (see the class docstring); safe to call twice, or before :meth:`start`."""
        if self._closed is None or self._closing:
            return
        self._closing = True
        self._notice = notice
        try:
            await self._close(notice)
        finally:
            if self._runtime is not None:
                self._runtime.release()
                self._runtime = None
            if not self._closed.done():
                self._closed.set_result(None)
            self.logger.info("%s server closed", self.kind)

    async def serve_forever(self) -> None:
        """Wait until the server is closed (by :meth:`aclose`, or by leaving ``async with``).

        Cancelling the waiting task stops the wait, not the server.
        """
        if self._closed is None:
            raise RuntimeError("the server is not started")
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- helpers for subclasses

    def _warn_limited(self, kind: str, message: str) -> None:
        """Log *message* at WARNING, at most once per :data:`WARNING_INTERVAL` seconds per *kind*.

        The next warning of that kind says how many were not logged meanwhile.
        """
        now = self.loop.time()
        logged_at, unlogged = self._warned.get(kind, (float("-inf"), 0))
        if now - logged_at < WARNING_INTERVAL:
            self._warned[kind] = (logged_at, unlogged + 1)
            return
        more = f" (and {unlogged} more since the last report)" if unlogged else ""
        self.logger.warning("%s%s", message, more)
        self._warned[kind] = (now, 0)

    # -- running out of file descriptors (servers that accept connections)

    def _fd_exhausted(self, transport: asyncio.Transport, shown: str, connections: int) -> bool:
        """Refuse a just-accepted connection whose descriptor is in the last :data:`FD_RESERVE`.

        Returns whether it was refused: then it got an error line, is closing,
        and is counted as ``refused["fd-limit"]``.  Call :meth:`_watch_accept`
        at start-up first (it reads the limit).
        """
        limit = self._fd_limit
        if limit is None:
            return False
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < limit - FD_RESERVE:
            return False
        self.hub.note_refused("fd-limit")
        self._warn_limited(
            "fd-refused",
            f"refused connection from {shown}: out of file descriptors "
            f"(descriptor {fd} of limit {limit}, {FD_RESERVE} kept spare; {connections} connections open)",
        )
        transport.write(
            encode_with_codes(Error(f"server is out of file descriptors (limit {limit})", ErrorCode.SERVER_FULL))
        )
        transport.close()
        return True

    def _watch_accept(self, sockets: Iterable[Any]) -> None:
        """Read the descriptor limit; catch asyncio's reports of ``accept()`` failing for lack of descriptors."""
        self._fd_limit = open_file_limit()
        loop = self.loop
        listening = {sock.fileno() for sock in sockets}
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc, sock = context.get("exception"), context.get("socket")
            if (
                not self._closing
                and isinstance(exc, OSError)
                and exc.errno in _NO_DESCRIPTORS
                and sock is not None
                and sock.fileno() in listening
            ):
                self._accept_failed(exc)
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)
        self._accept_hook = (handler, previous)

    def _unwatch_accept(self) -> None:
        """Give the loop its exception handler back (if nobody replaced ours meanwhile)."""
        if self._accept_hook is not None:
            handler, previous = self._accept_hook
            if self.loop.get_exception_handler() is handler:
                self.loop.set_exception_handler(previous)
            self._accept_hook = None

    def _accept_failed(self, exc: OSError) -> None:
        # asyncio reports every failed accept() of one round (up to the backlog) and
        # retries a second later: count and log once per round.
        if self._accept_failing:
            return
        self._accept_failing = True
        self.loop.call_soon(self._accept_round_over)
        self.hub.note_refused("fd-limit")
        self._warn_limited(
            "fd-accept",
            f"cannot accept connections: {exc} (open-file limit {self._fd_limit}); asyncio retries in a second",
        )

    def _accept_round_over(self) -> None:
        self._accept_failing = False
