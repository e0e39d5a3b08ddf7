"""The bus: how hubs in several processes (*nodes*) share rooms.

A single node needs no bus.  Give a hub a bus (``Hub(bus=...)``) and it
becomes one node of a cluster:

* every room event the hub produces locally (chat, action, join, leave,
  topic, kick, operator change, server post) is published as an
  :class:`Envelope`, and every member-wide event (nick change, quit) once;
* envelopes from other nodes are shown to this node's members of the room
  through the hub's one broadcast path (same batching, same order), are
  appended to the room's history and are seen by observers;
* a private message to a nickname on another node travels as an envelope
  addressed to that node;
* each node keeps a *replica* of the other nodes' members (from join, leave
  and nick-change envelopes, and from a periodic heartbeat that carries a
  node's full member list), so ``/who`` and ``/rooms`` count every node; a
  node that stops heartbeating for ``node_timeout`` seconds is expired and
  its members leave with ``(node timed out)``;
* a nickname is claimed cluster-wide before it is granted
  (:meth:`Bus.claim`), so two nodes never hand out the same nickname.

This module is pure (no asyncio, no sockets, no clock: the hub's ``tick(now)``
drives heartbeats and expiry).  It holds:

* :class:`Bus`, the interface a transport between nodes implements;
* :class:`InProcessBus` and :class:`InProcessNetwork`, an implementation that
  links several hubs in one process (tests, embedding) with synchronous
  delivery;
* (the hub-side glue — replica, sequence numbers, heartbeats — is
  :class:`asyncchat.cluster.Cluster`, created by the hub itself);
* :func:`encode_envelope` / :func:`decode_envelope`, the JSON form used by
  :mod:`asyncchat.redis_bus`.  Decoding validates every name and text, so a
  peer on the bus cannot inject CR/LF or terminal escapes into members' output.

Order: a node publishes its envelopes in the order the hub produced them,
through one FIFO, so one sender's messages reach every node in the order
sent; sequence numbers let receivers count what they missed.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any, Protocol

from .errors import ProtocolError, UsageError
from .events import (
    Action,
    ChatEvent,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Notice,
    OperatorChanged,
    Private,
    Quit,
    TopicChanged,
)
from .framing import UNSAFE_TEXT
from .protocol import check_nick, check_room

__all__ = [
    "Bus",
    "Envelope",
    "EnvelopeKind",
    "InProcessBus",
    "InProcessNetwork",
    "decode_envelope",
    "encode_envelope",
    "new_node_id",
]

logger = logging.getLogger("asyncchat.bus")

Receiver = Callable[["Envelope"], None]
ClaimCallback = Callable[[bool], None]

#: Default seconds between two heartbeats of a node.
HEARTBEAT_INTERVAL = 2.0
#: Default seconds without any envelope after which a node is considered gone.
NODE_TIMEOUT = 10.0


class EnvelopeKind(enum.Enum):
    """What an envelope carries."""

    #: A room event (``room`` and ``event`` are set).
    EVENT = "event"
    #: A private message for a member of node ``to`` (``event`` is a :class:`Private`).
    PRIVATE = "private"
    #: The node's full member list (``presence``), sent every heartbeat interval.
    HEARTBEAT = "heartbeat"
    #: The node is shutting down; forget its members.
    BYE = "bye"
    #: A member-wide event (nick change, quit) of one of the node's members: ``room`` is ``None``.
    MEMBER = "member"


Presence = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message between nodes: who sent it, its place in that node's sequence, what it carries."""

    node: str
    seq: int
    kind: EnvelopeKind
    room: str | None = None
    event: ChatEvent | None = None
    #: Destination node of a private message ("" for everyone).
    to: str = ""
    #: ``((room, (nick, ...)), ...)`` for a heartbeat.
    presence: Presence = ()


def new_node_id() -> str:
    """A node id that is unique with overwhelming probability (process id and 32 random bits)."""
    return secrets.token_hex(6)


