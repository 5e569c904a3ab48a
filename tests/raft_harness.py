"""A tiny synchronous network of RawNodes for unit tests (etcd's raft_test.go
`network`).  Messages are delivered in FIFO order when `deliver()` runs; links
can be cut.  The full fault-injecting simulation lives in tests/sim/."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from consensus.memstore import MemoryLogStore, MemorySnapshotStore, MemoryStableStore
from consensus.raft import RaftConfig, RawNode, bootstrap
from consensus.types import EntryKind, Membership, RestoredState, Role, SnapshotMeta


@dataclass
class Peer:
    raw: RawNode
    log: MemoryLogStore = field(default_factory=MemoryLogStore)
    stable: MemoryStableStore = field(default_factory=MemoryStableStore)
    snaps: MemorySnapshotStore = field(default_factory=MemorySnapshotStore)
    applied: list[tuple[int, bytes]] = field(default_factory=list)
    reads: list = field(default_factory=list)
    config: RaftConfig | None = None


class Net:
    def __init__(self, ids: list[str], seed: int = 1, **config) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.peers: dict[str, Peer] = {}
        self.queue: deque = deque()
        self.cut: set[tuple[str, str]] = set()
        self.sent: list = []  # every message that left a node, for assertions
        membership = Membership(frozenset(ids), frozenset(), tuple((i, f"addr-{i}") for i in ids))
        for node in ids:
            self._start(node, bootstrap(membership), persist=True)

    def _start(self, node: str, restored: RestoredState, persist: bool) -> Peer:
        cfg = RaftConfig(id=node, **self.config)
        peer = self.peers.get(node)
        if peer is None:
            peer = Peer(raw=None)  # type: ignore[arg-type]
            self.peers[node] = peer
            if persist:
                peer.log.append(restored.entries)
                peer.log.sync()
                peer.stable.save(restored.hard_state, sync=True)
        peer.config = cfg
        peer.raw = RawNode(cfg, restored, peer.snaps, random.Random(self.rng.random()))
        return peer

    def add_empty(self, node: str) -> Peer:
        """A brand-new node that will join through a conf change."""
        return self._start(node, RestoredState(), persist=False)

    def restart(self, node: str) -> Peer:
        peer = self.peers[node]
        peer.log.crash()
        peer.stable.crash()
        peer.snaps.crash()
        first, last = peer.log.bounds()
        restored = RestoredState(
            peer.stable.load(), peer.snaps.latest(), peer.log.entries(first, last + 1)
        )
        peer.applied = []  # the state machine is rebuilt: from the snapshot, then the log
        self._start(node, restored, persist=False)
        return peer

    # -- driving ---------------------------------------------------------
    def raw(self, node: str) -> RawNode:
        return self.peers[node].raw

    def process(self, node: str) -> bool:
        peer = self.peers[node]
        raw = peer.raw
        if not raw.has_ready():
            return False
        rd = raw.ready()
        self._send(rd.messages)
        for chunk in rd.snapshot_chunks:
            peer.snaps.write_chunk(chunk.meta, chunk.offset, chunk.data)
        if rd.snapshot is not None:
            peer.snaps.finish(rd.snapshot)
            peer.log.reset(rd.snapshot.index)
        if rd.entries:
            peer.log.append(list(rd.entries))
        if rd.hard_state is not None:
            peer.stable.save(rd.hard_state, sync=rd.must_sync)
        if rd.must_sync:
            peer.log.sync()
        self._send(rd.messages_after_persist)
        if rd.snapshot is not None:
            peer.applied = [("snapshot", rd.snapshot.index)]  # type: ignore[list-item]
        for entry in rd.committed:
            if entry.kind == EntryKind.NORMAL and entry.data:
                peer.applied.append((entry.index, entry.data))
        peer.reads.extend(rd.read_states)
        raw.advance(rd)
        return True

    def _send(self, msgs) -> None:
        for m in msgs:
            self.sent.append(m)
            if (m.src, m.dst) not in self.cut and m.dst in self.peers:
                self.queue.append(m)

    def deliver(self, limit: int = 100_000, until=None) -> None:
        """Process readies and deliver messages until the network is quiet
        (or, right after a step, until `until()` holds)."""
        for _ in range(limit):
            if until is not None and until():
                return
            progressed = False
            for node in list(self.peers):
                progressed |= self.process(node)
            if self.queue:
                m = self.queue.popleft()
                if (m.src, m.dst) not in self.cut and m.dst in self.peers:
                    self.peers[m.dst].raw.step(m)
                progressed = True
            if not progressed:
                return
        raise AssertionError("network did not quiesce")

    def tick(self, n: int = 1, nodes: list[str] | None = None) -> None:
        for _ in range(n):
            for node in nodes or list(self.peers):
                self.peers[node].raw.tick()
            self.deliver()

    def elect(self, node: str) -> None:
        # As if an election timeout had passed everywhere: the others' leader
        # leases have expired, so they listen to the candidate.
        for peer in self.peers.values():
            peer.raw._election_elapsed = peer.raw.config.election_ticks
        self.raw(node).campaign()
        self.deliver()
        assert self.raw(node).role == Role.LEADER, self.raw(node).status()

    def isolate(self, node: str) -> None:
        for other in self.peers:
            if other != node:
                self.cut.add((node, other))
                self.cut.add((other, node))

    def heal(self) -> None:
        self.cut.clear()

    def leaders(self) -> list[str]:
        return [n for n, p in self.peers.items() if p.raw.role == Role.LEADER]

    def snapshot(self, node: str) -> SnapshotMeta:
        """Take a local snapshot at the node's applied index and compact."""
        peer = self.peers[node]
        raw = peer.raw
        index = raw.applied_index
        data = repr(peer.applied).encode() * 20  # large enough to need several chunks
        meta = SnapshotMeta(index, raw.term_at(index), raw.membership, len(data))
        peer.snaps.create(meta, data)
        raw.compact(meta)
        peer.log.compact(index)
        return meta
