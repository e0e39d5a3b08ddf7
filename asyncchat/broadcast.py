"""The one broadcast routine: room batches, bounded outboxes, one write per member.

This is the fast path of a chat server — fan-out — and it is pure and
synchronous like the rest of the hub (the hub *has* a :class:`Broadcaster`).
How output leaves:

1. A room event (chat line, join, leave, ...) is appended to the room's
   *batch* in O(1), whatever the number of members.
2. Once per event-loop iteration :meth:`Broadcaster.flush` runs (the adapter
   arranges it through the wake-up callback, see :mod:`asyncchat.runtime`).
   Each dirty room's batch is encoded and joined **once per encoder present
   among its members** (v1, the IRC variants, the WebSocket ones, ...) and
   the same bytes are appended to the outbox of every member with that
   encoder.  A member with its own view of the batch gets a slice of its
   own: its own chat lines are hidden from it, and a member that joined (or
   was caught up) mid-batch holds a *cursor* into it.
3. Every member with pending output gets exactly one write: all lines
   queued for it in that iteration leave together.

Order: before a line goes to one member directly, and before a member's rooms
change, that member alone is caught up with its rooms' pending batches
(:meth:`Broadcaster.catch_up`, O(batch)), so every member sees every line in
the order the hub produced it, and all members of a room see the room's
lines in the same order — without touching the rest of the room.

Bounds: a member's :class:`~asyncchat.members.Outbox` is bounded by
``Limits.outbox_high_water``.  A member whose transport cannot keep up is
*paused* by its adapter; its output then stays in the outbox, and when that
passes the high-water mark the slow-consumer policy applies to that member
alone (disconnect it at the next flush — never from inside a broadcast — or
drop lines and tell it how many).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .errors import ErrorCode
from .events import ChatEvent, Error
from .limits import Limits, SlowConsumerPolicy
from .members import Encoder, Member, Room

__all__ = ["Broadcaster"]

logger = logging.getLogger("asyncchat.hub")


class Broadcaster:
    """Room batches, member outboxes and flushing, for one hub.

    *evict* is called (from :meth:`flush`, never from inside a broadcast or
    in the middle of a flush's writes) with each member to remove and the
    reason: ``"slow"`` for one that passed its high-water mark under the
    DISCONNECT policy, ``"error"`` for one whose write raised (a bot's
    callback, say); the hub removes it and aborts its sink.
    """

    def __init__(self, limits: Limits, evict: Callable[[Member, str], None]) -> None:
        self.limits = limits
        self._evict = evict
        self._dirty_rooms: list[Room] = []
        self._dirty: list[Member] = []
        self._evictions: list[tuple[Member, str]] = []
        self._scheduled = False
        self._wakeup: Callable[[], None] | None = None
        self.lines_out = 0
        self.bytes_out = 0
        self.lines_dropped = 0
        self.errors_sent = 0
        self.writes = 0

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Install the callback that makes the event loop call :meth:`flush` soon."""
        self._wakeup = wakeup

    # ------------------------------------------------------------- queueing

    def send(self, member: Member, event: ChatEvent) -> None:
        """Queue one event for one member, after everything already queued for it."""
        if member.closed:
            return
        for room in member.rooms:
            self.catch_up(member, room)
        if isinstance(event, Error):
            self.errors_sent += 1
        self.enqueue(member, member.encoder(event), 1)

    def send_many(self, member: Member, events: Iterable[ChatEvent]) -> None:
        """Queue several events for one member (e.g. a room's history) in one piece."""
        if member.closed:
            return
        for room in member.rooms:
            self.catch_up(member, room)
        encoded = list(map(member.encoder, events))
        if encoded:
            self.enqueue(member, b"".join(encoded), len(encoded))

    def room_event(self, room: Room, event: ChatEvent, exclude: Member | Iterable[Member] | None = None) -> None:
        """Append *event* to *room*'s batch, hidden from *exclude* (one member or several)."""
        batch = room._batch
        if not batch:
            self._dirty_rooms.append(room)
            self._wake()
        if exclude is not None:
            index = len(batch)
            if isinstance(exclude, Member):
                room._excluded.append((index, exclude))
            else:
                room._excluded.extend((index, member) for member in exclude)
        batch.append(event)

    def materialize(self, room: Room) -> None:
        """Move a room's pending batch into its members' outboxes.

        The batch is encoded and joined once per encoder, and the same bytes
        go to every member with that encoder; a member with its own view of
        the batch — a cursor because it joined (or was caught up) mid-batch,
        or lines hidden from it — gets a slice of its own.
        """
        batch = room._batch
        if not batch:
            return
        members = room.members
        if members:
            cursors = room._cursors
            hidden: dict[Member, set[int]] = {}
            for index, member in room._excluded:
                hidden.setdefault(member, set()).add(index)
            lines = len(batch)
            enqueue = self.enqueue
            chunks: dict[Encoder, bytes] = {}
            # Members of one front end tend to sit next to each other: remember the last encoder.
            last: Encoder | None = None
            chunk = b""
            for member in members:
                if member in hidden or member in cursors:
                    self._slice(member, room, cursors.get(member, 0), hidden.get(member))
                    continue
                encoder = member.encoder
                if encoder is not last:
                    last = encoder
                    found = chunks.get(encoder)
                    if found is None:
                        found = chunks[encoder] = b"".join(self._pieces(room, encoder))
                    chunk = found
                enqueue(member, chunk, lines)
        room._batch = []
        room._encoded = {}
        if room._excluded:
            room._excluded = []
        if room._cursors:
            room._cursors = {}

    @staticmethod
    def _pieces(room: Room, encoder: Encoder) -> list[bytes]:
        """The room's batch encoded with *encoder*; each event is encoded once per encoder."""
        pieces = room._encoded.get(encoder)
        if pieces is None:
            pieces = room._encoded[encoder] = []
        batch = room._batch
        if len(pieces) < len(batch):
            pieces.extend(map(encoder, batch[len(pieces) :]))
        return pieces

    def _slice(self, member: Member, room: Room, start: int, skip: set[int] | None) -> None:
        """Queue the room's ``batch[start:]`` for *member*, without the positions in *skip*."""
        pieces = self._pieces(room, member.encoder)
        chosen = [p for i, p in enumerate(pieces) if i >= start and i not in skip] if skip else pieces[start:]
        if chosen:
            self.enqueue(member, b"".join(chosen), len(chosen))

    def catch_up(self, member: Member, room: Room) -> None:
        """Hand *member* the part of *room*'s batch it does not hold yet, in O(batch).

        Called before a line goes to one member directly and before the
        member's rooms change, so its outbox keeps the order in which the hub
        produced everything, without materialising the batch for the whole room.
        """
        end = len(room._batch)
        if not end:
            return
        start = room._cursors.get(member, 0)
        if start < end:
            skip = {i for i, m in room._excluded if m is member and i >= start}
            self._slice(member, room, start, skip)
            room._cursors[member] = end

    def enqueue(self, member: Member, data: bytes, lines: int) -> None:
        """Append *data* (*lines* lines) to *member*'s outbox, within its bound."""
        out = member.outbox
        if member.closed or out.evicted:
            return
        # A member that is not paused is flushed every iteration, so only a
        # paused member's outbox can grow across iterations: bound that one.
        if out.paused and out.nbytes + len(data) > self.limits.outbox_high_water:
            self._over_high_water(member, lines)
            return
        if out.dropped:
            self._report_drops(member)
        if not out.dirty and not out.paused:
            out.dirty = True
            self._dirty.append(member)
            self._wake()
        out.chunks.append(data)
        out.nbytes += len(data)
        self.lines_out += lines

    def _over_high_water(self, member: Member, lines: int) -> None:
        limits = self.limits
        out = member.outbox
        if limits.slow_consumer is SlowConsumerPolicy.DISCONNECT:
            logger.warning(
                "disconnecting slow consumer %r: %d bytes unsent exceeds limit of %d bytes",
                member,
                out.nbytes,
                limits.outbox_high_water,
            )
            # Never mutate rooms from inside a broadcast: evict at the next flush.
            self._mark_evicted(member, "slow")
            return
        if not out.dropped:
            logger.warning(
                "dropping lines for slow consumer %r: outbox of %d bytes is at its limit of %d bytes",
                member,
                out.nbytes,
                limits.outbox_high_water,
            )
        out.dropped += lines
        self.lines_dropped += lines

    def _mark_evicted(self, member: Member, reason: str) -> None:
        member.outbox.evicted = True
        self._evictions.append((member, reason))
        self._wake()

    def _report_drops(self, member: Member) -> None:
        out = member.outbox
        dropped, out.dropped = out.dropped, 0
        notice = member.encoder(
            Error(f"{dropped} lines were dropped because you read too slowly", ErrorCode.LINES_DROPPED)
        )
        out.chunks.append(notice)
        out.nbytes += len(notice)
        self.errors_sent += 1

    def discard(self, member: Member) -> None:
        """Forget *member*'s unsent output (it is being aborted)."""
        out = member.outbox
        out.chunks.clear()
        out.nbytes = 0

    # ------------------------------------------------------------- flow control

    def pause(self, member: Member) -> None:
        """The member's transport is full: keep its output in the outbox for now."""
        member.outbox.paused = True

    def resume(self, member: Member) -> None:
        """The member's transport drained: flush its outbox soon (and report drops)."""
        out = member.outbox
        if member.closed or not out.paused:
            return
        out.paused = False
        if out.dropped:
            self._report_drops(member)
        if out.chunks and not out.dirty:
            out.dirty = True
            self._dirty.append(member)
            self._wake()

    def _wake(self) -> None:
        if not self._scheduled and self._wakeup is not None:
            self._scheduled = True
            self._wakeup()

    # ------------------------------------------------------------- flushing

    def flush(self) -> None:
        """Hand every member's queued output to its sink, one write per member."""
        self._scheduled = False
        while True:
            # Evicting a member announces its leave, which dirties its rooms again.
            while self._dirty_rooms or self._evictions:
                rooms, self._dirty_rooms = self._dirty_rooms, []
                for room in rooms:
                    self.materialize(room)
                evicted, self._evictions = self._evictions, []
                for member, reason in evicted:
                    self._evict(member, reason)
            dirty, self._dirty = self._dirty, []
            for member in dirty:
                member.outbox.dirty = False
                self.flush_member(member)
            # A write that raised marked its member for eviction: remove it now
            # (everyone else was served above) and deliver its leave line.
            if not self._evictions:
                break

    def flush_member(self, member: Member) -> None:
        """Write *member*'s outbox now (unless its transport is paused)."""
        out = member.outbox
        chunks = out.chunks
        if not chunks or (out.paused and not member.closed):
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        out.nbytes = 0
        self.bytes_out += len(data)
        self.writes += 1
        try:
            out.write(data)
        except Exception:
            # One failing sink (a bot whose callback raises, say) must not stop
            # everyone else's output: log it, and remove that member after the writes.
            logger.exception("write to %r failed; disconnecting it", member)
            if not member.closed and not out.evicted:
                self._mark_evicted(member, "error")

    def write_now(self, member: Member, event: ChatEvent) -> None:
        """Hand one event straight to *member*'s transport, ahead of its outbox (best effort).

        For a last notice to a member about to be aborted (its queued output
        is discarded): a failure is logged at DEBUG and otherwise ignored.
        """
        data = member.encoder(event)
        try:
            member.outbox.write(data)
        except Exception:
            logger.debug("last notice to %r failed", member, exc_info=True)
            return
        self.bytes_out += len(data)
        self.lines_out += 1
        self.writes += 1
