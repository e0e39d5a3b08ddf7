"""A tiny nc-like test client over real loopback sockets (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

TIMEOUT = 10.0


class LineClient:
    """Send raw bytes, read lines; every wait is bounded by TIMEOUT."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: tuple[str, int], nick: str | None = None, **kwargs: object) -> LineClient:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(address[0], address[1], limit=1 << 22, **kwargs)  # type: ignore[arg-type]
        return await cls.start(reader, writer, nick)

    @classmethod
    async def start(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nick: str | None) -> LineClient:
        """Read the greeting on an open stream, and log in as *nick* if given."""
        client = cls(reader, writer)
        greeting = await client.line()
        assert greeting.startswith("*** welcome"), greeting
        if nick is not None:
            await client.send(nick)
            await client.expect(f"* {nick} joined lobby")
        return client

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(line + "\n" for line in lines).encode())
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> str:
        async with asyncio.timeout(TIMEOUT):
            raw = await self.reader.readline()
        if not raw:
            raise EOFError("connection closed")
        assert raw.endswith(b"\n"), raw
        return raw[:-1].decode()

    async def expect(self, wanted: str) -> list[str]:
        """Read until a line equal to *wanted*; return the lines before it."""
        seen: list[str] = []
        while True:
            line = await self.line()
            if line == wanted:
                return seen
            seen.append(line)

    async def lines(self, count: int) -> list[str]:
        return [await self.line() for _ in range(count)]

    async def eof(self) -> list[str]:
        """Read until the server closes; return the remaining lines."""
        rest: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while raw := await self.reader.readline():
                rest.append(raw.decode().rstrip("\n"))
        return rest

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> LineClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
