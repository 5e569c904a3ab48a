"""The SWIM core (node/gossip/core.py) in a deterministic simulation: N cores on
a virtual clock, joined by a seeded network that can lose, delay, partition
and pause; every message goes through the real codec."""

from __future__ import annotations

import ast
import heapq
import random
from collections.abc import Iterable
from pathlib import Path

import msgpack
import pytest

from consensus.codec import encode as raft_encode
from consensus.messages import HeartbeatRequest
from node.gossip.codec import CodecError, decode, encode
from node.gossip.core import Event, Out, Swim, SwimConfig
from node.gossip.messages import Ack, Ping, PingReq, Status, Sync, Update

TICK_MS = 100
ALIVE, SUSPECT, DEAD, LEFT = Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT


class Sim:
    """A cluster of Swim cores.  Each node ticks every TICK_MS at its own phase;
    messages take 1-10 ms, are lost with probability `loss`, and are dropped on
    blocked (src, dst) links and to killed or paused nodes."""

    def __init__(
        self, n: int = 5, seed: int = 0, loss: float = 0.0, config: SwimConfig | None = None
    ):
        self.rng = random.Random(seed)
        self.loss = loss
        self.config = config or SwimConfig()
        self.ids = [f"n{i}" for i in range(n)]
        self.now = 0
        self.nodes: dict[str, Swim] = {}
        self.generation: dict[str, int] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.paused: set[str] = set()
        self.events: list[tuple[int, str, Event]] = []  # (time, observer, event)
        self._heap: list[tuple[int, int, str, object]] = []
        self._seq = 0
        self.delivered = self.dropped = 0

    @staticmethod
    def addr(node: str) -> str:
        return f"sim://{node}"

    def start(
        self, node: str, seeds: Iterable[str] = (), incarnation: int = 1, meta: dict | None = None
    ) -> Swim:
        swim = Swim(
            node,
            self.addr(node),
            meta if meta is not None else {"name": node},
            self.config,
            random.Random(self.rng.random()),
            incarnation=incarnation,
        )
        swim.join({s: self.addr(s) for s in seeds})
        self.nodes[node] = swim
        self.generation[node] = self.generation.get(node, 0) + 1
        self._push(self.now + self.rng.randrange(TICK_MS), "tick", (node, self.generation[node]))
        return swim

    def start_all(self, single_seed: bool = False) -> None:
        for node in self.ids:
            seeds = ["n0"] if single_seed else self.ids
            self.start(node, [s for s in seeds if s != node])

    def kill(self, node: str) -> None:
        del self.nodes[node]

    def _push(self, at: int, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def _send(self, src: str, outs: list[Out]) -> None:
        for out in outs:
            assert out.address == self.addr(out.dst), out
            data = encode(out.message)
            if self.rng.random() < self.loss or (src, out.dst) in self.blocked:
                self.dropped += 1
                continue
            self._push(self.now + self.rng.randint(1, 10), "msg", (src, out.dst, data))

    def _collect(self, node: str, swim: Swim) -> None:
        for event in swim.events():
            self.events.append((self.now, node, event))

    def run(self, duration_ms: int) -> None:
        end = self.now + duration_ms
        while self._heap and self._heap[0][0] <= end:
            at, _, kind, payload = heapq.heappop(self._heap)
            self.now = at
            if kind == "tick":
                node, gen = payload  # type: ignore[misc]
                if node not in self.nodes or self.generation[node] != gen:
                    continue  # killed (or restarted: the new life has its own ticks)
                self._push(at + TICK_MS, "tick", payload)
                if node in self.paused:
                    continue
                swim = self.nodes[node]
                self._send(node, swim.tick(at))
                self._collect(node, swim)
            else:
                _src, dst, data = payload  # type: ignore[misc]
                swim = self.nodes.get(dst)
                if swim is None or dst in self.paused:
                    self.dropped += 1
                    continue
                self.delivered += 1
                self._send(dst, swim.receive(decode(data), at))
                self._collect(dst, swim)
        self.now = end

    # --- observations -------------------------------------------------------------

    def view(self, observer: str) -> dict[str, Status]:
        return {m.id: m.status for m in self.nodes[observer].members().values()}

    def all_see(
        self, status: Status, about: Iterable[str], observers: Iterable[str] | None = None
    ) -> bool:
        about = list(about)
        for obs in observers if observers is not None else self.nodes:
            view = self.view(obs)
            if any(view.get(node) is not status for node in about if node != obs):
                return False
        return True

    def run_until(self, predicate, limit_ms: int, step_ms: int = 50) -> int:
        """Run until predicate() holds; returns the virtual time it took."""
        start = self.now
        while not predicate():
            assert self.now - start < limit_ms, f"not reached within {limit_ms} ms"
            self.run(step_ms)
        return self.now - start

    def first(self, observer: str, about: str, status: Status, after: int = 0) -> int | None:
        for at, obs, event in self.events:
            if (
                obs == observer
                and event.member.id == about
                and event.new_status is status
                and at >= after
            ):
                return at
        return None

    def count(self, status: Status, about: str | None = None, after: int = 0) -> int:
        return sum(
            1
            for at, _, e in self.events
            if e.new_status is status and at >= after and (about is None or e.member.id == about)
        )


def converged(sim: Sim) -> bool:
    return sim.all_see(ALIVE, sim.nodes)


# --- convergence ----------------------------------------------------------------------


@pytest.mark.parametrize("single_seed", [False, True], ids=["all-seeds", "one-seed"])
def test_all_converge_to_alive_with_metadata(single_seed: bool) -> None:
    sim = Sim(5, seed=1)
    sim.start_all(single_seed=single_seed)
    took = sim.run_until(lambda: converged(sim), 3000)
    sim.run(5000)
    assert converged(sim)
    for obs in sim.ids:
        members = sim.nodes[obs].members()
        assert {m.meta["name"] for m in members.values()} == set(sim.ids)
        assert all(m.incarnation == 1 for m in members.values())
    assert sim.count(SUSPECT, after=took) == 0
    assert sim.count(DEAD) == 0


def test_detection_bound_values() -> None:
    cfg = SwimConfig()
    assert cfg.suspicion_timeout_ms(3) == 2000 and cfg.suspicion_timeout_ms(5) == 2000
    assert cfg.suspicion_timeout_ms(20) == 2645  # ceil(4 * log10(21) * 500)
    assert cfg.detection_bound_ms(3) == 3700
    assert cfg.detection_bound_ms(5) == 4700
    assert cfg.retransmit_limit(5) == 4 and cfg.retransmit_limit(10) == 8


# --- failure detection ------------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.0, 0.1], ids=["lossless", "loss10"])
def test_killed_node_is_suspected_then_dead_within_bound_everywhere(loss: float) -> None:
    bound = SwimConfig().detection_bound_ms(5, TICK_MS)
    worst = 0
    for seed in range(12):
        sim = Sim(5, seed=seed, loss=loss)
        sim.start_all()
        sim.run(5000 + sim.rng.randrange(500))  # kill at a random phase of the periods
        victim = sim.ids[seed % 5]
        sim.kill(victim)
        killed_at = sim.now
        sim.run(bound + 1000)
        for obs in sim.nodes:
            suspected = sim.first(obs, victim, SUSPECT, after=killed_at)
            dead = sim.first(obs, victim, DEAD, after=killed_at)
            assert dead is not None, f"seed {seed}: {obs} never declared {victim} dead"
            assert suspected is not None and suspected < dead, f"seed {seed}: {obs} skipped suspect"
            assert dead - killed_at <= bound, (
                f"seed {seed}: {obs} took {dead - killed_at} ms > {bound}"
            )
            worst = max(worst, dead - killed_at)
        # Nobody else was taken down with it (under loss, a survivor may be
        # suspect for a moment before it refutes).
        assert all(e.member.id == victim for _, _, e in sim.events if e.new_status is DEAD)
    print(
        f"\nkill -> dead on every survivor (n=5, loss {loss:.0%}): worst {worst} ms, bound {bound} ms"
    )


@pytest.mark.parametrize("how", ["paused", "partitioned"])
def test_briefly_unresponsive_node_refutes_and_stays_alive(how: str) -> None:
    for seed in range(6):
        sim = Sim(5, seed=seed)
        sim.start_all()
        sim.run(4000)
        assert converged(sim)
        start = sim.now
        others = [n for n in sim.ids if n != "n1"]
        if how == "paused":  # a stalled process: it neither runs nor reads
            sim.paused.add("n1")
        else:  # cut off both ways, but still running (and suspecting everyone else)
            sim.blocked |= {(a, b) for a in others for b in ["n1"]} | {("n1", b) for b in others}
        sim.run(1400)
        sim.paused.clear()
        sim.blocked.clear()
        sim.run(6000)
        assert sim.count(SUSPECT, "n1", after=start) > 0, f"seed {seed}: n1 never suspected"
        assert sim.count(DEAD) == 0, f"seed {seed}: someone was declared dead"
        assert sim.nodes["n1"].incarnation > 1, "n1 did not refute"
        assert converged(sim)


def test_one_way_partition_is_bridged_by_indirect_probes() -> None:
    # n1's messages to n0 are lost (acks included); n0 -> n1 still works.
    for seed in range(4):
        sim = Sim(5, seed=seed)
        sim.start_all()
        sim.run(3000)
        start = sim.now
        sim.blocked.add(("n1", "n0"))
        sim.run(20_000)
        assert sim.count(SUSPECT, after=start) == 0, f"seed {seed}: someone was suspected"
        assert converged(sim)
        assert sim.nodes["n0"].stats["indirect_acks"] > 0

    # The control: without ping-req, n0 keeps accusing n1 (n1 keeps refuting).
    sim = Sim(5, seed=0, config=SwimConfig(indirect_checks=0))
    sim.start_all()
    sim.run(3000)
    start = sim.now
    sim.blocked.add(("n1", "n0"))
    sim.run(20_000)
    assert sim.count(SUSPECT, "n1", after=start) > 0


def test_metadata_updates_reach_everyone() -> None:
    sim = Sim(5, seed=3)
    sim.start_all()
    sim.run(3000)
    sim.nodes["n3"].update_meta(
        {"name": "n3", "cpu_percent": 42.5, "running": [{"id": "t1", "progress": 0.5}]}
    )
    sim.nodes["n3"].update_meta(
        {"name": "n3", "cpu_percent": 42.5, "running": [{"id": "t1", "progress": 0.5}]}
    )

    def spread() -> bool:
        return all(sim.nodes[o].members()["n3"].meta.get("cpu_percent") == 42.5 for o in sim.nodes)

    took = sim.run_until(spread, 2000)
    # The repeated update_meta was a no-op: one version only.
    assert all(sim.nodes[o].members()["n3"].meta_version == 1 for o in sim.nodes)
    assert sim.nodes["n0"].members()["n3"].meta["running"] == [{"id": "t1", "progress": 0.5}]
    assert took <= 1500
    with pytest.raises(ValueError):
        sim.nodes["n3"].update_meta({"bad": b"bytes"})


def test_dead_node_restarting_with_higher_incarnation_is_alive_again() -> None:
    sim = Sim(5, seed=4)
    sim.start_all()
    sim.run(3000)
    sim.kill("n4")
    sim.run_until(lambda: sim.all_see(DEAD, ["n4"]), 6000)
    restarted_at = sim.now
    sim.start("n4", seeds=["n0"], incarnation=sim.now, meta={"name": "n4", "boot": 2})
    took = sim.run_until(lambda: converged(sim), 3000)
    for obs in sim.ids:
        if obs != "n4":
            m = sim.nodes[obs].members()["n4"]
            assert m.incarnation >= restarted_at and m.meta["boot"] == 2
            assert sim.first(obs, "n4", ALIVE, after=restarted_at) is not None
    assert took < 2000
    sim.run(5000)
    assert converged(sim)


def test_graceful_leave_is_left_not_dead() -> None:
    sim = Sim(5, seed=5)
    sim.start_all()
    sim.run(3000)
    sim._send("n2", sim.nodes["n2"].leave(sim.now))
    sim.kill("n2")
    sim.run(6000)
    assert sim.all_see(LEFT, ["n2"])
    assert sim.count(DEAD) == 0


def test_ten_percent_loss_still_converges() -> None:
    sim = Sim(5, seed=6, loss=0.1)
    sim.start_all()
    sim.run_until(lambda: converged(sim), 5000)
    sim.run(30_000)
    sim.run_until(lambda: converged(sim), 3000)  # a false suspicion may be being refuted
    assert sim.count(DEAD) == 0
    sim.nodes["n2"].update_meta({"name": "n2", "slots_used": 1})
    sim.run_until(
        lambda: all(sim.nodes[o].members()["n2"].meta.get("slots_used") == 1 for o in sim.nodes),
        3000,
    )
    assert sim.dropped > 0.05 * (sim.delivered + sim.dropped)


def test_heals_after_long_partition_via_pings_to_the_dead() -> None:
    # Longer than the suspicion timeout: both sides declare the other dead, and
    # only the pings to dead members can bring them back together.
    sim = Sim(4, seed=7)
    sim.start_all()
    sim.run(3000)
    left, right = ["n0", "n1"], ["n2", "n3"]
    sim.blocked |= {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
    sim.run(8000)
    assert sim.all_see(DEAD, right, observers=left) and sim.all_see(DEAD, left, observers=right)
    sim.blocked.clear()
    sim.run_until(lambda: converged(sim), 8000)


def test_seed_that_never_answers_is_declared_dead() -> None:
    sim = Sim(3, seed=8)
    sim.start("n0", ["n1", "n2"])
    sim.start("n1", ["n0", "n2"])
    sim.run(4000)
    assert sim.view("n0") == {"n0": ALIVE, "n1": ALIVE, "n2": DEAD}
    sim.start("n2", ["n0"], incarnation=10)
    sim.run_until(lambda: converged(sim), 2000)


# --- purity and codec ---------------------------------------------------------------------


def test_core_modules_do_no_io() -> None:
    root = Path(__file__).resolve().parent.parent / "node" / "gossip"
    forbidden = {
        "asyncio",
        "zmq",
        "time",
        "socket",
        "threading",
        "os",
        "datetime",
        "psutil",
        "select",
    }
    for name in ("core.py", "messages.py", "codec.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in forbidden, f"{name} imports {mod}"


META = {
    "cpu_percent": 3.5,
    "gpus": [{"util": 7, "name": "x"}],
    "version": "0.1.0",
    "none": None,
    "ok": True,
}
UPDATES = (
    Update(ALIVE, "n1", "tcp://127.0.0.1:7001", 1_700_000_000_000, 3, META),
    Update(SUSPECT, "n2", "tcp://h:2", 7),
    Update(DEAD, "n3", "tcp://h:3", 0, 2),
    Update(LEFT, "n4", "tcp://h:4", 2**64 - 1),
)


@pytest.mark.parametrize(
    "msg",
    [
        Ping("a", "tcp://a:1", "b", 1, UPDATES),
        Ping("a", "tcp://a:1", "b", 0),
        Ack("b", "tcp://b:1", "a", 5, "c", UPDATES[:1]),
        PingReq("a", "tcp://a:1", "b", 9, "c", "tcp://c:1", UPDATES[1:]),
        Sync("a", "tcp://a:1", "b", True, UPDATES),
        Sync("a", "tcp://a:1", "b", False),
    ],
)
def test_codec_round_trip(msg) -> None:
    assert decode(encode(msg)) == msg


def _frame(*items) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1garbage",
        _frame(),
        _frame("ping"),
        _frame(1 << 5 | 20, "a", "tcp://a:1", "b", 1),  # arity
        _frame(2 << 5 | 20, "a", "tcp://a:1", "b", 1, []),  # another wire version
        _frame(1 << 5 | 30, "a", "tcp://a:1", "b", 1, []),  # unknown kind
        _frame(1 << 5 | 20, "", "tcp://a:1", "b", 1, []),  # empty id
        _frame(1 << 5 | 20, "a", "tcp://a:1", "b", -1, []),  # negative seq
        _frame(1 << 5 | 20, "a", "tcp://a:1", "b", True, []),  # bool is not an int
        _frame(1 << 5 | 20, "a", "tcp://a:1", "b", 1, [[9, "n", "x", 1, 0, None]]),  # status
        _frame(1 << 5 | 20, "a", "tcp://a:1", "b", 1, [[0, "n", "x", 1, 0, {"k": b"\0"}]]),
        _frame(1 << 5 | 20, "a", "tcp://a:1", "b", 1, [[0, "n", "x", 1, 0, [1]]]),  # meta not a map
        _frame(1 << 5 | 23, "a", "tcp://a:1", "b", 1, []),  # reply not a bool
        raft_encode(HeartbeatRequest(term=1, src="a", dst="b", commit=0, ctx=b"")),
    ],
)
def test_codec_rejects_malformed(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_misdirected_messages_are_dropped() -> None:
    swim = Swim("a", "tcp://a:1", {}, rng=random.Random(0))
    swim.tick(0)
    assert swim.receive(Ping("b", "tcp://b:1", "someone-else", 1), 10) == []
    assert swim.stats["misdirected"] == 1
    out = swim.receive(Ping("b", "tcp://b:1", "a", 1), 10)
    acks = [o for o in out if isinstance(o.message, Ack)]
    assert len(acks) == 1 and acks[0].address == "tcp://b:1"
    # b is a stranger: a is asking it for its table too.
    assert [o.dst for o in out if isinstance(o.message, Sync)] == ["b"]


def test_incarnation_precedence_rules() -> None:
    swim = Swim("a", "tcp://a:1", {}, rng=random.Random(0))
    swim.tick(0)
    now = 10

    def tell(*updates: Update) -> None:
        nonlocal now
        now += 10
        swim.receive(Ping("b", "tcp://b:1", "a", now, updates), now)

    def state() -> tuple[Status, int]:
        m = swim.members()["c"]
        return m.status, m.incarnation

    tell(Update(ALIVE, "c", "tcp://c:1", 5, 1, {"v": 1}))
    assert state() == (ALIVE, 5)
    tell(Update(SUSPECT, "c", "tcp://c:1", 4))  # stale
    assert state() == (ALIVE, 5)
    tell(Update(SUSPECT, "c", "tcp://c:1", 5))  # suspect beats alive at the same incarnation
    assert state() == (SUSPECT, 5)
    tell(Update(ALIVE, "c", "tcp://c:1", 5, 2, {"v": 2}))  # ...but newer metadata is kept
    assert state() == (SUSPECT, 5) and swim.members()["c"].meta == {"v": 2}
    tell(Update(ALIVE, "c", "tcp://c:1", 6, 2, {"v": 2}))  # the refutation
    assert state() == (ALIVE, 6)
    tell(Update(DEAD, "c", "tcp://c:1", 6))  # dead beats alive and suspect
    assert state() == (DEAD, 6)
    tell(Update(ALIVE, "c", "tcp://c:1", 6, 3, {"v": 3}))  # no coming back at the same incarnation
    assert state() == (DEAD, 6)
    tell(Update(ALIVE, "c", "tcp://c2:1", 9_000, 0, {"v": 0}))  # a restart: higher incarnation
    assert state() == (ALIVE, 9_000)
    assert swim.members()["c"].address == "tcp://c2:1" and swim.members()["c"].meta == {"v": 0}
    changes = [(e.old_status, e.new_status) for e in swim.events() if e.member.id == "c"]
    assert changes == [
        (None, ALIVE),
        (ALIVE, SUSPECT),
        (SUSPECT, ALIVE),
        (ALIVE, DEAD),
        (DEAD, ALIVE),
    ]

    # About ourselves: a suspicion at our incarnation is refuted with a bump,
    # a stale one only re-announced.
    tell(Update(SUSPECT, "a", "tcp://a:1", 1))
    assert swim.incarnation == 2 and swim.stats["refuted"] == 1
    tell(Update(DEAD, "a", "tcp://a:1", 1))
    assert swim.incarnation == 2
    out = swim.receive(Ping("b", "tcp://b:1", "a", 99), now + 10)
    ack = next(o.message for o in out if isinstance(o.message, Ack))
    assert Update(ALIVE, "a", "tcp://a:1", 2, 0, {}) in ack.updates

    swim.forget("c")  # alive members cannot be forgotten...
    assert "c" in swim.members()
    tell(Update(LEFT, "c", "tcp://c2:1", 9_000))
    swim.forget("c")  # ...gone ones can
    assert "c" not in swim.members()


@pytest.mark.parametrize("status", [ALIVE, SUSPECT, DEAD])
def test_a_claim_about_us_at_the_highest_incarnation_never_breaks_our_encoder(status) -> None:
    """A claim about ourselves at the wire's highest incarnation (only a forger makes one)
    used to be answered with that number plus one, which the codec cannot encode: the
    node could then send no gossip at all.  The answer now stays at the top, counted."""
    from node.gossip.messages import MAX_INCARNATION

    swim = Swim("a", "tcp://a:1", {}, rng=random.Random(0))
    swim.tick(0)
    out = swim.receive(
        Ping("b", "tcp://b:1", "a", 1, (Update(status, "a", "tcp://a:1", MAX_INCARNATION),)), 10
    )
    assert swim.incarnation == MAX_INCARNATION
    assert swim.stats["unrefutable_claims"] == 1
    out += swim.tick(1000) + swim.receive(Ping("b", "tcp://b:1", "a", 2), 1010)
    assert out
    for o in out:
        assert decode(encode(o.message)) == o.message
