"""Async chat clients: TCP (optionally TLS), Unix sockets and UDP, one shape.

::

    import asyncio
    from asyncchat.client import connect_tcp

    async def main():
        async with connect_tcp("127.0.0.1", 8080, nick="alice") as chat:
            await chat.say("hello")
            async for event in chat:
                print(event)

    asyncio.run(main())

Connecting logs in: the client sends the nickname and waits for
``* nick joined lobby``.  A refused nickname raises
:class:`~asyncchat.errors.NameTaken` or :class:`~asyncchat.errors.InvalidName`,
a full server :class:`~asyncchat.errors.Refused`, anything else
:class:`LoginFailed`.

Receiving: ``async for event in chat`` yields the events of
:mod:`asyncchat.events`, parsed from the server's lines by
:func:`asyncchat.protocol.parse` (the same module that renders them), starting
with the server's greeting.  Every iteration ends with exactly one
:class:`~asyncchat.events.Closing` event — the server's ``*** closing:`` line,
or one the client makes up when the connection ends without it — and then
stops.  Text from the server arrives with control characters escaped
(:func:`asyncchat.framing.sanitize`).  Read from one task at a time.

Sending after the connection ended raises :class:`ConnectionClosed`.  A UDP
client sends ``/ping`` every *keepalive* seconds so the server does not
expire it (the pongs are not shown); TCP clients can do the same.

``python -m asyncchat.client`` is the interactive terminal client (see
:mod:`asyncchat.client._terminal`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConnectionClosed, LoginFailed
from ._core import ChatClient, connect_tcp, connect_unix, reconnecting
from ._udp import connect_udp

__all__ = [
    "ChatClient",
    "ConnectionClosed",
    "LoginFailed",
    "connect_tcp",
    "connect_udp",
    "connect_unix",
    "main",
    "reconnecting",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asyncchat.client``: the interactive (or piped) terminal client."""
    from ._terminal import main as terminal_main

    return terminal_main(argv)
