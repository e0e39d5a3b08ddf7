"""Pacing of what a client sends: a token bucket below the server's rate limit (pure, no clock).

A server refuses input lines beyond ``Limits.rate_lines_per_second`` after a
burst of ``Limits.rate_burst`` lines (20 lines per second after 40 by
default).  A client that sends a file at once would lose every line past the
burst, so the terminal client sends through a :class:`Pacer` that allows
less: :data:`DEFAULT_RATE` lines per second after :data:`DEFAULT_BURST`
lines.  The margin covers the nickname line, keepalive pings and lines that
the network delivers bunched together.  The server does not say its rate;
a client of a server with other limits is given them (``--rate``,
``--rate-burst``), and should stay below them too.
"""

from __future__ import annotations

from ..limits import Limits

__all__ = ["DEFAULT_BURST", "DEFAULT_RATE", "Pacer"]

_SERVER = Limits()
#: Lines per second a client sends at most by default: 90% of the server's default rate.
DEFAULT_RATE = _SERVER.rate_lines_per_second * 0.9
#: Lines a client sends at once at most by default: 75% of the server's default burst.
DEFAULT_BURST = int(_SERVER.rate_burst * 0.75)


class Pacer:
    """A token bucket: at most *burst* lines at once, then *rate* lines per second.

    The caller passes the clock (``now``, in seconds, from any monotonic
    clock), so the bucket needs no event loop.  ``rate=0`` disables pacing.
    Raises :class:`ValueError` for a negative rate or a burst below 1.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, *, now: float = 0.0) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 lines per second, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1 line, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def __repr__(self) -> str:
        return f"<Pacer {self.rate:g} lines/s burst={self.burst} tokens={self._tokens:.2f}>"

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def delay(self, now: float) -> float:
        """Seconds to wait from *now* before the next line may be sent (0.0: send it now)."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def take(self, now: float) -> None:
        """Count one line sent at *now* (after :meth:`delay` said 0)."""
        if self.rate == 0:
            return
        self._refill(now)
        self._tokens -= 1.0
