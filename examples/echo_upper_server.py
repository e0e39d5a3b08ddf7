"""An asyncio TCP server that answers every line with the line in upper case.

The classic tutorial echo server, done right: one coroutine per connection
that loops until the peer hangs up (not just one read), a bounded line
length, backpressure with ``drain()``, a clean close, and Ctrl-C stops it.

    python examples/echo_upper_server.py [--host 127.0.0.1] [--port 8888]
    python examples/echo_upper_client.py --port 8888 hello world

(``--port 0`` picks a free port; the first line printed says which.)
"""

import argparse
import asyncio
import contextlib

MAX_LINE = 4096  # bytes; a longer line ends that connection, not the server


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():  # b"" when the peer closes
            writer.write(line.decode("utf-8", "replace").upper().encode())
            await writer.drain()  # wait if the peer reads slowly
    except (ValueError, ConnectionError):  # ValueError: line over MAX_LINE
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    args = parser.parse_args()
    server = await asyncio.start_server(handle, args.host, args.port, limit=MAX_LINE)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
