"""Every bound the server enforces, in one frozen dataclass.

Each field has a finite default and a unit in its name or docstring.  One
:class:`Limits` object belongs to a :class:`~asyncchat.hub.Hub` and is shared by
every transport serving that hub, so TCP and UDP members obey the same rules.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["Limits", "SlowConsumerPolicy"]


class SlowConsumerPolicy(enum.Enum):
    """What happens to a member whose unsent output passes the high-water mark."""

    #: Disconnect the member with a notice (the default).
    DISCONNECT = "disconnect"
    #: Keep the member; drop lines for it and tell it how many were dropped.
    DROP = "drop"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on input, output, time and membership.

    Raises :class:`ValueError` at construction if a field is out of range.
    """

    #: Longest accepted input line, in bytes, without its line ending.
    max_line_bytes: int = 4096
    #: Chat lines kept per room and replayed to a member who joins it.
    history_lines: int = 20
    #: Unsent output per member, in bytes, beyond which the slow-consumer policy applies.
    outbox_high_water: int = 256 * 1024
    #: What to do with a member over ``outbox_high_water``.
    slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT
    #: Sustained input rate per member, in lines per second (token bucket refill).
    rate_lines_per_second: float = 20.0
    #: Burst of lines per member allowed above the sustained rate (bucket size).
    rate_burst: int = 40
    #: Lines refused by the rate limit, in a row, after which the member is disconnected.
    rate_disconnect_after: int = 200
    #: Members (logged in or not) across all transports of one hub.
    max_members: int = 10_000
    #: Simultaneous connections (or UDP members) from one source: an IPv4
    #: address, or an IPv6 network of ``ipv6_prefix_bits`` (see :func:`asyncchat.netaddr.source_key`).
    max_per_ip: int = 100
    #: Prefix length, in bits, of the IPv6 network counted as one source by ``max_per_ip`` (1-128).
    ipv6_prefix_bits: int = 64
    #: Largest room, in members, that announces every join and leave to everyone.
    presence_max_members: int = 1_000
    #: Rooms that may exist at once.
    max_rooms: int = 1_000
    #: Seconds a new connection has to choose a valid nickname.
    login_timeout: float = 30.0
    #: Seconds of silence after which a member is disconnected (UDP members expire).
    idle_timeout: float = 3600.0
    #: Seconds of silence after which a UDP member expires.
    udp_idle_timeout: float = 120.0
    #: UDP addresses waiting to be verified, kept apart from ``max_members``; when full,
    #: the oldest is forgotten.
    udp_max_unverified: int = 1_024
    #: Seconds allowed for flushing queued output at shutdown.
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "history_lines":
                if value < 0:
                    raise ValueError(f"Limits.history_lines must be >= 0, not {value!r}")
            elif isinstance(value, int | float) and not value > 0:
                raise ValueError(f"Limits.{field.name} must be > 0, not {value!r}")
        if self.ipv6_prefix_bits > 128:
            raise ValueError(f"Limits.ipv6_prefix_bits must be <= 128, not {self.ipv6_prefix_bits}")
        if self.max_line_bytes < 64:
            raise ValueError(f"Limits.max_line_bytes must be >= 64, not {self.max_line_bytes}")
