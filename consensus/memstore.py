"""In-memory stores for the deterministic simulation and unit tests.

Each store keeps two views: what has been *written* (what the next read sees)
and what has been *synced* (what would survive a power cut).  `crash()` throws
the first away and restarts from the second, so the simulation can check that
the core never acknowledges anything it could lose.  `crash(rng)` models a disk
that is less kind and less predictable: a random prefix of the writes made
since the last sync survives, the last of them possibly cut short (a torn
tail, which a checksummed store truncates on recovery).  Operations the protocols
call durable on return (`LogStore.reset`, `StableStore.save(sync=True)`,
`SnapshotStore.create` and `finish`) update both views at once.

`LogWindow`, the validated list-with-offset that both log stores (this one and
consensus/filestore.py) keep in memory, lives here too so the two cannot
disagree on what a legal append, range or compaction is.
"""

from __future__ import annotations

import random

from consensus.types import Entry, HardState, SnapshotMeta

# Snapshots kept by the snapshot stores: the newest and the one before it, so
# that a transfer of the previous snapshot already under way can finish.
KEEP_SNAPSHOTS = 2


class LogWindow:
    """Entries first..last held in a Python list with an index offset.

    An empty window at `first` means "everything up to first - 1 is gone"
    (compacted, or a snapshot was installed), so bounds() is (first, first - 1).
    Mistakes by the caller raise at once rather than corrupting the log:
    IndexError for a range outside bounds, ValueError for an illegal write.
    """

    __slots__ = ("first", "items")

    def __init__(self, first: int = 1, items: list[Entry] | None = None) -> None:
        self.first = first
        self.items: list[Entry] = items if items is not None else []

    @property
    def last(self) -> int:
        return self.first + len(self.items) - 1

    def bounds(self) -> tuple[int, int]:
        return self.first, self.first + len(self.items) - 1

    def slice(self, lo: int, hi: int) -> list[Entry]:
        first = self.first
        if not first <= lo <= hi <= first + len(self.items):
            raise IndexError(f"entries({lo}, {hi}) outside log bounds {self.bounds()}")
        return self.items[lo - first : hi - first]

    def check_append(self, entries: list[Entry]) -> int:
        """Validate an append and return the index it starts at."""
        start = entries[0].index
        last = self.last
        if not self.first <= start <= last + 1:
            raise ValueError(
                f"append at index {start} outside [{self.first}, {last + 1}] "
                "(below the compacted prefix, or it would leave a gap)"
            )
        expected = start
        for entry in entries:
            if entry.index != expected:
                raise ValueError(
                    f"appended entries not contiguous: {entry.index} after {expected - 1}"
                )
            expected += 1
        return start

    def write(self, start: int, entries: list[Entry]) -> None:
        """Apply an append already validated by check_append()."""
        offset = start - self.first
        if offset < len(self.items):
            del self.items[offset:]
        self.items.extend(entries)

    def check_compact(self, upto: int) -> None:
        if upto > self.last:
            raise ValueError(f"compact({upto}) beyond last index {self.last}")

    def compact(self, upto: int) -> None:
        """Drop entries <= upto; a no-op for an already compacted prefix."""
        if upto >= self.first:
            del self.items[: upto + 1 - self.first]
            self.first = upto + 1

    def reset(self, snapshot_index: int) -> None:
        self.first = snapshot_index + 1
        self.items = []


class MemoryLogStore:
    """LogStore in memory with a crash model.

    The synced view is a second list brought up to date by sync() in time
    proportional to what changed since the previous sync (the overwritten or
    appended tail, plus a compacted prefix), never to the length of the log.
    The writes since the last sync are kept in order, for crash(rng).
    """

    def __init__(self) -> None:
        self._live = LogWindow()
        self._synced = LogWindow()
        # Lowest index written since the last sync: the synced list must be
        # cut there and refilled from the live one.  None when nothing was.
        self._dirty_from: int | None = None
        self._unsynced: list[tuple[int, list[Entry]]] = []  # (start, entries); start 0: compact

    def bounds(self) -> tuple[int, int]:
        return self._live.bounds()

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self._live.slice(lo, hi)

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        start = self._live.check_append(entries)
        self._live.write(start, entries)
        self._unsynced.append((start, list(entries)))
        if self._dirty_from is None or start < self._dirty_from:
            self._dirty_from = start

    def sync(self) -> None:
        live, synced = self._live, self._synced
        self._unsynced.clear()
        # Compaction first: it only moves `first` up.  If it went past all of
        # the synced entries, the synced list restarts empty at live.first.
        if live.first > synced.first:
            drop = min(live.first - synced.first, len(synced.items))
            del synced.items[:drop]
            synced.first = live.first
        if self._dirty_from is not None:
            # Every write since the last sync started at or after
            # _dirty_from, and _dirty_from <= synced.last + 1 (an append can
            # not leave a gap), so cutting there and copying the live tail
            # reproduces the live log.
            start = max(self._dirty_from, live.first)
            del synced.items[start - synced.first :]
            synced.items.extend(live.items[start - live.first :])
            self._dirty_from = None

    def compact(self, upto: int) -> None:
        self._live.check_compact(upto)
        self._live.compact(upto)
        self._unsynced.append((0, [Entry(0, upto)]))

    def durable_bounds(self) -> tuple[int, int]:
        """bounds() of what a crash now would leave (at least)."""
        return self._synced.bounds()

    def reset(self, snapshot_index: int) -> None:
        # Durable on return: both views restart empty.
        self._live.reset(snapshot_index)
        self._synced.reset(snapshot_index)
        self._dirty_from = None
        self._unsynced.clear()

    def crash(self, rng: random.Random | None = None) -> None:
        """Lose what was not synced: without `rng`, every unsynced append, the
        truncations they made (the old entries come back) and unsynced
        compactions; with it, all but a random prefix of those writes, the
        last one surviving in part or whole."""
        live = LogWindow(self._synced.first, list(self._synced.items))
        if rng is not None and self._unsynced:
            writes = self._unsynced[: rng.randint(0, len(self._unsynced))]
            if writes and writes[-1][0] and rng.random() < 0.5:
                start, entries = writes[-1]
                writes[-1] = (start, entries[: rng.randint(1, len(entries))])  # torn
            for start, entries in writes:
                if start == 0:
                    live.compact(entries[0].index)
                else:
                    live.write(start, entries)
        self._live = live
        self._synced = LogWindow(live.first, list(live.items))
        self._dirty_from = None
        self._unsynced.clear()


