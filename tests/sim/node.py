"""A simulated node: a RawNode, in-memory stores that lose unsynced writes on a
crash, a toy state machine, and the driver's Ready duties in the order Ready's
docstring gives them, with a random disk latency between "write" and "synced".

    process ready:  rd = raw.ready(); send rd.messages; append rd.entries,
                    write rd.snapshot_chunks, save rd.hard_state (not synced);
                    note rd.read_states; then, after a disk latency:
    sync done:      log.sync(); install rd.snapshot (finish, log reset, state
                    machine restore; entries after it are appended now); save the
                    hard state durably if term or vote changed; send
                    rd.messages_after_persist; apply rd.committed; raw.advance(rd);
                    maybe take a local snapshot and compact.

While a Ready is out the node keeps stepping messages and ticking, but calls
ready() again only after advance().
"""

from __future__ import annotations

import hashlib
import random
from operator import attrgetter
from typing import TYPE_CHECKING

import msgpack

from consensus.memstore import MemoryLogStore, MemorySnapshotStore, MemoryStableStore
from consensus.raft import RaftConfig, RawNode
from consensus.types import (
    ConfChange,
    Entry,
    EntryKind,
    Membership,
    Ready,
    RestoredState,
    SnapshotMeta,
)

if TYPE_CHECKING:
    from tests.sim.world import Sim

TICK = 100  # virtual time units per tick
_by_dst = attrgetter("dst")


class ToyStateMachine:
    """Applies commands into a hash chain plus the last few commands; the
    snapshot is a msgpack of that, a few hundred bytes, so that a tiny
    max_snapshot_chunk splits it into several chunks."""

    KEEP = 24

    __slots__ = ("count", "digest", "index", "recent")

    def __init__(self) -> None:
        self.index = 0  # last log index applied (commands, no-ops and conf changes)
        self.digest = b"\0" * 8
        self.count = 0  # commands applied
        self.recent: list[bytes] = []

    def apply(self, command: bytes) -> None:
        self.digest = hashlib.blake2b(self.digest + command, digest_size=8).digest()
        self.count += 1
        recent = self.recent
        recent.append(command)
        if len(recent) > self.KEEP:
            del recent[0]

    def state(self) -> tuple[bytes, int]:
        return self.digest, self.count

    def snapshot(self) -> bytes:
        return msgpack.packb([self.index, self.digest, self.count, self.recent])

    def restore(self, data: bytes) -> None:
        self.index, self.digest, self.count, self.recent = msgpack.unpackb(data)


