"""The hub's side of a bus: replica of the other nodes, sequence numbers, heartbeats.

A :class:`Cluster` is created by :class:`~asyncchat.hub.Hub` when it is
given a :class:`~asyncchat.bus.Bus`; arrows run one way (hub → cluster →
bus): the cluster knows the hub only through the small :class:`Host`
interface below.  Pure and synchronous: :meth:`Cluster.tick` (called from
``Hub.tick(now)``) sends heartbeats and expires silent nodes.

Limits of the replica, documented in the README: room operators are per
node (the first member of a room *on a node* becomes its operator there, and
``/who`` marks only this node's operators).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .bus import Bus, ClaimCallback, Envelope, EnvelopeKind, Presence
from .events import ChatEvent, Joined, Kicked, Left, NickChanged, Private, Quit, RoomInfo
from .protocol import fold

__all__ = ["Cluster", "Host"]

logger = logging.getLogger("asyncchat.bus")


class Host(Protocol):
    """What the cluster needs from its hub."""

    def local_presence(self) -> dict[str, list[str]]:
        """``{room name: [nick, ...]}`` of this node's logged-in members."""
        ...

    def is_local(self, key: str) -> bool:
        """Whether a member of this node holds nickname *key*."""
        ...

    def deliver(self, room_name: str | None, event: ChatEvent) -> None:
        """Show a room event (or a private message) from another node."""
        ...

    def deliver_member(self, rooms: Sequence[str], event: NickChanged | Quit) -> None:
        """Show a member-wide event from another node once to each local member of *rooms*."""
        ...


class _RemoteMember:
    """One member of another node, as this node's replica knows it."""

    __slots__ = ("nick", "rooms")

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.rooms: dict[str, str] = {}  # room key -> room name, in join order


class _RemoteNode:
    __slots__ = ("last_seen", "last_seq", "members", "node_id")

    def __init__(self, node_id: str, now: float) -> None:
        self.node_id = node_id
        self.last_seen = now
        self.last_seq = 0
        self.members: dict[str, _RemoteMember] = {}  # nick key -> member


