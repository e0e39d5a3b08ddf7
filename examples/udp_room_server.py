"""A UDP chat room: one hub served by ``serve_udp``.

    python examples/udp_room_server.py [--host 127.0.0.1] [--port 8000] [--strict]
    python examples/udp_room_client.py --port 8000 --name alice hello

The room speaks line protocol v1 over datagrams; members who fall silent for
two minutes expire (the client pings).  An address receives at most three
times what it sent until it echoes the token the server gave it (``/verify``);
``--strict`` also holds back the nickname until then.  ``--port 0`` picks a
free port; the first line printed says which.
"""

import argparse
import asyncio
import contextlib

import asyncchat


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--strict", action="store_true", help="verify addresses before accepting nicknames")
    args = parser.parse_args()
    hub = asyncchat.Hub()
    async with asyncchat.serve_udp(hub, host=args.host, port=args.port, strict=args.strict) as server:
        print("listening on {}:{}".format(*server.address), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
