"""The Raft protocol as a pure state machine (etcd-io/raft's RawNode, in Python).

No sockets, clocks, threads or files: time arrives as `tick()`, peers' messages
as `step()`, and everything the core wants done comes out of `ready()` as a
value the driver carries out before calling `advance()`.  That is what lets
tests/sim run thousands of reproducible, fault-injected executions.

Features: randomized election timeouts, pre-vote, check-quorum with a leader
lease, a no-op entry on election (commit only of current-term entries),
batched and pipelined replication with bounded in-flight messages, conflict
hints for fast backtracking, ReadIndex, snapshots sent in chunks, single-server
membership changes with learners, and leadership transfer.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from consensus import quorum
from consensus.errors import (
    ConfChangeInProgress,
    InvalidConfChange,
    NoLeader,
    NotLeader,
    TransferInProgress,
)
from consensus.log import RaftLog
from consensus.messages import (
    AppendRequest,
    AppendResponse,
    CommitHint,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ProposeRequest,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from consensus.progress import Progress, ProgressState
from consensus.types import (
    ConfChange,
    ConfOp,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    ReadState,
    Ready,
    RestoredState,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    SoftState,
)


@dataclass(frozen=True, slots=True)
class RaftConfig:
    id: NodeId
    election_ticks: int = 10  # each timeout is drawn from [election_ticks, 2 * election_ticks)
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20  # bound of the entries in one AppendRequest
    max_inflight: int = 256  # unanswered AppendRequests per follower
    max_snapshot_chunk: int = 256 * 1024
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("raft: election_ticks must exceed heartbeat_ticks, which must be >= 1")
        if self.max_inflight < 1 or self.max_msg_bytes < 1 or self.max_snapshot_chunk < 1:
            raise ValueError(
                "raft: max_inflight, max_msg_bytes and max_snapshot_chunk must be positive"
            )


class SnapshotReader(Protocol):
    def read(self, meta: SnapshotMeta, offset: int, size: int) -> bytes: ...


def bootstrap(membership: Membership) -> RestoredState:
    """The first state of each initial member of a brand-new cluster.

    Every initial member persists the same entry 1 (term 1), so their logs agree
    from the start; elections begin at term 2.  A node that joins later starts
    from an empty RestoredState() and learns everything from the leader."""
    change = ConfChange(ConfOp.BOOTSTRAP, bootstrap=membership)
    entry = Entry(term=1, index=1, kind=EntryKind.CONF, data=change.encode())
    return RestoredState(
        hard_state=HardState(term=1, vote=None, commit=1), snapshot=None, entries=[entry]
    )


def _entries_after_snapshot(restored: RestoredState) -> list[Entry]:
    """The log entries that extend the snapshot.  A crash may leave a log that
    the snapshot already covers (the compaction was lost) or one that disagrees
    with it (a snapshot received from the leader was stored but the old log not
    yet reset): the snapshot wins, and a disagreeing log is dropped whole."""
    snap = restored.snapshot
    if snap is None:
        return list(restored.entries)
    for entry in restored.entries:
        if entry.index == snap.index and entry.term != snap.term:
            return []
    after = [e for e in restored.entries if e.index > snap.index]
    if after and after[0].index != snap.index + 1:
        return []
    return after


# Entry(term, index, kind, data) without the frozen dataclass's __init__ (one
# object.__setattr__ per field), which was half the cost of a leader's propose().
# Correct only while Entry has exactly these slots, all of them set here.
assert Entry.__slots__ == ("term", "index", "kind", "data"), "update _new_entry() for the new field"
_set_entry_term = Entry.__dict__["term"].__set__
_set_entry_index = Entry.__dict__["index"].__set__
_set_entry_kind = Entry.__dict__["kind"].__set__
_set_entry_data = Entry.__dict__["data"].__set__


def _new_entry(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
    entry = object.__new__(Entry)
    _set_entry_term(entry, term)
    _set_entry_index(entry, index)
    _set_entry_kind(entry, kind)
    _set_entry_data(entry, data)
    return entry


def _round_ctx(round_: int) -> bytes:
    return struct.pack(">Q", round_)


def _ctx_round(ctx: bytes) -> int:
    return struct.unpack(">Q", ctx)[0] if len(ctx) == 8 else 0


@dataclass(slots=True)
class _PendingRead:
    ctx: bytes
    index: int
    round: int
    requester: NodeId  # ourselves, or the follower that forwarded it


class RawNode:
    """One Raft peer.  Not thread-safe; drive it from one task."""

    def __init__(
        self,
        config: RaftConfig,
        restored: RestoredState,
        snapshots: SnapshotReader,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.id = config.id
        self._snapshots = snapshots
        self._rng = rng
        snap = restored.snapshot
        entries = _entries_after_snapshot(restored)
        self.log = RaftLog(
            snap.index if snap else 0, snap.term if snap else 0, entries, restored.hard_state.commit
        )
        self._snapshot: SnapshotMeta | None = snap
        self.membership = snap.membership if snap else Membership()
        # (index, membership) from the snapshot on: lets the driver label a local
        # snapshot with the membership as of its index, not as of the commit index.
        self._membership_history: list[tuple[int, Membership]] = [
            (self.log.snapshot_index, self.membership)
        ]

        hs = restored.hard_state
        self.term = hs.term
        self.vote: NodeId | None = hs.vote
        self._saved_hs = HardState(self.term, self.vote, self.log.committed)
        self.leader: NodeId | None = None
        self.role = Role.FOLLOWER
        self._saved_soft = SoftState(None, Role.FOLLOWER)

        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()

        self._votes: dict[NodeId, bool] = {}
        self._progress: dict[NodeId, Progress] = {}
        self._pending_conf_index = 0
        self._transferee: NodeId | None = None
        self._transfer_elapsed = 0

        # ReadIndex (leader): requests waiting for a heartbeat round's quorum,
        # and those waiting for the first commit of this term.
        self._reads: deque[_PendingRead] = deque()
        self._reads_before_commit: list[tuple[bytes, NodeId]] = []
        self._read_round = 0  # last round broadcast
        self._read_round_wanted = False

        # Incoming snapshot (follower).
        self._incoming: SnapshotMeta | None = None
        self._incoming_offset = 0
        self._installed: SnapshotMeta | None = None

        # Outputs accumulated until the next ready().
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._chunks: list[SnapshotChunk] = []
        self._read_states: list[ReadState] = []
        self._forward: list[bytes] = []
        self._broadcast_wanted = False
        self._in_flight: Ready | None = None

        self.stats: dict[str, int] = {
            "stale_term": 0,
            "ignored_in_lease": 0,
            "unknown_sender": 0,
            "dropped_proposals": 0,
            "dropped_reads": 0,
            "elections": 0,
            "snapshots_sent": 0,
            "snapshots_installed": 0,
            "commit_hints": 0,
        }
        # Membership changes take effect when committed: replay those already committed.
        self._conf_applied = self.log.snapshot_index
        self._apply_committed_conf()
        self._conf_commit_unsynced = False  # see ready(): must_sync

    # ==================================================================
    # introspection
    # ==================================================================
    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    @property
    def first_index(self) -> int:
        return self.log.first_index()

    def term_at(self, index: int) -> int | None:
        return self.log.term_at(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self.log.slice(lo, hi)

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snapshot

    def membership_at(self, index: int) -> Membership:
        """The membership in force after applying the entry at `index`."""
        found = self._membership_history[0][1]
        for at, membership in self._membership_history:
            if at > index:
                break
            found = membership
        return found

    def is_voter(self) -> bool:
        return self.id in self.membership.voters

    def progress(self) -> dict[NodeId, str]:
        return {peer: pr.describe() for peer, pr in sorted(self._progress.items())}

    def match_index(self, peer: NodeId) -> int | None:
        pr = self._progress.get(peer)
        return pr.match if pr else None

    def snapshot_transfers(self) -> int:
        """Followers this leader is sending a snapshot to."""
        return sum(1 for pr in self._progress.values() if pr.state == ProgressState.SNAPSHOT)

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self._visible_role().value,
            "term": self.term,
            "vote": self.vote,
            "leader": self.leader,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "last_index": self.log.last_index(),
            "snapshot_index": self.log.snapshot_index,
            "voters": sorted(self.membership.voters),
            "learners": sorted(self.membership.learners),
            "progress": self.progress(),
            "transferee": self._transferee,
        }

    @property
    def conf_change_pending(self) -> bool:
        """On the leader: a membership change is appended but not yet committed (a
        new leader counts its first entries as one until they commit)."""
        return self._pending_conf_index > self.log.committed

    def _visible_role(self) -> Role:
        if self.role == Role.FOLLOWER and not self.is_voter():
            return Role.LEARNER
        return self.role

    # ==================================================================
    # inputs from the application
    # ==================================================================
    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (skipping pre-vote)."""
        if self.is_voter() and self.role != Role.LEADER:
            self._campaign(transfer=False)

    def propose(self, command: bytes) -> None:
        if self.role == Role.LEADER:
            if self._transferee is not None:
                raise TransferInProgress(self._transferee)
            self._append_new([(EntryKind.NORMAL, command)])
            return
        if self.leader is None:
            raise NoLeader()
        # Forwarded in one ProposeRequest per ready(), so a burst of proposals on
        # a follower costs one message; lost forwards are retried by the caller.
        self._forward.append(command)

    def propose_conf_change(self, change: ConfChange) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise TransferInProgress(self._transferee)
        if self._pending_conf_index > self.log.committed:
            raise ConfChangeInProgress()
        self._validate_conf_change(change)
        self._append_new([(EntryKind.CONF, change.encode())])
        self._pending_conf_index = self.log.last_index()

    def _validate_conf_change(self, change: ConfChange) -> None:
        m = self.membership
        node = change.node
        if change.op == ConfOp.BOOTSTRAP:
            raise InvalidConfChange("BOOTSTRAP is only for the first entry of a new cluster")
        if not node:
            raise InvalidConfChange("a membership change needs a node id")
        if change.op == ConfOp.ADD_LEARNER and node in m.members():
            raise InvalidConfChange(f"{node} is already a member")
        if change.op == ConfOp.ADD_VOTER and node in m.voters:
            raise InvalidConfChange(f"{node} is already a voter")
        if change.op == ConfOp.PROMOTE and node not in m.learners:
            raise InvalidConfChange(f"{node} is not a learner")
        if change.op == ConfOp.REMOVE:
            if node not in m.members():
                raise InvalidConfChange(f"{node} is not a member")
            if m.voters == {node}:
                raise InvalidConfChange(f"cannot remove {node}: it is the last voter")
            if node == self.id and len(m.voters) == 2:
                # The survivor would be the only voter; if it then lost the commit of
                # this change in a crash, it would need our vote again, which our
                # longer log could refuse forever (tests/sim seed 499 before this rule).
                other = next(iter(m.voters - {node}))
                raise InvalidConfChange(
                    "the leader cannot remove itself from a two-voter cluster: transfer "
                    f"leadership to {other} first, then remove {node} there"
                )

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; a ReadState(index, ctx) follows."""
        if self.role == Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader is not None:
            self._send(ReadIndexRequest(self.term, self.id, self.leader, ctx))
        else:
            self.stats["dropped_reads"] += 1

    def transfer_leadership(self, target: NodeId) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise InvalidConfChange(f"cannot transfer leadership to {target}: not a voter")
        if self._transferee == target:
            return
        self._transferee = target
        self._transfer_elapsed = 0
        pr = self._progress[target]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target, pr)

    def compact(self, meta: SnapshotMeta) -> None:
        """The driver stored a local snapshot at meta.index: forget the log before it."""
        if meta.index <= self.log.snapshot_index:
            return
        if self.log.term_at(meta.index) != meta.term:
            raise ValueError(f"snapshot term {meta.term} at {meta.index} does not match the log")
        self.log.compact(meta.index, meta.term)
        self._snapshot = meta
        history = self._membership_history
        keep = [h for h in history if h[0] > meta.index]
        self._membership_history = [(meta.index, self.membership_at(meta.index))] + keep

    # ==================================================================
    # the Ready / advance cycle
    # ==================================================================
    def has_ready(self) -> bool:
        if self._in_flight is not None:
            return False
        return bool(
            self._msgs
            or self._msgs_after
            or self._chunks
            or self._read_states
            or self._forward
            or self._broadcast_wanted
            or self._read_round_wanted
            or self._installed
            or self.log.has_unstable()
            or self.log.applied < self.log.committed
            or self._hard_state() != self._saved_hs
            or self._soft_state() != self._saved_soft
        )

    def ready(self) -> Ready:
        if self._in_flight is not None:
            raise RuntimeError("ready() called again before advance()")
        self._flush()
        hs = self._hard_state()
        soft = self._soft_state()
        must_sync_hs = hs.term != self._saved_hs.term or hs.vote != self._saved_hs.vote
        # A commit index that covers a membership change is made durable too:
        # after a crash the membership is rebuilt from the snapshot and the
        # entries up to hs.commit, and a lazily saved commit could bring back a
        # removed voter that the survivors then wait for forever (tests/sim seed 15).
        must_sync_hs = must_sync_hs or self._conf_commit_unsynced
        # ... and no message announces that commit index before it is: a follower
        # that applied the change (a removed voter stops campaigning) while the
        # leader's crash took it back would leave neither able to win (soak seed 56934).
        messages, after = self._msgs, self._msgs_after
        if self._conf_commit_unsynced and messages:
            messages, after = [], messages + after
        self._conf_commit_unsynced = False
        entries = self.log.take_unstable()
        rd = Ready(
            soft_state=soft if soft != self._saved_soft else None,
            hard_state=hs if hs != self._saved_hs else None,
            entries=entries,
            snapshot_chunks=tuple(self._chunks),
            snapshot=self._installed,
            committed=self.log.take_committed(),
            messages=tuple(messages),
            messages_after_persist=tuple(after),
            read_states=tuple(self._read_states),
            must_sync=bool(entries or self._chunks or must_sync_hs),
        )
        self._saved_hs = hs
        self._saved_soft = soft
        self._msgs, self._msgs_after, self._chunks, self._read_states = [], [], [], []
        self._installed = None
        self._in_flight = rd
        return rd

    def advance(self, ready: Ready) -> None:
        if ready is not self._in_flight:
            raise RuntimeError("advance() must be given the last Ready")
        self._in_flight = None
        if ready.entries:
            self.log.stable_to(ready.entries[-1].index)
        if self.role == Role.LEADER and ready.entries:
            self._progress[self.id].maybe_update(self.log.persisted)
            self._maybe_commit()

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self._visible_role())

    def _flush(self) -> None:
        """Turn wishes accumulated since the last ready() into messages: one
        batched append per follower, one forwarded proposal, one read round."""
        if self._forward:
            if self.role != Role.LEADER and self.leader is not None:
                self._send(ProposeRequest(self.term, self.id, self.leader, tuple(self._forward)))
            else:
                self.stats["dropped_proposals"] += len(self._forward)
            self._forward = []
        if self.role == Role.LEADER:
            if self._broadcast_wanted:
                self._broadcast_append()
            if self._read_round_wanted:
                self._broadcast_heartbeat(read_round=True)
        self._broadcast_wanted = False
        self._read_round_wanted = False

    # ==================================================================
    # time
    # ==================================================================
    def _reset_randomized_timeout(self) -> None:
        et = self.config.election_ticks
        self._randomized_timeout = self._rng.randrange(et, 2 * et)

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self.is_voter() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            if self.config.pre_vote:
                self._pre_campaign()
            else:
                self._campaign(transfer=False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum:
                active = {peer for peer, pr in self._progress.items() if pr.recent_active}
                active.add(self.id)
                # A removed leader handing over (see _hand_over_leadership) keeps
                # going: stepping down before a successor exists could strand the rest.
                if not quorum.has_quorum(self.membership.voters, active) and self.is_voter():
                    self._become_follower(self.term, None)
                    return
                for peer, pr in self._progress.items():
                    pr.recent_active = peer == self.id
        if self.role != Role.LEADER:
            return
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_ticks:
                self._transferee = None  # the transfer did not finish in time: give up
                if self.id not in self.membership.voters:
                    self._hand_over_leadership()  # ...unless we must leave: try again
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(read_round=False)
        for peer, pr in self._progress.items():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_idle_ticks += 1
                if pr.snapshot_idle_ticks >= self.config.election_ticks // 2 + 1:
                    self._send_snapshot_chunk(peer, pr)  # the answer was lost: resend

    # ==================================================================
    # role changes
    # ==================================================================
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._transferee = None
        self._progress = {}
        if self._reads or self._reads_before_commit:
            self.stats["dropped_reads"] += len(self._reads) + len(self._reads_before_commit)
        self._reads.clear()
        self._reads_before_commit = []
        self._read_round_wanted = False

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER

    def _pre_campaign(self) -> None:
        # Ask first whether we could win, without bumping our term: a node that
        # was partitioned away cannot force the healthy majority into a new term.
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {self.id: True}
        self._election_elapsed = 0
        self._reset_randomized_timeout()
        if self._tally() == quorum.VoteResult.WON:
            self._campaign(transfer=False)
            return
        for peer in sorted(self.membership.voters):  # sorted: the same order on every run
            if peer != self.id:
                self._send(
                    VoteRequest(
                        self.term + 1,
                        self.id,
                        peer,
                        self.log.last_index(),
                        self.log.last_term(),
                        pre=True,
                    )
                )

    def _campaign(self, transfer: bool) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id
        self.stats["elections"] += 1
        self._votes = {self.id: True}
        if self._tally() == quorum.VoteResult.WON:
            self._become_leader()
            return
        for peer in sorted(self.membership.voters):
            if peer != self.id:
                # The vote for ourselves must be durable before others are asked.
                self._send_after_persist(
                    VoteRequest(
                        self.term,
                        self.id,
                        peer,
                        self.log.last_index(),
                        self.log.last_term(),
                        transfer=transfer,
                    )
                )

    def _tally(self) -> quorum.VoteResult:
        return quorum.vote_result(self.membership.voters, self._votes)

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index()
        self._progress = {}
        for member in sorted(self.membership.members()):  # progress (and send) order
            self._add_progress(member, last + 1)
        me = self._progress[self.id]
        me.match = self.log.persisted
        me.become_replicate()
        me.recent_active = True
        # Entries from earlier terms are committed only by committing one of our
        # own; the no-op does that at once.  Until it commits, no conf change
        # (the single-server change bug) and no ReadIndex answers.
        self._append_new([(EntryKind.NORMAL, b"")])
        self._pending_conf_index = self.log.last_index()

    def _add_progress(self, member: NodeId, next_index: int) -> None:
        pr = Progress(
            next_index, self.config.max_inflight, is_learner=member not in self.membership.voters
        )
        if member == self.id:
            pr.match = self.log.persisted
        self._progress[member] = pr

    # ==================================================================
    # messages
    # ==================================================================
    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _send_after_persist(self, msg: Message) -> None:
        self._msgs_after.append(msg)

    def step(self, msg: Message) -> None:
        if msg.dst != self.id:
            self.stats["unknown_sender"] += 1
            return
        if isinstance(msg, CommitHint):
            self._handle_commit_hint(msg)  # a fact about the log: true in any term
            return
        if msg.term > self.term:
            if isinstance(msg, VoteRequest):
                in_lease = (
                    self.config.check_quorum
                    and self.leader is not None
                    and self._election_elapsed < self.config.election_ticks
                )
                if in_lease and not msg.transfer:
                    # We heard from a live leader recently: a disruptive candidate
                    # (one that was partitioned, or removed) may not depose it.
                    self.stats["ignored_in_lease"] += 1
                    return
            if isinstance(msg, VoteRequest) and msg.pre:
                pass  # a pre-vote never changes our term
            elif isinstance(msg, VoteResponse) and msg.pre and msg.granted:
                pass  # we asked for term+1 ourselves; the real campaign bumps it
            elif isinstance(msg, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self.term:
            if isinstance(msg, (AppendRequest, HeartbeatRequest)) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader (its term passed while it was cut off) learns
                # our term from this answer and steps down.
                self._send(AppendResponse(self.term, self.id, msg.src, False, 0))
            elif isinstance(msg, VoteRequest):
                # Rejected with our term (as the paper's RequestVote does), so that a
                # candidate behind in terms catches up at once; without it, a node whose
                # stale membership does not list the candidate can stay a term ahead of
                # it forever, never telling it (tests/sim soak seed 39404135589292).
                self._send(VoteResponse(self.term, self.id, msg.src, False, pre=msg.pre))
            else:
                self.stats["stale_term"] += 1
            return

        if isinstance(msg, VoteRequest):
            self._handle_vote_request(msg)
            return
        if self.role == Role.LEADER:
            self._step_leader(msg)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(msg)
        else:
            self._step_follower(msg)

    def _handle_vote_request(self, msg: VoteRequest) -> None:
        can_vote = (
            self.vote == msg.src
            or (self.vote is None and self.leader is None)
            or (msg.pre and msg.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(msg.last_index, msg.last_term):
            if msg.pre:
                self._send(VoteResponse(msg.term, self.id, msg.src, True, pre=True))
            else:
                self._election_elapsed = 0
                self.vote = msg.src
                self._send_after_persist(VoteResponse(self.term, self.id, msg.src, True))
        else:
            self._send(VoteResponse(self.term, self.id, msg.src, False, pre=msg.pre))
            committed = self.log.committed
            term = self.log.term_at(committed) if committed > 0 else None
            if self.id not in self.membership.voters and term is not None:
                self._send(CommitHint(self.term, self.id, msg.src, committed, term))

    def _handle_commit_hint(self, msg: CommitHint) -> None:
        """Advance the commit index to a hinted one where our log holds the same
        entry there: by log matching, everything up to it is the committed prefix."""
        log = self.log
        if self.role == Role.LEADER:
            return  # a leader commits by counting (a late hint to a new leader: soak seed 61208)
        if msg.index <= log.committed or msg.index > log.last_index():
            return
        if log.term_at(msg.index) != msg.log_term:
            return
        self.stats["commit_hints"] += 1
        log.commit_to(msg.index)
        self._apply_committed_conf()

    # -- candidate -------------------------------------------------------
    def _step_candidate(self, msg: Message) -> None:
        if isinstance(msg, VoteResponse):
            expected_pre = self.role == Role.PRE_CANDIDATE
            if msg.pre != expected_pre or msg.src not in self.membership.voters:
                return
            self._votes.setdefault(msg.src, msg.granted)
            result = self._tally()
            if result == quorum.VoteResult.WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(transfer=False)
                else:
                    self._become_leader()
            elif result == quorum.VoteResult.LOST:
                self._become_follower(self.term, None)
        elif isinstance(msg, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            self._become_follower(msg.term, msg.src)
            self._step_follower(msg)
        elif isinstance(msg, ProposeRequest):
            self.stats["dropped_proposals"] += len(msg.commands)
        elif isinstance(msg, TimeoutNow):
            pass

    # -- follower --------------------------------------------------------
    def _step_follower(self, msg: Message) -> None:
        if isinstance(msg, AppendRequest):
            self._election_elapsed = 0
            self.leader = msg.src
            self._handle_append(msg)
        elif isinstance(msg, HeartbeatRequest):
            self._election_elapsed = 0
            self.leader = msg.src
            self.log.commit_to(msg.commit)
            self._apply_committed_conf()
            self._send(HeartbeatResponse(self.term, self.id, msg.src, msg.ctx))
        elif isinstance(msg, SnapshotRequest):
            self._election_elapsed = 0
            self.leader = msg.src
            self._handle_snapshot(msg)
        elif isinstance(msg, TimeoutNow):
            if self.is_voter():
                self._campaign(transfer=True)
        elif isinstance(msg, ReadIndexResponse):
            self._read_states.append(ReadState(msg.index, msg.ctx))
        elif isinstance(msg, ProposeRequest):
            self.stats["dropped_proposals"] += len(msg.commands)
        elif isinstance(msg, ReadIndexRequest):
            self.stats["dropped_reads"] += 1

    def _handle_append(self, msg: AppendRequest) -> None:
        if msg.prev_index < self.log.committed:
            # Everything up to our commit index already matches the leader's.
            self._send_after_persist(
                AppendResponse(self.term, self.id, msg.src, True, self.log.committed)
            )
            return
        self.log.last_overwrite = None
        last_new = self.log.maybe_append(msg.prev_index, msg.prev_term, msg.entries)
        if last_new is not None:
            self._retract_acks_beyond_truncation()
        if last_new is None:
            hint_index, hint_term = self.log.find_conflict_by_term(msg.prev_index, msg.prev_term)
            self._send(
                AppendResponse(
                    self.term, self.id, msg.src, False, msg.prev_index, hint_index, hint_term
                )
            )
            return
        self.log.commit_to(min(msg.commit, last_new))
        self._apply_committed_conf()
        self._send_after_persist(AppendResponse(self.term, self.id, msg.src, True, last_new))

    def _retract_acks_beyond_truncation(self) -> None:
        """An append that overwrote part of our log makes any acknowledgement still
        waiting for a persist false from the overwritten index on: it promised a
        former leader entries we no longer hold, and that leader, not yet aware of
        the new term, could count it towards committing them (soak seed 33659)."""
        cut = self.log.last_overwrite
        if cut is None or not self._msgs_after:
            return
        self._msgs_after = [
            m
            for m in self._msgs_after
            if not (isinstance(m, AppendResponse) and m.success and m.index >= cut)
        ]

    def _handle_snapshot(self, msg: SnapshotRequest) -> None:
        meta = msg.meta
        if meta.index <= self.log.committed or (
            msg.offset == 0 and self.log.matches(meta.index, meta.term)
        ):
            self._snapshot_already_held(msg)
            return
        if msg.offset == 0:
            self._incoming = meta
            self._incoming_offset = 0
        if self._incoming != meta or msg.offset != self._incoming_offset:
            # Out of order, or for another snapshot: tell the leader what we expect.
            expect = self._incoming_offset if self._incoming == meta else 0
            self._send(
                SnapshotResponse(self.term, self.id, msg.src, meta.index, expect, done=False)
            )
            return
        self._chunks.append(SnapshotChunk(meta, msg.offset, msg.data, msg.done))
        self._incoming_offset += len(msg.data)
        if not msg.done:
            self._send_after_persist(
                SnapshotResponse(
                    self.term, self.id, msg.src, meta.index, self._incoming_offset, done=False
                )
            )
            return
        if self._incoming_offset != meta.size:
            # The leader thinks it is done but the sizes disagree: start over.
            self._incoming = None
            self._send(SnapshotResponse(self.term, self.id, msg.src, meta.index, 0, done=False))
            return
        if self.log.matches(meta.index, meta.term):
            # Appends that arrived during the transfer took our log past the
            # snapshot's last entry, and we may have acknowledged them: installing
            # would drop them (soak seed 172293: the leader then counted an entry
            # this follower no longer had, and probed it forever).  The partial
            # snapshot stays until the next transfer starts over at offset 0.
            self._snapshot_already_held(msg)
            return
        self._incoming = None
        self.log.restore(meta.index, meta.term)
        self._snapshot = meta
        self.membership = meta.membership
        self._membership_history = [(meta.index, meta.membership)]
        self._conf_applied = meta.index
        self._installed = meta
        self.stats["snapshots_installed"] += 1
        self._send_after_persist(
            SnapshotResponse(self.term, self.id, msg.src, meta.index, meta.size, done=True)
        )

    def _snapshot_already_held(self, msg: SnapshotRequest) -> None:
        """Our log already holds everything the snapshot does: no install needed."""
        meta = msg.meta
        self.log.commit_to(meta.index)
        self._apply_committed_conf()
        self._incoming = None
        self._send_after_persist(
            SnapshotResponse(self.term, self.id, msg.src, meta.index, meta.size, done=True)
        )

    # -- leader ----------------------------------------------------------
    def _step_leader(self, msg: Message) -> None:
        if isinstance(msg, ProposeRequest):
            if self._transferee is not None:
                self.stats["dropped_proposals"] += len(msg.commands)
                return
            self._append_new([(EntryKind.NORMAL, c) for c in msg.commands])
            return
        if isinstance(msg, ReadIndexRequest):
            if msg.src in self.membership.members():
                self._leader_read(msg.ctx, msg.src)
            return
        pr = self._progress.get(msg.src)
        if pr is None:
            self.stats["unknown_sender"] += 1
            return
        if isinstance(msg, AppendResponse):
            pr.recent_active = True
            self._handle_append_response(msg, pr)
        elif isinstance(msg, HeartbeatResponse):
            pr.recent_active = True
            pr.paused = False
            if pr.state == ProgressState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
                # Answers may have been lost: let one more append out; if the
                # follower missed something it rejects it and we probe.
                pr.inflight.popleft()
            if pr.match < self.log.last_index() and pr.state != ProgressState.SNAPSHOT:
                self._send_append(msg.src, pr)
            if msg.ctx:
                self._ack_read_round(msg.src, pr, _ctx_round(msg.ctx))
        elif isinstance(msg, SnapshotResponse):
            pr.recent_active = True
            self._handle_snapshot_response(msg, pr)

    def _handle_append_response(self, msg: AppendResponse, pr: Progress) -> None:
        if not msg.success:
            if msg.index == 0 and msg.hint_index == 0:
                return  # a stale-term notice that carried no log information
            next_probe = msg.index
            if msg.hint_term > 0 or msg.hint_index > 0:
                next_probe, _ = self.log.find_conflict_by_term(msg.hint_index, msg.hint_term)
            if pr.maybe_decrease(msg.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(msg.src, pr)
            return
        was_probing = pr.state == ProgressState.PROBE
        if not pr.maybe_update(msg.index):
            return  # old news (maybe_update still freed its in-flight slot)
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.snapshot and pr.match >= pr.snapshot.index:
            pr.become_probe()
            pr.become_replicate()
        if self._maybe_commit():
            self._broadcast_wanted = True  # tell followers the new commit index
            if self.role != Role.LEADER:
                return  # the commit removed us from the voters
        if msg.src == self._transferee and pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, msg.src))
        # A follower that was being probed missed the broadcasts since: an empty
        # append brings it the commit index now rather than at the next heartbeat.
        self._send_append(msg.src, pr, allow_empty=was_probing)

    def _handle_snapshot_response(self, msg: SnapshotResponse, pr: Progress) -> None:
        if (
            pr.state != ProgressState.SNAPSHOT
            or pr.snapshot is None
            or msg.snapshot_index != pr.snapshot.index
        ):
            if msg.done:
                pr.maybe_update(msg.snapshot_index)
            return
        pr.snapshot_idle_ticks = 0
        if msg.done:
            pr.maybe_update(msg.snapshot_index)
            pr.become_probe()
            self._send_append(msg.src, pr)
            return
        pr.snapshot_offset = msg.next_offset
        self._send_snapshot_chunk(msg.src, pr)

    # ==================================================================
    # replication (leader)
    # ==================================================================
    def _append_new(self, items: list[tuple[EntryKind, bytes]]) -> None:
        index = self.log.last_index()
        term = self.term
        entries = []
        for kind, data in items:
            index += 1
            entries.append(_new_entry(term, index, kind, data))
        self.log.append(entries)
        self._broadcast_wanted = True

    def _broadcast_append(self) -> None:
        for peer, pr in self._progress.items():
            if peer != self.id:
                self._send_append(peer, pr)

    def _send_append(self, peer: NodeId, pr: Progress, allow_empty: bool = True) -> None:
        """Send as much as flow control allows: several size-bounded batches in
        REPLICATE, one probe in PROBE.  With nothing new to send, an empty
        append still carries the commit index (if `allow_empty`)."""
        sent = False
        while pr.can_send():
            prev_index = pr.next - 1
            prev_term = self.log.term_at(prev_index)
            if prev_term is None:
                self._start_snapshot(peer, pr)  # the entries it needs are compacted away
                return
            entries = self.log.slice(pr.next, self.log.last_index() + 1, self.config.max_msg_bytes)
            if not entries and (sent or not allow_empty):
                return
            self._send(
                AppendRequest(
                    self.term,
                    self.id,
                    peer,
                    prev_index,
                    prev_term,
                    tuple(entries),
                    self.log.committed,
                )
            )
            sent = True
            pr.sent_entries(entries[-1].index if entries else prev_index, len(entries))
            if not entries:
                return

    def _start_snapshot(self, peer: NodeId, pr: Progress) -> None:
        if self._snapshot is None:
            raise AssertionError("log compacted without a snapshot to send")
        pr.become_snapshot(self._snapshot)
        self.stats["snapshots_sent"] += 1
        self._send_snapshot_chunk(peer, pr)

    def _send_snapshot_chunk(self, peer: NodeId, pr: Progress) -> None:
        meta = pr.snapshot
        assert meta is not None
        pr.snapshot_idle_ticks = 0
        offset = pr.snapshot_offset
        try:
            data = self._snapshots.read(meta, offset, self.config.max_snapshot_chunk)
        except (OSError, KeyError, ValueError):
            if self._snapshot is None or self._snapshot == meta:
                raise
            # A newer local snapshot replaced the one in transfer: send that instead.
            pr.become_snapshot(self._snapshot)
            meta, offset = self._snapshot, 0
            data = self._snapshots.read(meta, offset, self.config.max_snapshot_chunk)
        done = offset + len(data) >= meta.size
        self._send(SnapshotRequest(self.term, self.id, peer, meta, offset, data, done))

    def _broadcast_heartbeat(self, read_round: bool) -> None:
        if read_round:
            self._read_round += 1
            self._read_round_wanted = False
        ctx = _round_ctx(self._read_round) if self._reads else b""
        for peer, pr in self._progress.items():
            if peer == self.id:
                continue
            commit = min(pr.match, self.log.committed)
            self._send(HeartbeatRequest(self.term, self.id, peer, commit, ctx))

    def _maybe_commit(self) -> bool:
        match = {peer: pr.match for peer, pr in self._progress.items()}
        index = quorum.committed_index(self.membership.voters, match)
        # Only an entry of the current term is committed by counting replicas
        # (Raft paper, section 5.4.2); earlier ones follow it.
        if index > self.log.committed and self.log.term_at(index) == self.term:
            self.log.commit_to(index)
            self._apply_committed_conf()
            self._release_reads_after_commit()
            return True
        return False

    # ==================================================================
    # membership
    # ==================================================================
    def _apply_committed_conf(self) -> None:
        """Membership changes take effect once committed (as etcd applies them)."""
        while self._conf_applied < self.log.committed:
            self._conf_applied += 1
            index = self._conf_applied
            if index <= self.log.snapshot_index:
                continue
            entry = self.log.entry(index)
            if entry.kind != EntryKind.CONF:
                continue
            change = ConfChange.decode(entry.data)
            self.membership = change.apply_to(self.membership)
            self._conf_commit_unsynced = True
            self._membership_history.append((index, self.membership))
            if self.role == Role.LEADER:
                self._on_leader_membership_change()

    def _hand_over_leadership(self) -> None:
        """We were removed.  Stepping down at once can leave the others without
        a leader: one that has not heard of the commit still counts us as a
        voter, and we would refuse it our vote if its log is behind ours.  So,
        as etcd does, keep leading (without counting ourselves, and refusing
        proposals) and hand leadership to the most caught-up voter, again
        and again until one takes over; its first message deposes us."""
        self._broadcast_heartbeat(read_round=False)
        target = max(sorted(self.membership.voters), key=lambda v: self._progress[v].match)
        self._transferee = None
        self.transfer_leadership(target)

    def _on_leader_membership_change(self) -> None:
        members = self.membership.members()
        for peer in list(self._progress):
            if peer not in members and peer != self.id:  # a removed leader still tracks itself
                del self._progress[peer]
        for member in sorted(members):
            if member not in self._progress:
                self._add_progress(member, self.log.last_index() + 1)
            self._progress[member].is_learner = member not in self.membership.voters
        if self.id not in self.membership.voters:
            self._hand_over_leadership()
            return
        if self._transferee is not None and self._transferee not in self.membership.voters:
            self._transferee = None
        self._broadcast_wanted = True
        # A smaller voter set may commit more right away.
        self._maybe_commit()

    # ==================================================================
    # ReadIndex
    # ==================================================================
    def _leader_read(self, ctx: bytes, requester: NodeId) -> None:
        if self.log.term_at(self.log.committed) != self.term:
            # Our commit index may still lag the previous leader's: wait for the no-op.
            self._reads_before_commit.append((ctx, requester))
            return
        if self.membership.voters == {self.id}:
            # Only a sole voter may answer without a round (a removed leader that
            # is handing over must still hear from the remaining voters).
            self._answer_read(ctx, self.log.committed, requester)
            return
        # Batch every read until the next ready() into one heartbeat round.
        self._reads.append(_PendingRead(ctx, self.log.committed, self._read_round + 1, requester))
        self._read_round_wanted = True

    def _release_reads_after_commit(self) -> None:
        if self._reads_before_commit and self.log.term_at(self.log.committed) == self.term:
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for ctx, requester in waiting:
                self._leader_read(ctx, requester)

    def _ack_read_round(self, peer: NodeId, pr: Progress, round_: int) -> None:
        # An answer to round r vouches for every read registered before round r
        # went out: all of them are confirmed once a majority has answered it.
        pr.read_ack_round = max(pr.read_ack_round, round_)
        while self._reads:
            head = self._reads[0]
            confirmed = {self.id} | {
                p for p, q in self._progress.items() if q.read_ack_round >= head.round
            }
            if not quorum.has_quorum(self.membership.voters, confirmed):
                break
            self._reads.popleft()
            self._answer_read(head.ctx, head.index, head.requester)

    def _answer_read(self, ctx: bytes, index: int, requester: NodeId) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._send(ReadIndexResponse(self.term, self.id, requester, index, ctx))
