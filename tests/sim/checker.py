"""Raft's safety properties, checked incrementally after every event.

1. Election safety: at most one leader per term, over the whole history.
2. Log matching: a global table (index, term) -> (kind, data, term of the entry
   before it).  Every entry any node persists must agree with it; since each
   entry also pins its predecessor's term, two logs that share an (index, term)
   share the whole prefix (checked by induction, one entry at a time).
3. Commit agreement and leader completeness: the term of every committed index
   is recorded the first time any node's commit index covers it; every node
   that commits it later must agree, and a node that becomes leader must hold
   every entry committed so far (or cover it with its snapshot).
4. State machine safety: every node applies contiguous indices, only committed
   ones, and the same entry at each index; its state machine's state after
   index i (or restored from a snapshot at i) is the same everywhere.
5. Reads: a ReadIndex read that started at t0 returns a state that includes
   every entry known committed anywhere at t0 (which covers every write
   acknowledged and every read completed before t0).
Acknowledged writes surviving to the end is checked by the world's final phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.types import Role

if TYPE_CHECKING:
    from tests.sim.node import SimNode
    from tests.sim.world import Sim


class SimFailure(AssertionError):
    """An invariant was violated (or the core raised); the message has the seed,
    the event number, the replay command and the trace's tail."""


class Checker:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.leaders: dict[int, str] = {}  # term -> the node that led it
        self.log_table: dict[tuple[int, int], tuple] = {}
        self.committed: list[int | None] = [0]  # committed[i]: term of committed entry i
        self.applied: dict[int, tuple] = {}  # index -> (term, kind, data)
        self.states: dict[int, tuple[bytes, int]] = {0: (b"\0" * 8, 0)}
        self.reads_checked = 0

    def fail(self, what: str) -> None:
        raise SimFailure(self.sim.describe_failure(what))

    @property
    def max_committed(self) -> int:
        return len(self.committed) - 1

    # ------------------------------------------------------------------
    # after every event that touched a node
    # ------------------------------------------------------------------
    def after(self, node: SimNode) -> None:
        raw = node.raw
        commit = raw.commit_index
        if commit > node.commit_seen:
            self._record_commit(node, node.commit_seen + 1, commit)
        node.commit_seen = commit
        if raw.role is Role.LEADER:
            term = raw.term
            who = self.leaders.get(term)
            if who is None:
                self.leaders[term] = node.id
                self._check_leader_completeness(node)
            elif who != node.id:
                self.fail(f"election safety: {node.id} and {who} are both leaders of term {term}")

    def on_start(self, node: SimNode, snap) -> None:
        raw = node.raw
        # What the restarted node believes committed must be what was committed.
        self._record_commit(node, raw.first_index, raw.commit_index)
        node.commit_seen = raw.commit_index
        if snap is not None:
            self._check_term(node, snap.index, snap.term, "its snapshot")
            self.on_state(node, "restart from snapshot")

    def _record_commit(self, node: SimNode, lo: int, hi: int) -> None:
        raw = node.raw
        committed = self.committed
        lo = max(lo, raw.first_index)  # below it: inside the snapshot, checked when installed
        for index in range(lo, hi + 1):
            term = raw.term_at(index)
            if term is None:
                self.fail(f"{node.id} commits index {index} that it does not hold")
            if index < len(committed):
                known = committed[index]
                if known is None:
                    committed[index] = term
                elif known != term:
                    self.fail(
                        f"commit safety: {node.id} committed index {index} with term {term}, "
                        f"but term {known} was committed there before"
                    )
            else:
                while len(committed) < index:
                    committed.append(None)
                committed.append(term)

    def _check_term(self, node: SimNode, index: int, term: int, what: str) -> None:
        if 0 < index < len(self.committed):
            known = self.committed[index]
            if known is not None and known != term:
                self.fail(
                    f"{node.id}: {what} has term {term} at committed index {index}, committed term is {known}"
                )

    def _check_leader_completeness(self, node: SimNode) -> None:
        raw = node.raw
        top = self.max_committed
        if raw.last_index < top:
            self.fail(
                f"leader completeness: {node.id} leads term {raw.term} with last index "
                f"{raw.last_index} but index {top} is committed"
            )
        snap_index = raw.first_index - 1
        if snap_index > 0:
            self._check_term(node, snap_index, raw.term_at(snap_index), "the new leader's snapshot")
        committed = self.committed
        for index in range(max(1, raw.first_index), top + 1):
            known = committed[index]
            if known is not None and raw.term_at(index) != known:
                self.fail(
                    f"leader completeness: {node.id} leads term {raw.term} with term "
                    f"{raw.term_at(index)} at index {index}, where term {known} is committed"
                )
        self.sim.on_new_leader(node)

    # ------------------------------------------------------------------
    # persistence and application
    # ------------------------------------------------------------------
    def on_persist(self, node: SimNode, entries: list, prev_term: int | None) -> None:
        if prev_term is None:
            self.fail(
                f"{node.id} appends at {entries[0].index} with no entry before it in its log store"
            )
        table = self.log_table
        for e in entries:
            if e.term < prev_term:
                self.fail(
                    f"log terms go down in {node.id}'s log: term {e.term} at {e.index} after {prev_term}"
                )
            key = (e.index, e.term)
            rec = (e.kind, e.data, prev_term)
            known = table.get(key)
            if known is None:
                table[key] = rec
            elif known != rec:
                self.fail(
                    f"log matching: {node.id} persists index {e.index} term {e.term} as "
                    f"{rec!r}, another log has {known!r}"
                )
            prev_term = e.term

    def on_apply(self, node: SimNode, e) -> None:
        expected = node.sm.index + 1
        if e.index != expected:
            self.fail(f"{node.id} applies index {e.index}, expected {expected}")
        if e.index >= len(self.committed) or self.committed[e.index] is None:
            self.fail(
                f"{node.id} applies index {e.index}, not known committed (max {self.max_committed})"
            )
        if self.committed[e.index] != e.term:
            self.fail(
                f"{node.id} applies {e.index}/{e.term} but term {self.committed[e.index]} is committed"
            )
        rec = (e.term, e.kind, e.data)
        known = self.applied.get(e.index)
        if known is None:
            self.applied[e.index] = rec
        elif known != rec:
            self.fail(
                f"state machine safety: {node.id} applies {rec!r} at {e.index}, others applied {known!r}"
            )

    def on_state(self, node: SimNode, how: str) -> None:
        sm = node.sm
        state = sm.state()
        known = self.states.get(sm.index)
        if known is None:
            self.states[sm.index] = state
        elif known != state:
            self.fail(
                f"state machine safety: {node.id}'s state after index {sm.index} ({how}) is "
                f"{state!r}, others had {known!r}"
            )

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------
    def on_read_complete(self, node: SimNode, read) -> None:
        self.reads_checked += 1
        if read.index < read.floor:
            self.fail(
                f"linearizability: read {read.ctx!r} started at t={read.t0} on {node.id} got read index "
                f"{read.index}, but index {read.floor} was already committed then "
                f"(max acknowledged write index then: {read.acked_floor})"
            )
        if node.sm.index < read.index:
            self.fail(
                f"read {read.ctx!r} served at applied {node.sm.index} < read index {read.index}"
            )
