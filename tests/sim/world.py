"""The deterministic world: one random.Random(seed), an asyncio loop on a
virtual clock (tests/sim/loop.py), and the production Raft driver
(consensus/driver.py) running on every simulated node.  No wall clock and no
threads: the same seed always gives the same run, in any process.

A run has two phases:

- chaos: clients write (through client sessions or not) and read, the
  operator changes membership and transfers leadership through the drivers'
  own calls, and the nemesis partitions (symmetric, one-way, leader isolation,
  swizzle), makes the network lossy, cuts the power of nodes (at random
  moments, or at an armed failpoint between two durable writes, with torn
  unsynced writes), stops nodes gracefully, restarts them from their disks,
  and forces elections;
- quiet: everything heals, crashed members restart, removed nodes stop, the
  network stops losing messages; a leader must appear within a bound, a final
  command must commit and be applied by every member, and every acknowledged
  write must be there, applied once.

The checker's invariants run after every callback of a node's process.
"""

from __future__ import annotations

import contextvars
import dataclasses
import gc
import logging
import random
import traceback
import warnings
import zlib
from collections import defaultdict, deque
from dataclasses import dataclass, field

from consensus.messages import (
    AppendRequest,
    AppendResponse,
    CommitHint,
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
from consensus.types import ConfChange, EntryKind, Role
from tests.sim.checker import Checker, SimFailure
from tests.sim.loop import Idle, PowerLoss, SimLoop
from tests.sim.network import NetKnobs, Network
from tests.sim.node import TICK, SimNode
from tests.sim.workload import Operator, Workload

PROFILES = ("ci", "soak")

# The durable writes of the driver: the places an armed failpoint cuts the power.
FAILPOINTS = (
    "log.append",
    "log.sync",
    "log.reset",
    "log.compact",
    "stable.save",
    "snaps.write_chunk",
    "snaps.finish",
    "snaps.create",
)


@dataclass
class Knobs:
    """Everything a seed draws about its run; any of it can be overridden
    (`--knob name=value`) when replaying."""

    nodes: int = 3  # initial voters
    clients: int = 3
    session_share: float = 0.7  # share of clients that use client sessions
    chaos_ticks: int = 100
    tick_ms: int = 50
    election_ticks: int = 6
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 512
    max_inflight: int = 4
    max_snapshot_chunk: int = 128
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_every: int = 10  # local snapshot once this many entries were applied past the last
    proposal_timeout_ticks: int = 40
    retry_ticks: int = 8
    session_ttl_ms: int = 3_600_000
    clock_skew_ms: int = 20
    disk_min: int = 1  # time units (hundredths of a tick)
    disk_max: int = 10
    disk_slow_prob: float = 0.03
    disk_slow_max: int = 100
    torn_writes: bool = True  # a crash keeps a random part of the unsynced writes
    crash_write_prob: float = 0.0  # chance that any durable write is the last before a power cut
    failpoint: str = ""  # every node loses power at its first write of this kind
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
    max_events: int = 3_000_000  # callbacks
    codec: bool = False  # send every message through consensus/codec.py
    net: NetKnobs = field(default_factory=NetKnobs)


def draw_knobs(rng: random.Random, profile: str) -> Knobs:
    k = Knobs()
    k.nodes = rng.choice((1, 2, 3, 3, 3, 3, 4, 5, 5, 5))
    k.clients = rng.randint(2, 5)
    k.session_share = rng.choice((0.0, 0.5, 0.8, 1.0))
    if profile == "soak":
        k.chaos_ticks = rng.randint(200, 1000)
    else:
        k.chaos_ticks = rng.randint(80, 150)
    k.election_ticks = rng.choice((3, 4, 5, 6, 8))
    k.heartbeat_ticks = 1 if k.election_ticks < 6 else rng.choice((1, 2))
    k.max_msg_bytes = rng.choice((64, 128, 256, 1024, 8192))  # 64: one entry per append
    k.max_inflight = rng.choice((1, 2, 4, 8, 64))
    k.max_snapshot_chunk = rng.choice((16, 64, 128, 256, 512))
    k.pre_vote = rng.random() < 0.8
    k.check_quorum = rng.random() < 0.8
    k.snapshot_every = rng.randint(3, 30)
    k.proposal_timeout_ticks = rng.choice((8, 15, 30, 60))
    k.retry_ticks = rng.choice((2, 5, 10))
    # short ttls make sessions expire within a run (clients then start new ones)
    k.session_ttl_ms = rng.choice((1_500, 4_000, 3_600_000))
    k.clock_skew_ms = rng.choice((0, 20, 200))
    k.disk_max = rng.choice((2, 5, 10, 30))
    k.disk_slow_prob = rng.choice((0.0, 0.02, 0.1))
    k.torn_writes = rng.random() < 0.7
    k.crash_write_prob = rng.choice((0.0, 0.0, 0.002, 0.01))
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
        elif isinstance(current, str):
            value = text
        else:
            raise TypeError(f"knob {name!r} cannot be set")
        setattr(target, attr, value)


@dataclass
class Spawned:
    done: bool = False
    result: object = None
    error: BaseException | None = None


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
        k = self.knobs
        self.tick_s = k.tick_ms / 1000
        self.unit_s = self.tick_s / TICK
        self.epoch = 1_800_000_000.0  # the nodes' wall clocks start here (plus their skew)

        def disk_latency(rng: random.Random) -> float:
            delay = rng.randint(k.disk_min, k.disk_max)
            if k.disk_slow_prob and rng.random() < k.disk_slow_prob:
                delay += rng.randint(1, k.disk_slow_max)
            return delay * self.unit_s

        self.loop = SimLoop(disk_latency)
        self.world = contextvars.Context()  # callbacks of the world itself belong to no process
        self.trace: deque = deque(maxlen=tail)
        self.crc = 0
        self.stats: defaultdict[str, int] = defaultdict(int)
        self.checker = Checker(self)
        self.net = Network(self, k.net)
        self.workload = Workload(self)
        self.operator = Operator(self)
        self.nodes: dict[str, SimNode] = {}  # every node ever started, retired ones too
        self.known_addresses: dict[str, str] = {}  # what discovery would tell a node
        self._next_id = 1
        self.chaos = True
        self._log_handler: logging.Handler | None = None

    # ------------------------------------------------------------------
    # time
    # ------------------------------------------------------------------
    def at(self, delay: int, fn, *args) -> None:
        """Call fn(*args) `delay` time units from now, as the world (in no process)."""
        self.loop.call_at(self.loop.time() + delay * self.unit_s, fn, *args, context=self.world)

    def run_until(self, t_end: float) -> None:
        """Run up to virtual time t_end (seconds), a tick at a time."""
        loop = self.loop
        budget = self.knobs.max_events
        while loop.time() < t_end:
            try:
                loop.run_until(min(t_end, loop.time() + self.tick_s))
            except Idle:
                self.checker.fail("the simulated world went idle: no timer is left")
            if loop.callbacks > budget:
                self.checker.fail(f"callback budget of {budget} exhausted (a message storm?)")

    def run_ticks(self, ticks: float) -> None:
        self.run_until(self.loop.time() + ticks * self.tick_s)

    def wait_for(self, predicate, max_ticks: float, what: str = "condition") -> None:
        """Run a quarter tick at a time until predicate() holds (scenario tests)."""
        deadline = self.loop.time() + max_ticks * self.tick_s
        while not predicate():
            if self.loop.time() >= deadline:
                self.checker.fail(f"{what} did not happen within {max_ticks} ticks")
            self.run_until(self.loop.time() + self.tick_s / 4)

    def rpc(self, node: SimNode, serve, callback, *args) -> None:
        """A client's request to `node`: it arrives after a network delay, runs
        serve() as a task in the node's process, and its answer travels back
        (unless the process dies first); callback(*args, node_id, answer)."""
        net = self.net.knobs
        proc = node.proc

        def arrive() -> None:
            if node.proc is not proc or node.raft is None:
                return

            async def handle() -> None:
                answer = await serve()
                self.at(
                    self.rng.randint(net.delay_min, net.delay_max), callback, *args, node.id, answer
                )

            self.loop.create_task(handle())

        if proc is None or not proc.alive:
            return
        delay = self.rng.randint(net.delay_min, net.delay_max)
        self.loop.call_at(self.loop.time() + delay * self.unit_s, arrive, context=proc.context)

    def spawn(self, node: SimNode, make) -> Spawned:
        """Run the coroutine make() as a task in `node`'s process (what an API
        handler there would do); the returned record fills in when it ends."""
        spawned = Spawned()

        async def run() -> None:
            try:
                spawned.result = await make()
            except Exception as exc:  # noqa: BLE001 - the caller inspects it
                spawned.error = exc
            spawned.done = True

        node.proc.context.run(self.loop.create_task, run())
        return spawned

    # ------------------------------------------------------------------
    # trace
    # ------------------------------------------------------------------
    def note(self, kind: str, node: str, detail=None) -> None:
        now = self.loop.time()
        rec = (now, self.loop.callbacks, kind, node, detail)
        self.trace.append(rec)
        self.crc = zlib.crc32(f"{now:.6f} {kind} {node}".encode(), self.crc)
        if self.verbose:
            print(self.format_record(rec), flush=False)

    def format_record(self, rec) -> str:
        t, ev, kind, node, detail = rec
        if detail is None:
            text = ""
        elif isinstance(detail, str):
            text = detail
        else:
            text = format_message(detail)
        return f"{t / self.tick_s:9.2f} #{ev:<7} {node:>4} {kind:<9} {text}"

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
            (
                f"  at callback {self.loop.callbacks}, t={self.loop.time() / self.tick_s:.2f} ticks, "
                f"{'chaos' if self.chaos else 'quiet'} phase"
            ),
            f"  replay: {self.replay_command()} -v",
            (
                f"  knobs: nodes={k.nodes} E={k.election_ticks} hb={k.heartbeat_ticks} "
                f"pre_vote={k.pre_vote} check_quorum={k.check_quorum} msg={k.max_msg_bytes} "
                f"inflight={k.max_inflight} chunk={k.max_snapshot_chunk} "
                f"snap_every={k.snapshot_every} ttl={k.session_ttl_ms} torn={k.torn_writes} "
                f"crash_write={k.crash_write_prob} failpoint={k.failpoint or '-'} "
                f"drop={k.net.drop_prob:.2f} dup={k.net.dup_prob}"
            ),
            f"  nodes: {self.describe_nodes()}",
            "  last events:",
        ]
        lines.extend("    " + self.format_record(rec) for rec in self.trace)
        return "\n".join(lines)

    def describe_nodes(self) -> str:
        parts = []
        for node in self.nodes.values():
            raw = node.raw
            if node.retired:
                parts.append(f"{node.id}:retired")
            elif not node.up or raw is None:
                parts.append(f"{node.id}:down")
            else:
                parts.append(
                    f"{node.id}:{raw.role.value}/t{raw.term}/c{raw.commit_index}"
                    f"/a{raw.applied_index}/l{raw.last_index}"
                )
        return " ".join(parts)

    # ------------------------------------------------------------------
    # nodes
    # ------------------------------------------------------------------
    def address(self, node_id: str) -> str:
        return f"sim://{node_id}"

    def _new_id(self) -> str:
        node_id = f"n{self._next_id}"
        self._next_id += 1
        self.known_addresses[node_id] = self.address(node_id)
        return node_id

    def new_node(self) -> SimNode:
        """A brand-new node that will join through a membership change."""
        node_id = self._new_id()
        node = SimNode(self, node_id, {})
        self.nodes[node_id] = node
        node.start()
        self.stats["nodes_added"] += 1
        return node

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.retired]

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up and not n.retired]

    def current_leader(self) -> SimNode | None:
        best = None
        for node in self.up_nodes():
            raw = node.raw
            if (
                raw is not None
                and raw.role is Role.LEADER
                and (best is None or raw.term > best.raw.term)
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
            self.at(self.rng.randint(0, 2 * TICK), self._early_crash, node, node.incarnation)

    def _early_crash(self, node: SimNode, inc: int) -> None:
        if node.incarnation == inc and node.up and self.chaos:
            self.note("nemesis", node.id, "crash the new leader")
            self.crash(node)

    def failpoint(self, node: SimNode, what: str) -> None:
        """Called before every durable write: maybe the power goes out here."""
        if not self.chaos:
            return
        k = self.knobs
        if node.armed == what or (k.crash_write_prob and node.rng.random() < k.crash_write_prob):
            node.armed = None
            self.stats["failpoint_crashes"] += 1
            self.note("failpoint", node.id, f"power loss right before {what}")
            self.crash(node)
            raise PowerLoss()

    def harvest(self, node: SimNode) -> None:
        """Keep the counters of a process that is going away."""
        raft = node.raft
        if raft is None or raft.raw is None:
            return
        self.stats["snapshots_installed"] += raft.raw.stats["snapshots_installed"]
        self.stats["snapshots_taken"] += raft.metrics["snapshots_taken"]
        self.stats["log_repairs"] += raft.metrics["log_repairs"]
        self.stats["duplicates_suppressed"] += raft.session.duplicates
        self.stats["stale_refused"] += raft.session.stale

    def crash(self, node: SimNode) -> None:
        if not node.up:
            return
        self.harvest(node)
        node.power_loss()
        self.stats["crashes"] += 1
        self.note("crash", node.id, "power loss: what was not synced is gone or torn")
        self.at(self.rng.randint(1, self.knobs.down_max * TICK), self.restart, node.id)

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.retired or node.up:
            return
        self.stats["restarts"] += 1
        if self.knobs.failpoint and self.chaos:
            node.armed = self.knobs.failpoint
        node.start()

    def stop_and_restart(self, node: SimNode) -> None:
        """SIGTERM, then start again from the disk a little later."""
        if not node.up or node.raw is None:
            return
        self.stats["graceful_stops"] += 1
        self.note("nemesis", node.id, "graceful stop")
        self.harvest(node)

        async def stop() -> None:
            await node.stop_gracefully()
            self.at(
                self.rng.randint(2 * TICK, 10 * TICK) + self.knobs.disk_max, self.restart, node.id
            )

        node.proc.context.run(self.loop.create_task, stop())

    def retire(self, node: SimNode) -> None:
        if node.up:
            self.harvest(node)
            node.power_loss()
        node.retired = True
        self.note("retire", node.id, "not a member: stopped for good")

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
        ("stop-restart", 0.8),
        ("arm-failpoint", 1.2),
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
        up = self.up_nodes()
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
            victim = leader if op == "crash-leader" else (rng.choice(up) if up else None)
            if victim is not None:
                self.crash(victim)
                if op == "crash-restart":
                    self.at(rng.randint(0, 2 * TICK), self.restart, victim.id)
        elif op == "crash-all":
            for node in up:
                self.crash(node)
        elif op == "stop-restart" and up:
            self.stop_and_restart(rng.choice(up))
        elif op == "arm-failpoint" and up:
            node = rng.choice(up)
            node.armed = rng.choice(FAILPOINTS)
            self.note("nemesis", node.id, f"arm failpoint: power loss before the next {node.armed}")
        elif op == "lossy":
            drop = rng.uniform(0.2, 0.6)
            duration = rng.randint(3, 15) * TICK
            net.lossy_burst(drop, duration)
            self.note("net", "-", f"lossy burst drop={drop:.2f} for {duration // TICK} ticks")
        elif op == "campaign":
            voters = [n for n in up if n.raw is not None and n.raw.is_voter()]
            if voters:
                node = rng.choice(voters)
                self.note("campaign", node.id, "forced election")
                node.raw.campaign()

    # ------------------------------------------------------------------
    # the run
    # ------------------------------------------------------------------
    def run(self) -> None:
        self.setup()
        self.run_until(self.knobs.chaos_ticks * self.tick_s)
        self.quiesce()

    def setup(self) -> None:
        """Start the initial voters, the clients, the operator and the nemesis
        (those the knobs enable)."""
        k = self.knobs
        if self.verbose > 1:
            self._trace_driver_logs()
        else:
            logging.getLogger("ragraft").setLevel(logging.CRITICAL + 1)
        ids = [self._new_id() for _ in range(k.nodes)]
        members = {i: self.address(i) for i in ids}
        for node_id in ids:
            self.nodes[node_id] = SimNode(self, node_id, members)
        for node_id in ids:
            node = self.nodes[node_id]
            node.armed = k.failpoint or None
            node.start()
        self.workload.start()
        if k.operator:
            self.operator.start()
        if k.nemesis:
            self.at(
                self.rng.randint(k.nemesis_every_min * TICK, k.nemesis_every_max * TICK),
                self.nemesis,
            )

    def _trace_driver_logs(self) -> None:
        sim = self

        class ToTrace(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                print(
                    f"{sim.loop.time() / sim.tick_s:9.2f}          log       {record.getMessage()}"
                )

        logger = logging.getLogger("ragraft")
        logger.setLevel(logging.INFO)
        self._log_handler = ToTrace()
        logger.addHandler(self._log_handler)

    def close(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("ragraft").removeHandler(self._log_handler)
        for task in list(asyncio_all_tasks(self.loop)):
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        self.loop.close()

    def quiesce(self) -> None:
        k = self.knobs
        self.chaos = False
        self.net.calm()
        self.note("quiet", "-", "heal everything, restart crashed nodes, no more faults")
        for node in self.live_nodes():
            node.armed = None
            if not node.up:
                self.restart(node.id)
        healed = self.loop.time()
        leader_bound = k.leader_bound or 30 * k.election_ticks

        def led() -> bool:
            if self._leader_in_charge() is not None:
                return True
            self._retire_known_removed()
            return False

        self.wait_for(led, leader_bound, "liveness: a leader after healing")
        self.stats["ticks_to_leader"] = int((self.loop.time() - healed) / self.tick_s)
        self._retire_non_members(spare_pending=True)
        # Nodes the cluster removed stop now (during chaos they kept running, as
        # a removed ragraft node does until its operator stops it), except one
        # that a membership change still in the leader's log may add back: that
        # is decided once the final command has committed.
        settle_bound = k.settle_bound or 60 * k.election_ticks
        final = self.workload.final_write()
        retired_rest = False

        def settled() -> bool:
            nonlocal retired_rest
            leader = self._leader_in_charge()
            if leader is None or final.cmd not in self.workload.acked:
                return False
            if not retired_rest:
                retired_rest = True
                self._retire_non_members(spare_pending=False)
                return False  # (it may have been the leader: a removed one hands over)
            target = max(self.workload.acked[final.cmd], self.workload.max_acked_index)
            members = leader.raw.membership.members()
            return all(self._applied(m) >= target for m in members)

        self.wait_for(
            settled,
            settle_bound,
            "liveness: the final command committed and applied by every member",
        )
        self.stats["ticks_to_settle"] = int((self.loop.time() - healed) / self.tick_s)
        self._check_acknowledged()

    def _leader_in_charge(self) -> SimNode | None:
        """The leader the quiet phase can trust: a voter of its own membership (a
        removed leader still hands over), whose own term's entry has committed
        (its membership then has every change committed so far), and none of whose
        members has seen a later term (a removed node that never heard of its
        removal may lead an old term alone, or campaign at ever higher terms)."""
        for leader in sorted(
            self.up_nodes(), key=lambda n: n.raw.term if n.raw else -1, reverse=True
        ):
            raw = leader.raw
            if raw is None or raw.role is not Role.LEADER or leader.id not in raw.membership.voters:
                continue
            if raw.term_at(raw.commit_index) != raw.term:
                continue
            members = raw.membership.members()
            # A member still loading its disk (raw is None) may hold a later term
            # and a longer log: until it has loaded, no leader is known to be in
            # charge (soak seed 111178: a stale leader's log decided which nodes
            # to retire, and the restarted node's log then added one of them).
            if all(
                n.raw is not None and n.raw.term <= raw.term
                for n in self.up_nodes()
                if n.id in members
            ):
                return leader
        return None

    def _retire_known_removed(self) -> None:
        """Stop the nodes a committed membership change removed, before any leader
        is in charge.  Without pre-vote and check-quorum, a removed node that never
        heard of its removal campaigns at ever higher terms and deposes every
        leader it reaches (the Raft thesis, section 4.2.3), so a leader that must
        first send a new member a snapshot never lasts long enough (soak seed
        174027); an operator stops a removed node.  Removed means: not a member as
        of the highest commit index any node knows, every voter of that membership
        has applied the removal too (a removed leader may be the only one that knows
        its removal committed, and the others still need its vote: soak seed
        204593), and no log holds a later membership change naming it."""
        live = self.live_nodes()
        if any(not n.up or n.raw is None for n in live):
            return  # a node still loading may know a later commit
        known = max(live, key=lambda n: n.raw.commit_index).raw
        members = known.membership.members()
        voters = [n for n in live if n.id in known.membership.voters]
        pending = _named_after([n.raw for n in live], known.commit_index)
        removed = [
            node
            for node in live
            if node.id not in members
            and node.id not in pending
            and not any(node.id in v.raw.membership.members() for v in voters)
        ]
        for node in removed:
            self.retire(node)

    def _retire_non_members(self, spare_pending: bool) -> None:
        leader = self._leader_in_charge()
        if leader is None:
            return
        raw = leader.raw
        members = raw.membership.members()
        pending = _named_after([raw], raw.commit_index) if spare_pending else set()
        for node in self.live_nodes():
            if node.id not in members and node.id not in pending:
                self.retire(node)

    def _applied(self, member: str) -> int:
        node = self.nodes.get(member)
        if node is None or node.retired or not node.up or node.raw is None:
            return -1
        return node.raw.applied_index

    def _check_acknowledged(self) -> None:
        applied = self.checker.applied
        for cmd, index in self.workload.acked.items():
            if applied.get(index) != cmd:
                self.checker.fail(
                    f"acknowledged write {cmd!r} at index {index} was lost: "
                    f"{applied.get(index)!r} is there"
                )
        leader = self._leader_in_charge()
        assert leader is not None  # settled() found it
        for member in sorted(leader.raw.membership.members()):
            node = self.nodes[member]
            if self.checker.states.get(node.machine.index) != node.machine.state():
                self.checker.fail(f"{member}'s final state differs from the others'")
        for node in self.up_nodes():
            self.harvest(node)

    def summary(self) -> dict:
        s = dict(self.stats)
        k = self.knobs
        s.update(
            events=self.loop.callbacks,
            ticks=int(self.loop.time() / self.tick_s),
            nodes=k.nodes,
            election_ticks=k.election_ticks,
            reads_checked=self.checker.reads_checked,
            max_committed=self.checker.max_committed,
            terms=max(self.checker.leaders, default=0),
            unknown_outcomes=self.workload.unknown,
        )
        for key, value in self.net.stats.items():
            s["net_" + key] = value
        return s


def asyncio_all_tasks(loop):
    import asyncio

    return asyncio.all_tasks(loop)


def _named_after(raws: list, index: int) -> set[str]:
    """The nodes named by a membership change any of these logs holds after `index`
    (one may still add a node back)."""
    named: set[str] = set()
    for raw in raws:
        for entry in raw.entries(max(index + 1, raw.first_index), raw.last_index + 1):
            if entry.kind == EntryKind.CONF:
                named.add(ConfChange.decode(entry.data).node)
    return named


def run_seed(
    seed: int, profile: str = "ci", verbose: int = 0, overrides: dict[str, str] | None = None
) -> Result:
    error = None
    with warnings.catch_warnings():
        # Tasks of a process that lost power never run again: Python warns about
        # their coroutines when it collects them, which is here, not in a later test.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        sim = Sim(seed, profile, verbose, overrides)
        try:
            sim.run()
        except SimFailure as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash in the driver, the core or the stores is a failure too
            tb = "".join(traceback.format_exception(exc)[-8:])
            error = sim.describe_failure(f"exception {type(exc).__name__}: {exc}\n{tb}")
        finally:
            sim.close()
        summary = sim.summary()
        trace = f"{sim.crc:08x}-{sim.loop.callbacks}"
        del sim
        gc.collect()
    return Result(seed, error is None, error, summary, trace)


# ----------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------
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
    if isinstance(m, CommitHint):
        return f"{head} CommitHint {m.index}/{m.log_term}"
    if isinstance(m, ProposeRequest):
        return f"{head} Propose x{len(m.commands)}"
    if isinstance(m, ReadIndexRequest):
        return f"{head} ReadIndex ctx={m.ctx!r}"
    if isinstance(m, ReadIndexResponse):
        return f"{head} ReadIndexResp index={m.index} ctx={m.ctx!r}"
    return repr(m)


def knobs_dict(knobs: Knobs) -> dict:
    return dataclasses.asdict(knobs)
