"""Add your own command to the chat: ``/roll [NdM]`` rolls dice for the room.

The embedding program passes ``commands={"roll": handler}`` to ``serve_tcp``;
a handler gets the member's session and the text after the command, acts on
the hub, and raises ``ProtocolError`` to answer with an error line.

    python examples/custom_command.py [--host 127.0.0.1] [--port 8080]
    nc 127.0.0.1 8080        (then: alice, /roll 2d6, /help)
"""

import argparse
import asyncio
import contextlib
import random
import re

import asyncchat
from asyncchat import ProtocolError, Session

DICE = re.compile(r"([1-9][0-9]?)?d([1-9][0-9]{0,2})")


def roll(session: Session, arg: str) -> None:
    """``/roll [NdM]``: N dice (1-99) of M sides (1-999), announced to the room."""
    match = DICE.fullmatch(arg or "1d6")
    if match is None:
        raise ProtocolError("usage: /roll [NdM], e.g. /roll 2d6")
    room = session.room
    if room is None:
        raise ProtocolError("you are not in a room; /join one")
    count, sides = int(match[1] or 1), int(match[2])
    dice = [random.randint(1, sides) for _ in range(count)]
    shown = " ".join(map(str, dice))
    session.hub.post(room, f"{session.member.nick} rolls {count}d{sides}: {shown} = {sum(dice)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    hub = asyncchat.Hub()
    async with asyncchat.serve_tcp(hub, host=args.host, port=args.port, commands={"roll": roll}) as server:
        print("listening on {}:{}".format(*server.address), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
