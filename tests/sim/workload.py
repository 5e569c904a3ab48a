"""Clients and operators of the simulated cluster.

Clients propose unique commands (b"c<client>-<seq>.<attempt>") to random nodes
and make ReadIndex reads.  Deduplication belongs to the driver, not the core,
so every attempt is its own command: a write is acknowledged when the node it
was proposed to (in the same incarnation) applies it; a proposal that is lost
(a forward dropped, a leader deposed) times out and the client tries again
with a new attempt, maybe elsewhere.

A read remembers the highest index known committed anywhere when it starts
(which covers every write acknowledged and every read completed before);
when its ReadState arrives and the node has applied up to the read index, the
read completes and the checker compares the two.

The operator adds learners (brand-new empty nodes), promotes them once caught
up, removes members (a removed node is stopped once its removal commits) and
transfers leadership.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from consensus.errors import RaftError
from consensus.types import ConfChange, ConfOp, ReadState
from tests.sim.node import TICK

if TYPE_CHECKING:
    from tests.sim.node import SimNode
    from tests.sim.world import Sim


@dataclass(slots=True)
class Client:
    id: int
    seq: int = 0
    attempt: int = 0


@dataclass(slots=True)
class PendingWrite:
    client: Client
    cmd: bytes
    node: SimNode
    inc: int
    t0: int


@dataclass(slots=True)
class PendingRead:
    client: Client
    ctx: bytes
    node: SimNode
    inc: int
    t0: int
    floor: int
    acked_floor: int
    index: int | None = None


class Workload:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.pending_writes: dict[bytes, PendingWrite] = {}
        self.pending_reads: dict[bytes, PendingRead] = {}
        self.acked: dict[bytes, int] = {}  # command -> its log index
        self.max_acked_index = 0
        self.clients = [Client(i + 1) for i in range(sim.knobs.clients)]

    def start(self) -> None:
        for client in self.clients:
            self.sim.at(self.rng.randint(1, 5 * TICK), self.next_op, client)

    # ------------------------------------------------------------------
    def _pick_node(self) -> SimNode | None:
        nodes = self.sim.up_nodes()
        return self.rng.choice(nodes) if nodes else None

    def _later(self, fn, *args, lo: int = 1, hi: int = 3) -> None:
        self.sim.at(self.rng.randint(lo * TICK, hi * TICK), fn, *args)

    def _timeout(self) -> int:
        k = self.sim.knobs
        return self.rng.randint(k.op_timeout_min, k.op_timeout_max) * TICK

    def next_op(self, client: Client) -> None:
        if not self.sim.chaos:
            return
        client.seq += 1
        client.attempt = 0
        if self.rng.random() < self.sim.knobs.read_ratio:
            self._read(client)
        else:
            self._write(client)

    def _done(self, client: Client) -> None:
        self.sim.at(self.rng.randint(0, self.sim.knobs.think_max), self.next_op, client)

    # ------------------------------------------------------------------
    # writes
    # ------------------------------------------------------------------
    def _write(self, client: Client) -> None:
        sim = self.sim
        if not sim.chaos:
            return
        node = self._pick_node()
        if node is None:
            self._later(self._write, client)
            return
        client.attempt += 1
        cmd = f"c{client.id}-{client.seq}.{client.attempt}".encode()
        try:
            node.raw.propose(cmd)
        except RaftError as exc:
            sim.note("propose", node.id, f"{cmd.decode()} refused: {type(exc).__name__}")
            sim.stats["proposals_refused"] += 1
            self._later(self._write, client)
            return
        sim.note("propose", node.id, cmd.decode())
        sim.stats["proposals"] += 1
        pending = PendingWrite(client, cmd, node, node.incarnation, sim.now)
        self.pending_writes[cmd] = pending
        sim.at(self._timeout(), self._write_timeout, pending)
        node.kick()

    def _write_timeout(self, pending: PendingWrite) -> None:
        if self.pending_writes.get(pending.cmd) is pending:
            del self.pending_writes[pending.cmd]
            self.sim.stats["write_timeouts"] += 1
            self._write(pending.client)

    def on_applied(self, node: SimNode, entry) -> None:
        pending = self.pending_writes.get(entry.data)
        if pending is None and entry.data.startswith(b"final-"):
            self.sim.final_applied(entry)
        if pending is None or pending.node is not node or pending.inc != node.incarnation:
            return
        del self.pending_writes[entry.data]
        self.acked[entry.data] = entry.index
        self.max_acked_index = max(self.max_acked_index, entry.index)
        self.sim.stats["writes_acked"] += 1
        self._done(pending.client)

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------
    def _read(self, client: Client) -> None:
        sim = self.sim
        if not sim.chaos:
            return
        node = self._pick_node()
        if node is None:
            self._later(self._read, client)
            return
        client.attempt += 1
        ctx = f"r{client.id}-{client.seq}.{client.attempt}".encode()
        read = PendingRead(
            client,
            ctx,
            node,
            node.incarnation,
            sim.now,
            sim.checker.max_committed,
            self.max_acked_index,
        )
        self.pending_reads[ctx] = read
        node.raw.read_index(ctx)
        sim.note("read", node.id, f"{ctx.decode()} floor={read.floor}")
        sim.stats["reads"] += 1
        sim.at(self._timeout(), self._read_timeout, read)
        node.kick()

    def _read_timeout(self, read: PendingRead) -> None:
        if self.pending_reads.get(read.ctx) is read:
            del self.pending_reads[read.ctx]
            node = read.node
            node.waiting_reads = [r for r in node.waiting_reads if r is not read]
            self.sim.stats["read_timeouts"] += 1
            self._read(read.client)

    def on_read_state(self, node: SimNode, rs: ReadState) -> None:
        read = self.pending_reads.get(rs.ctx)
        if (
            read is None
            or read.node is not node
            or read.inc != node.incarnation
            or read.index is not None
        ):
            return
        read.index = rs.index
        if node.sm.index >= rs.index:
            self._complete(node, read)
        else:
            node.waiting_reads.append(read)

    def on_node_applied(self, node: SimNode) -> None:
        applied = node.sm.index
        waiting = node.waiting_reads
        ready = [r for r in waiting if r.index <= applied]
        if ready:
            node.waiting_reads = [r for r in waiting if r.index > applied]
            for read in ready:
                self._complete(node, read)

    def _complete(self, node: SimNode, read: PendingRead) -> None:
        del self.pending_reads[read.ctx]
        self.sim.checker.on_read_complete(node, read)
        self.sim.note(
            "read-ok", node.id, f"{read.ctx.decode()} index={read.index} floor={read.floor}"
        )
        self._done(read.client)

    # ------------------------------------------------------------------
    def on_crash(self, node: SimNode) -> None:
        for cmd, pending in list(self.pending_writes.items()):
            if pending.node is node:
                del self.pending_writes[cmd]
                self._later(self._write, pending.client, lo=0, hi=2)
        for ctx, read in list(self.pending_reads.items()):
            if read.node is node:
                del self.pending_reads[ctx]
                self._later(self._read, read.client, lo=0, hi=2)


class Operator:
    """Membership changes and leadership transfers, at random moments."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.rng = sim.rng

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        k = self.sim.knobs
        self.sim.at(self.rng.randint(k.operator_every_min, k.operator_every_max) * TICK, self.act)

    def act(self) -> None:
        sim = self.sim
        if not sim.chaos:
            return
        self._schedule()
        leader = sim.current_leader()
        if leader is None:
            return
        m = sim.membership
        members = m.members()
        voters = sorted(m.voters)
        learners = sorted(m.learners)
        joining = [n.id for n in sim.live_nodes() if n.id not in members]
        raw = leader.raw
        caught_up = [
            lid
            for lid in learners
            if (raw.match_index(lid) or 0) >= raw.commit_index and lid in sim.nodes
        ]
        k = sim.knobs
        options: list[tuple[str, float]] = []
        if len(members) + len(joining) < k.max_members:
            options.append(("add", 3.0))
        if joining:
            options.append(("re-add", 1.0))
        if caught_up:
            options.append(("promote", 4.0))
        if len(voters) > k.min_voters:
            options.append(("remove-voter", 1.5))
        if learners:
            options.append(("remove-learner", 0.5))
        if len(voters) > 1:
            options.append(("transfer", 2.0))
        if not options:
            return
        total = sum(w for _, w in options)
        x = self.rng.random() * total
        for op, w in options:
            x -= w
            if x < 0:
                break
        try:
            if op == "add":
                node = sim.new_node()
                change = ConfChange(ConfOp.ADD_LEARNER, node.id, sim.address(node.id))
                self._propose(leader, change)
            elif op == "re-add":
                nid = self.rng.choice(joining)
                self._propose(leader, ConfChange(ConfOp.ADD_LEARNER, nid, sim.address(nid)))
            elif op == "promote":
                self._propose(leader, ConfChange(ConfOp.PROMOTE, self.rng.choice(caught_up)))
            elif op == "remove-voter":
                self._propose(leader, ConfChange(ConfOp.REMOVE, self.rng.choice(voters)))
            elif op == "remove-learner":
                self._propose(leader, ConfChange(ConfOp.REMOVE, self.rng.choice(learners)))
            elif op == "transfer":
                target = self.rng.choice([v for v in voters if v != leader.id] or voters)
                sim.note("transfer", leader.id, f"to {target}")
                sim.stats["transfers"] += 1
                raw.transfer_leadership(target)
        except RaftError as exc:
            sim.note("operator", leader.id, f"{op} refused: {type(exc).__name__}: {exc}")
        leader.kick()

    def _propose(self, leader: SimNode, change: ConfChange) -> None:
        self.sim.note("conf", leader.id, f"propose {change.op.name} {change.node}")
        self.sim.stats["conf_proposed"] += 1
        leader.raw.propose_conf_change(change)
