"""The one broadcast routine: room batches, bounded outboxes, one write per member.

This is the fast path of a chat server — fan-out — and it is pure and
synchronous like the rest of the hub (:class:`Broadcast` is the base class of
:class:`~asyncchat.hub.Hub`).  How output leaves:

1. A room event (chat line, join, leave, ...) is appended to the room's
   *batch* in O(1), whatever the number of members.
2. Once per event-loop iteration :meth:`Broadcast.flush` runs (the adapter
   arranges it through the wake-up callback, see :mod:`asyncchat.runtime`).
   Each dirty room's batch is encoded and joined **once** and the same bytes
   are appended to every member's outbox.  A member with its own view of the
   batch gets a slice of its own: its own chat lines are hidden from it, and
   a member that joined (or was caught up) mid-batch holds a *cursor* into it.
3. Every member with pending output gets exactly one ``sink.write()``: all
   lines queued for it in that iteration leave in one write.

Order: before a line goes to one member directly, and before a member's rooms
change, that member alone is caught up with its rooms' pending batches
(:meth:`Broadcast._catch_up`, O(batch)), so every member sees every line in
the order the hub produced it, and all members of a room see the room's
lines in the same order — without touching the rest of the room.

Bounds: a member's outbox is bounded by ``Limits.outbox_high_water``.  A
member whose transport cannot keep up is *paused* by its adapter; its output
then stays in the outbox, and when that passes the high-water mark the
slow-consumer policy applies to that member alone (disconnect it at the next
flush — never from inside a broadcast — or drop lines and tell it how many).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .events import ChatEvent, Error, Joined, Left
from .limits import Limits, SlowConsumerPolicy
from .members import Member, Room
from .protocol import encode

if TYPE_CHECKING:
    from .bus import Cluster

__all__ = ["Broadcast"]

logger = logging.getLogger("asyncchat.hub")


class Broadcast:
    """Room batches, member outboxes and flushing; the base class of the hub."""

    limits: Limits

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # Multi-node (asyncchat.bus): with a bus, room events are also published
        # and other nodes' events arrive through Hub.deliver().  None: single node.
        self._cluster: Cluster | None = None
        self._relaying = False
        self._dirty_rooms: list[Room] = []
        self._dirty: list[Member] = []
        self._evictions: list[Member] = []
        self._scheduled = False
        self._wakeup: Callable[[], None] | None = None
        self._lines_out = 0
        self._bytes_out = 0
        self._lines_dropped = 0
        self._errors_sent = 0
        self._writes = 0

    def disconnect(self, member: Member, reason: str = "closed", *, notice: str = "", abort: bool = False) -> None:
        """Remove *member* and close its sink (the hub implements it)."""
        raise NotImplementedError

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Install the callback that makes the event loop call :meth:`flush` soon.

        The adapters install ``loop.call_soon``-based wake-ups; a hub used
        without an event loop can leave it unset and call :meth:`flush` itself.
        """
        self._wakeup = wakeup

    def send(self, member: Member, event: ChatEvent) -> None:
        """Queue one event for one member, after everything already queued for it."""
        if member.closed:
            return
        for room in member.rooms:
            self._catch_up(member, room)
        if isinstance(event, Error):
            self._errors_sent += 1
        self._enqueue(member, member.encoder(event), 1)

    def _announce(self, room: Room, event: Joined | Left, member: Member | None) -> None:
        """A join or leave line: the whole room sees it, unless the room is large.

        In a room of more than ``Limits.presence_max_members`` members, only
        *member* itself (if given and still in the room) sees its own line:
        announcing every arrival to everyone costs N^2 lines for N members
        (Twitch's IRC stops sending JOIN/PART above 1,000 chatters for the
        same reason).  Observers, other nodes and ``/who`` still see it all.
        """
        if len(room.members) <= self.limits.presence_max_members:
            self._room_event(room, event)
            return
        self._publish(room, event)
        if member is not None and member in room.members:
            self.send(member, event)

    def _publish(self, room: Room, event: ChatEvent) -> None:
        # Multi-node: every room event produced here is published (not the ones deliver() relays).
        if self._cluster is not None and not self._relaying:
            self._cluster.publish(room.name, event)

    def _room_event(self, room: Room, event: ChatEvent, exclude: Member | None = None) -> None:
        self._publish(room, event)
        batch = room._batch
        if not batch:
            self._dirty_rooms.append(room)
            self._wake()
        if exclude is not None:
            room._excluded.append((len(batch), exclude))
        batch.append(event)

    def _materialize(self, room: Room) -> None:
        """Move a room's pending batch into its members' outboxes.

        The batch is encoded once and joined once, and the same bytes go to
        every member; a member with its own view of the batch — a cursor
        because it joined (or was caught up) mid-batch, or its own chat
        lines to hide — gets a slice of its own.
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
            chunk = b"".join(self._pieces(room))
            enqueue = self._enqueue
            for member in members:
                if member in hidden or member in cursors or member.encoder is not encode:
                    self._slice(member, room, cursors.get(member, 0), hidden.get(member))
                else:
                    enqueue(member, chunk, lines)
        room._batch = []
        room._pieces = []
        if room._excluded:
            room._excluded = []
        if room._cursors:
            room._cursors = {}

    @staticmethod
    def _pieces(room: Room) -> list[bytes]:
        """The room's batch encoded with the default encoder (each event encoded once)."""
        pieces = room._pieces
        batch = room._batch
        if len(pieces) < len(batch):
            pieces.extend(map(encode, batch[len(pieces) :]))
        return pieces

    def _slice(self, member: Member, room: Room, start: int, skip: set[int] | None) -> None:
        """Queue the room's ``batch[start:]`` for *member*, without the positions in *skip*."""
        if member.encoder is encode:
            pieces = self._pieces(room)
            if skip:
                chosen = [piece for i, piece in enumerate(pieces) if i >= start and i not in skip]
            else:
                chosen = pieces[start:]
            if chosen:
                self._enqueue(member, b"".join(chosen), len(chosen))
            return
        events = [event for i, event in enumerate(room._batch) if i >= start and not (skip and i in skip)]
        if events:
            self._enqueue(member, b"".join(map(member.encoder, events)), len(events))

    def _catch_up(self, member: Member, room: Room) -> None:
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

    def _enqueue(self, member: Member, data: bytes, lines: int) -> None:
        if member.closed or member._evicted:
            return
        out = member._out
        # A member that is not paused is flushed every iteration, so only a
        # paused member's outbox can grow across iterations: bound that one.
        if member._paused and member._out_bytes + len(data) > self.limits.outbox_high_water:
            self._over_high_water(member, lines)
            return
        if member._dropped:
            self._report_drops(member)
        if not member._dirty and not member._paused:
            member._dirty = True
            self._dirty.append(member)
            self._wake()
        out.append(data)
        member._out_bytes += len(data)
        self._lines_out += lines

    def _over_high_water(self, member: Member, lines: int) -> None:
        limits = self.limits
        if limits.slow_consumer is SlowConsumerPolicy.DISCONNECT:
            logger.warning(
                "disconnecting slow consumer %r: %d bytes unsent exceeds limit of %d bytes",
                member,
                member._out_bytes,
                limits.outbox_high_water,
            )
            # Never mutate rooms from inside a broadcast: evict at the next flush.
            member._evicted = True
            self._evictions.append(member)
            self._wake()
            return
        if not member._dropped:
            logger.warning(
                "dropping lines for slow consumer %r: outbox of %d bytes is at its limit of %d bytes",
                member,
                member._out_bytes,
                limits.outbox_high_water,
            )
        member._dropped += lines
        self._lines_dropped += lines

    def _report_drops(self, member: Member) -> None:
        dropped, member._dropped = member._dropped, 0
        notice = member.encoder(Error(f"{dropped} lines were dropped because you read too slowly"))
        member._out.append(notice)
        member._out_bytes += len(notice)
        self._errors_sent += 1

    def pause(self, member: Member) -> None:
        """The member's transport is full: keep its output in the outbox for now."""
        member._paused = True

    def resume(self, member: Member) -> None:
        """The member's transport drained: flush its outbox soon (and report drops)."""
        if member.closed or not member._paused:
            return
        member._paused = False
        if member._dropped:
            self._report_drops(member)
        if member._out and not member._dirty:
            member._dirty = True
            self._dirty.append(member)
            self._wake()

    def _wake(self) -> None:
        if not self._scheduled and self._wakeup is not None:
            self._scheduled = True
            self._wakeup()

    @property
    def lines_out(self) -> int:
        """Lines handed to members' outboxes so far (a delivery counts once per member)."""
        return self._lines_out

    @property
    def writes(self) -> int:
        """Writes made to members' sinks so far; ``lines_out / writes`` is the coalescing factor."""
        return self._writes

    def flush(self) -> None:
        """Hand every member's queued output to its sink, one write per member."""
        self._scheduled = False
        # Evicting a slow member announces its leave, which dirties its rooms again.
        while self._dirty_rooms or self._evictions:
            rooms, self._dirty_rooms = self._dirty_rooms, []
            for room in rooms:
                self._materialize(room)
            evicted, self._evictions = self._evictions, []
            for member in evicted:
                self.disconnect(member, "slow", abort=True)
        dirty, self._dirty = self._dirty, []
        for member in dirty:
            member._dirty = False
            self._flush_member(member)

    def _flush_member(self, member: Member) -> None:
        out = member._out
        if not out or (member._paused and not member.closed):
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        member._out_bytes = 0
        self._bytes_out += len(data)
        self._writes += 1
        member._write(data)