class Bus(Protocol):
    """The transport between nodes.  Every method is synchronous and never blocks.

    Implementations: :class:`InProcessBus` and :class:`asyncchat.redis_bus.RedisBus`,
    both checked by one contract test suite.  A bus that is not started raises
    :class:`~asyncchat.errors.UsageError` from every method but :meth:`bind`;
    once closed, :meth:`claim` raises it, :meth:`publish` drops (and counts)
    and :meth:`release` / :meth:`refresh` do nothing.
    """

    #: This node's id, unique in the cluster.
    node_id: str
    #: Seconds between heartbeats.
    heartbeat_interval: float
    #: Seconds of silence after which another node is expired.
    node_timeout: float

    def bind(self, receiver: Receiver) -> None:
        """Deliver envelopes from other nodes (never this node's own) to *receiver*, in order."""

    def publish(self, envelope: Envelope) -> None:
        """Send *envelope* to every other node; FIFO; drops (and counts) rather than block or grow."""

    def claim(self, key: str, callback: ClaimCallback) -> None:
        """Claim nickname *key* cluster-wide; ``callback(True)`` if free or already this node's.

        The callback may run before this method returns (in-process) or
        later from the event loop (Redis).
        """

    def release(self, key: str) -> None:
        """Give up nickname *key* if this node holds it."""

    def refresh(self, keys: Collection[str]) -> None:
        """Keep this node's claims on *keys* alive for another ``node_timeout`` seconds."""


# ----------------------------------------------------------------- in-process


class InProcessNetwork:
    """The shared medium of :class:`InProcessBus` instances (one per cluster)."""

    def __init__(self) -> None:
        self._buses: dict[str, InProcessBus] = {}
        self._claims: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<InProcessNetwork nodes={len(self._buses)} claims={len(self._claims)}>"

    def bus(
        self,
        *,
        node_id: str | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        node_timeout: float = NODE_TIMEOUT,
    ) -> InProcessBus:
        """A new bus (one node) on this network."""
        return InProcessBus(self, node_id=node_id, heartbeat_interval=heartbeat_interval, node_timeout=node_timeout)


class InProcessBus:
    """A :class:`Bus` linking hubs of one process: envelopes are delivered synchronously.

    Delivery happens inside :meth:`publish`, so tests need no event loop;
    a hub's output still leaves through its own flush.  :meth:`close` says
    goodbye (other nodes drop this node's members) and detaches the bus.
    """

    def __init__(
        self,
        network: InProcessNetwork,
        *,
        node_id: str | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        node_timeout: float = NODE_TIMEOUT,
    ) -> None:
        if not 0 < heartbeat_interval < node_timeout:
            raise ValueError(f"need 0 < heartbeat_interval < node_timeout, not {heartbeat_interval} and {node_timeout}")
        self.node_id = node_id or new_node_id()
        if self.node_id in network._buses:
            raise UsageError(f"node id {self.node_id!r} is already on this network")
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.network: InProcessNetwork | None = network
        self.published = 0
        self.received = 0
        self.dropped = 0
        self._receiver: Receiver | None = None
        self._seq = itertools.count(1 << 62)
        network._buses[self.node_id] = self

    def __repr__(self) -> str:
        state = "closed" if self.network is None else "open"
        return f"<InProcessBus {self.node_id!r} {state}>"

    def bind(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def publish(self, envelope: Envelope) -> None:
        network = self.network
        if network is None:
            self.dropped += 1
            return
        self.published += 1
        for bus in list(network._buses.values()):
            if bus is not self and bus._receiver is not None:
                bus.received += 1
                bus._receiver(envelope)

    def claim(self, key: str, callback: ClaimCallback) -> None:
        network = self.network
        if network is None:
            raise UsageError(f"{self!r} is closed: stop the servers of its hub before closing the bus")
        owner = network._claims.setdefault(key, self.node_id)
        callback(owner == self.node_id)

    def release(self, key: str) -> None:
        network = self.network
        if network is not None and network._claims.get(key) == self.node_id:
            del network._claims[key]

    def refresh(self, keys: Collection[str]) -> None:
        # In-process claims never expire; re-take any that were lost.
        network = self.network
        if network is not None:
            for key in keys:
                network._claims.setdefault(key, self.node_id)

    def close(self) -> None:
        """Say goodbye to the other nodes, release this node's claims and detach (idempotent)."""
        network = self.network
        if network is None:
            return
        self.publish(Envelope(self.node_id, next(self._seq), EnvelopeKind.BYE))
        for key, owner in list(network._claims.items()):
            if owner == self.node_id:
                del network._claims[key]
        del network._buses[self.node_id]
        self.network = None
        self._receiver = None


# -------------------------------------------------------------------- codec

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Message,
        Action,
        Joined,
        Left,
        Quit,
        NickChanged,
        Kicked,
        TopicChanged,
        OperatorChanged,
        Private,
        Notice,
    )
}
_NICK_FIELDS = frozenset({"nick", "old", "new", "sender", "recipient", "by"})
_BOOL_FIELDS = frozenset({"operator"})
# The one unsafe-text rule of asyncchat.framing: never relayed from a peer on the bus.
_CONTROL = UNSAFE_TEXT
_MAX_TEXT = 1 << 16


