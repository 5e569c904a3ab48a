"""Raft's safety properties and exactly-once, checked as the run goes.

1. Election safety: at most one leader per term, over the whole history.
2. Log matching: a global table (index, term) -> (kind, data, term of the entry
   before it).  Every entry any node writes to its disk must agree with it;
   since each entry also pins its predecessor's term, two logs that share an
   (index, term) share the whole prefix (checked by induction, one entry at a
   time).
3. Commit agreement, the commit rule and leader completeness: a leader moves
   its commit index only onto an entry of its own term; the term of every committed index
   is recorded the first time any node's commit index covers it; every node
   that commits it later must agree, and a node that becomes leader of term T must
   hold every entry committed in a term before T (or cover it with its snapshot).
4. One membership change at a time: a leader's log never holds two
   uncommitted membership changes.
5. State machine safety: every node applies commands at increasing, committed
   indices only, and the same command at each index; its state after index i
   (or restored from a snapshot at i) is the same everywhere.
6. Exactly once: no command is applied at two indices, however often clients
   and the driver retried it.
7. Reads: a ReadIndex read that started at t0 returns a state that includes
   every entry known committed anywhere at t0 (which covers every write
   acknowledged and every read completed before t0).
Acknowledged writes surviving to the end is checked by the world's final phase.

A failure is recorded on the loop before it is raised, so that code under test
that catches exceptions (the driver stops on anything its persist raises)
cannot hide it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.types import EntryKind, Role

if TYPE_CHECKING:
    from tests.sim.node import SimNode
    from tests.sim.world import Sim


class SimFailure(AssertionError):
    """An invariant was violated (or the code under test raised); the message has
    the seed, the event number, the replay command and the trace's tail."""


