"""The deterministic world: one random.Random(seed), a virtual clock, and a
discrete-event queue ordered by (time, sequence number).  No wall clock, no
threads, no asyncio: the same seed always gives the same run.

A run has two phases:

- chaos: clients write and read, the operator changes membership and transfers
  leadership, and the nemesis partitions (symmetric, one-way, leader
  isolation, swizzle), makes the network lossy, crashes and restarts nodes
  (losing unsynced writes), and forces elections;
- quiet: everything heals, crashed members restart, the network stops losing
  messages; a leader must appear within a bound, a final command must commit
  and be applied by every member, and every acknowledged write must be there.

The checker's invariants run after every event that touches a node.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import traceback
import zlib
from collections import defaultdict, deque
from dataclasses import dataclass, field

from consensus.errors import RaftError
from consensus.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ProposeRequest,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from consensus.raft import RaftConfig, bootstrap
from consensus.types import ConfChange, ConfOp, Membership, Role
from tests.sim.checker import Checker, SimFailure
from tests.sim.network import NetKnobs, Network
from tests.sim.node import TICK, SimNode
from tests.sim.workload import Operator, Workload

PROFILES = ("ci", "soak")



@dataclass
class Knobs:
    """Everything a seed draws about its run; any of it can be overridden
    (`--knob name=value`) when replaying."""

    nodes: int = 3  # initial voters
    clients: int = 3
    chaos_ticks: int = 100
    election_ticks: int = 6
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 256
    max_inflight: int = 4
    max_snapshot_chunk: int = 128
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_every: int = 10  # local snapshot once this many entries were applied past the last
    disk_min: int = 1
    disk_max: int = 10
    disk_slow_prob: float = 0.03
    disk_slow_max: int = 100
    nemesis: bool = True
    nemesis_every_min: int = 2  # ticks between faults
    nemesis_every_max: int = 10
    down_max: int = 30  # ticks a crashed node stays down at most
    early_crash_prob: float = 0.0  # chance that a new leader crashes within 2 ticks
    operator: bool = True
    operator_every_min: int = 4
    operator_every_max: int = 16
    max_members: int = 6
    min_voters: int = 1
    op_timeout_min: int = 8  # ticks
    op_timeout_max: int = 25
    think_max: int = 2 * TICK  # time units between a client's operations
    read_ratio: float = 0.3
    leader_bound: int = 0  # ticks after healing for a leader to appear (0: 30 election timeouts)
    settle_bound: int = 0  # ticks after that for the final command to reach everyone (0: 60 e.t.)
    max_events: int = 3_000_000
    codec: bool = False  # send every message through consensus/codec.py
    net: NetKnobs = field(default_factory=NetKnobs)


def draw_knobs(rng: random.Random, profile: str) -> Knobs:
    k = Knobs()
    k.nodes = rng.choice((1, 2, 3, 3, 3, 3, 4, 5, 5, 5))
    k.clients = rng.randint(2, 5)
    if profile == "soak":
        k.chaos_ticks = rng.randint(200, 1000)
    else:
        k.chaos_ticks = rng.randint(80, 150)
    k.election_ticks = rng.choice((3, 4, 5, 6, 8))
    k.heartbeat_ticks = 1 if k.election_ticks < 6 else rng.choice((1, 2))
    k.max_msg_bytes = rng.choice((24, 64, 128, 512, 4096))  # 24: one entry per append
    k.max_inflight = rng.choice((1, 2, 4, 8, 64))
    k.max_snapshot_chunk = rng.choice((16, 64, 128, 256, 512))
    k.pre_vote = rng.random() < 0.8
    k.check_quorum = rng.random() < 0.8
    k.snapshot_every = rng.randint(3, 30)
    k.disk_max = rng.choice((2, 5, 10, 30))
    k.disk_slow_prob = rng.choice((0.0, 0.02, 0.1))
    k.nemesis_every_min = rng.randint(1, 4)
    k.nemesis_every_max = k.nemesis_every_min + rng.randint(2, 12)
    k.down_max = rng.choice((3, 10, 30))
    k.early_crash_prob = rng.choice((0.0, 0.0, 0.1, 0.3))
    k.operator = rng.random() < 0.92
    k.operator_every_min = rng.randint(2, 8)
    k.operator_every_max = k.operator_every_min + rng.randint(2, 15)
    k.read_ratio = rng.choice((0.1, 0.3, 0.5))
    k.think_max = rng.choice((0, TICK // 4, TICK, 3 * TICK))
    k.op_timeout_min = 2 * k.election_ticks
    k.op_timeout_max = 5 * k.election_ticks
    k.codec = rng.random() < 0.25
    n = k.net
    n.delay_min = rng.randint(1, 5)
    n.delay_max = n.delay_min + rng.choice((5, 20, 50))
    n.slow_prob = rng.choice((0.0, 0.01, 0.05))
    n.slow_max = rng.choice((100, 300, 1000))
    n.drop_prob = rng.choice((0.0, 0.01, 0.05, 0.15))
    n.dup_prob = rng.choice((0.0, 0.01, 0.05))
    return k


def apply_overrides(knobs: Knobs, overrides: dict[str, str]) -> None:
    for name, text in overrides.items():
        target = knobs
        attr = name
        if name.startswith("net."):
            target, attr = knobs.net, name[4:]
        if not hasattr(target, attr):
            raise ValueError(f"unknown knob {name!r}")
        current = getattr(target, attr)
        if isinstance(current, bool):
            value: object = text.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            value = int(text)
        elif isinstance(current, float):
            value = float(text)
        else:
            raise TypeError(f"knob {name!r} cannot be set")
        setattr(target, attr, value)


@dataclass
class Result:
    seed: int
    ok: bool
    error: str | None
    stats: dict
    trace_hash: str


class Sim:
    def __init__(
        self,
        seed: int,
        profile: str = "ci",
        verbose: int = 0,
        overrides: dict[str, str] | None = None,
        tail: int = 60,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.overrides = dict(overrides or {})
        self.rng = random.Random(seed)
        self.knobs = draw_knobs(self.rng, profile)
        apply_overrides(self.knobs, self.overrides)
        self.verbose = verbose
        self.now = 0
        self._seq = 0
        self.queue: list = []
        self.events = 0
        self.trace: deque = deque(maxlen=tail)
        self.crc = 0
        self.stats: defaultdict[str, int] = defaultdict(int)
        self.checker = Checker(self)
        self.net = Network(self, self.knobs.net)
        self.workload = Workload(self)
        self.operator = Operator(self)
        self.nodes: dict[str, SimNode] = {}  # every node ever started, retired ones too
        self.removed: set[str] = set()
        self.pending_retire: dict[
            int, tuple
        ] = {}  # conf index -> (removed ids, new voters, appliers)
        self._next_id = 1
        self.chaos = True
        self.membership = Membership()
        self.conf_index = 0
        self.final_index: int | None = None

    # ------------------------------------------------------------------
    # the event queue
    # ------------------------------------------------------------------
    def at(self, delay: int, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (self.now + delay, self._seq, fn, args))

    def run_until(self, t_end: int) -> None:
        queue = self.queue
        pop = heapq.heappop
        budget = self.knobs.max_events
        while queue and queue[0][0] <= t_end:
            t, _, fn, args = pop(queue)
            self.now = t
            self.events += 1
            fn(*args)
            if self.events > budget:
                self.checker.fail(f"event budget of {budget} exhausted (a message storm?)")
        self.now = max(self.now, t_end)

    # ------------------------------------------------------------------
    # trace
    # ------------------------------------------------------------------
    def note(self, kind: str, node: str, detail=None) -> None:
        rec = (self.now, self.events, kind, node, detail)
        self.trace.append(rec)
        self.crc = zlib.crc32(f"{self.now} {kind} {node}".encode(), self.crc)
        if self.verbose:
            print(format_record(rec), flush=False)

    def replay_command(self) -> str:
        cmd = f"python -m tests.sim --seed {self.seed}"
        if self.profile != "ci":
            cmd += f" --profile {self.profile}"
        for name, value in self.overrides.items():
            cmd += f" --knob {name}={value}"
        return cmd

    def describe_failure(self, what: str) -> str:
        k = self.knobs
        lines = [
            f"seed {self.seed}: {what}",
            f"  at event {self.events}, t={self.now / TICK:.2f} ticks, {'chaos' if self.chaos else 'quiet'} phase",
            f"  replay: {self.replay_command()} -v",
            (
                f"  knobs: nodes={k.nodes} E={k.election_ticks} hb={k.heartbeat_ticks} "
                f"pre_vote={k.pre_vote} check_quorum={k.check_quorum} msg={k.max_msg_bytes} "
                f"inflight={k.max_inflight} chunk={k.max_snapshot_chunk} "
                f"snap_every={k.snapshot_every} drop={k.net.drop_prob:.2f} dup={k.net.dup_prob}"
            ),
            f"  nodes: {self.describe_nodes()}",
            "  last events:",
        ]
        lines.extend("    " + format_record(rec) for rec in self.trace)
        return "\n".join(lines)

    def describe_nodes(self) -> str:
        parts = []
        for node in self.nodes.values():
            if node.retired:
                parts.append(f"{node.id}:retired")
            elif not node.up:
                parts.append(f"{node.id}:down")
            else:
                raw = node.raw
                parts.append(
                    f"{node.id}:{raw.role.value}/t{raw.term}/c{raw.commit_index}/a{node.sm.index}/l{raw.last_index}"
                )
        return " ".join(parts)

    # ------------------------------------------------------------------
    # nodes
    # ------------------------------------------------------------------
    def address(self, node_id: str) -> str:
        return f"sim://{node_id}"

    def config(self, node_id: str) -> RaftConfig:
        k = self.knobs
        return RaftConfig(
            id=node_id,
            election_ticks=k.election_ticks,
            heartbeat_ticks=k.heartbeat_ticks,
            max_msg_bytes=k.max_msg_bytes,
            max_inflight=k.max_inflight,
            max_snapshot_chunk=k.max_snapshot_chunk,
            pre_vote=k.pre_vote,
            check_quorum=k.check_quorum,
        )

    def _new_id(self) -> str:
        node_id = f"n{self._next_id}"
        self._next_id += 1
        return node_id

    def new_node(self) -> SimNode:
        """A brand-new node that will join through a conf change."""
        node_id = self._new_id()
        node = SimNode(self, node_id, self.config(node_id), None)
        self.nodes[node_id] = node
        node.start()
        self.stats["nodes_added"] += 1
        return node

    def live_nodes(self) -> list[SimNode]:
        """Not retired and not removed (up or down)."""
        return [n for n in self.nodes.values() if not n.retired and n.id not in self.removed]

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def current_leader(self) -> SimNode | None:
        best = None
        for node in self.nodes.values():
            if (
                node.up
                and node.raw.role is Role.LEADER
                and (best is None or node.raw.term > best.raw.term)
            ):
                best = node
        return best

    def after_node_event(self, node: SimNode) -> None:
        self.checker.after(node)
        raw = node.raw
        soft = (raw.role, raw.term, raw.leader)
        if soft != node.soft:
            node.soft = soft
            self.note("role", node.id, f"{raw.role.value} term={raw.term} leader={raw.leader}")

    def on_new_leader(self, node: SimNode) -> None:
        self.stats["leaders"] += 1
        # Crash some leaders right after their election, before or while they
        # replicate their first entries: Figure 8 of the Raft paper needs that.
        k = self.knobs
        if (
            self.chaos
            and k.nemesis
            and k.early_crash_prob
            and self.rng.random() < k.early_crash_prob
        ):
            inc = node.incarnation
            delay = self.rng.randint(0, 2 * TICK)
            self.at(delay, self._early_crash, node, inc)

    def _early_crash(self, node: SimNode, inc: int) -> None:
        if node.incarnation == inc and node.up and self.chaos:
            self.note("nemesis", node.id, "crash the new leader")
            self.crash(node)
            self.at(self.rng.randint(1, 5 * TICK), self.restart, node.id)

    def on_conf_applied(self, node: SimNode, entry, before: Membership, after: Membership) -> None:
        if entry.index <= self.conf_index:
            if self.pending_retire:
                self.check_retire(node)
            return
        if before != self.membership:
            self.checker.fail(
                f"{node.id} applies conf entry {entry.index} on membership {before}, "
                f"but the last committed one (index {self.conf_index}) is {self.membership}"
            )
        change = ConfChange.decode(entry.data)
        self.membership = after
        self.conf_index = entry.index
        if change.op != ConfOp.BOOTSTRAP:
            self.stats["conf_committed"] += 1
        self.note(
            "conf",
            node.id,
            f"committed {change.op.name} {change.node} at {entry.index}: "
            f"voters={sorted(after.voters)} learners={sorted(after.learners)}",
        )
        gone = before.members() - after.members()
        if gone:
            self.removed |= gone
            self.pending_retire[entry.index] = (sorted(gone), after.voters, set())
        self.check_retire(node)

    def check_retire(self, node: SimNode) -> None:
        """A removed node is stopped once a majority of the new configuration's
        voters have applied its removal (durably: the core makes the hard state
        covering a committed conf change must_sync).  Stopping it as soon as
        anyone applied it can leave a sole remaining voter that crashed with an
        older commit index waiting forever for the removed node's vote."""
        for index, (gone, voters, appliers) in list(self.pending_retire.items()):
            if node.sm.index < index or node.id not in voters:
                continue
            appliers.add(node.id)
            if len(appliers) >= len(voters) // 2 + 1:
                del self.pending_retire[index]
                for node_id in gone:
                    self.at(self.rng.randint(0, 3 * TICK), self.retire, node_id)

    def retire(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.retired:
            return
        if node.up:
            node.crash()
        node.retired = True
        self.note("retire", node_id, "removed from the cluster: stopped for good")

    def crash(self, node: SimNode) -> None:
        if not node.up:
            return
        node.crash()
        self.stats["crashes"] += 1
        self.note("crash", node.id, "power loss: unsynced writes are gone")

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.retired or node.up:
            return
        self.stats["restarts"] += 1
        node.start()

    def final_applied(self, entry) -> None:
        if self.final_index is None:
            self.final_index = entry.index

    # ------------------------------------------------------------------
    # the nemesis
    # ------------------------------------------------------------------
    NEMESIS_OPS = (
        ("partition", 2.0),
        ("one-way", 1.5),
        ("isolate-leader", 1.5),
        ("isolate-leader-one-way", 1.0),
        ("swizzle", 1.0),
        ("heal", 4.0),
        ("crash", 1.5),
        ("crash-leader", 1.0),
        ("crash-restart", 1.0),
        ("crash-all", 0.15),
        ("lossy", 0.7),
        ("campaign", 0.5),
    )

    def nemesis(self) -> None:
        if not self.chaos:
            return
        k = self.knobs
        rng = self.rng
        self.at(rng.randint(k.nemesis_every_min * TICK, k.nemesis_every_max * TICK), self.nemesis)
        total = sum(w for _, w in self.NEMESIS_OPS)
        x = rng.random() * total
        for op, w in self.NEMESIS_OPS:
            x -= w
            if x < 0:
                break
        ids = [n.id for n in self.live_nodes()]
        net = self.net
        leader = self.current_leader()
        if op == "partition" and len(ids) >= 2:
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            groups = [sorted(shuffled[:cut]), sorted(shuffled[cut:])]
            net.partition(groups)
            self.note("net", "-", f"partition {groups}")
        elif op == "one-way" and len(ids) >= 2:
            links = []
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                net.cut_link(a, b)
                links.append(f"{a}-x>{b}")
            self.note("net", "-", f"one-way cuts {links}")
        elif op == "isolate-leader" and leader is not None:
            net.isolate(leader.id, ids)
            self.note("net", leader.id, "isolate the leader")
        elif op == "isolate-leader-one-way" and leader is not None:
            inbound = rng.random() < 0.5
            net.isolate(leader.id, ids, inbound=inbound, outbound=not inbound)
            self.note(
                "net",
                leader.id,
                f"isolate the leader one way: {'inbound' if inbound else 'outbound'}",
            )
        elif op == "swizzle" and len(ids) >= 2:
            subset = rng.sample(ids, rng.randint(1, len(ids)))
            step = rng.randint(1, 4) * TICK
            self.note("net", "-", f"swizzle {subset} step={step // TICK}")
            self.stats["swizzles"] += 1
            net.swizzle(subset, ids, step)
        elif op == "heal":
            net.heal_all()
            self.note("net", "-", "heal")
        elif op in ("crash", "crash-leader", "crash-restart"):
            if op == "crash-leader":
                victim = leader
            else:
                up = self.up_nodes()
                victim = rng.choice(up) if up else None
            if victim is not None:
                self.crash(victim)
                down = (
                    rng.randint(0, 2 * TICK)
                    if op == "crash-restart"
                    else rng.randint(1, k.down_max * TICK)
                )
                self.at(down, self.restart, victim.id)
        elif op == "crash-all":
            for node in self.up_nodes():
                self.crash(node)
                self.at(rng.randint(1, k.down_max * TICK), self.restart, node.id)
        elif op == "lossy":
            drop = rng.uniform(0.2, 0.6)
            duration = rng.randint(3, 15) * TICK
            net.lossy_burst(drop, duration)
            self.note("net", "-", f"lossy burst drop={drop:.2f} for {duration // TICK} ticks")
        elif op == "campaign":
            voters = [n for n in self.up_nodes() if n.raw.is_voter()]
            if voters:
                node = rng.choice(voters)
                self.note("campaign", node.id, "forced election")
                node.raw.campaign()
                self.after_node_event(node)
                node.kick()

    # ------------------------------------------------------------------
    # the run
    # ------------------------------------------------------------------
    def run(self) -> None:
        self.setup()
        self.run_until(self.knobs.chaos_ticks * TICK)
        self.quiesce()

    def setup(self) -> None:
        """Bootstrap the initial voters and start the clients, the operator and
        the nemesis (those the knobs enable)."""
        k = self.knobs
        ids = [self._new_id() for _ in range(k.nodes)]
        membership = Membership(
            frozenset(ids), frozenset(), tuple((i, self.address(i)) for i in ids)
        )
        self.membership = membership
        self.conf_index = 1
        restored = bootstrap(membership)
        for node_id in ids:
            self.nodes[node_id] = SimNode(self, node_id, self.config(node_id), restored)
        for node_id in ids:
            self.nodes[node_id].start()
        self.workload.start()
        if k.operator:
            self.operator.start()
        if k.nemesis:
            self.at(
                self.rng.randint(k.nemesis_every_min * TICK, k.nemesis_every_max * TICK),
                self.nemesis,
            )

    def run_ticks(self, ticks: float) -> None:
        self.run_until(self.now + int(ticks * TICK))

    def wait_for(self, predicate, max_ticks: float, what: str = "condition") -> None:
        """Run tick by tick until predicate() holds (scenario tests)."""
        deadline = self.now + int(max_ticks * TICK)
        while not predicate():
            if self.now >= deadline:
                self.checker.fail(f"{what} did not happen within {max_ticks} ticks")
            self.run_until(self.now + TICK // 4)

    def quiesce(self) -> None:
        k = self.knobs
        self.chaos = False
        self.net.calm()
        self.note("quiet", "-", "heal everything, restart crashed members, no more faults")
        for node in self.live_nodes():
            if not node.up:
                self.restart(node.id)
        healed = self.now
        leader_bound = k.leader_bound or 30 * k.election_ticks
        deadline = self.now + leader_bound * TICK
        while self.current_leader() is None:
            if self.now >= deadline:
                self.checker.fail(f"liveness: no leader {leader_bound} ticks after healing")
            self.run_until(self.now + TICK)
        self.stats["ticks_to_leader"] = (self.now - healed) // TICK
        settle_bound = k.settle_bound or 60 * k.election_ticks
        deadline = self.now + settle_bound * TICK
        attempt = 0
        proposed_at = -(10**9)
        while True:
            if self.final_index is None and self.now - proposed_at >= 10 * k.election_ticks * TICK:
                leader = self.current_leader()
                if leader is not None:
                    attempt += 1
                    cmd = f"final-{attempt}".encode()
                    try:
                        leader.raw.propose(cmd)
                        self.note("propose", leader.id, cmd.decode())
                        proposed_at = self.now
                    except RaftError as exc:
                        self.note(
                            "propose", leader.id, f"{cmd.decode()} refused: {type(exc).__name__}"
                        )
                    leader.kick()
            if self.final_index is not None and self._members_caught_up(
                max(self.final_index, self.workload.max_acked_index)
            ):
                break
            if self.now >= deadline:
                self.checker.fail(
                    f"liveness: {settle_bound} ticks after a leader appeared, the final command "
                    f"{'is not committed' if self.final_index is None else f'at {self.final_index} is not applied everywhere'}"
                    f" (members {sorted(self.membership.members())})"
                )
            self.run_until(self.now + TICK)
        self.stats["ticks_to_settle"] = (self.now - healed) // TICK
        self._check_acknowledged()

    def _members_caught_up(self, index: int) -> bool:
        for member in sorted(self.membership.members()):
            node = self.nodes.get(member)
            if node is None or node.retired or not node.up:
                self.checker.fail(f"member {member} is not running at the end")
            if node.sm.index < index:
                return False
        return True

    def _check_acknowledged(self) -> None:
        applied = self.checker.applied
        for cmd, index in self.workload.acked.items():
            rec = applied.get(index)
            if rec is None or rec[2] != cmd:
                self.checker.fail(
                    f"acknowledged write {cmd!r} at index {index} was lost: {rec!r} is there"
                )
        for member in sorted(self.membership.members()):
            node = self.nodes[member]
            if node.sm.index < self.workload.max_acked_index:
                self.checker.fail(f"{member} has not applied every acknowledged write")
            if self.checker.states.get(node.sm.index) != node.sm.state():
                self.checker.fail(f"{member}'s final state differs from the others'")

    def summary(self) -> dict:
        s = dict(self.stats)
        k = self.knobs
        s.update(
            events=self.events,
            ticks=self.now // TICK,
            nodes=k.nodes,
            election_ticks=k.election_ticks,
            reads_checked=self.checker.reads_checked,
            max_committed=self.checker.max_committed,
            terms=max(self.checker.leaders, default=0),
            members=len(self.membership.members()),
        )
        for key, value in self.net.stats.items():
            s["net_" + key] = value
        return s


def run_seed(
    seed: int, profile: str = "ci", verbose: int = 0, overrides: dict[str, str] | None = None
) -> Result:
    sim = Sim(seed, profile, verbose, overrides)
    error = None
    try:
        sim.run()
    except SimFailure as exc:
        error = str(exc)
    except RaftError as exc:
        error = sim.describe_failure(f"the core raised {type(exc).__name__} to the driver: {exc}")
    except Exception as exc:  # noqa: BLE001 - a crash in the core or the stores is a failure too
        tb = "".join(traceback.format_exception(exc)[-6:])
        error = sim.describe_failure(f"exception {type(exc).__name__}: {exc}\n{tb}")
    return Result(seed, error is None, error, sim.summary(), f"{sim.crc:08x}-{sim.events}")


# ----------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------
def format_record(rec) -> str:
    t, ev, kind, node, detail = rec
    if detail is None:
        text = ""
    elif isinstance(detail, str):
        text = detail
    else:
        text = format_message(detail)
    return f"{t / TICK:9.2f} #{ev:<7} {node:>4} {kind:<8} {text}"


def format_message(m) -> str:
    head = f"{m.src}->{m.dst} t{m.term}"
    if isinstance(m, AppendRequest):
        ents = f"[{m.entries[0].index}..{m.entries[-1].index}]" if m.entries else "[]"
        return f"{head} Append prev={m.prev_index}/{m.prev_term} ents={ents} commit={m.commit}"
    if isinstance(m, AppendResponse):
        verdict = "ok" if m.success else "reject"
        return f"{head} AppendResp {verdict} index={m.index} hint={m.hint_index}/{m.hint_term}"
    if isinstance(m, HeartbeatRequest):
        return f"{head} Heartbeat commit={m.commit} ctx={m.ctx.hex() if m.ctx else '-'}"
    if isinstance(m, HeartbeatResponse):
        return f"{head} HeartbeatResp ctx={m.ctx.hex() if m.ctx else '-'}"
    if isinstance(m, VoteRequest):
        kind = "PreVote" if m.pre else "Vote"
        extra = " transfer" if m.transfer else ""
        return f"{head} {kind} last={m.last_index}/{m.last_term}{extra}"
    if isinstance(m, VoteResponse):
        kind = "PreVoteResp" if m.pre else "VoteResp"
        return f"{head} {kind} {'granted' if m.granted else 'rejected'}"
    if isinstance(m, SnapshotRequest):
        return (
            f"{head} Snapshot {m.meta.index}/{m.meta.term} off={m.offset} len={len(m.data)}"
            f"/{m.meta.size} done={m.done}"
        )
    if isinstance(m, SnapshotResponse):
        return f"{head} SnapshotResp {m.snapshot_index} next={m.next_offset} done={m.done}"
    if isinstance(m, TimeoutNow):
        return f"{head} TimeoutNow"
    if isinstance(m, ProposeRequest):
        return f"{head} Propose {[c.decode(errors='replace') for c in m.commands]}"
    if isinstance(m, ReadIndexRequest):
        return f"{head} ReadIndex ctx={m.ctx!r}"
    if isinstance(m, ReadIndexResponse):
        return f"{head} ReadIndexResp index={m.index} ctx={m.ctx!r}"
    return repr(m)


def knobs_dict(knobs: Knobs) -> dict:
    return dataclasses.asdict(knobs)
