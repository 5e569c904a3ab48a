"""The storage interfaces the Raft driver writes through.

Three small protocols, as in hashicorp/raft: a log store, a stable store for
the hard state, and a snapshot store.  The core never calls them (it is pure);
the driver (consensus/driver.py) and the simulation do, following the order
that `Ready`'s docstring prescribes.  Implementations:

- consensus/memstore.py: in memory, for the simulation and unit tests; each
  keeps a "synced" view and drops everything newer on `crash()`.
- consensus/filestore.py: durable, checksummed, fsynced files.

Both pass the same contract suite (tests/test_storage_contract.py).
"""

from __future__ import annotations

from typing import Protocol

from consensus.types import Entry, HardState, SnapshotMeta


class LogStore(Protocol):
    def bounds(self) -> tuple[int, int]:
        """(first_index, last_index).  An empty log after a snapshot at index s
        or after reset(s) returns (s + 1, s); a brand-new log (1, 0)."""

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi; both must lie within bounds()."""

    def append(self, entries: list[Entry]) -> None:
        """Write entries; the first one may overwrite index i <= last_index + 1,
        in which case every entry from i on is discarded first.  Not durable
        until sync()."""

    def sync(self) -> None:
        """Make every write so far durable (one fsync for many appends)."""

    def compact(self, upto: int) -> None:
        """Forget entries with index <= upto (they are in a snapshot now)."""

    def reset(self, snapshot_index: int) -> None:
        """Drop the whole log; the next append starts at snapshot_index + 1.
        Durable when it returns."""


class StableStore(Protocol):
    def load(self) -> HardState:
        """The last saved hard state, or HardState() on a fresh node."""

    def save(self, state: HardState, sync: bool) -> None:
        """Replace the hard state.  With sync=True it is durable on return;
        term and vote are always saved with sync=True before a vote or an
        append is acknowledged."""


class SnapshotStore(Protocol):
    def latest(self) -> SnapshotMeta | None:
        """The newest complete snapshot, or None."""

    def read(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        """Up to `size` bytes of the snapshot's data from `offset`; KeyError if
        that snapshot is no longer stored (a newer one replaced it)."""

    def create(self, meta: SnapshotMeta, data: bytes) -> None:
        """Store a snapshot made locally; atomic (temp file + rename) and
        durable on return.  Older snapshots may be deleted."""

    def write_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        """Store part of a snapshot arriving from the leader.  Offset 0 starts
        a new partial snapshot, discarding any earlier partial one."""

    def finish(self, meta: SnapshotMeta) -> None:
        """The partial snapshot is complete: make it the latest, atomically and
        durably."""
