"""The core's in-memory view of the replicated log.

It holds every entry after the latest snapshot (compaction keeps that bounded)
and three marks, with the invariant snapshot_index <= applied <= committed:

- `unstable`: the first index not yet handed to the driver for persisting;
- `persisted`: the last index the driver confirmed durable (advance());
- `committed` / `applied`: as in the paper; "applied" here means handed to the
  driver in a Ready for applying.
"""

from __future__ import annotations

import itertools

from consensus.types import Entry


class RaftLog:
    __slots__ = (
        "_entries",
        "_rewritten_from",
        "applied",
        "committed",
        "last_overwrite",
        "persisted",
        "snapshot_index",
        "snapshot_term",
        "unstable",
    )

    def __init__(
        self, snapshot_index: int, snapshot_term: int, entries: list[Entry], committed: int
    ) -> None:
        if entries and entries[0].index != snapshot_index + 1:
            raise ValueError(
                f"log starts at index {entries[0].index} but the snapshot ends at "
                f"{snapshot_index}: the log store and snapshot store disagree"
            )
        for before, after in itertools.pairwise(entries):
            if after.index != before.index + 1:
                raise ValueError(f"log has a gap between index {before.index} and {after.index}")
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self._entries = list(entries)
        # A lazily written commit index may run ahead of a log whose tail was lost
        # in a crash; committed entries live on a majority, so the leader resends.
        self.committed = max(snapshot_index, min(committed, self.last_index()))
        self.applied = snapshot_index
        self.unstable = self.last_index() + 1
        self.persisted = self.last_index()
        # lowest index overwritten since the driver last took the unstable entries
        self._rewritten_from: int | None = None
        # the first index the latest append overwrote (None: it only extended the log)
        self.last_overwrite: int | None = None

    # -- reading ---------------------------------------------------------
    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index():
            return None
        return self._entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries lo <= index < hi, at least one, at most `max_bytes` beyond the first."""
        lo = max(lo, self.first_index())
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        offset = self.snapshot_index + 1
        if max_bytes is None:
            return self._entries[lo - offset : hi - offset]
        out: list[Entry] = []
        size = 0
        for i in range(lo - offset, hi - offset):
            entry = self._entries[i]
            size += entry.size()
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is a candidate's log at least as new as ours?"""
        ours = self.last_term()
        return last_term > ours or (last_term == ours and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, with that term.

        A follower rejecting an append uses it to tell the leader where its log
        might match; the leader uses it again on its own log to pick the next
        probe, skipping a whole divergent term in one round trip."""
        index = min(index, self.last_index())
        while index > self.snapshot_index:
            t = self.entry(index).term
            if t <= term:
                return index, t
            index -= 1
        return self.snapshot_index, self.snapshot_term

    # -- writing ---------------------------------------------------------
    def append(self, entries: list[Entry]) -> None:
        """Append, overwriting from entries[0].index if it lies inside the log."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(
                f"refusing to overwrite committed entry {first} (committed {self.committed})"
            )
        if first > self.last_index() + 1:
            raise AssertionError(f"append at {first} would leave a gap after {self.last_index()}")
        if first <= self.last_index():
            self.last_overwrite = first
        if first < self.unstable:
            self._rewritten_from = (
                first if self._rewritten_from is None else min(self._rewritten_from, first)
            )
        del self._entries[first - self.snapshot_index - 1 :]
        self._entries.extend(entries)
        self.unstable = min(self.unstable, first)
        self.persisted = min(self.persisted, first - 1)

    def maybe_append(
        self, prev_index: int, prev_term: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries: None if the logs do not match at prev_index,
        else the index of the last entry the leader's message covers."""
        if not self.matches(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for pos, entry in enumerate(entries):
            if entry.index <= self.snapshot_index:
                continue  # already inside our snapshot: committed, hence identical
            if self.term_at(entry.index) != entry.term:
                self.append(list(entries[pos:]))
                break
        return last_new

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index())
        if index > self.committed:
            self.committed = index
            return True
        return False

    def take_unstable(self) -> tuple[Entry, ...]:
        if self.unstable > self.last_index():
            return ()
        out = tuple(self._entries[self.unstable - self.snapshot_index - 1 :])
        self.unstable = self.last_index() + 1
        self._rewritten_from = None
        return out

    def stable_to(self, index: int) -> None:
        """The driver made the entries it was handed, up to `index`, durable.
        Entries overwritten since then are not: they come again in the next Ready."""
        if self._rewritten_from is not None:
            index = min(index, self._rewritten_from - 1)
        self.persisted = max(self.persisted, min(index, self.last_index()))

    def has_unstable(self) -> bool:
        return self.unstable <= self.last_index()

    def take_committed(self) -> tuple[Entry, ...]:
        if self.applied >= self.committed:
            return ()
        out = tuple(self.slice(self.applied + 1, self.committed + 1))
        self.applied = self.committed
        return out

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to `index` (now covered by a local snapshot)."""
        if index <= self.snapshot_index:
            return
        if index > self.applied:
            raise AssertionError(f"cannot compact to {index}: only {self.applied} applied")
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index = index
        self.snapshot_term = term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self._entries = []
        self.snapshot_index = index
        self.snapshot_term = term
        self.committed = index
        self.applied = index
        self.unstable = index + 1
        self.persisted = index
        self._rewritten_from = None
