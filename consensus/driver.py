"""The asyncio driver around the pure core: one RaftNode per process.

It owns the clock (a tick every `tick_ms`), the transport and the stores, and
runs the Ready cycle: send, persist (fsync in a worker thread, so messages keep
arriving and the next batch grows meanwhile: group commit for free), send the
acknowledgements, apply, advance.  On top it offers what the rest of ragraft
uses:

- `await propose(command)` from ANY node: resolves with (index, result) once
  the entry is committed AND applied here (read-your-writes).  Each proposal
  is a request of a client session (the driver's own, or the caller's): copies
  of it in the log are applied once (consensus/session.py).
- `await read_barrier()`: ReadIndex; after it, local reads are linearizable.
- introspection for the UI: `status()`.

A node without a leader gives an election `leaderless_timeout` to produce one,
then refuses writes and reads with NoQuorum, and fails the proposals it is
holding, instead of making callers wait for the full proposal timeout: clients
and load balancers move on to a node that can serve.

Everything that is time or chance comes from the event loop's clock, the
`clock` (wall time, carried in envelopes) and the `rng` given to the node, so
tests/sim can run this driver on a virtual clock, reproducibly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from consensus.cipher import Cipher, DecryptionError
from consensus.errors import (
    ChangeLost,
    NoLeader,
    NoQuorum,
    NotLeader,
    RaftError,
    StaleRequest,
    TransferInProgress,
)
from consensus.fsm import NewerFormat, StateMachine
from consensus.messages import Message
from consensus.raft import RaftConfig, RawNode, bootstrap
from consensus.session import (
    EXPIRED,
    SESSION_TTL_MS,
    Request,
    SessionTable,
    Stale,
    pack_envelope,
)
from consensus.storage import LogStore, SnapshotStore, StableStore
from consensus.transport import Transport
from consensus.types import (
    ConfChange,
    ConfOp,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    Ready,
    RestoredState,
    Role,
    SnapshotMeta,
)

log = logging.getLogger("ragraft.consensus")

# A leader sending a snapshot defers its next one until the log is this many
# times snapshot_entries long.
SNAPSHOT_DEFER_FACTOR = 4


class ProposalTimeout(RaftError):
    def __init__(self, seconds: float, leader: NodeId | None) -> None:
        where = f"leader {leader}" if leader else "no leader known"
        super().__init__(
            f"the proposal was not committed within {seconds:.1f} s ({where}); "
            "a majority of the cluster may be down or unreachable"
        )


class NodeStopped(RaftError):
    def __init__(self) -> None:
        super().__init__("the Raft node is stopped")


@dataclass(frozen=True)
class NodeOptions:
    id: NodeId
    # every node the cluster starts with (id -> transport address); a node not
    # listed here joins later through add_member() on the leader
    initial_members: Mapping[NodeId, str] = field(default_factory=dict)
    # addresses known from configuration, used before the log says where peers
    # are; may be a live mapping that grows (read again when a stranger writes)
    known_addresses: Mapping[NodeId, str] = field(default_factory=dict)
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    max_inflight: int = 256
    max_snapshot_chunk: int = 256 * 1024
    snapshot_entries: int = 10_000  # take a snapshot after this many applied entries
    proposal_timeout: float = 10.0
    retry_interval: float = 1.5  # re-propose (same request) if nothing happened by then
    # no leader for this long: refuse writes and fail held proposals (None: 1 election timeout)
    leaderless_timeout: float | None = None
    durable: bool = True  # fsync in a worker thread (False for in-memory stores)
    # an idle client session is forgotten after this long; the same on every node
    session_ttl_ms: int = SESSION_TTL_MS
    cipher: Cipher | None = None  # seals proposals and snapshots (encryption at rest)
    pre_vote: bool = True
    check_quorum: bool = True

    @property
    def leaderless_s(self) -> float:
        if self.leaderless_timeout is not None:
            return self.leaderless_timeout
        return self.election_ticks * self.tick_ms / 1000

    def raft_config(self) -> RaftConfig:
        return RaftConfig(
            id=self.id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_msg_bytes=self.max_msg_bytes,
            max_inflight=self.max_inflight,
            max_snapshot_chunk=self.max_snapshot_chunk,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
        )


@dataclass(frozen=True, slots=True)
class Applied:
    index: int
    result: Any


# Applied(index, result) without the frozen dataclass's __init__ (one
# object.__setattr__ per field): one is made per proposal on the hot path.
assert Applied.__slots__ == ("index", "result"), "update _applied() for the new field"
_set_applied_index = Applied.__dict__["index"].__set__
_set_applied_result = Applied.__dict__["result"].__set__


_entry_kind = attrgetter("kind")


def _applied(index: int, result: Any) -> Applied:
    applied = object.__new__(Applied)
    _set_applied_index(applied, index)
    _set_applied_result(applied, result)
    return applied


# A pending request by its key (session, seq), and its retry timers (see _try_proposal):
# (due, key, future, envelope, deadline, timeout), with a tie-breaking seq after `due`
# in the heap.
_Key = tuple[str, int]
_Retry = tuple[float, _Key, "asyncio.Future[Applied]", bytes, float, float]
_HeapRetry = tuple[float, int, _Key, "asyncio.Future[Applied]", bytes, float, float]


@dataclass(frozen=True, slots=True)
class Backup:
    """The whole replicated state as applied at `index` (in `term`): the session
    table's snapshot, in the clear until `sealed`.  A new cluster can start from it
    (consensus/seed.py)."""

    index: int
    term: int
    data: bytes
    sealed: bool = False  # `data` is sealed with the node's at-rest cipher


class RaftNode:
    def __init__(
        self,
        options: NodeOptions,
        machine: StateMachine,
        log_store: LogStore,
        stable_store: StableStore,
        snapshot_store: SnapshotStore,
        transport: Transport,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.id = options.id
        self.session = SessionTable(machine, options.session_ttl_ms)
        self.rng = rng if rng is not None else random.Random()
        self._clock = clock  # wall time in seconds: only for the times carried in envelopes
        self._cipher = options.cipher
        self._log = log_store
        self._stable = stable_store
        self._snaps = snapshot_store
        self._transport = transport
        self.raw: RawNode | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        # Pending proposals by request key (session, seq): the caller's future,
        # later callers of the same request (a client retrying on this node), and
        # the envelope to send again when a new leader appears.
        self._proposals: dict[_Key, asyncio.Future[Applied]] = {}
        self._joiners: dict[_Key, list[asyncio.Future[Applied]]] = {}
        self._envelopes: dict[tuple[str, int], bytes] = {}
        # (term, leader) when each pending request was last handed to the core:
        # one already handed to the new leader is not proposed again
        self._proposed_in: dict[tuple[str, int], tuple[int, NodeId | None]] = {}
        # Proposal retry timers behind a single loop timer (see _try_proposal):
        # (due, [seq,] key, future, envelope, deadline, timeout), in a FIFO for the
        # common case, where due times only grow, and a heap for the rest.
        self._retry_fifo: deque[_Retry] = deque()
        self._retry_heap: list[_HeapRetry] = []
        self._retry_seq = itertools.count()
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_timer_at = float("inf")
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_points: list[tuple[int, bytes]] = []
        # membership changes this leader appended: index -> (term, change, future)
        self._conf_waits: dict[int, tuple[int, ConfChange, asyncio.Future[None]]] = {}
        self._leader_known = asyncio.Event()
        self._leaderless_since: float | None = None  # loop time the leader became unknown
        self._heard: dict[NodeId, float] = {}  # peer -> loop time of its last message
        self._probe: tuple[bytes, float] | None = None  # ReadIndex probe of a silent leader
        self._contact_at = 0.0  # loop time the leader last showed it hears us
        self._unreachable_since: float | None = None  # a probe went unanswered then
        self._last_leader: NodeId | None = None
        self._loop_time: Callable[[], float] = time.monotonic  # the loop's clock, once started
        # The driver's own client session (see consensus/session.py); a new one
        # at start and before the current one could expire.
        self._own_session = ""
        self._own_started_ms = 0
        self._own_used_ms = -(1 << 62)
        self._own_seq = itertools.count(1)
        self._own_low: deque[int] = deque()  # own seqs in order, for ack_below
        self._peers: dict[NodeId, str] = {}
        # the persist running in a worker thread
        self._persisting: asyncio.Future[None] | None = None
        self.fatal: BaseException | None = None
        self._failed = asyncio.Event()  # set with `fatal`
        self._saved_hs = HardState()
        self._hs_saved_at = 0.0
        self.metrics = {
            "readies": 0,
            "fsyncs": 0,
            "entries_persisted": 0,
            "applied": 0,
            "snapshots_taken": 0,
            "bad_entries": 0,
            "log_repairs": 0,
        }

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        restored = self._load()
        self.raw = RawNode(self.options.raft_config(), restored, self._snaps, self.rng)
        if restored.snapshot is not None:
            self._restore_snapshot(restored.snapshot)
        self._update_peers()
        await self._transport.start(self._on_message)
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        self._leaderless_since = self._contact_at = loop.time()
        self._tasks = [
            loop.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
            loop.create_task(self._run(), name=f"raft-ready-{self.id}"),
        ]
        self._wake.set()

    def _load(self) -> RestoredState:
        hard_state = self._stable.load()
        self._saved_hs = hard_state
        snapshot = self._snaps.latest()
        self._reconcile_log(snapshot)
        first, last = self._log.bounds()
        if snapshot is None and hard_state.term == 0 and self.id in self.options.initial_members:
            # A new cluster, or a first start that lost power before its bootstrap
            # was durable (the entry may be on disk, the hard state not): every
            # initial member writes the same entry 1, so doing it again is safe.
            members = self.options.initial_members
            membership = Membership(frozenset(members), frozenset(), tuple(sorted(members.items())))
            boot = bootstrap(membership)
            if last == 0:
                self._log.append(boot.entries)
                self._log.sync()
                first, last = self._log.bounds()
            elif self._log.entries(1, 2) != boot.entries:
                raise RuntimeError(
                    "the log in this data directory does not start with this cluster's bootstrap "
                    f"entry (members {', '.join(sorted(members))}): it belongs to another cluster "
                    "or another membership; point data_dir elsewhere or remove it"
                )
            self._stable.save(boot.hard_state, sync=True)
            self._saved_hs = hard_state = boot.hard_state
            log.info("bootstrapped a new cluster with members %s", ", ".join(sorted(members)))
        entries = self._log.entries(first, last + 1) if last >= first else []
        log.info(
            "recovered term %d, %d log entries, snapshot at %s",
            hard_state.term,
            len(entries),
            snapshot.index if snapshot else "none",
        )
        return RestoredState(hard_state, snapshot, entries)

    def _reconcile_log(self, snapshot: SnapshotMeta | None) -> None:
        """Make the log store continue the latest snapshot.  Installing a snapshot
        from the leader stores it, then resets the log (two durable writes); a
        crash between them leaves a log that ends before the snapshot, or one
        that disagrees with it at its index.  Either way the snapshot wins: the
        log restarts empty after it (durably), before anything is appended."""
        if snapshot is None:
            return
        first, last = self._log.bounds()
        if first > snapshot.index + 1:
            raise RuntimeError(
                f"the log starts at index {first}, after the latest snapshot ({snapshot.index}): "
                "entries in between are missing; restore this node's data directory or "
                "remove it and re-add the node"
            )
        if first == snapshot.index + 1:
            return  # compacted or reset exactly there: it continues the snapshot
        if (
            last >= snapshot.index
            and self._log.entries(snapshot.index, snapshot.index + 1)[0].term == snapshot.term
        ):
            return  # it holds the snapshot's last entry: what follows extends it
        why = "ends before it" if last < snapshot.index else "disagrees with it at that index"
        log.warning(
            "the log (%d..%d) %s; the snapshot at %d/%d from the leader wins: log reset",
            first,
            last,
            why,
            snapshot.index,
            snapshot.term,
        )
        self._log.reset(snapshot.index)
        self.metrics["log_repairs"] += 1

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - reported by _run
                pass
        # A persist may still be writing in its worker thread: the stores are
        # closed only once it is done.
        persisting = self._persisting
        if persisting is not None and not persisting.done():
            try:
                await persisting
            except Exception:  # noqa: BLE001, S110 - already reported by _run
                pass
        await self._transport.close()
        for store in (self._log, self._stable, self._snaps):
            close = getattr(store, "close", None)  # optional, like hashicorp's WithClose
            if close is not None:
                close()
        self._fail_pending(NodeStopped())

    def _pending_futures(self) -> list[asyncio.Future[Any]]:
        joined = [fut for futs in self._joiners.values() for fut in futs]
        conf = [fut for _, _, fut in self._conf_waits.values()]
        return [*self._proposals.values(), *joined, *self._reads.values(), *conf]

    def _fail_pending(self, exc: BaseException) -> None:
        for fut in self._pending_futures():
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------------ inputs
    def _on_message(self, msg: Message) -> None:
        if self.raw is None or self._stopped:
            return
        if msg.src not in self._peers:
            # A peer we cannot answer yet (a leader elected after this node's
            # configuration was written): its address may be known by now.
            self._update_peers()
        self._heard[msg.src] = self._loop_time()
        self.raw.step(msg)
        self._wake.set()

    async def _ticker(self) -> None:
        interval = self.options.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > interval * 4:
                next_at = loop.time()  # the loop was blocked: do not tick in a burst
            assert self.raw is not None
            self.raw.tick()
            self._wake.set()
            self._check_contact(loop)

    # ------------------------------------------------------------------ contact with a quorum
    # A node is cut off when it has no leader and hears from less than a
    # majority of the voters (an election among peers it hears is given time),
    # or when it has a leader that does not answer it: a ReadIndex probe, sent
    # while requests wait on the leader, stays unanswered (a one-way cut: it
    # hears the leader, its own messages are lost).  A node cut off refuses new
    # requests and fails the ones it holds with NoQuorum.

    def _hears_quorum(self, now: float, window: float) -> bool:
        assert self.raw is not None
        voters = self.raw.membership.voters
        heard = self._heard
        count = sum(1 for v in voters if v == self.id or now - heard.get(v, -1e18) < window)
        return count >= len(voters) // 2 + 1

    def _cut_off_for(self, now: float) -> float | None:
        """How long this node has been cut off from the quorum, or None."""
        limit = self.options.leaderless_s
        since = self._leaderless_since
        if since is not None and now - since >= limit and not self._hears_quorum(now, limit):
            return now - since
        if self._unreachable_since is not None:
            return now - self._contact_at
        return None

    def _check_contact(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every tick: probe a silent leader, and fail what is held when cut off."""
        raw = self.raw
        assert raw is not None
        now = loop.time()
        limit = self.options.leaderless_s
        if raw.role == Role.LEADER or raw.leader is None:
            self._probe = None
            self._unreachable_since = None
        else:
            waiting = bool(self._proposed_in or self._reads)
            probe = self._probe
            if probe is not None and now - probe[1] >= limit:
                if self._unreachable_since is None:
                    self._unreachable_since = probe[1]
                    log.warning(
                        "the leader %s does not answer this node (no reply in %.1f s): "
                        "refusing writes",
                        raw.leader,
                        now - probe[1],
                    )
                probe = self._probe = None
            if (
                probe is None
                and (waiting or self._unreachable_since is not None)
                and now - self._contact_at >= limit
            ):
                ctx = self.rng.randbytes(12)
                self._probe = (ctx, now)
                raw.read_index(ctx)
                self._wake.set()
        cut = (
            self._cut_off_for(now)
            if (self._proposals or self._joiners or self._reads or self._conf_waits)
            else None
        )
        if cut is not None:
            self._fail_held(cut)

    def _contact(self, now: float) -> None:
        """Proof that the leader hears us (our request applied, a probe answered)."""
        self._contact_at = now
        self._unreachable_since = None
        self._probe = None

    def _fail_held(self, cut_s: float) -> None:
        """Cut off from the quorum: answer every held proposal, read and
        membership change now (their outcome is unknown), so that callers
        retry elsewhere instead of waiting for the proposal timeout."""
        for key, fut in list(self._proposals.items()):
            if not fut.done():
                fut.set_exception(NoQuorum(cut_s, handed_on=key in self._proposed_in))
        for key, futs in list(self._joiners.items()):
            for fut in futs:
                if not fut.done():
                    fut.set_exception(NoQuorum(cut_s, handed_on=key in self._proposed_in))
        for read in list(self._reads.values()):
            if not read.done():
                read.set_exception(NoQuorum(cut_s, handed_on=False))
        for _, _, change in list(self._conf_waits.values()):
            if not change.done():
                change.set_exception(NoQuorum(cut_s, handed_on=True))

    # ------------------------------------------------------------------ Ready cycle
    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                raw = self.raw
                assert raw is not None
                while raw.has_ready():
                    await self._handle_ready(raw, raw.ready())
        except (asyncio.CancelledError, GeneratorExit):  # stop(), or a loop torn down
            raise
        except NewerFormat as exc:  # not a fault: this node's software is too old for the log
            self.fatal = exc
            log.critical(
                "raft node %s stopped: %s (nothing is lost: once upgraded it goes on from there)",
                self.id,
                exc,
            )
            self._fail_pending(NodeStopped())
            self._failed.set()
        except BaseException as exc:  # a broken invariant or a failing disk: stop loudly
            self.fatal = exc
            log.critical("raft node %s stopped: %s", self.id, exc, exc_info=True)
            self._fail_pending(NodeStopped())
            self._failed.set()
            raise

    async def _handle_ready(self, raw: RawNode, rd: Ready) -> None:
        self.metrics["readies"] += 1
        for msg in rd.messages:
            self._transport.send(msg)
        if rd.snapshot_chunks or rd.snapshot or rd.entries or rd.hard_state:
            loop = asyncio.get_running_loop()
            if rd.must_sync and self.options.durable:
                # shielded: a stop() that cancels this task waits for the write
                # to finish (see stop) instead of closing the stores under it
                persisting = loop.run_in_executor(None, self._persist, rd, loop.time())
                self._persisting = persisting
                await asyncio.shield(persisting)
            else:
                self._persist(rd, loop.time())
        for msg in rd.messages_after_persist:
            self._transport.send(msg)
        if rd.snapshot is not None:
            self._restore_snapshot(rd.snapshot)
            self._settle_conf_waits_by(rd.snapshot)
            log.info("installed snapshot at index %d from the leader", rd.snapshot.index)
        committed = rd.committed
        conf_committed = False
        if committed:
            # The hot loop of a busy node: everything it touches per entry is a local.
            normal, conf = EntryKind.NORMAL, EntryKind.CONF
            cipher, apply = self._cipher, self.session.apply
            proposals, envelopes, joiners = self._proposals, self._envelopes, self._joiners
            proposed_in = self._proposed_in
            applied = 0
            answered = False
            for entry in committed:
                kind = entry.kind
                if kind != normal:
                    conf_committed = conf_committed or kind == conf
                    continue
                data = entry.data
                if not data:
                    continue
                try:
                    if cipher is not None:
                        data = cipher.open(data)  # DecryptionError is a ValueError
                    key, index, result = apply(entry.index, data)
                except ValueError as exc:
                    self._bad_entry(entry.index, exc)
                    continue
                applied += 1
                fut = proposals.pop(key, None)
                if envelopes.pop(key, None) is not None:
                    proposed_in.pop(key, None)
                if type(result) is Stale:
                    self._not_applied(key, fut, result)
                    continue
                if fut is not None and not fut.done():
                    fut.set_result(_applied(index, result))
                    answered = True
                if joiners:
                    for joined in joiners.pop(key, ()):
                        if not joined.done():
                            joined.set_result(_applied(index, result))
            self.metrics["applied"] += applied
            if answered:
                self._contact(self._loop_time())  # our requests reach the leader
            if self._conf_waits:
                self._settle_conf_waits(committed)
        for read in rd.read_states:
            if self._probe is not None and read.ctx == self._probe[0]:
                self._contact(self._loop_time())
            else:
                self._read_points.append((read.index, read.ctx))
        raw.advance(rd)
        if rd.soft_state is not None:
            if rd.soft_state.leader is not None:
                if self._leaderless_since is not None or rd.soft_state.leader != self._last_leader:
                    self._contact(self._loop_time())  # a new leader gets a fresh chance
                self._last_leader = rd.soft_state.leader
                self._leaderless_since = None
                self._leader_known.set()
                self._repropose()
            else:
                if self._leaderless_since is None:
                    self._leaderless_since = asyncio.get_running_loop().time()
                self._leader_known.clear()
        if conf_committed or rd.snapshot is not None:
            self._update_peers()
        self._release_reads()
        if committed:
            self._maybe_snapshot(raw)

    def _bad_entry(self, index: int, exc: Exception) -> None:
        # Every replica skips the same entry the same way: nothing in the log can
        # stop a node.  (A node whose own key is wrong skips everything instead and
        # says so on every entry; with a snapshot it does not even start.)
        self.metrics["bad_entries"] += 1
        if isinstance(exc, DecryptionError):
            log.error(
                "log entry %d cannot be opened with this node's encryption key: skipped, as on "
                "every node with the cluster's key (if every entry is skipped, this node's key "
                "is the wrong one)",
                index,
            )
            return
        log.error("log entry %d is not a request envelope (%s): skipped", index, exc)

    def _not_applied(self, key: _Key, fut: asyncio.Future[Applied] | None, stale: Stale) -> None:
        if stale is EXPIRED and key[0] == self._own_session:
            self._own_used_ms = -(1 << 62)  # our session was forgotten: start a new one
        waiting = [fut] if fut is not None else []
        waiting.extend(self._joiners.pop(key, ()))
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(
                    StaleRequest(f"request {key[0]}/{key[1]} was not applied: {stale.reason}")
                )

    def _persist(self, rd: Ready, now: float) -> None:
        for chunk in rd.snapshot_chunks:
            self._snaps.write_chunk(chunk.meta, chunk.offset, chunk.data)
        if rd.snapshot is not None:
            # Two durable writes: a crash between them is repaired at the next
            # start (_reconcile_log).
            self._snaps.finish(rd.snapshot)
            self._log.reset(rd.snapshot.index)
        hs = rd.hard_state
        if (
            hs is not None
            and rd.entries
            and (hs.term, hs.vote) != (self._saved_hs.term, self._saved_hs.vote)
        ):
            # A new term is durable before any entry of it is written.  Otherwise a
            # crash after the entries and before the term (a single voter elects
            # itself and appends in one Ready) restarts in the old term, and the
            # next election reuses the term for other entries at the same indices
            # (soak seeds 146217, 178171).  The commit index waits for the entries.
            early = HardState(hs.term, hs.vote, self._saved_hs.commit)
            self._stable.save(early, sync=True)
            self._saved_hs = early
            self._hs_saved_at = now
        if rd.entries:
            self._log.append(list(rd.entries))
            self.metrics["entries_persisted"] += len(rd.entries)
        if rd.must_sync and rd.entries:
            self._log.sync()
            self.metrics["fsyncs"] += 1
        if hs is not None:
            # Term and vote must be durable before any answer leaves, and so must
            # a commit index that covers a membership change (a restarted node
            # rebuilds its membership from the entries up to it; see RawNode.ready).
            # Otherwise the commit index is only a hint that a restarted node
            # re-learns from the leader: written without fsync, at most every
            # 100 ms, so that a batch does not pay a second fsync.
            # (the kinds are scanned in C: this runs for every entry of a busy node)
            must = (hs.term, hs.vote) != (self._saved_hs.term, self._saved_hs.vote) or (
                EntryKind.CONF in map(_entry_kind, rd.committed)
            )
            if must or now - self._hs_saved_at >= 0.1:
                self._stable.save(hs, sync=must)
                self._saved_hs = hs
                self._hs_saved_at = now

    def _repropose(self) -> None:
        """A new leader: proposals sent to the old one may be lost, so send them
        again now instead of waiting for their retry timer (the session table
        applies each request once)."""
        assert self.raw is not None
        current = (self.raw.term, self.raw.leader)
        for key, envelope in list(self._envelopes.items()):
            fut = self._proposals.get(key)
            if (fut is None or fut.done()) and not any(
                not f.done() for f in self._joiners.get(key, ())
            ):
                continue
            if self._proposed_in.get(key) == current:
                continue  # proposed after this leader was known: it already went there
            try:
                self.raw.propose(envelope)
            except RaftError:
                return
            self._proposed_in[key] = current
        self._wake.set()

    def _restore_snapshot(self, meta: SnapshotMeta) -> None:
        data = self._snaps.read(meta, 0, meta.size)
        self.session.restore(self._cipher.open(data) if self._cipher else data)

    def _maybe_snapshot(self, raw: RawNode) -> None:
        applied = raw.applied_index
        base = raw.snapshot_meta.index if raw.snapshot_meta else 0
        every = self.options.snapshot_entries
        if applied - base < every:
            return
        if raw.snapshot_transfers() and applied - base < SNAPSHOT_DEFER_FACTOR * every:
            # A follower is receiving the current snapshot: a newer one would
            # soon replace it in the store and restart the transfer, so that a
            # slow transfer might never finish.  Wait (a bounded while).
            return
        term = raw.term_at(applied)
        if term is None:
            return
        data = self.session.snapshot()
        if self._cipher is not None:
            data = self._cipher.seal(data)
        meta = SnapshotMeta(applied, term, raw.membership_at(applied), len(data))
        self._snaps.create(meta, data)
        raw.compact(meta)
        self._log.compact(applied)
        self.metrics["snapshots_taken"] += 1
        log.info("snapshot at index %d (%d bytes); log compacted", applied, len(data))

    def _update_peers(self) -> None:
        assert self.raw is not None
        peers = dict(self.options.known_addresses)
        peers.update(self.options.initial_members)
        peers.update(dict(self.raw.membership.addresses))
        members = self.raw.membership.members()
        if members:
            # keep known addresses of nodes not (yet) in the log's membership only
            # while we know nothing else, e.g. a joining node's seed list
            peers = {
                n: a for n, a in peers.items() if n in members or n in self.options.known_addresses
            }
        peers.pop(self.id, None)
        if peers != self._peers:
            self._peers = peers
            self._transport.set_peers(peers)

    def _release_reads(self) -> None:
        assert self.raw is not None
        applied = self.raw.applied_index
        if self._read_points:
            pending = []
            for index, ctx in self._read_points:
                if index <= applied:
                    fut = self._reads.pop(ctx, None)
                    if fut is not None and not fut.done():
                        fut.set_result(index)
                else:
                    pending.append((index, ctx))
            self._read_points = pending

    # ------------------------------------------------------------------ API
    async def _await_leader(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Refuse at once when cut off; without a leader, give an election
        among peers this node hears the time it takes (up to `timeout`)."""
        deadline = loop.time() + timeout
        while True:
            raw = self.raw
            if raw is None:
                raise NodeStopped()
            cut = self._cut_off_for(loop.time())
            if cut is not None:
                raise NoQuorum(cut, handed_on=False)
            if raw.leader is not None:
                return
            if loop.time() >= deadline:
                raise ProposalTimeout(timeout, None)
            await asyncio.sleep(self.options.tick_ms / 1000)

    def _own_envelope(
        self, command: bytes, now_ms: int, fut: asyncio.Future[Applied]
    ) -> tuple[tuple[str, int], bytes]:
        """The next request of the driver's own session, registered as pending."""
        if now_ms - self._own_used_ms > self.options.session_ttl_ms // 2:
            # Idle for half the ttl (or never used): the replicas may forget this
            # session before its next request commits, so start a new one.
            self._own_session = f"{self.id}:{self.rng.getrandbits(64):016x}"
            self._own_started_ms = now_ms
            self._own_seq = itertools.count(1)
            self._own_low = deque()
        self._own_used_ms = now_ms
        sid = self._own_session
        seq = next(self._own_seq)
        key = (sid, seq)
        proposals = self._proposals
        proposals[key] = fut
        low = self._own_low
        low.append(seq)
        while (sid, low[0]) not in proposals:
            low.popleft()
        return key, pack_envelope(Request(sid, self._own_started_ms, seq, low[0]), now_ms, command)

    async def propose(
        self, command: bytes, timeout: float | None = None, request: Request | None = None
    ) -> Applied:
        """Replicate `command`; resolves once it is applied on this node.  Without
        `request` it is the next request of the driver's own session; a client
        that retries across nodes passes its own (the same one on every retry)."""
        if self._stopped or self.fatal is not None or self.raw is None:
            raise NodeStopped()
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = self.options.proposal_timeout
        if self.raw.leader is None or self._unreachable_since is not None:
            await self._await_leader(loop, timeout)
        now_ms = int(self._clock() * 1000)
        # Each caller owns one future, resolved when the entry is applied here,
        # and one retry timer (see _try_proposal) that re-proposes the same
        # request and finally times the proposal out: the hot path is a single
        # await, with no wait_for()/shield() and no closure per proposal.
        fut: asyncio.Future[Applied] = loop.create_future()
        proposals = self._proposals
        if request is None:
            key, envelope = self._own_envelope(command, now_ms, fut)
        else:
            key = request.key
            envelope = pack_envelope(request, now_ms, command)
            owner = proposals.get(key)
            if owner is None or owner.done():
                proposals[key] = fut
            else:  # the same request is already pending here (a client retry)
                self._joiners.setdefault(key, []).append(fut)
        if self._cipher is not None:
            envelope = self._cipher.seal(envelope)
        self._envelopes.setdefault(key, envelope)
        self._try_proposal(loop, key, fut, self._envelopes[key], loop.time() + timeout, timeout)
        try:
            return await fut
        finally:
            # An answer that arrives after we gave up is dropped; the command may
            # still apply (once): the caller retries with the same request.
            if proposals.get(key) is fut:
                del proposals[key]
            elif self._joiners:
                joined = self._joiners.get(key)
                if joined is not None and fut in joined:
                    joined.remove(fut)
                    if not joined:
                        del self._joiners[key]
            if (
                key not in proposals
                and key not in self._joiners
                and self._envelopes.pop(key, None) is not None
            ):
                self._proposed_in.pop(key, None)

    def _try_proposal(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[str, int],
        fut: asyncio.Future[Applied],
        envelope: bytes,
        deadline: float,
        timeout: float,
    ) -> None:
        """One attempt of a proposal still waiting on `fut`; schedules the next."""
        if fut.done():
            return
        raw = self.raw
        if self._stopped or self.fatal is not None or raw is None:
            fut.set_exception(NodeStopped())
            return
        try:
            raw.propose(envelope)
            self._proposed_in[key] = (raw.term, raw.leader)
            self._wake.set()
            wait = self.options.retry_interval
        except (NoLeader, NotLeader, TransferInProgress):
            cut = self._cut_off_for(loop.time())
            if cut is not None:
                fut.set_exception(NoQuorum(cut, handed_on=key in self._proposed_in))
                return
            wait = self.options.tick_ms / 1000 * 2
        except Exception as exc:  # noqa: BLE001 - not lost: the caller gets it
            fut.set_exception(exc)
            return
        now = loop.time()
        remaining = deadline - now
        if remaining <= 0:
            fut.set_exception(ProposalTimeout(timeout, raw.leader))
            return
        # Lost on the way, or no leader yet: the same request again then.
        # Retry timers do not use loop.call_at(): asyncio keeps TimerHandles in
        # a heap ordered by Python-level comparisons, a cost every proposal
        # would pay although almost none is ever retried.  Nearly every
        # proposal waits the same retry_interval, so due times arrive in order
        # and a deque append/popleft is all it takes; anything out of order goes
        # to a heap.  Entries are never cancelled: the next attempt of a
        # proposal that has finished returns at once.
        due = now + min(wait, remaining)
        fifo = self._retry_fifo
        if not fifo or due >= fifo[-1][0]:
            fifo.append((due, key, fut, envelope, deadline, timeout))
        else:
            heapq.heappush(
                self._retry_heap,
                (due, next(self._retry_seq), key, fut, envelope, deadline, timeout),
            )
        if due < self._retry_timer_at and not self._stopped:
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            self._retry_timer = loop.call_at(due, self._run_retries, loop)
            self._retry_timer_at = due

    def _run_retries(self, loop: asyncio.AbstractEventLoop) -> None:
        self._retry_timer = None
        self._retry_timer_at = float("inf")
        fifo, heap = self._retry_fifo, self._retry_heap
        now = loop.time()
        # An attempt may schedule its next try; that one is due after `now`.
        while True:
            if fifo and fifo[0][0] <= now:
                _, key, fut, envelope, deadline, timeout = fifo.popleft()
            elif heap and heap[0][0] <= now:
                _, _, key, fut, envelope, deadline, timeout = heapq.heappop(heap)
            else:
                break
            try:
                self._try_proposal(loop, key, fut, envelope, deadline, timeout)
            except Exception:  # never lose the other timers to one bad attempt
                log.exception("proposal retry failed")
        due = min(fifo[0][0] if fifo else float("inf"), heap[0][0] if heap else float("inf"))
        if due < self._retry_timer_at and not self._stopped:
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            self._retry_timer = loop.call_at(due, self._run_retries, loop)
            self._retry_timer_at = due

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Wait until this node has applied everything committed before the call
        (ReadIndex); returns that index.  Local reads after it are linearizable."""
        self._check_running()
        loop = asyncio.get_running_loop()
        timeout = self.options.proposal_timeout if timeout is None else timeout
        deadline = loop.time() + timeout
        await self._await_leader(loop, timeout)
        while True:
            ctx = self.rng.randbytes(12)
            fut = loop.create_future()
            self._reads[ctx] = fut
            assert self.raw is not None
            self.raw.read_index(ctx)
            self._wake.set()
            remaining = deadline - loop.time()
            try:
                return await asyncio.wait_for(
                    fut, min(self.options.retry_interval, max(remaining, 0.001))
                )
            except TimeoutError:
                self._reads.pop(ctx, None)
                if loop.time() >= deadline:
                    raise ProposalTimeout(timeout, self.raw.leader) from None
            finally:
                self._reads.pop(ctx, None)

    async def wait_failed(self) -> BaseException:
        """Returns `fatal` once the node has stopped on its own (the owner decides what
        the process does then)."""
        await self._failed.wait()
        assert self.fatal is not None
        return self.fatal

    def backup(self) -> Backup:
        """The state as applied here now, taken between two applies (so consistent);
        after a `read_barrier` it holds everything committed before the barrier."""
        self._check_running()
        assert self.raw is not None
        index = self.raw.applied_index
        term = self.raw.term_at(index)
        if term is None:  # (applied lies between the snapshot and the log's end)
            raise RuntimeError(f"no term known for the applied index {index}")
        return Backup(index, term, self.session.snapshot())

    def sealed(self, backup: Backup) -> Backup:
        """`backup` sealed as this node seals its snapshots (unchanged without a cipher).
        CPU work on a large state: callers run it off the event loop."""
        if self._cipher is None or backup.sealed:
            return backup
        return Backup(backup.index, backup.term, self._cipher.seal(backup.data), sealed=True)

    async def wait_for_leader(self, timeout: float = 10.0) -> NodeId:
        await asyncio.wait_for(self._leader_known.wait(), timeout)
        assert self.raw is not None and self.raw.leader is not None
        return self.raw.leader

    async def add_member(self, node: NodeId, address: str, timeout: float = 60.0) -> None:
        """On the leader: add `node` as a learner, wait until it has caught up, then
        promote it to voter.  Raises NotLeader elsewhere."""
        raw = self._require_leader()
        if node not in raw.membership.members():
            await self._conf_change(ConfChange(ConfOp.ADD_LEARNER, node, address), timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            raw = self._require_leader()
            match = raw.match_index(node) or 0
            if match >= raw.commit_index:
                break
            if loop.time() > deadline:
                raise ProposalTimeout(timeout, raw.leader)
            await asyncio.sleep(self.options.tick_ms / 1000)
        if node in raw.membership.learners:
            await self._conf_change(ConfChange(ConfOp.PROMOTE, node), timeout)

    async def remove_member(self, node: NodeId, timeout: float = 30.0) -> None:
        self._require_leader()
        await self._conf_change(ConfChange(ConfOp.REMOVE, node), timeout)

    async def transfer_leadership(self, target: NodeId, timeout: float = 5.0) -> None:
        raw = self._require_leader()
        raw.transfer_leadership(target)
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while raw.leader != target:
            if loop.time() > deadline:
                raise ProposalTimeout(timeout, raw.leader)
            await asyncio.sleep(self.options.tick_ms / 1000)

    async def _conf_change(self, change: ConfChange, timeout: float) -> None:
        """Propose a membership change and return once THIS entry is applied
        here; ChangeLost if another leader's entry took its index."""
        raw = self._require_leader()
        raw.propose_conf_change(change)
        index, term = raw.last_index, raw.term
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._conf_waits[index] = (term, change, fut)
        self._wake.set()
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ProposalTimeout(timeout, raw.leader) from None
        finally:
            waiting = self._conf_waits.get(index)
            if waiting is not None and waiting[2] is fut:
                del self._conf_waits[index]

    def _settle_conf_waits(self, committed: tuple[Entry, ...]) -> None:
        """Changes whose index was just applied: did OUR entry commit there (the
        same term), or another leader's (whatever its kind)?"""
        first, last = committed[0].index, committed[-1].index
        for index in [i for i in self._conf_waits if first <= i <= last]:
            term, change, fut = self._conf_waits.pop(index)
            if fut.done():
                continue
            if committed[index - first].term == term:
                fut.set_result(None)
            else:
                fut.set_exception(ChangeLost(_describe(change), index, term))

    def _settle_conf_waits_by(self, snapshot: SnapshotMeta) -> None:
        """A snapshot from the leader covered changes we were waiting for: which
        entry sat at their index is gone, but whether they took effect is not."""
        for index in [i for i in self._conf_waits if i <= snapshot.index]:
            term, change, fut = self._conf_waits.pop(index)
            if fut.done():
                continue
            if _took_effect(change, snapshot.membership):
                fut.set_result(None)
            else:
                fut.set_exception(ChangeLost(_describe(change), index, term))

    def _require_leader(self) -> RawNode:
        self._check_running()
        assert self.raw is not None
        if self.raw.role != Role.LEADER:
            raise NotLeader(self.raw.leader)
        return self.raw

    def _check_running(self) -> None:
        if self._stopped or self.fatal is not None or self.raw is None:
            raise NodeStopped()

    # ------------------------------------------------------------------ introspection
    @property
    def leader(self) -> NodeId | None:
        return self.raw.leader if self.raw else None

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def is_leader(self) -> bool:
        return self.raw is not None and self.raw.role == Role.LEADER

    def status(self) -> dict[str, Any]:
        assert self.raw is not None
        status = self.raw.status()
        status["addresses"] = dict(self.raw.membership.addresses)
        status["transport"] = self._transport.stats()
        status["driver"] = dict(self.metrics)
        status["raft_stats"] = dict(self.raw.stats)
        status["duplicates_suppressed"] = self.session.duplicates
        status["stale_suppressed"] = self.session.stale
        status["sessions"] = len(self.session)
        return status


def _describe(change: ConfChange) -> str:
    return f"{change.op.name.lower().replace('_', ' ')} of {change.node}"


def _took_effect(change: ConfChange, membership: Membership) -> bool:
    if change.op == ConfOp.REMOVE:
        return change.node not in membership.members()
    if change.op in (ConfOp.PROMOTE, ConfOp.ADD_VOTER):
        return change.node in membership.voters
    return change.node in membership.members()
