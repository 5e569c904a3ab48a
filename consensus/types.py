"""Plain values shared by the Raft core, its storage and its drivers.

Everything here is an immutable, slotted dataclass so that a `Ready` handed to a
driver can never be changed behind the core's back, and so that values compare
by content in tests and in the simulation's invariant checks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:  # messages.py imports this module: the union is for annotations only
    from consensus.messages import Message

NodeId = str


class EntryKind(enum.IntEnum):
    NORMAL = 0  # an application command; empty data is the leader's no-op
    CONF = 1  # a membership change: data is an encoded ConfChange


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate wire size, used to bound AppendEntries batches."""
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash: the current term, the vote cast in it, and the
    commit index (the last one is an optimisation and may be written lazily)."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    """Who votes and who only listens.  `addresses` maps every member to the
    transport address carried in its conf change, so that a node joining later
    learns where everybody is from the log alone."""

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()
    addresses: tuple[tuple[NodeId, str], ...] = ()

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def address_of(self, node: NodeId) -> str | None:
        for member, address in self.addresses:
            if member == node:
                return address
        return None

    def to_wire(self) -> list[Any]:
        return [sorted(self.voters), sorted(self.learners), [list(a) for a in self.addresses]]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Membership:
        voters, learners, addresses = raw
        return cls(frozenset(voters), frozenset(learners), tuple((a, b) for a, b in addresses))


class ConfOp(enum.IntEnum):
    BOOTSTRAP = 0  # the very first entry of a new cluster: sets the whole membership
    ADD_LEARNER = 1
    PROMOTE = 2  # learner -> voter
    REMOVE = 3
    ADD_VOTER = 4  # straight to voter (single-server change); prefer learner + promote


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfOp
    node: NodeId = ""
    address: str = ""
    bootstrap: Membership | None = None  # only for ConfOp.BOOTSTRAP

    def encode(self) -> bytes:
        boot = self.bootstrap.to_wire() if self.bootstrap is not None else None
        return msgpack.packb([int(self.op), self.node, self.address, boot])

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        op, node, address, boot = msgpack.unpackb(data)
        return cls(
            ConfOp(op), node, address, Membership.from_wire(boot) if boot is not None else None
        )

    def apply_to(self, current: Membership) -> Membership:
        """The membership after this change.  Pure; the caller validates first."""
        if self.op == ConfOp.BOOTSTRAP:
            assert self.bootstrap is not None
            return self.bootstrap
        voters, learners = set(current.voters), set(current.learners)
        addresses = dict(current.addresses)
        if self.op == ConfOp.ADD_LEARNER:
            learners.add(self.node)
        elif self.op == ConfOp.ADD_VOTER or self.op == ConfOp.PROMOTE:
            learners.discard(self.node)
            voters.add(self.node)
        elif self.op == ConfOp.REMOVE:
            voters.discard(self.node)
            learners.discard(self.node)
            addresses.pop(self.node, None)
        if self.op != ConfOp.REMOVE and self.address:
            addresses[self.node] = self.address
        return Membership(frozenset(voters), frozenset(learners), tuple(sorted(addresses.items())))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot of the state machine taken after applying `index`."""

    index: int
    term: int
    membership: Membership
    size: int = 0  # bytes of the snapshot's data


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A piece of an incoming snapshot that the driver must store before the
    follower acknowledges it (see Ready.snapshot_chunks)."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local applied index reaches
    `index`.  `ctx` is the caller's token from RawNode.read_index()."""

    index: int
    ctx: bytes


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  # a follower that is not a voter


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts the UI and the driver want to know; never persisted."""

    leader: NodeId | None
    role: Role


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core wants done since the last `advance()`.

    The driver must, in this order:
      1. write `snapshot_chunks` to the snapshot store; if `snapshot` is set,
         SnapshotStore.finish(snapshot) and LogStore.reset(snapshot.index)
         (the received snapshot replaces the whole log);
      2. append `entries` to the log store (an entry at index i replaces the
         entry at i and everything after it) and save `hard_state` if it is not
         None; fsync when `must_sync` (one fsync for the whole batch);
      3. send `messages_after_persist` (votes and acknowledgements may only
         leave once what they promise is on disk);
      4. if `snapshot` is set, restore the state machine from it; then apply
         `committed` entries in order;
      5. call `RawNode.advance(ready)` before asking for the next Ready.
    `messages` may be sent at once, even before step 1 (the leader's appends
    travel while its own disk write is under way).  The node may keep calling
    step() and tick() while the driver works on a Ready.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()
    snapshot: SnapshotMeta | None = None
    committed: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False

    def is_empty(self) -> bool:
        return not (
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot_chunks
            or self.snapshot
            or self.committed
            or self.messages
            or self.messages_after_persist
            or self.read_states
        )


@dataclass(slots=True)
class RestoredState:
    """What a node finds on its disk at start, handed to RawNode's constructor."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)  # every entry after snapshot.index
