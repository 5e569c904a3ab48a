"""Clients and the operator of the simulated cluster.

Clients talk to nodes over their own links (delays, no partitions: they stand
where Jepsen's control node stands) and use the nodes' client API
(SimNode.serve_write / serve_read), which is what node/http/tasks.py does with HTTP.

- A *session* client names every write with a request of its own client
  session (consensus/session.py): it retries a write that timed out or was
  refused on another node, with the same request, until it is answered, and
  raises `ack_below` as answers arrive.  Exactly once is checked on every one.
- A *plain* client leaves naming to the node (the driver's own session).  It
  retries only what certainly was not written (NoQuorum before the write was
  handed on); a write with an unknown outcome is recorded as such and not
  retried, as a careful HTTP client without an idempotency key would do.
- Reads go through read_barrier(); the checker compares the read index with
  what was committed when the read started.

The operator adds nodes (as learners, promoted once caught up: add_member),
removes members (remove_member) and transfers leadership, through the
leader's driver, one operation at a time, and checks what a success claims:
a removed node is no longer a member, an added one is a voter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from consensus.errors import RaftError
from consensus.session import Request
from tests.sim.node import TICK

if TYPE_CHECKING:
    from tests.sim.node import SimNode
    from tests.sim.world import Sim

# Failures after which a write certainly was not applied (NoQuorum says so itself).
NOT_APPLIED = ("StaleRequest",)


@dataclass(slots=True)
class Client:
    id: int
    uses_session: bool
    session: str = ""
    started_ms: int = 0
    last_ms: int = -(1 << 62)
    seq: int = 0
    unanswered: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Write:
    client: Client
    cmd: bytes
    seq: int
    t0: float
    request: Request | None = None
    attempt: int = 0
    done: bool = False


@dataclass(slots=True)
class Read:
    client: Client
    name: str
    t0: float
    floor: int
    acked_floor: int
    attempt: int = 0
    done: bool = False


class Workload:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.rng = sim.rng
        k = sim.knobs
        self.acked: dict[bytes, int] = {}  # command -> its log index
        self.max_acked_index = 0
        self.unknown = 0  # writes whose outcome a plain client could not learn
        self.clients = [
            Client(i + 1, uses_session=self.rng.random() < k.session_share)
            for i in range(k.clients)
        ]

    def start(self) -> None:
        for client in self.clients:
            self.sim.at(self.rng.randint(1, 5 * TICK), self.next_op, client)

    # ------------------------------------------------------------------
    def _pick_node(self) -> SimNode | None:
        nodes = [n for n in self.sim.up_nodes() if n.raw is not None]
        return self.rng.choice(nodes) if nodes else None

    def _timeout_s(self) -> float:
        k = self.sim.knobs
        return self.rng.randint(k.op_timeout_min, k.op_timeout_max) * self.sim.tick_s

    def next_op(self, client: Client) -> None:
        if not self.sim.chaos:
            return
        if self.rng.random() < self.sim.knobs.read_ratio:
            self._read(Read(client, "", self.sim.loop.time(), 0, 0))
        else:
            self._write(self._new_write(client, b"c%d-" % client.id))

    def _done(self, client: Client) -> None:
        self.sim.at(self.rng.randint(0, self.sim.knobs.think_max), self.next_op, client)

    def _new_write(self, client: Client, prefix: bytes) -> Write:
        client.seq += 1
        write = Write(client, prefix + b"%d" % client.seq, client.seq, self.sim.loop.time())
        if client.uses_session:
            now_ms = int(self.sim.epoch * 1000 + self.sim.loop.time() * 1000)
            if now_ms - client.last_ms > self.sim.knobs.session_ttl_ms // 2:
                # idle for half a ttl: the cluster may forget the session, so a new one
                client.session = f"client{client.id}:{client.seq}"
                client.started_ms = now_ms
                client.unanswered.clear()
            client.last_ms = now_ms
            client.unanswered.add(client.seq)
            write.request = Request(
                client.session, client.started_ms, client.seq, min(client.unanswered)
            )
        return write

    # ------------------------------------------------------------------
    # writes
    # ------------------------------------------------------------------
    def _write(self, write: Write) -> None:
        sim = self.sim
        node = self._pick_node()
        if node is None:
            sim.at(self.rng.randint(TICK, 3 * TICK), self._write, write)
            return
        write.attempt += 1
        attempt = write.attempt
        sim.stats["proposals"] += 1
        sim.note("write", node.id, f"{write.cmd.decode()} attempt {attempt}")
        timeout = self._timeout_s()
        sim.rpc(
            node,
            lambda: node.serve_write(write.cmd, write.request, timeout),
            self._write_answer,
            write,
            attempt,
        )
        # the client's own patience: a little longer than the node's
        sim.at(int(timeout / sim.tick_s * TICK) + 2 * TICK, self._write_silence, write, attempt)

    def _write_answer(self, write: Write, attempt: int, node_id: str, answer: tuple) -> None:
        if write.done or attempt != write.attempt:
            return
        outcome, detail = answer
        if outcome == "ok":
            index, result = detail
            if result != index:
                self.sim.checker.fail(
                    f"{write.cmd!r} acknowledged with index {index} but result {result}: "
                    "a retry was answered with another copy's result"
                )
            self._finish(write)
            self.acked[write.cmd] = index
            self.max_acked_index = max(self.max_acked_index, index)
            self.sim.stats["writes_acked"] += 1
            self.sim.note("write-ok", node_id, f"{write.cmd.decode()} at {index}")
            return
        self.sim.note("write-err", node_id, f"{write.cmd.decode()}: {outcome}")
        self.sim.stats["write_refusals"] += 1
        if outcome == "StaleRequest" and write.request is not None:
            self._renew_session(write)
        written = outcome not in NOT_APPLIED and not (outcome == "NoQuorum" and detail is False)
        self._retry_or_give_up(write, maybe_written=written)

    def _renew_session(self, write: Write) -> None:
        """A StaleRequest for the request a session client still waits for means
        its session expired: the client retried it for longer than the session
        ttl (through a long election, say).  That copy was not applied, and no
        later copy can be: the cluster forgot the session, so it refuses it for
        good.  An earlier copy may have applied before the session was forgotten,
        so the client cannot resend the same command and keep exactly once; as a
        real client would, it gives that request up and sends its command again
        as a new one, in a new session (seen in soak seed 68323: the final
        command was refused forever)."""
        client = write.client
        now_ms = int(self.sim.epoch * 1000 + self.sim.loop.time() * 1000)
        client.session = f"client{client.id}:{client.seq}:{write.attempt}"
        client.started_ms = client.last_ms = now_ms
        client.unanswered = {write.seq}
        write.request = Request(client.session, now_ms, write.seq, write.seq)
        write.cmd = write.cmd.split(b"/")[0] + b"/%d" % write.attempt
        self.sim.stats["sessions_renewed"] += 1

    def _write_silence(self, write: Write, attempt: int) -> None:
        if write.done or attempt != write.attempt:
            return
        self.sim.stats["write_timeouts"] += 1
        self._retry_or_give_up(write, maybe_written=True)

    def _retry_or_give_up(self, write: Write, maybe_written: bool) -> None:
        if not self.sim.chaos and not write.cmd.startswith(b"final"):
            return
        if write.request is not None or not maybe_written:
            self.sim.at(self.rng.randint(0, TICK), self._write, write)
            return
        self.unknown += 1
        self._finish(write)

    def _finish(self, write: Write) -> None:
        write.done = True
        write.client.unanswered.discard(write.seq)
        if write.cmd.startswith(b"final"):
            return
        self._done(write.client)

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------
    def _read(self, read: Read) -> None:
        sim = self.sim
        node = self._pick_node()
        if node is None:
            sim.at(self.rng.randint(TICK, 3 * TICK), self._read, read)
            return
        read.attempt += 1
        read.name = f"r{read.client.id}-{read.client.seq}.{read.attempt}"
        read.t0 = sim.loop.time()
        read.floor = sim.checker.max_committed
        read.acked_floor = self.max_acked_index
        sim.stats["reads"] += 1
        timeout = self._timeout_s()
        sim.rpc(node, lambda: node.serve_read(timeout), self._read_answer, read, read.attempt)
        sim.at(int(timeout / sim.tick_s * TICK) + 2 * TICK, self._read_silence, read, read.attempt)

    def _read_answer(self, read: Read, attempt: int, node_id: str, answer: tuple) -> None:
        if read.done or attempt != read.attempt:
            return
        outcome, detail = answer
        if outcome != "ok":
            self._read_silence(read, attempt)
            return
        index, applied, _ = detail
        read.done = True
        self.sim.checker.on_read_complete(node_id, read, index, applied)
        self.sim.note("read-ok", node_id, f"{read.name} index={index} floor={read.floor}")
        self._done(read.client)

    def _read_silence(self, read: Read, attempt: int) -> None:
        if read.done or attempt != read.attempt:
            return
        if self.sim.chaos:
            self.sim.at(self.rng.randint(0, TICK), self._read, read)

    # ------------------------------------------------------------------
    def final_write(self) -> Write:
        """The quiet phase's command, through a session so it can be retried."""
        client = Client(0, uses_session=True)
        write = self._new_write(client, b"final-")
        self._write(write)
        return write

    def on_crash(self, node: SimNode) -> None:
        """Requests in that process die with it; their clients time out."""