def _event_to_json(event: ChatEvent) -> list[Any]:
    return [type(event).__name__, *(getattr(event, f.name) for f in fields(event))]


def _check_text(value: str, what: str) -> str:
    if len(value) > _MAX_TEXT or _CONTROL.search(value):
        raise ValueError(f"{what} has control characters or is too long")
    return value


def _event_from_json(data: Any) -> ChatEvent:
    if not isinstance(data, list) or not data or data[0] not in _EVENT_TYPES:
        raise ValueError(f"not an event: {str(data)[:80]!r}")
    cls = _EVENT_TYPES[data[0]]
    names = [f.name for f in fields(cls)]
    args = data[1:]
    if len(args) != len(names):
        raise ValueError(f"{data[0]} needs {len(names)} fields, not {len(args)}")
    for name, value in zip(names, args, strict=True):
        if value is None and name == "room":
            continue
        if name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ValueError(f"{data[0]}.{name} is not a boolean")
            continue
        if not isinstance(value, str):
            raise ValueError(f"{data[0]}.{name} is not a string")
        try:
            if name == "room":
                if value or cls is not Quit:  # a member-wide Quit names no room
                    check_room(value)
            elif name in _NICK_FIELDS and value:
                check_nick(value)
            else:
                _check_text(value, f"{data[0]}.{name}")
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
    event: ChatEvent = cls(*args)
    return event


def encode_envelope(envelope: Envelope) -> bytes:
    """The compact JSON form of *envelope* (UTF-8)."""
    data: dict[str, Any] = {"n": envelope.node, "s": envelope.seq, "k": envelope.kind.value}
    if envelope.room is not None:
        data["r"] = envelope.room
    if envelope.event is not None:
        data["e"] = _event_to_json(envelope.event)
    if envelope.to:
        data["to"] = envelope.to
    if envelope.presence:
        data["p"] = [[room, list(nicks)] for room, nicks in envelope.presence]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def decode_envelope(data: bytes | str) -> Envelope:
    """Parse and validate what :func:`encode_envelope` produced; raises :class:`ValueError` otherwise."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"envelope is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("envelope is not a JSON object")
    node, seq, kind = obj.get("n"), obj.get("s"), obj.get("k")
    if not isinstance(node, str) or not node or len(node) > 200 or _CONTROL.search(node):
        raise ValueError("envelope has no valid node id")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("envelope has no sequence number")
    try:
        envelope_kind = EnvelopeKind(kind)
    except ValueError:
        raise ValueError(f"unknown envelope kind {str(kind)[:20]!r}") from None
    room = obj.get("r")
    if room is not None:
        if not isinstance(room, str):
            raise ValueError("envelope room is not a string")
        try:
            check_room(room)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
    event = _event_from_json(obj["e"]) if "e" in obj else None
    to = obj.get("to", "")
    if not isinstance(to, str):
        raise ValueError("envelope destination is not a string")
    presence: list[tuple[str, tuple[str, ...]]] = []
    for item in obj.get("p", ()):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)):
            raise ValueError("malformed presence")
        try:
            check_room(item[0])
            nicks = tuple(check_nick(n) if isinstance(n, str) else check_nick("") for n in item[1])
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        presence.append((item[0], nicks))
    if envelope_kind is EnvelopeKind.EVENT and (room is None or event is None):
        raise ValueError("event envelope without room or event")
    if envelope_kind is EnvelopeKind.MEMBER and not isinstance(event, NickChanged | Quit):
        raise ValueError("member envelope without a nick change or quit")
    if envelope_kind is EnvelopeKind.PRIVATE and not isinstance(event, Private):
        raise ValueError("private envelope without a private message")
    return Envelope(node, seq, envelope_kind, room, event, to, tuple(presence))