class Cluster:
    """The hub's side of a bus: publishes its events, applies other nodes' envelopes.

    Created by :class:`~asyncchat.hub.Hub` when it is given a bus; not
    meant to be built directly.  Pure and synchronous: :meth:`tick` (called
    from ``Hub.tick(now)``) sends heartbeats and expires silent nodes.
    """

    def __init__(self, hub: Host, bus: Bus) -> None:
        self.hub = hub
        self.bus = bus
        self.node_id = bus.node_id
        self._seq = itertools.count(1)
        self._nodes: dict[str, _RemoteNode] = {}
        self._lost_nodes: set[str] = set()
        self._held: set[str] = set()
        self._now: float | None = None
        self._next_heartbeat = 0.0
        #: Envelopes from other nodes that never arrived (sequence gaps).
        self.missed = 0
        #: Other nodes expired because they stopped heartbeating.
        self.expired = 0
        bus.bind(self.receive)

    def __repr__(self) -> str:
        return f"<Cluster {self.node_id!r} nodes={len(self._nodes)}>"

    # ------------------------------------------------------------- outgoing

    def publish(self, room: str, event: ChatEvent) -> None:
        """Publish a room event the hub produced locally."""
        self.bus.publish(Envelope(self.node_id, next(self._seq), EnvelopeKind.EVENT, room, event))

    def publish_member(self, event: NickChanged | Quit) -> None:
        """Publish a member-wide event (nick change, quit) of a local member, once."""
        self.bus.publish(Envelope(self.node_id, next(self._seq), EnvelopeKind.MEMBER, None, event))

    def send_private(self, node: str, event: Private) -> None:
        """Send a private message to a member of *node*."""
        self.bus.publish(Envelope(self.node_id, next(self._seq), EnvelopeKind.PRIVATE, None, event, node))

    def heartbeat(self) -> None:
        """Publish this node's full member list now (also refreshes nickname claims)."""
        rooms = self.hub.local_presence()
        presence = tuple((name, tuple(nicks)) for name, nicks in rooms.items())
        self.bus.publish(Envelope(self.node_id, next(self._seq), EnvelopeKind.HEARTBEAT, presence=presence))
        # Forget claims no local member uses any more, refresh the others.
        for key in [k for k in self._held if not self.hub.is_local(k)]:
            self.release(key)
        if self._held:
            self.bus.refresh(self._held)

    def tick(self, now: float) -> None:
        """Heartbeat when due and expire nodes silent for ``node_timeout`` seconds."""
        if self._now is None:
            for node in self._nodes.values():
                node.last_seen = now
        self._now = now
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.bus.heartbeat_interval
            self.heartbeat()
        deadline = now - self.bus.node_timeout
        for node in [n for n in self._nodes.values() if n.last_seen < deadline]:
            logger.warning(
                "node %s sent nothing for %g seconds; removing its %d members",
                node.node_id,
                now - node.last_seen,
                len(node.members),
            )
            self.expired += 1
            self._lost_nodes.add(node.node_id)
            self._drop_node(node, "node timed out")

    # ---------------------------------------------------------- nicknames

    def claim(self, key: str, callback: ClaimCallback) -> None:
        """Claim nickname *key* for this node (answers at once if already held)."""
        if key in self._held:
            callback(True)
            return

        def answered(granted: bool) -> None:
            if granted:
                self._held.add(key)
            callback(granted)

        self.bus.claim(key, answered)

    def holds(self, key: str) -> bool:
        """Whether this node holds the claim on nickname *key*."""
        return key in self._held

    def release(self, key: str) -> None:
        """Give nickname *key* back to the cluster."""
        self._held.discard(key)
        self.bus.release(key)

    def locate(self, nick: str) -> tuple[str, str] | None:
        """``(node id, nickname)`` of a member of another node, or ``None``."""
        key = fold(nick)
        for node in self._nodes.values():
            member = node.members.get(key)
            if member is not None:
                return node.node_id, member.nick
        return None

    # ------------------------------------------------------------ queries

    def who(self, room: str) -> list[str]:
        """Nicknames in *room* on other nodes (node by node, in join order)."""
        key = fold(room)
        return [m.nick for node in self._nodes.values() for m in node.members.values() if key in m.rooms]

    def merge_rooms(self, local: Iterable[RoomInfo]) -> list[tuple[str, int]]:
        """``(name, members)`` for every room on any node, local counts plus remote ones."""
        counts: dict[str, list[Any]] = {fold(info.name): [info.name, info.members] for info in local}
        for node in self._nodes.values():
            for member in node.members.values():
                for key, name in member.rooms.items():
                    entry = counts.setdefault(key, [name, 0])
                    entry[1] += 1
        return [(name, count) for name, count in counts.values()]

    @property
    def nodes(self) -> list[str]:
        """Ids of the other nodes this node currently hears from."""
        return list(self._nodes)

    # ------------------------------------------------------------- incoming

    def receive(self, envelope: Envelope) -> None:
        """Apply one envelope from another node (the bus calls this, in order)."""
        if envelope.node == self.node_id:
            return
        kind = envelope.kind
        node = self._nodes.get(envelope.node)
        if kind is EnvelopeKind.BYE:
            if node is not None:
                logger.info("node %s left the cluster", envelope.node)
                self._drop_node(node, "server shutting down")
            return
        now = self._now if self._now is not None else 0.0
        if node is None:
            node = self._nodes[envelope.node] = _RemoteNode(envelope.node, now)
            logger.info("node %s joined the cluster", envelope.node)
            # Tell the newcomer who is here now, rather than at the next heartbeat;
            # anything this node publishes later reaches it after this list.
            self.heartbeat()
        node.last_seen = now
        if node.last_seq and envelope.seq > node.last_seq + 1:
            self.missed += envelope.seq - node.last_seq - 1
        node.last_seq = envelope.seq
        event = envelope.event
        if kind is EnvelopeKind.EVENT and envelope.room is not None and event is not None:
            self._apply(node, envelope.room, event)
            self.hub.deliver(envelope.room, event)
        elif kind is EnvelopeKind.MEMBER and isinstance(event, NickChanged | Quit):
            self._apply_member(node, event)
        elif kind is EnvelopeKind.PRIVATE and isinstance(event, Private):
            if envelope.to == self.node_id:
                self.hub.deliver(None, event)
        elif kind is EnvelopeKind.HEARTBEAT:
            self._reconcile(node, envelope.presence)

    def _apply(self, node: _RemoteNode, room: str, event: ChatEvent) -> None:
        members = node.members
        if isinstance(event, Joined):
            key = fold(event.nick)
            member = members.get(key)
            if member is None:
                member = members[key] = _RemoteMember(event.nick)
            member.rooms[fold(room)] = room
        elif isinstance(event, Left):
            member = members.get(fold(event.nick))
            if member is not None:
                member.rooms.pop(fold(room), None)
                if not member.rooms:
                    del members[fold(event.nick)]
        elif isinstance(event, Kicked):
            self.kicked(room, event.nick)

    def kicked(self, room: str, nick: str) -> None:
        """*nick* was kicked from *room*: the replica forgets it there, whichever node it lives on.

        (Its own node removes the member itself when the kick reaches it.)
        """
        key = fold(nick)
        for node in self._nodes.values():
            member = node.members.get(key)
            if member is not None:
                member.rooms.pop(fold(room), None)
                if not member.rooms:
                    del node.members[key]

    def _apply_member(self, node: _RemoteNode, event: NickChanged | Quit) -> None:
        """A member-wide event of one of *node*'s members: update the replica, show it once."""
        members = node.members
        if isinstance(event, NickChanged):
            member = members.pop(fold(event.old), None)
            if member is None:
                return
            member.nick = event.new
            members[fold(event.new)] = member
        else:
            member = members.pop(fold(event.nick), None)
            if member is None:
                return
        self.hub.deliver_member(list(member.rooms.values()), event)

    def _reconcile(self, node: _RemoteNode, presence: Presence) -> None:
        """Make the replica of *node* equal to its heartbeat; show who left unnoticed."""
        fresh: dict[str, _RemoteMember] = {}
        for room, nicks in presence:
            for nick in nicks:
                key = fold(nick)
                member = fresh.get(key)
                if member is None:
                    member = fresh[key] = _RemoteMember(nick)
                member.rooms[fold(room)] = room
        old = node.members
        node.members = fresh
        for key, member in old.items():
            kept = fresh.get(key)
            for room_key, room in member.rooms.items():
                if kept is None or room_key not in kept.rooms:
                    self.hub.deliver(room, Left(member.nick, room))
        if node.node_id in self._lost_nodes:
            # The node came back after being expired: show its members again.
            self._lost_nodes.discard(node.node_id)
            for member in fresh.values():
                for room in member.rooms.values():
                    self.hub.deliver(room, Joined(member.nick, room))

    def _drop_node(self, node: _RemoteNode, reason: str) -> None:
        del self._nodes[node.node_id]
        for member in node.members.values():
            self.hub.deliver_member(list(member.rooms.values()), Quit(member.nick, "", reason))
