"""Send each word to echo_upper_server.py, one line each, and print the answers.

    python examples/echo_upper_client.py [--host 127.0.0.1] [--port 8888] hello world

Every read is bounded by a timeout, and the connection is closed on the way out.
"""

import argparse
import asyncio


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("words", nargs="+")
    args = parser.parse_args()
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        for word in args.words:
            writer.write(word.encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.readline()
            if not answer:
                raise SystemExit("the server closed the connection")
            print(answer.decode().rstrip("\n"))
    finally:
        writer.close()
        await writer.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
