"""The asyncio driver around the pure core: one RaftNode per process.

It owns the clock (a tick every `tick_ms`), the transport and the stores, and
runs the Ready cycle: send, persist (fsync in a worker thread, so messages keep
arriving and the next batch grows meanwhile: group commit for free), send the
acknowledgements, apply, advance.  On top it offers what the rest of ragraft
uses:

- `await propose(command)` from ANY node: resolves with (index, result) once
  the entry is committed AND applied here (read-your-writes).  Retries under
  the same request id are applied once (consensus/session.py).
- `await read_barrier()`: ReadIndex; after it, local reads are linearizable.
- introspection for the UI: `status()`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from consensus.cipher import Cipher
from consensus.errors import NoLeader, NotLeader, RaftError, TransferInProgress
from consensus.fsm import StateMachine
from consensus.raft import RaftConfig, RawNode, bootstrap
from consensus.session import DEFAULT_WINDOW, SessionTable, pack_envelope
from consensus.storage import LogStore, SnapshotStore, StableStore
from consensus.transport import Transport
from consensus.types import (
    ConfChange,
    ConfOp,
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
    # addresses known from configuration, used before the log says where peers are
    known_addresses: Mapping[NodeId, str] = field(default_factory=dict)
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    max_inflight: int = 256
    max_snapshot_chunk: int = 256 * 1024
    snapshot_entries: int = 10_000  # take a snapshot after this many applied entries
    proposal_timeout: float = 10.0
    retry_interval: float = 1.5  # re-propose (same request id) if nothing happened by then
    durable: bool = True  # fsync in a worker thread (False for in-memory stores)
    dedup_window: int = DEFAULT_WINDOW  # entries during which a retried request id is recognised
    cipher: Cipher | None = None  # seals proposals and snapshots (encryption at rest)

    def raft_config(self) -> RaftConfig:
        return RaftConfig(
            id=self.id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_msg_bytes=self.max_msg_bytes,
            max_inflight=self.max_inflight,
            max_snapshot_chunk=self.max_snapshot_chunk,
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


class RaftNode:
    def __init__(
        self,
        options: NodeOptions,
        machine: StateMachine,
        log_store: LogStore,
        stable_store: StableStore,
        snapshot_store: SnapshotStore,
        transport: Transport,
    ) -> None:
        self.options = options
        self.id = options.id
        self.session = SessionTable(machine, options.dedup_window)
        self._cipher = options.cipher
        self._log = log_store
        self._stable = stable_store
        self._snaps = snapshot_store
        self._transport = transport
        self.raw: RawNode | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        self._proposals: dict[str, asyncio.Future] = {}
        # later callers of propose() with a request id that is already pending here
        self._joiners: dict[str, list[asyncio.Future]] = {}
        self._envelopes: dict[str, bytes] = {}  # what to re-propose when a new leader appears
        # (term, leader) when each pending request was last handed to the core:
        # one already handed to the new leader is not proposed again
        self._proposed_in: dict[str, tuple[int, NodeId | None]] = {}
        # Proposal retry timers behind a single loop timer (see _try_proposal):
        # (due, [seq,] request id, future, envelope, deadline, timeout), in a FIFO for the
        # common case, where due times only grow, and a heap for the rest.
        self._retry_fifo: deque[tuple] = deque()
        self._retry_heap: list[tuple] = []
        self._retry_seq = itertools.count()
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_timer_at = float("inf")
        self._reads: dict[bytes, asyncio.Future] = {}
        self._read_points: list[tuple[int, bytes]] = []
        self._applied_waiters: list[tuple[int, asyncio.Future]] = []
        self._leader_known = asyncio.Event()
        self._request_prefix = f"{self.id}:{secrets.token_hex(4)}:"
        self._request_seq = itertools.count(1)
        self._peers: dict[NodeId, str] = {}
        self.fatal: BaseException | None = None
        self._saved_hs = HardState()
        self._hs_saved_at = 0.0
        self.metrics = {"readies": 0, "fsyncs": 0, "entries_persisted": 0, "applied": 0, "snapshots_taken": 0}

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        restored = self._load()
        self.raw = RawNode(self.options.raft_config(), restored, self._snaps, random.Random())
        if restored.snapshot is not None:
            self._restore_snapshot(restored.snapshot)
        self._update_peers()
        await self._transport.start(self._on_message)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
                       loop.create_task(self._run(), name=f"raft-ready-{self.id}")]
        self._wake.set()

    def _load(self) -> RestoredState:
        first, last = self._log.bounds()
        hard_state = self._stable.load()
        self._saved_hs = hard_state
        snapshot = self._snaps.latest()
        fresh = last == 0 and snapshot is None and hard_state.term == 0
        if fresh and self.id in self.options.initial_members:
            members = self.options.initial_members
            membership = Membership(frozenset(members), frozenset(), tuple(sorted(members.items())))
            restored = bootstrap(membership)
            self._log.append(restored.entries)
            self._log.sync()
            self._stable.save(restored.hard_state, sync=True)
            self._saved_hs = restored.hard_state
            log.info("bootstrapped a new cluster with members %s", ", ".join(sorted(members)))
            return restored
        entries = self._log.entries(first, last + 1) if last >= first else []
        log.info(
            "recovered term %d, %d log entries, snapshot at %s",
            hard_state.term,
            len(entries),
            snapshot.index if snapshot else "none",
        )
        return RestoredState(hard_state, snapshot, entries)

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
            except (asyncio.CancelledError, Exception):
                pass
        await self._transport.close()
        for store in (self._log, self._stable, self._snaps):
            close = getattr(store, "close", None)  # optional, like hashicorp's WithClose
            if close is not None:
                close()
        for fut in self._pending_futures():
            if not fut.done():
                fut.set_exception(NodeStopped())

    def _pending_futures(self) -> list[asyncio.Future]:
        joined = [fut for futs in self._joiners.values() for fut in futs]
        return [*self._proposals.values(), *joined, *self._reads.values()]

    # ------------------------------------------------------------------ inputs
    def _on_message(self, msg) -> None:
        if self.raw is None or self._stopped:
            return
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
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a broken invariant or a failing disk: stop loudly
            self.fatal = exc
            log.critical("raft node %s stopped: %s", self.id, exc, exc_info=True)
            for fut in self._pending_futures():
                if not fut.done():
                    fut.set_exception(NodeStopped())
            raise

    async def _handle_ready(self, raw: RawNode, rd: Ready) -> None:
        self.metrics["readies"] += 1
        for msg in rd.messages:
            self._transport.send(msg)
        if rd.snapshot_chunks or rd.snapshot or rd.entries or rd.hard_state:
            if rd.must_sync and self.options.durable:
                await asyncio.get_running_loop().run_in_executor(None, self._persist, rd)
            else:
                self._persist(rd)
        for msg in rd.messages_after_persist:
            self._transport.send(msg)
        if rd.snapshot is not None:
            self._restore_snapshot(rd.snapshot)
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
            for entry in committed:
                kind = entry.kind
                if kind != normal:
                    conf_committed = conf_committed or kind == conf
                    continue
                data = entry.data
                if not data:
                    continue
                if cipher is not None:
                    data = cipher.open(data)
                request_id, index, result = apply(entry.index, data)
                applied += 1
                fut = proposals.pop(request_id, None)
                if envelopes.pop(request_id, None) is not None:
                    proposed_in.pop(request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(_applied(index, result))
                if joiners:
                    for joined in joiners.pop(request_id, ()):
                        if not joined.done():
                            joined.set_result(_applied(index, result))
            self.metrics["applied"] += applied
        for read in rd.read_states:
            self._read_points.append((read.index, read.ctx))
        raw.advance(rd)
        if rd.soft_state is not None:
            if rd.soft_state.leader is not None:
                self._leader_known.set()
                self._repropose()
            else:
                self._leader_known.clear()
        if conf_committed or rd.snapshot is not None:
            self._update_peers()
        self._release_reads()
        if committed:
            self._maybe_snapshot(raw)

    def _persist(self, rd: Ready) -> None:
        for chunk in rd.snapshot_chunks:
            self._snaps.write_chunk(chunk.meta, chunk.offset, chunk.data)
        if rd.snapshot is not None:
            self._snaps.finish(rd.snapshot)
            self._log.reset(rd.snapshot.index)
        if rd.entries:
            self._log.append(list(rd.entries))
            self.metrics["entries_persisted"] += len(rd.entries)
        if rd.must_sync and rd.entries:
            self._log.sync()
            self.metrics["fsyncs"] += 1
        hs = rd.hard_state
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
            now = time.monotonic()
            if must or now - self._hs_saved_at >= 0.1:
                self._stable.save(hs, sync=must)
                self._saved_hs = hs
                self._hs_saved_at = now

    def _repropose(self) -> None:
        """A new leader: proposals sent to the old one may be lost, so send them
        again now instead of waiting for their retry timer (the session table
        applies each request id once)."""
        assert self.raw is not None
        current = (self.raw.term, self.raw.leader)
        for rid, envelope in list(self._envelopes.items()):
            fut = self._proposals.get(rid)
            if (fut is None or fut.done()) and not any(not f.done() for f in self._joiners.get(rid, ())):
                continue
            if self._proposed_in.get(rid) == current:
                continue  # proposed after this leader was known: it already went there
            try:
                self.raw.propose(envelope)
            except RaftError:
                return
            self._proposed_in[rid] = current
        self._wake.set()

    def _restore_snapshot(self, meta: SnapshotMeta) -> None:
        data = self._snaps.read(meta, 0, meta.size)
        self.session.restore(self._cipher.open(data) if self._cipher else data)

    def _maybe_snapshot(self, raw: RawNode) -> None:
        applied = raw.applied_index
        base = raw.snapshot_meta.index if raw.snapshot_meta else 0
        if applied - base < self.options.snapshot_entries:
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
            peers = {n: a for n, a in peers.items() if n in members or n in self.options.known_addresses}
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
    def new_request_id(self) -> str:
        return self._request_prefix + str(next(self._request_seq))

    async def propose(self, command: bytes, request_id: str | None = None, timeout: float | None = None) -> Applied:
        """Replicate `command`; resolves once it is applied on this node."""
        if self._stopped or self.fatal is not None or self.raw is None:
            raise NodeStopped()
        rid = request_id or self._request_prefix + str(next(self._request_seq))
        envelope = pack_envelope(rid, command)
        if self._cipher is not None:
            envelope = self._cipher.seal(envelope)
        loop = asyncio.get_running_loop()
        # Each caller owns one future, resolved when the entry is applied here,
        # and one retry timer (see _try_proposal) that re-proposes under the
        # same request id and finally times the proposal out: the hot path is a
        # single await, with no wait_for()/shield() and no closure per proposal.
        fut = loop.create_future()
        proposals = self._proposals
        owner = proposals.get(rid)
        if owner is None or owner.done():
            proposals[rid] = fut
        else:  # the same request id is already pending here (a client retry)
            self._joiners.setdefault(rid, []).append(fut)
        self._envelopes[rid] = envelope
        if timeout is None:
            timeout = self.options.proposal_timeout
        self._try_proposal(loop, rid, fut, envelope, loop.time() + timeout, timeout)
        try:
            return await fut
        finally:
            # An answer that arrives after we gave up is dropped; the command may
            # still apply (once): the caller retries with the same request id.
            if proposals.get(rid) is fut:
                del proposals[rid]
            elif self._joiners:
                joined = self._joiners.get(rid)
                if joined is not None and fut in joined:
                    joined.remove(fut)
                    if not joined:
                        del self._joiners[rid]
            if (
                rid not in proposals
                and rid not in self._joiners
                and self._envelopes.pop(rid, None) is not None
            ):
                self._proposed_in.pop(rid, None)

    def _try_proposal(
        self,
        loop: asyncio.AbstractEventLoop,
        rid: str,
        fut: asyncio.Future,
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
            self._proposed_in[rid] = (raw.term, raw.leader)
            self._wake.set()
            wait = self.options.retry_interval
        except (NoLeader, NotLeader, TransferInProgress):
            wait = self.options.tick_ms / 1000 * 2
        except Exception as exc:  # noqa: BLE001 - not lost: the caller gets it
            fut.set_exception(exc)
            return
        now = loop.time()
        remaining = deadline - now
        if remaining <= 0:
            fut.set_exception(ProposalTimeout(timeout, raw.leader))
            return
        # Lost on the way, or no leader yet: the same request id again then.
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
            fifo.append((due, rid, fut, envelope, deadline, timeout))
        else:
            heapq.heappush(self._retry_heap, (due, next(self._retry_seq), rid, fut, envelope, deadline, timeout))
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
                _, rid, fut, envelope, deadline, timeout = fifo.popleft()
            elif heap and heap[0][0] <= now:
                _, _, rid, fut, envelope, deadline, timeout = heapq.heappop(heap)
            else:
                break
            try:
                self._try_proposal(loop, rid, fut, envelope, deadline, timeout)
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
        while True:
            ctx = os.urandom(12)
            fut = loop.create_future()
            self._reads[ctx] = fut
            assert self.raw is not None
            self.raw.read_index(ctx)
            self._wake.set()
            remaining = deadline - loop.time()
            try:
                return await asyncio.wait_for(fut, min(self.options.retry_interval, max(remaining, 0.001)))
            except asyncio.TimeoutError:
                self._reads.pop(ctx, None)
                if loop.time() >= deadline:
                    raise ProposalTimeout(timeout, self.raw.leader) from None

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
        raw = self._require_leader()
        raw.propose_conf_change(change)
        index = raw.last_index
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while raw.applied_index < index:
            if loop.time() > deadline:
                raise ProposalTimeout(timeout, raw.leader)
            await asyncio.sleep(self.options.tick_ms / 1000)

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
    def is_leader(self) -> bool:
        return self.raw is not None and self.raw.role == Role.LEADER

    def status(self) -> dict:
        assert self.raw is not None
        status = self.raw.status()
        status["addresses"] = dict(self.raw.membership.addresses)
        status["transport"] = self._transport.stats()
        status["driver"] = dict(self.metrics)
        status["raft_stats"] = dict(self.raw.stats)
        status["duplicates_suppressed"] = self.session.duplicates
        return status