class SimNode:
    def __init__(
        self, sim: Sim, node_id: str, config: RaftConfig, initial: RestoredState | None
    ) -> None:
        self.sim = sim
        self.id = node_id
        self.config = config
        self.rng = random.Random(sim.rng.getrandbits(64))
        # Clock drift: every node ticks at its own pace.
        self.tick_period = TICK + self.rng.randint(-TICK // 20, TICK // 20)
        self.log = MemoryLogStore()
        self.stable = MemoryStableStore()
        self.snaps = MemorySnapshotStore()
        if initial is not None:
            if initial.entries:
                self.log.append(list(initial.entries))
                self.log.sync()
            self.stable.save(initial.hard_state, sync=True)
        self.incarnation = 0
        self.up = False
        self.retired = False
        self.raw: RawNode | None = None
        self.inflight: Ready | None = None
        self.ready_scheduled = False
        self.sm = ToyStateMachine()
        self.membership = Membership()  # as of the last applied entry
        self.snap_index = 0  # the snapshot the log store's first entry follows
        self.snap_term = 0
        self.synced_tv: tuple[int, str | None] = (0, None)
        self.commit_seen = 0
        self.soft: tuple = ()
        self.waiting_reads: list = []

    # ------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart after a crash) from what the stores hold."""
        sim = self.sim
        hs = self.stable.load()
        snap = self.snaps.latest()
        first, last = self.log.bounds()
        self.sm = ToyStateMachine()
        self.membership = Membership()
        self.snap_index = self.snap_term = 0
        if snap is not None:
            if last < snap.index:
                self.log.reset(snap.index)
                first, last = self.log.bounds()
            self.sm.restore(self.snaps.read(snap, 0, snap.size))
            if self.sm.index != snap.index:
                sim.checker.fail(
                    f"{self.id}: snapshot {snap.index} holds state of index {self.sm.index}"
                )
            self.membership = snap.membership
            self.snap_index, self.snap_term = snap.index, snap.term
        entries = self.log.entries(first, last + 1)
        self.synced_tv = (hs.term, hs.vote)
        self.incarnation += 1
        self.raw = RawNode(self.config, RestoredState(hs, snap, entries), self.snaps, self.rng)
        self.up = True
        self.inflight = None
        self.ready_scheduled = False
        self.waiting_reads = []
        self.soft = ()
        sim.checker.on_start(self, snap)
        sim.note(
            "start",
            self.id,
            f"inc={self.incarnation} hs={hs} snap={snap.index if snap else 0} log={first}..{last}",
        )
        sim.at(self.rng.randint(1, self.tick_period), self._tick, self.incarnation)
        self.kick()

    def crash(self) -> None:
        """Power loss: the RawNode and the Ready in flight are gone, and every
        store forgets what was not synced."""
        self.up = False
        self.incarnation += 1
        self.raw = None
        self.inflight = None
        self.ready_scheduled = False
        self.waiting_reads = []
        self.log.crash()
        self.stable.crash()
        self.snaps.crash()
        self.sim.workload.on_crash(self)

    # ------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------
    def _tick(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        sim = self.sim
        if sim.verbose > 1:
            sim.note("tick", self.id)
        self.raw.tick()
        sim.after_node_event(self)
        self.kick()
        sim.at(self.tick_period, self._tick, inc)

    def step(self, msg) -> None:
        sim = self.sim
        sim.note("recv", self.id, msg)
        self.raw.step(msg)
        sim.after_node_event(self)
        self.kick()

    def kick(self) -> None:
        """Schedule Ready processing if there is something to do and no Ready is out."""
        if self.up and self.inflight is None and not self.ready_scheduled and self.raw.has_ready():
            self.ready_scheduled = True
            self.sim.at(self.rng.randint(0, 2), self._process_ready, self.incarnation)

    # ------------------------------------------------------------------
    # the Ready duties
    # ------------------------------------------------------------------
    def _process_ready(self, inc: int) -> None:
        if inc != self.incarnation:
            return
        self.ready_scheduled = False
        raw = self.raw
        if self.inflight is not None or not raw.has_ready():
            return
        sim = self.sim
        rd = raw.ready()
        self.inflight = rd
        if sim.verbose:
            sim.note("ready", self.id, _describe_ready(rd))
        net = sim.net
        if rd.messages:
            for msg in sorted(rd.messages, key=_by_dst):
                net.send(msg)
        if rd.entries and rd.snapshot is None:
            entries = list(rd.entries)
            sim.checker.on_persist(self, entries, self._prev_term(entries[0].index))
            self.log.append(entries)
        for chunk in rd.snapshot_chunks:
            self.snaps.write_chunk(chunk.meta, chunk.offset, chunk.data)
        if rd.hard_state is not None:
            self.stable.save(rd.hard_state, sync=False)
        for rs in rd.read_states:
            sim.workload.on_read_state(self, rs)
        if rd.must_sync or rd.snapshot is not None:
            knobs = sim.knobs
            delay = self.rng.randint(knobs.disk_min, knobs.disk_max)
            if knobs.disk_slow_prob and self.rng.random() < knobs.disk_slow_prob:
                delay += self.rng.randint(1, knobs.disk_slow_max)
            sim.at(delay, self._sync_done, inc, rd)
        else:
            self._sync_done(inc, rd)

    def _sync_done(self, inc: int, rd: Ready) -> None:
        if inc != self.incarnation:
            return
        sim = self.sim
        checker = sim.checker
        self.log.sync()
        meta = rd.snapshot
        if meta is not None:
            # The last chunk came in this Ready; the ones before were written earlier.
            self.snaps.finish(meta)
            self.log.reset(meta.index)
            self.snap_index, self.snap_term = meta.index, meta.term
            self.sm.restore(self.snaps.read(meta, 0, meta.size))
            self.membership = meta.membership
            if self.sm.index != meta.index:
                checker.fail(
                    f"{self.id}: installed snapshot {meta.index} holds state of index {self.sm.index}"
                )
            checker.on_state(self, "snapshot install")
            sim.stats["snapshots_installed"] += 1
            sim.note("install", self.id, f"snapshot {meta.index}/{meta.term} size={meta.size}")
            # Entries after the snapshot (an append that followed it before this
            # ready()) go into the log only now that it has been reset.
            if rd.entries:
                entries = list(rd.entries)
                checker.on_persist(self, entries, self._prev_term(entries[0].index))
                self.log.append(entries)
                self.log.sync()
        hs = rd.hard_state
        if hs is not None and (rd.must_sync or (hs.term, hs.vote) != self.synced_tv):
            self.stable.save(hs, sync=True)
            self.synced_tv = (hs.term, hs.vote)
        net = sim.net
        if rd.messages_after_persist:
            for msg in sorted(rd.messages_after_persist, key=_by_dst):
                net.send(msg)
        if rd.committed:
            self._apply(rd.committed)
        self.raw.advance(rd)
        self.inflight = None
        self._maybe_snapshot()
        if sim.pending_retire and (meta is not None or rd.committed):
            sim.check_retire(self)
        sim.after_node_event(self)
        self.kick()

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        sim = self.sim
        checker = sim.checker
        workload = sim.workload
        sm = self.sm
        for entry in entries:
            checker.on_apply(self, entry)
            if entry.kind == EntryKind.CONF:
                before = self.membership
                self.membership = ConfChange.decode(entry.data).apply_to(before)
                sm.index = entry.index
                sim.on_conf_applied(self, entry, before, self.membership)
            else:
                if entry.data:
                    sm.apply(entry.data)
                sm.index = entry.index
                if entry.data:
                    workload.on_applied(self, entry)
            checker.on_state(self, "apply")
        if self.waiting_reads:
            workload.on_node_applied(self)

    def _maybe_snapshot(self) -> None:
        index = self.sm.index
        if index - self.snap_index <= self.sim.knobs.snapshot_every:
            return
        raw = self.raw
        term = raw.term_at(index)
        if term is None:
            return  # a snapshot from the leader arrived meanwhile; it comes in the next Ready
        data = self.sm.snapshot()
        meta = SnapshotMeta(index, term, self.membership, len(data))
        self.snaps.create(meta, data)
        raw.compact(meta)
        self.log.compact(index)
        self.snap_index, self.snap_term = index, term
        self.sim.stats["snapshots_taken"] += 1
        self.sim.note("snapshot", self.id, f"local snapshot at {index}/{term}")

    def _prev_term(self, index: int) -> int | None:
        """The term of the stored entry before `index` (0 before the first entry)."""
        prev = index - 1
        if prev == 0:
            return 0
        first, last = self.log.bounds()
        if first <= prev <= last:
            return self.log.entries(prev, prev + 1)[0].term
        if prev == self.snap_index:
            return self.snap_term
        return None


def _describe_ready(rd: Ready) -> str:
    parts = []
    if rd.soft_state is not None:
        parts.append(f"soft={rd.soft_state.role.value}/{rd.soft_state.leader}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        parts.append(f"hs=t{hs.term}/v{hs.vote}/c{hs.commit}")
    if rd.entries:
        parts.append(f"ents={rd.entries[0].index}..{rd.entries[-1].index}")
    if rd.snapshot_chunks:
        parts.append(f"chunks={len(rd.snapshot_chunks)}")
    if rd.snapshot is not None:
        parts.append(f"snap={rd.snapshot.index}")
    if rd.committed:
        parts.append(f"commit={rd.committed[0].index}..{rd.committed[-1].index}")
    if rd.messages:
        parts.append(f"msgs={len(rd.messages)}")
    if rd.messages_after_persist:
        parts.append(f"after={len(rd.messages_after_persist)}")
    if rd.read_states:
        parts.append(f"reads={len(rd.read_states)}")
    if rd.must_sync:
        parts.append("sync")
    return " ".join(parts)
