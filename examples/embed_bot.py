"""Embed a chat in your program: one hub on TCP and UDP, plus a bot member.

The bot ``clock`` answers ``!time`` in its room and logs who joins and leaves.
TCP and UDP members share the rooms.

    python examples/embed_bot.py [--host 127.0.0.1] [--port 8080] [--udp-port 8000]
    nc 127.0.0.1 8080        (then: alice, !time)

``--port 0`` / ``--udp-port 0`` pick free ports; the first lines printed say which.
"""

import argparse
import asyncio
import contextlib
import datetime

import asyncchat
from asyncchat import ChatEvent, Joined, Left, Message
from asyncchat.events import Quit


def add_clock(hub: asyncchat.Hub) -> asyncchat.Member:
    """Log in the bot; *on_event* gets every event the bot receives (typed, with its room)."""

    def on_event(event: ChatEvent) -> None:
        match event:
            case Message(nick, text) if text.strip() == "!time":
                hub.say(bot, f"{nick}: it is {datetime.datetime.now():%H:%M:%S}")
            case Joined(nick, room) if nick != bot.nick:
                print(f"[clock] {nick} joined {room}", flush=True)
            case Left(nick, room) | Quit(nick, room) if nick != bot.nick:  # Quit: left the chat
                print(f"[clock] {nick} left {room}", flush=True)

    bot = hub.add_bot("clock", on_event)
    return bot


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--udp-port", type=int, default=8000)
    args = parser.parse_args()
    hub = asyncchat.Hub()
    add_clock(hub)
    async with (
        asyncchat.serve_tcp(hub, host=args.host, port=args.port) as tcp,
        asyncchat.serve_udp(hub, host=args.host, port=args.udp_port) as udp,
    ):
        print("listening on tcp {}:{}".format(*tcp.address), flush=True)
        print("listening on udp {}:{}".format(*udp.address), flush=True)
        await tcp.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