class Operator:
    """Membership changes and leadership transfers, one at a time, through the
    leader's driver; what a success claims is checked."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.busy_until = 0.0  # the operation under way, if its leader dies, is given up then

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
        if leader is None or sim.loop.time() < self.busy_until:
            return
        raw = leader.raw
        m = raw.membership
        members = m.members()
        voters = sorted(m.voters)
        learners = sorted(m.learners)
        joining = [n.id for n in sim.live_nodes() if n.id not in members]
        k = sim.knobs
        options: list[tuple[str, float]] = []
        if len(members) + len(joining) < k.max_members:
            options.append(("add", 3.0))
        if joining:
            options.append(("re-add", 1.0))
        if learners:
            options.append(("promote", 2.0))
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
        timeout = k.op_timeout_max * sim.tick_s * 2
        self.busy_until = sim.loop.time() + 2 * timeout
        if op == "add":
            node = sim.new_node()
            self._run(
                leader, op, node.id, leader.raft.add_member(node.id, sim.address(node.id), timeout)
            )
        elif op in ("re-add", "promote"):
            nid = self.rng.choice(joining if op == "re-add" else learners)
            self._run(leader, op, nid, leader.raft.add_member(nid, sim.address(nid), timeout))
        elif op in ("remove-voter", "remove-learner"):
            nid = self.rng.choice(voters if op == "remove-voter" else learners)
            self._run(leader, "remove", nid, leader.raft.remove_member(nid, timeout))
        elif op == "transfer":
            target = self.rng.choice([v for v in voters if v != leader.id] or voters)
            sim.stats["transfers"] += 1
            self._run(leader, op, target, leader.raft.transfer_leadership(target, timeout))

    def _run(self, leader: SimNode, op: str, target: str, coro) -> None:
        sim = self.sim
        sim.note("operator", leader.id, f"{op} {target}")
        sim.stats["conf_proposed"] += op != "transfer"

        async def run() -> None:
            # (no `finally`: a coroutine of a dead process is closed by the
            # garbage collector, at no reproducible moment)
            try:
                await coro
            except RaftError as exc:
                self.busy_until = 0.0
                sim.note(
                    "operator", leader.id, f"{op} {target} refused: {type(exc).__name__}: {exc}"
                )
                return
            self.busy_until = 0.0
            self._check_success(leader, op, target)

        leader.proc.context.run(sim.loop.create_task, run())

    def _check_success(self, leader: SimNode, op: str, target: str) -> None:
        sim = self.sim
        membership = leader.raw.membership
        sim.note("operator", leader.id, f"{op} {target} done: voters={sorted(membership.voters)}")
        if op == "remove":
            sim.stats["conf_committed"] += 1
            if target in membership.members():
                sim.checker.fail(
                    f"remove_member({target}) on {leader.id} reported success, but {target} is "
                    f"still a member: {membership}"
                )
        elif op in ("add", "re-add", "promote"):
            sim.stats["conf_committed"] += 1
            if target not in membership.voters:
                sim.checker.fail(
                    f"add_member({target}) on {leader.id} reported success, but {target} is not "
                    f"a voter: {membership}"
                )
