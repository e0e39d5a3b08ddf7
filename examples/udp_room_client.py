"""Join the UDP room, say each TEXT, then show what happens until Ctrl-C.

    python examples/udp_room_client.py [--host 127.0.0.1] [--port 8000] --name alice [TEXT ...]

The client API verifies the address, keeps the member alive with pings, and
turns every line from the server into a typed event.  Ctrl-C says /quit.
"""

import argparse
import asyncio
import contextlib

from asyncchat import Joined, Left, Message, Private
from asyncchat.client import connect_udp
from asyncchat.protocol import render


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", required=True)
    parser.add_argument("texts", nargs="*", metavar="TEXT")
    args = parser.parse_args()
    async with connect_udp(args.host, args.port, nick=args.name) as chat:
        print(f"joined {chat.room} as {chat.nick}", flush=True)
        for text in args.texts:
            await chat.say(text)
        async for event in chat:  # ends with a Closing event
            match event:
                case Message(nick, text):
                    print(f"<{nick}> {text}", flush=True)
                case Private(sender, _, text) if sender:
                    print(f"<{sender} (privately)> {text}", flush=True)
                case Joined(nick) | Left(nick) if nick != chat.nick:
                    print(f"-- {render(event)[2:]}", flush=True)
                case _:
                    print(render(event), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
