"""Pure framing: bytes in, decoded and sanitised text lines out.

:class:`LineDecoder` turns a byte stream into lines.  It accepts ``\\n`` and
``\\r\\n`` endings, handles partial reads and many lines per read, and keeps
the stream in sync after an over-long line: the rest of that line is skipped
(counting its size, holding none of it) and reported once, at its end, as
:class:`~asyncchat.errors.LineTooLong`.  Invalid UTF-8 becomes
:class:`~asyncchat.errors.InvalidEncoding`.  Neither is raised: both are
returned in order among the lines, so one bad line never costs the good ones
around it.

:func:`sanitize` makes peer text safe to relay: C0 controls except TAB, DEL,
C1 controls (including U+0085, NEL), the Unicode line and paragraph
separators (U+2028, U+2029) and the bidi/format controls are replaced by a
visible ``\\xNN`` / ``\\uNNNN`` escape, so no member can forge a line (for
any line splitter, ``str.splitlines`` included) or send a terminal escape
sequence to another member.  :data:`UNSAFE_TEXT` is that one rule; the bus
codec checks text from other nodes with it too.
"""

from __future__ import annotations

import re

from .errors import InvalidEncoding, LineTooLong, ProtocolError

__all__ = ["UNSAFE_TEXT", "LineDecoder", "sanitize", "split_datagram"]

# C0 except TAB, DEL, C1, and the bidi / invisible format controls used for
# "Trojan source" style spoofing.
_UNSAFE_CODEPOINTS = [
    *range(0x00, 0x09),
    *range(0x0A, 0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200B,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0xFEFF,
]
_ESCAPES = {cp: (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}") for cp in _UNSAFE_CODEPOINTS}
#: Every character that peer text may not carry (the one unsafe-text rule).
UNSAFE_TEXT = re.compile("[" + "".join(re.escape(chr(cp)) for cp in _UNSAFE_CODEPOINTS) + "]")


def sanitize(text: str) -> str:
    """Return *text* with every control character replaced by a visible escape."""
    if UNSAFE_TEXT.search(text) is None:
        return text
    return text.translate(_ESCAPES)


def _decode(raw: bytes) -> str | ProtocolError:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidEncoding(exc.start)
    return sanitize(text)


class LineDecoder:
    """Incremental decoder of a ``\\n`` or ``\\r\\n`` delimited UTF-8 stream.

    Feed bytes with :meth:`feed` and the end of the stream with
    :meth:`feed_eof`; each returns the complete items found, in order: a
    ``str`` per line (without its ending, already sanitised) or a
    :class:`~asyncchat.errors.ProtocolError` per bad line.  Memory is bounded
    by ``max_line_bytes`` whatever the input.
    """

    __slots__ = ("_buf", "_skip_cr", "_skipped", "max_line_bytes")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = b""
        # Bytes of the current over-long line seen so far, or -1 when not skipping.
        self._skipped = -1
        # Whether the last skipped byte was a CR (it belongs to a CRLF ending).
        self._skip_cr = False

    def __repr__(self) -> str:
        return f"<LineDecoder buffered={len(self._buf)} skipping={self._skipped >= 0}>"

    def feed(self, data: bytes) -> list[str | ProtocolError]:
        """Consume *data*; return the lines (and line errors) it completes."""
        out: list[str | ProtocolError] = []
        if not data:
            return out
        parts = data.split(b"\n")
        tail = parts.pop()  # bytes after the last newline (possibly empty)
        limit = self.max_line_bytes
        if parts:
            first = parts[0]
            if self._skipped >= 0:
                size = self._skipped + len(first)
                self._skipped = -1
                if first.endswith(b"\r") if first else self._skip_cr:
                    size -= 1
                out.append(LineTooLong(size, limit))
                parts = parts[1:]
            elif self._buf:
                parts[0] = self._buf + first
            self._buf = b""
            for raw in parts:
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if len(raw) > limit:
                    out.append(LineTooLong(len(raw), limit))
                else:
                    out.append(_decode(raw))
        if self._skipped >= 0:
            if tail:
                self._skipped += len(tail)
                self._skip_cr = tail.endswith(b"\r")
        elif tail:
            buf = self._buf + tail if self._buf else tail
            # One byte of slack for a CR that may precede the coming LF.
            if len(buf) > limit + 1:
                self._skipped = len(buf)
                self._skip_cr = buf.endswith(b"\r")
                self._buf = b""
            else:
                self._buf = buf
        return out

    def feed_eof(self) -> list[str | ProtocolError]:
        """End the stream: a final line without a newline still counts."""
        out: list[str | ProtocolError] = []
        if self._skipped >= 0:
            out.append(LineTooLong(self._skipped, self.max_line_bytes))
        elif self._buf:
            raw = self._buf[:-1] if self._buf.endswith(b"\r") else self._buf
            if len(raw) > self.max_line_bytes:
                out.append(LineTooLong(len(raw), self.max_line_bytes))
            elif raw:
                out.append(_decode(raw))
        self._buf = b""
        self._skipped = -1
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line currently held."""
        return len(self._buf)


def split_datagram(data: bytes, max_line_bytes: int) -> list[str | ProtocolError]:
    """Split one datagram into lines; a last line without a newline counts."""
    decoder = LineDecoder(max_line_bytes)
    return decoder.feed(data) + decoder.feed_eof()
