"""A simulated node: its disk, and the processes that run the production Raft
driver (consensus/driver.py RaftNode) on it, one after another.

Each start is a new Process on the SimLoop with a new RaftNode, a new state
machine, a new transport endpoint and fenced views of the same disk, exactly
what a restarted `ragraft node` gets.  What the driver does in between (load
and repair the log, persist in its "worker thread", install snapshots, forward
and re-propose, expire sessions, time proposals out, stop) is the code under
test.

The node also serves the clients' requests the way node/http/tasks.py does: an
incoming write is a task in the node's process that awaits propose(); an
incoming read awaits read_barrier() and then reads the local state.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

import msgpack

from consensus.driver import NodeOptions, RaftNode
from consensus.types import NodeId
from tests.sim.disk import LogView, SimDisk, SnapshotView, StableView
from tests.sim.loop import Process

if TYPE_CHECKING:
    from tests.sim.world import Sim

TICK = 100  # time units per tick: network delays and knobs are in these


class SimMachine:
    """The replicated state machine: a hash chain of the commands applied, with
    the last few kept; every apply and restore is reported to the checker."""

    KEEP = 24

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.index = 0  # the last log index of a command applied (or of the snapshot)
        self.digest = b"\0" * 8
        self.count = 0  # commands applied
        self.recent: list[bytes] = []

    def apply(self, index: int, command: bytes) -> int:
        checker = self.node.sim.checker
        checker.on_apply(self.node, index, command)
        self.digest = hashlib.blake2b(self.digest + command, digest_size=8).digest()
        self.count += 1
        self.recent.append(command)
        if len(self.recent) > self.KEEP:
            del self.recent[0]
        self.index = index
        checker.on_state(self.node, "apply")
        return index  # the answer: where it was applied (a duplicate gets the same)

    def state(self) -> tuple[bytes, int]:
        return self.digest, self.count

    def snapshot(self) -> bytes:
        return msgpack.packb([self.index, self.digest, self.count, self.recent])

    def restore(self, data: bytes) -> None:
        self.index, self.digest, self.count, self.recent = msgpack.unpackb(data)
        self.node.sim.checker.on_state(self.node, "restore")


class SimNode:
    def __init__(self, sim: Sim, node_id: NodeId, initial_members: dict[NodeId, str]) -> None:
        self.sim = sim
        self.id = node_id
        self.initial_members = initial_members
        self.rng = random.Random(sim.rng.getrandbits(64))
        k = sim.knobs
        # Clock drift: every node ticks at its own pace; wall clocks disagree a little.
        self.tick_ms = k.tick_ms * (1 + self.rng.uniform(-0.02, 0.02))
        self.skew_ms = self.rng.randint(-k.clock_skew_ms, k.clock_skew_ms)
        self.disk = SimDisk()
        self.incarnation = 0
        self.proc: Process | None = None
        self.raft: RaftNode | None = None
        self.machine = SimMachine(self)
        self.views: tuple = ()
        self.up = False  # started and not crashed (its RaftNode may still be starting)
        self.retired = False
        self.armed: str | None = None  # a failpoint: lose power before this write
        self.commit_seen = 0
        self.soft: tuple = ()
        self.conf_scanned: tuple[int, int] = (0, 0)

    @property
    def raw(self):
        return self.raft.raw if self.raft is not None else None

    def wall_clock(self) -> float:
        return self.sim.epoch + self.sim.loop.time() + self.skew_ms / 1000

    # ------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------
    def options(self) -> NodeOptions:
        k = self.sim.knobs
        tick_s = self.tick_ms / 1000
        return NodeOptions(
            id=self.id,
            initial_members=self.initial_members,
            known_addresses=self.sim.known_addresses,  # grows as nodes are added
            tick_ms=self.tick_ms,
            election_ticks=k.election_ticks,
            heartbeat_ticks=k.heartbeat_ticks,
            max_msg_bytes=k.max_msg_bytes,
            max_inflight=k.max_inflight,
            max_snapshot_chunk=k.max_snapshot_chunk,
            snapshot_entries=k.snapshot_every,
            proposal_timeout=k.proposal_timeout_ticks * tick_s,
            retry_interval=k.retry_ticks * tick_s,
            durable=True,
            session_ttl_ms=k.session_ttl_ms,
            pre_vote=k.pre_vote,
            check_quorum=k.check_quorum,
        )

    def start(self) -> None:
        """Start (or restart after a crash) from what the disk holds."""
        sim = self.sim
        self.incarnation += 1
        proc = Process(
            f"{self.id}#{self.incarnation}",
            random.Random(self.rng.getrandbits(64)),
            after=self._after,
        )
        self.proc = proc
        self.machine = SimMachine(self)
        self.views = (LogView(self, proc), StableView(self, proc), SnapshotView(self, proc))
        self.raft = RaftNode(
            self.options(),
            self.machine,
            *self.views,
            sim.net.endpoint(self.id, proc),
            rng=proc.rng,
            clock=self.wall_clock,
        )
        self.up = True
        self.commit_seen = 0
        self.soft = ()
        self.conf_scanned = (0, 0)
        sim.note("start", self.id, f"inc={self.incarnation} disk log={self.disk.log.bounds()}")
        proc.context.run(sim.loop.create_task, self._boot(), name=f"boot-{proc.name}")

    async def _boot(self) -> None:
        raft = self.raft
        await raft.start()
        self.sim.checker.on_start(self)

    def _after(self) -> None:
        if self.raft is not None and self.raft.raw is not None:
            self.sim.after_node_event(self)

    def power_loss(self) -> None:
        """The process dies at once; the disk keeps only what it synced (with
        the torn-write model, some of what it had not synced too)."""
        if self.proc is not None:
            self.proc.alive = False
        self.up = False
        self.raft = None
        torn = self.sim.knobs.torn_writes
        self.disk.crash(self.rng if torn else None)
        self.sim.workload.on_crash(self)

    async def stop_gracefully(self) -> None:
        """What SIGTERM does: RaftNode.stop(); then the process exits, which takes
        a moment (a write still running in a worker thread finishes first)."""
        raft = self.raft
        if raft is None or raft.raw is None:
            return
        await raft.stop()
        self.up = False
        self.sim.workload.on_crash(self)
        proc = self.proc
        self.sim.at(self.sim.knobs.disk_max + TICK, self._exited, proc)

    def _exited(self, proc: Process) -> None:
        proc.alive = False
        if self.proc is proc:
            self.raft = None

    # ------------------------------------------------------------------
    # the client-facing API (in this node's process)
    # ------------------------------------------------------------------
    async def serve_write(self, command: bytes, request, timeout: float) -> tuple[str, object]:
        raft = self.raft
        try:
            applied = await raft.propose(command, timeout=timeout, request=request)
        except Exception as exc:  # noqa: BLE001 - the client learns what happened
            return type(exc).__name__, getattr(exc, "handed_on", True)
        return "ok", (applied.index, applied.result)

    async def serve_read(self, timeout: float) -> tuple[str, object]:
        raft = self.raft
        try:
            index = await raft.read_barrier(timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            return type(exc).__name__, None
        return "ok", (index, raft.raw.applied_index, self.machine.state())