class Checker:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.leaders: dict[int, str] = {}  # term -> the node that led it
        self.log_table: dict[tuple[int, int], tuple] = {}
        self.committed: list[int | None] = [0]  # committed[i]: term of committed entry i
        # commit_term[i]: the lowest term of a node seen holding i committed, which is
        # the term of the leader that committed it (every other node learns it later,
        # at that term or above).  Leader completeness speaks of these terms.
        self.commit_term: dict[int, int] = {}
        self.applied: dict[int, bytes] = {}  # index -> the command applied there
        self.applied_at: dict[bytes, int] = {}  # command -> the index it was applied at
        self.states: dict[int, tuple[bytes, int]] = {0: (b"\0" * 8, 0)}
        self.last_applied: dict[str, int] = {}  # node -> index of its last apply (this process)
        self.reads_checked = 0

    def fail(self, what: str) -> None:
        failure = SimFailure(self.sim.describe_failure(what))
        loop = self.sim.loop
        if loop.failure is None:
            loop.failure = failure
        loop.stop()
        raise failure

    @property
    def max_committed(self) -> int:
        return len(self.committed) - 1

    # ------------------------------------------------------------------
    # after every callback of a node's process
    # ------------------------------------------------------------------
    def after(self, node: SimNode) -> None:
        raft = node.raft
        raw = raft.raw
        if raft.fatal is not None:
            self.fail(f"{node.id}'s driver stopped: {type(raft.fatal).__name__}: {raft.fatal}")
        before = node.commit_seen
        self.observe_commit(node)
        if raw.role is Role.LEADER:
            term = raw.term
            # It led this term before this callback too: the commit moved by
            # counting, which only an entry of its own term may (Raft 5.4.2).
            if (
                raw.commit_index > before
                and node.soft[:2] == (Role.LEADER, term)
                and raw.term_at(raw.commit_index) != term
            ):
                self.fail(
                    f"commit rule: leader {node.id} of term {term} committed index "
                    f"{raw.commit_index} of term {raw.term_at(raw.commit_index)} by counting"
                )
            who = self.leaders.get(term)
            if who is None:
                self.leaders[term] = node.id
                self._check_leader_completeness(node)
            elif who != node.id:
                self.fail(f"election safety: {node.id} and {who} are both leaders of term {term}")
            self._check_one_conf_change(node)

    def observe_commit(self, node: SimNode) -> None:
        commit = node.raw.commit_index
        if commit > node.commit_seen:
            self._record_commit(node, node.commit_seen + 1, commit)
        node.commit_seen = commit

    def on_start(self, node: SimNode) -> None:
        raw = node.raw
        # What the restarted node believes committed must be what was committed.
        self._record_commit(node, raw.first_index, raw.commit_index)
        node.commit_seen = raw.commit_index
        snap = raw.snapshot_meta
        self.last_applied[node.id] = snap.index if snap is not None else 0
        if snap is not None:
            self._check_term(node, snap.index, snap.term, "its snapshot")

    def _record_commit(self, node: SimNode, lo: int, hi: int) -> None:
        raw = node.raw
        committed = self.committed
        lo = max(lo, raw.first_index)  # below it: inside the snapshot, checked when installed
        commit_term = self.commit_term
        for index in range(lo, hi + 1):
            if commit_term.get(index, raw.term) >= raw.term:
                commit_term[index] = raw.term
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
        """A leader of term T holds every entry committed in a term before T (Raft
        5.4).  Not those committed at T or later: a vote granted in T can arrive
        after its voter has helped a leader of T+1 commit (soak seed 102027); such
        a leader cannot commit anything, as the checks on commits show."""
        raw = node.raw
        top = self.max_committed
        while top > 0 and self.commit_term.get(top, 0) >= raw.term:
            top -= 1
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

    def _check_one_conf_change(self, node: SimNode) -> None:
        raw = node.raw
        span = (raw.commit_index, raw.last_index)
        if span == node.conf_scanned:
            return
        node.conf_scanned = span
        # Entries some node knows committed are committed, also where this new
        # leader's own commit index still lags behind them (soak seed 33721).
        lo = max(raw.commit_index + 1, self.max_committed + 1, raw.first_index)
        pending = [e.index for e in raw.entries(lo, raw.last_index + 1) if e.kind == EntryKind.CONF]
        if len(pending) > 1:
            self.fail(
                f"one membership change at a time: leader {node.id} holds uncommitted changes at "
                f"{pending} (commit index {raw.commit_index})"
            )

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

    def on_apply(self, node: SimNode, index: int, command: bytes) -> None:
        last = self.last_applied.get(node.id, 0)
        if index <= last:
            self.fail(f"{node.id} applies index {index} after {last}")
        self.last_applied[node.id] = index
        raw = node.raw
        if raw is not None:  # several Readies may pass in one callback: commits first
            self.observe_commit(node)
        if index >= len(self.committed) or self.committed[index] is None:
            self.fail(
                f"{node.id} applies index {index}, not known committed (max {self.max_committed})"
            )
        term = raw.term_at(index) if raw is not None else None
        if term is not None and self.committed[index] != term:
            self.fail(
                f"{node.id} applies {index}/{term} but term {self.committed[index]} is committed"
            )
        known = self.applied.get(index)
        if known is None:
            self.applied[index] = command
            first = self.applied_at.setdefault(command, index)
            if first != index:
                self.fail(
                    f"exactly once: {command!r} is applied at index {index} and already was at "
                    f"index {first} (a retried request applied twice)"
                )
        elif known != command:
            self.fail(
                f"state machine safety: {node.id} applies {command!r} at {index}, others applied {known!r}"
            )

    def on_state(self, node: SimNode, how: str) -> None:
        machine = node.machine
        if how == "restore":
            self.last_applied[node.id] = machine.index
        state = machine.state()
        known = self.states.get(machine.index)
        if known is None:
            self.states[machine.index] = state
        elif known != state:
            self.fail(
                f"state machine safety: {node.id}'s state after index {machine.index} ({how}) is "
                f"{state!r}, others had {known!r}"
            )

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------
    def on_read_complete(self, node_id: str, read, index: int, applied: int) -> None:
        self.reads_checked += 1
        if index < read.floor:
            self.fail(
                f"linearizability: read {read.name} started at t={read.t0:.3f} got read index "
                f"{index} from {node_id}, but index {read.floor} was already committed then "
                f"(max acknowledged write index then: {read.acked_floor})"
            )
        if applied < index:
            self.fail(
                f"read {read.name} served by {node_id} at applied {applied} < read index {index}"
            )