class MemoryStableStore:
    """StableStore in memory; save(sync=False) is lost by crash(), or by
    crash(rng) half of the time."""

    def __init__(self) -> None:
        self._live = HardState()
        self._synced = HardState()

    def load(self) -> HardState:
        return self._live

    def save(self, state: HardState, sync: bool) -> None:
        self._live = state
        if sync:
            self._synced = state

    def durable(self) -> HardState:
        """What a crash now would leave (at least)."""
        return self._synced

    def crash(self, rng: random.Random | None = None) -> None:
        if rng is not None and rng.random() < 0.5:
            self._synced = self._live  # the unsynced write reached the disk anyway
        self._live = self._synced


class MemorySnapshotStore:
    """SnapshotStore in memory.  Complete snapshots are durable at once; an
    incoming snapshot still being received is lost by crash()."""

    def __init__(self) -> None:
        self._complete: dict[tuple[int, int], tuple[SnapshotMeta, bytes]] = {}
        self._partial: tuple[SnapshotMeta, bytearray] | None = None

    def latest(self) -> SnapshotMeta | None:
        if not self._complete:
            return None
        return self._complete[max(self._complete)][0]

    def read(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        stored = self._complete.get((meta.index, meta.term))
        if stored is None:
            # KeyError: what RawNode expects when a newer snapshot has replaced
            # the one it was sending (it then sends the newest instead).
            raise KeyError(f"snapshot at index {meta.index} term {meta.term} is not stored")
        if offset < 0 or size < 0:
            raise ValueError(f"read({offset}, {size}): negative offset or size")
        return stored[1][offset : offset + size]

    def create(self, meta: SnapshotMeta, data: bytes) -> None:
        check_size(meta, len(data))
        self._store(meta, bytes(data))

    def write_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        if offset == 0:
            check_chunk(meta, offset, len(data), meta, 0)
            self._partial = (meta, bytearray(data))
            return
        partial = self._partial
        check_chunk(
            meta,
            offset,
            len(data),
            partial[0] if partial else None,
            len(partial[1]) if partial else 0,
        )
        assert partial is not None
        partial[1].extend(data)

    def finish(self, meta: SnapshotMeta) -> None:
        partial = self._partial
        check_finish(meta, partial[0] if partial else None, len(partial[1]) if partial else 0)
        assert partial is not None
        self._partial = None
        self._store(meta, bytes(partial[1]))

    def crash(self, rng: random.Random | None = None) -> None:
        self._partial = None

    def _store(self, meta: SnapshotMeta, data: bytes) -> None:
        self._complete[(meta.index, meta.term)] = (meta, data)
        for key in sorted(self._complete)[:-KEEP_SNAPSHOTS]:
            del self._complete[key]


# Validation shared with consensus/filestore.py, so both snapshot stores
# reject exactly the same mistakes.


def check_size(meta: SnapshotMeta, size: int) -> None:
    if meta.size != size:
        raise ValueError(
            f"snapshot {meta.index}/{meta.term}: meta.size is {meta.size} but data has {size} bytes"
        )


def check_chunk(
    meta: SnapshotMeta, offset: int, length: int, partial: SnapshotMeta | None, have: int
) -> None:
    """Validate a chunk against the partial snapshot being received (`partial`
    with `have` bytes so far; for offset 0 the caller passes meta and 0, since
    offset 0 starts over)."""
    if partial is None or partial != meta:
        raise ValueError(
            f"chunk at offset {offset} of snapshot {meta.index}/{meta.term} while no partial "
            "snapshot of it is in progress (the receive must restart at offset 0)"
        )
    if offset != have:
        raise ValueError(f"chunk at offset {offset} but the partial snapshot has {have} bytes")
    if offset + length > meta.size:
        raise ValueError(f"chunk ends at {offset + length}, past the snapshot's size {meta.size}")


def check_finish(meta: SnapshotMeta, partial: SnapshotMeta | None, have: int) -> None:
    if partial != meta:
        raise ValueError(f"finish of snapshot {meta.index}/{meta.term} which is not being received")
    if have != meta.size:
        raise ValueError(f"finish with {have} bytes received of {meta.size}")
