"""Pure helpers of the UDP room: the classic client's habits and datagram packing.

No I/O here; :mod:`asyncchat.udp` applies these to every datagram.
"""

from __future__ import annotations

from collections.abc import Iterable

from .protocol import fold

__all__ = ["MAX_DATAGRAM", "classic_line", "pack_datagrams", "split_lines", "strip_own_prefix"]

#: Largest datagram payload the server sends, in bytes (fits any path MTU >= 1280).
MAX_DATAGRAM = 1200

_CONTINUATION = b"+ "


def strip_own_prefix(line: str, nick: str) -> str:
    """Remove the sender's own ``nick:`` prefix (case-insensitive, plus one space after the colon).

    Another member's name is left alone (``bob: hi`` from alice stays chat
    text): the server, not the sender, attributes lines.
    """
    size = len(nick)
    if size and len(line) > size and line[size] == ":" and fold(line[:size]) == fold(nick):
        line = line[size + 1 :]
        if line.startswith(" "):
            line = line[1:]
    return line


def classic_line(line: str, nick: str) -> str:
    """Undo the classic client's habits for a logged-in *nick*: drop its prefix; ``q`` means ``/quit``.

    ``alice:hi`` and ``alice: hi`` become ``hi``; ``q`` and ``alice:q`` become ``/quit``.
    """
    line = strip_own_prefix(line, nick)
    if line.strip() == "q":
        return "/quit"
    return line


def split_lines(data: bytes, max_size: int = MAX_DATAGRAM) -> list[bytes]:
    """Cut *data* (``\\n``-terminated lines) into ``\\n``-terminated pieces of at most *max_size* bytes.

    A line that fits is kept whole.  A longer one is cut at UTF-8 character
    boundaries: the first piece holds as much as fits, each further piece
    starts with ``+ ``.  Bytes after a last ``\\n`` are treated as a line.
    """
    if max_size < 8:
        raise ValueError(f"max_size must be >= 8, not {max_size}")
    out: list[bytes] = []
    raws = data.split(b"\n")
    if raws and not raws[-1]:
        raws.pop()
    for raw in raws:
        if len(raw) < max_size:
            out.append(raw + b"\n")
            continue
        prefix = b""
        while True:
            room = max_size - 1 - len(prefix)
            if len(raw) <= room:
                out.append(prefix + raw + b"\n")
                break
            cut = room
            while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
                cut -= 1
            if cut == 0:  # not UTF-8 after all: cut anyway
                cut = room
            out.append(prefix + raw[:cut] + b"\n")
            raw = raw[cut:]
            prefix = _CONTINUATION
    return out


def pack_datagrams(lines: Iterable[bytes], max_size: int = MAX_DATAGRAM) -> list[bytes]:
    """Coalesce lines (each at most *max_size* bytes) into as few datagrams as order allows."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > max_size:
            out.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        out.append(b"".join(current))
    return out
