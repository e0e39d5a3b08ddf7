"""LineDecoder and sanitize: whole input, byte by byte, trailing data, no event loop."""

from __future__ import annotations

import pytest

from asyncchat.errors import InvalidEncoding, LineTooLong, ProtocolError
from asyncchat.framing import LineDecoder, sanitize, split_datagram

Item = str | ProtocolError


def norm(items: list[Item]) -> list[object]:
    return [item if isinstance(item, str) else (type(item), str(item)) for item in items]


def feed_whole(data: bytes, limit: int = 16) -> list[Item]:
    decoder = LineDecoder(limit)
    return decoder.feed(data) + decoder.feed_eof()


def feed_bytewise(data: bytes, limit: int = 16) -> list[Item]:
    decoder = LineDecoder(limit)
    out: list[Item] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    return out + decoder.feed_eof()


CASES = [
    (b"hello\n", ["hello"]),
    (b"a\r\nb\nc\r\n", ["a", "b", "c"]),
    (b"\n\n", ["", ""]),
    (b"no newline", ["no newline"]),
    (b"q" * 20, [(LineTooLong, "line of 20 bytes exceeds limit of 16 bytes")]),
    (b"x" * 16 + b"\n", ["x" * 16]),
    (b"x" * 16 + b"\r\n", ["x" * 16]),
    (b"x" * 17 + b"\nok\n", [(LineTooLong, "line of 17 bytes exceeds limit of 16 bytes"), "ok"]),
    (b"y" * 40 + b"\r\nafter\n", [(LineTooLong, "line of 40 bytes exceeds limit of 16 bytes"), "after"]),
    (b"\xff\xfe\nok\n", [(InvalidEncoding, "line is not valid UTF-8 (bad byte at offset 0)"), "ok"]),
    ("héllo €\n".encode(), ["héllo €"]),
    (b"a\x00b\x1b[31mc\x7f\n", ["a\\x00b\\x1b[31mc\\x7f"]),
    (b"tab\there\n", ["tab\there"]),
    (b"in\rside\n", ["in\\x0dside"]),
]


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_whole_and_bytewise_agree(data: bytes, expected: list[object]) -> None:
    assert norm(feed_whole(data)) == expected
    assert norm(feed_bytewise(data)) == expected


@pytest.mark.parametrize(("data", "expected"), [c for c in CASES if c[0].endswith(b"\n")])
def test_trailing_data_stays_buffered(data: bytes, expected: list[object]) -> None:
    decoder = LineDecoder(16)
    assert norm(decoder.feed(data + b"partial")) == expected
    assert decoder.buffered == len(b"partial")
    assert decoder.feed(b"\n") == ["partial"]


def test_many_lines_in_one_read() -> None:
    data = b"".join(b"line %d\n" % i for i in range(1000))
    assert feed_whole(data, 4096) == [f"line {i}" for i in range(1000)]


def test_over_long_line_memory_is_bounded_and_stream_stays_in_sync() -> None:
    decoder = LineDecoder(64)
    for _ in range(1024):  # 1 MiB without a newline
        assert decoder.feed(b"z" * 1024) == []
        assert decoder.buffered <= 65
    items = decoder.feed(b"z\nnext line\n")
    assert norm(items) == [(LineTooLong, "line of 1048577 bytes exceeds limit of 64 bytes"), "next line"]


def test_over_long_line_at_eof_is_reported() -> None:
    decoder = LineDecoder(64)
    decoder.feed(b"q" * 100)
    assert norm(decoder.feed_eof()) == [(LineTooLong, "line of 100 bytes exceeds limit of 64 bytes")]


def test_cr_split_from_lf_across_reads() -> None:
    decoder = LineDecoder(4)
    assert decoder.feed(b"abcd\r") == []
    assert decoder.feed(b"\nef\n") == ["abcd", "ef"]


def test_datagram_split() -> None:
    assert split_datagram(b"one\ntwo", 100) == ["one", "two"]
    assert split_datagram(b"", 100) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
        ("\u202eevil", "\\u202eevil"),
        ("\x85c1", "\\x85c1"),
        ("keep\ttab", "keep\ttab"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
    ],
)
def test_sanitize(text: str, expected: str) -> None:
    assert sanitize(text) == expected
