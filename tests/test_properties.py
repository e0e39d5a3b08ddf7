"""Property tests of the pure core (hypothesis): framing, sanitising, sessions.

The contract, after h11: whatever bytes a peer sends, the core either turns
them into lines or into its own :class:`~asyncchat.errors.ProtocolError`
items, and :meth:`Session.receive` raises nothing at all.
"""

from __future__ import annotations

import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncchat import Hub, Limits, ProtocolError, Session
from asyncchat.errors import InvalidEncoding, LineTooLong
from asyncchat.framing import LineDecoder, sanitize, split_datagram
from asyncchat.hub import Member

MAX_LINE = 64

# Bytes that exercise the framing: line endings, CR, NUL, ESC, UTF-8 lead and
# continuation bytes, plus anything else.
_interesting = st.sampled_from([b"\n", b"\r", b"\r\n", b"\x00", b"\x1b[31m", b"\xc3", b"\xa9", b"\xe2\x80\xae", b"a"])
stream_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(_interesting, st.binary(max_size=80)), max_size=40).map(b"".join),
)


def _normalise(items: list[str | ProtocolError]) -> list[str | tuple[str, str]]:
    """Errors compare by type and text (exception objects compare by identity)."""
    return [(type(i).__name__, str(i)) if isinstance(i, ProtocolError) else i for i in items]


def _decode_in_pieces(data: bytes, cuts: list[int], limit: int = MAX_LINE) -> list[str | ProtocolError]:
    decoder = LineDecoder(limit)
    out: list[str | ProtocolError] = []
    start = 0
    for cut in sorted(set(cuts)):
        out += decoder.feed(data[start:cut])
        start = cut
    out += decoder.feed(data[start:])
    out += decoder.feed_eof()
    assert decoder.buffered == 0
    return out


@given(data=stream_bytes, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
@settings(max_examples=400, deadline=None)
def test_framing_any_split_gives_the_same_items(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    whole = _decode_in_pieces(data, [])
    assert _normalise(_decode_in_pieces(data, cuts)) == _normalise(whole)


@given(data=stream_bytes)
@settings(max_examples=200, deadline=None)
def test_framing_one_byte_at_a_time_gives_the_same_items(data: bytes) -> None:
    assert _normalise(_decode_in_pieces(data, list(range(len(data))))) == _normalise(_decode_in_pieces(data, []))


@given(data=stream_bytes)
@settings(max_examples=300, deadline=None)
def test_framing_items_are_safe_and_bounded(data: bytes) -> None:
    decoder = LineDecoder(MAX_LINE)
    items = decoder.feed(data)
    # Memory is bounded whatever the input: at most the limit plus a CR.
    assert decoder.buffered <= MAX_LINE + 1
    items += decoder.feed_eof()
    for item in items:
        if isinstance(item, ProtocolError):
            assert isinstance(item, LineTooLong | InvalidEncoding)
            continue
        assert isinstance(item, str)
        assert "\n" not in item
        assert "\r" not in item
        assert len(item.encode()) <= 4 * MAX_LINE  # escapes grow text by at most 4x
        assert _unsafe(item) == []
    # The number of items never exceeds the number of line endings (plus a last line).
    assert len(items) <= data.count(b"\n") + 1


@given(data=stream_bytes)
@settings(max_examples=200, deadline=None)
def test_split_datagram_matches_stream_framing(data: bytes) -> None:
    assert _normalise(split_datagram(data, MAX_LINE)) == _normalise(_decode_in_pieces(data, []))


_BIDI_CONTROLS = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
_INVISIBLE = {0x061C, 0x200B, 0x200E, 0x200F, 0xFEFF}


def _unsafe(text: str) -> list[str]:
    """Characters that must never reach another member raw."""
    bad = []
    for ch in text:
        cp = ord(ch)
        control = (cp < 0x20 and ch != "\t") or 0x7F <= cp < 0xA0
        bidi = unicodedata.bidirectional(ch) in _BIDI_CONTROLS
        if control or bidi or cp in _INVISIBLE:
            bad.append(ch)
    return bad


@given(text=st.text(max_size=200))
@settings(max_examples=500, deadline=None)
def test_sanitize_leaves_no_control_characters(text: str) -> None:
    clean = sanitize(text)
    assert _unsafe(clean) == []
    # Safe text is left alone, and TAB survives.
    if not _unsafe(text):
        assert clean == text


@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
@settings(max_examples=200, deadline=None)
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once


class _Sink:
    """A sink that keeps what the hub wrote (the core is pure: no sockets needed)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self, *, abort: bool = False) -> None:
        self.closed = True


_line_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "alice",
            "bob",
            "/nick carol",
            "/nick ALICE",
            "/join room1",
            "/join lobby",
            "/join bad room",
            "/rooms",
            "/who",
            "/msg bob hi",
            "/msg alice hi",
            "/msg nobody hi",
            "/msg bob",
            "/me joined lobby",
            "/me waves",
            "/ping x",
            "/help",
            "/quit bye",
            "//slash",
            "/",
            "/unknown",
            "",
            "   ",
        ]
    ),
)
_commands = st.lists(st.tuples(st.integers(min_value=0, max_value=2), _line_text, st.floats(0, 5)), max_size=60)


@given(script=_commands, raw=st.lists(st.binary(max_size=100), max_size=5))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sessions_never_raise_on_any_input(script: list[tuple[int, str, float]], raw: list[bytes]) -> None:
    limits = Limits(max_line_bytes=MAX_LINE, rate_burst=5, rate_lines_per_second=2.0, rate_disconnect_after=8)
    hub = Hub(limits=limits)
    now = 0.0
    sinks: list[_Sink] = []
    sessions: list[Session] = []
    decoders: list[LineDecoder] = []
    members: list[Member] = []
    for _ in range(3):
        sink = _Sink()
        member = hub.connect(sink, kind="test", peer="test", ip="127.0.0.1", now=now)
        sinks.append(sink)
        members.append(member)
        sessions.append(Session(hub, member, now=now))
        decoders.append(LineDecoder(MAX_LINE))
    for chunk in raw:  # raw bytes through the framing first
        sessions[0].receive(decoders[0].feed(chunk), now)
    for who, line, dt in script:
        now += dt
        items = decoders[who].feed(line.encode("utf-8", "surrogatepass") + b"\n")
        sessions[who].receive(items, now)
        hub.flush()
        hub.tick(now)
    for session, decoder in zip(sessions, decoders, strict=True):
        session.receive(decoder.feed_eof(), now)
        session.connection_lost()
    hub.flush()
    stats = hub.statistics()
    assert stats.members == 0
    assert stats.logged_in == 0
    assert all(sink.closed for sink in sinks)
    for sink in sinks:
        # Every byte the hub wrote is whole lines of valid, safe UTF-8.
        text = bytes(sink.data).decode()
        assert text == "" or text.endswith("\n")
        for out_line in text.split("\n"):
            assert _unsafe(out_line) == []
