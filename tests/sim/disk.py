"""A simulated node's disk, and the stores one process of it writes through.

The disk (the three in-memory stores of consensus/memstore.py) outlives the
processes that use it.  Each process gets its own fenced view of it: every
call checks that the process is alive and the view not closed (a write after
close() is the race between stop() and a persist still running), and, before
each write, asks the world's failpoints whether the power goes out right
there, so a crash can fall between any two durable writes (etcd's failpoints).
Appends are checked against the global log table (log matching) as they are
written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.memstore import MemoryLogStore, MemorySnapshotStore, MemoryStableStore
from consensus.types import Entry, HardState, SnapshotMeta
from tests.sim.loop import PowerLoss, Process

if TYPE_CHECKING:
    from tests.sim.node import SimNode


class SimDisk:
    def __init__(self) -> None:
        self.log = MemoryLogStore()
        self.stable = MemoryStableStore()
        self.snaps = MemorySnapshotStore()

    def crash(self, rng) -> None:
        """Power loss: what was not synced is lost (with `rng`, partly kept)."""
        self.log.crash(rng)
        self.stable.crash(rng)
        self.snaps.crash(rng)

    def prev_term(self, index: int) -> int | None:
        """The term of the stored entry before `index` (0 before the first)."""
        prev = index - 1
        if prev == 0:
            return 0
        first, last = self.log.bounds()
        if first <= prev <= last:
            return self.log.entries(prev, prev + 1)[0].term
        snap = self.snaps.latest()
        if snap is not None and snap.index == prev:
            return snap.term
        return None


class _View:
    def __init__(self, node: SimNode, proc: Process) -> None:
        self.node = node
        self.proc = proc
        self.closed = False

    def _io(self, what: str, write: bool) -> None:
        if not self.proc.alive:
            raise PowerLoss()  # a dead process does nothing at all
        if self.closed:
            self.node.sim.checker.fail(
                f"{self.node.id}: {what} on a store that was closed (stop() raced a write)"
            )
        if write:
            self.node.sim.failpoint(self.node, what)

    def close(self) -> None:
        self.closed = True


class LogView(_View):
    def __init__(self, node: SimNode, proc: Process) -> None:
        super().__init__(node, proc)
        self._store = node.disk.log

    def bounds(self) -> tuple[int, int]:
        self._io("log.bounds", False)
        return self._store.bounds()

    def entries(self, lo: int, hi: int) -> list[Entry]:
        self._io("log.entries", False)
        return self._store.entries(lo, hi)

    def append(self, entries: list[Entry]) -> None:
        self._io("log.append", True)
        if entries:
            self.node.sim.checker.on_persist(
                self.node, entries, self.node.disk.prev_term(entries[0].index)
            )
        self._store.append(entries)

    def sync(self) -> None:
        self._io("log.sync", True)
        self._store.sync()

    def compact(self, upto: int) -> None:
        self._io("log.compact", True)
        self._store.compact(upto)

    def reset(self, snapshot_index: int) -> None:
        self._io("log.reset", True)
        self._store.reset(snapshot_index)


class StableView(_View):
    def __init__(self, node: SimNode, proc: Process) -> None:
        super().__init__(node, proc)
        self._store = node.disk.stable

    def load(self) -> HardState:
        self._io("stable.load", False)
        return self._store.load()

    def save(self, state: HardState, sync: bool) -> None:
        self._io("stable.save", True)
        self._store.save(state, sync)


class SnapshotView(_View):
    def __init__(self, node: SimNode, proc: Process) -> None:
        super().__init__(node, proc)
        self._store = node.disk.snaps

    def latest(self) -> SnapshotMeta | None:
        self._io("snaps.latest", False)
        return self._store.latest()

    def read(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        self._io("snaps.read", False)
        return self._store.read(meta, offset, size)

    def create(self, meta: SnapshotMeta, data: bytes) -> None:
        self._io("snaps.create", True)
        self._store.create(meta, data)

    def write_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        self._io("snaps.write_chunk", True)
        self._store.write_chunk(meta, offset, data)

    def finish(self, meta: SnapshotMeta) -> None:
        self._io("snaps.finish", True)
        self._store.finish(meta)
