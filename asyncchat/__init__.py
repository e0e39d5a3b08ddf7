"""asyncchat: chat servers on asyncio — one hub, TCP and UDP front ends.

::

    import asyncio, asyncchat

    async def main():
        hub = asyncchat.Hub()
        async with asyncchat.serve_tcp(hub, port=0) as server:
            print("listening on", server.address)
            await server.serve_forever()

The core (hub, session, protocol, framing, limits, errors, events) is pure
and imported eagerly.  The transports and optional integrations are imported
on first use (PEP 562), so ``python -m asyncchat.tcp`` never runs a module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    ChatError,
    CommandError,
    ConnectionClosed,
    DependencyMissing,
    ErrorCode,
    InvalidEncoding,
    InvalidName,
    LineTooLong,
    LoginFailed,
    NameTaken,
    ProtocolError,
    Refused,
    UsageError,
)
from .events import (
    Action,
    ChatEvent,
    Closing,
    Error,
    Joined,
    Kicked,
    Left,
    Message,
    Names,
    NickChanged,
    Notice,
    OperatorChanged,
    Private,
    Quit,
    RoomList,
    Topic,
    TopicChanged,
)
from .hub import Hub, HubStatistics, Member, RoomInfo, Sink
from .limits import Limits, SlowConsumerPolicy
from .session import Session, SessionState

if TYPE_CHECKING:
    from .bus import Bus, InProcessBus, InProcessNetwork
    from .client import (
        ChatClient,
        connect_tcp,
        connect_udp,
        connect_unix,
        reconnecting,
    )
    from .redis_bus import RedisBus
    from .runtime import watch
    from .tcp import TcpServer, serve_tcp
    from .udp import UdpServer, serve_udp

__all__ = [
    "Action",
    "Bus",
    "ChatClient",
    "ChatError",
    "ChatEvent",
    "Closing",
    "CommandError",
    "ConnectionClosed",
    "DependencyMissing",
    "Error",
    "ErrorCode",
    "Hub",
    "HubStatistics",
    "InProcessBus",
    "InProcessNetwork",
    "InvalidEncoding",
    "InvalidName",
    "Joined",
    "Kicked",
    "Left",
    "Limits",
    "LineTooLong",
    "LoginFailed",
    "Member",
    "Message",
    "NameTaken",
    "Names",
    "NickChanged",
    "Notice",
    "OperatorChanged",
    "Private",
    "ProtocolError",
    "Quit",
    "RedisBus",
    "Refused",
    "RoomInfo",
    "RoomList",
    "Session",
    "SessionState",
    "Sink",
    "SlowConsumerPolicy",
    "TcpServer",
    "Topic",
    "TopicChanged",
    "UdpServer",
    "UsageError",
    "__version__",
    "connect_tcp",
    "connect_udp",
    "connect_unix",
    "reconnecting",
    "serve_tcp",
    "serve_udp",
    "watch",
]

_LAZY = {
    "Bus": "bus",
    "InProcessBus": "bus",
    "InProcessNetwork": "bus",
    "RedisBus": "redis_bus",  # the only module importing redis (DependencyMissing without it)
    "ChatClient": "client",
    "connect_tcp": "client",
    "connect_udp": "client",
    "connect_unix": "client",
    "reconnecting": "client",
    "TcpServer": "tcp",
    "serve_tcp": "tcp",
    "UdpServer": "udp",
    "serve_udp": "udp",
    "watch": "runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncchat' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
