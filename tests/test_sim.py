"""The deterministic simulation of the production Raft driver (tests/sim/):
2,000 random seeds, fixed scenarios for the driver's own duties (repairing a
half-installed snapshot, membership changes that were overwritten, stop while
a write is under way, refusing writes without a quorum), determinism, and
proof that the checker catches broken code.

Any failing seed is replayed with `python -m tests.sim --seed N -v`.
SIM_SEEDS=N overrides the number of seeds of the big run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consensus.driver import RaftNode
from consensus.errors import ChangeLost, InvalidConfChange, NoQuorum
from consensus.types import Role
from tests.sim.__main__ import coverage, report, run_many
from tests.sim.checker import SimFailure
from tests.sim.world import Sim, run_seed

CI_SEEDS = int(os.environ.get("SIM_SEEDS", "2000"))


# ---------------------------------------------------------------------- the big run
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_random_seeds():
    start = time.perf_counter()
    failed: list[tuple[int, str]] = []
    all_stats: list[dict] = []
    for seed, ok, error, stats in run_many(range(CI_SEEDS), "ci", None, jobs=2, chunksize=25):
        all_stats.append(stats)
        if not ok:
            failed.append((seed, error))
    elapsed = time.perf_counter() - start
    print("\n" + report(all_stats, elapsed))
    if failed:
        failed.sort()
        seeds = [s for s, _ in failed]
        lines = [f"{len(failed)} of {CI_SEEDS} seeds failed: {seeds}"]
        lines += [f"  replay: python -m tests.sim --seed {s} -v" for s in seeds[:10]]
        lines.append("first failure:")
        lines.append(failed[0][1])
        pytest.fail("\n".join(lines), pytrace=False)
    # The harness must keep exercising what it claims to (a silent regression
    # in the workload or the nemesis would make every seed pass trivially).
    cov = coverage(all_stats)
    assert cov["leader change"] > 0.9, cov
    assert cov["crash"] > 0.85, cov
    assert cov["failpoint crash"] > 0.3, cov
    assert cov["graceful stop"] > 0.3, cov
    assert cov["snapshot install"] > 0.5, cov
    assert cov["membership change"] > 0.4, cov
    assert cov["read checked"] > 0.8, cov
    assert cov["write acked"] > 0.9, cov
    assert cov["retry deduplicated"] > 0.3, cov


# ---------------------------------------------------------------------- determinism
def test_same_seed_same_trace():
    a = run_seed(1234)
    b = run_seed(1234)
    assert a.ok, a.error
    assert a.trace_hash == b.trace_hash
    assert a.stats == b.stats


def test_replay_in_another_process_gives_the_same_trace():
    """`python -m tests.sim --seed N` replays exactly what CI ran, even with
    another PYTHONHASHSEED (set iteration order must not leak into the run)."""
    expected = run_seed(77).trace_hash
    env = dict(os.environ, PYTHONHASHSEED="4242")
    out = subprocess.run(
        [sys.executable, "-m", "tests.sim", "--seed", "77"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "seed 77: ok" in out.stdout
    assert f"trace {expected}" in out.stdout, out.stdout


def test_the_simulated_nodes_run_the_production_driver():
    sim = scenario(nodes=3, clients=1)
    assert all(type(n.raft) is RaftNode for n in sim.up_nodes())
    assert sim.current_leader().raft.metrics["fsyncs"] > 0  # its persist ran, "in a thread"
    sim.quiesce()


# ---------------------------------------------------------------------- scenarios
QUIET = {
    "nemesis": "false",
    "operator": "false",
    "crash_write_prob": "0",
    "net.drop_prob": "0",
    "net.dup_prob": "0",
    "net.slow_prob": "0",
    "pre_vote": "true",
    "check_quorum": "true",
    "session_ttl_ms": "3600000",
}


def scenario(seed: int = 1, **knobs) -> Sim:
    overrides = dict(QUIET)
    overrides.update({k.replace("__", "."): str(v) for k, v in knobs.items()})
    sim = Sim(seed, "ci", 0, overrides)
    sim.setup()
    sim.wait_for(lambda: sim.current_leader() is not None, 60, "a first leader")

    def leader_committed_in_its_term() -> bool:
        leader = sim.current_leader()
        return leader is not None and leader.raw.term_at(leader.raw.commit_index) == leader.raw.term

    sim.wait_for(leader_committed_in_its_term, 60, "the first leader's no-op to commit")
    return sim


def ids(sim: Sim) -> list[str]:
    return [n.id for n in sim.live_nodes()]


def other_leader(sim: Sim, old, term: int):
    for node in sim.up_nodes():
        if (
            node is not old
            and node.raw is not None
            and node.raw.role is Role.LEADER
            and node.raw.term > term
        ):
            return node
    return None


def test_isolated_leader_is_replaced_then_rejoins():
    sim = scenario(nodes=3, clients=3, election_ticks=5)
    old = sim.current_leader()
    term = old.raw.term
    sim.net.isolate(old.id, ids(sim))
    sim.wait_for(lambda: other_leader(sim, old, term) is not None, 15 * 5, "a new leader")
    acked = sim.stats["writes_acked"]
    sim.run_ticks(30)
    assert old.raw.role is not Role.LEADER  # check-quorum: it noticed it lost its followers
    assert sim.stats["writes_acked"] > acked  # the majority kept going
    new = other_leader(sim, old, term)
    sim.net.heal_all()
    sim.wait_for(
        lambda: old.raw.leader == new.id and old.raw.applied_index >= new.raw.applied_index,
        30,
        "the old leader catching up",
    )
    sim.quiesce()


def test_leader_that_cannot_hear_steps_down():
    sim = scenario(nodes=5, clients=2, election_ticks=4)
    old = sim.current_leader()
    term = old.raw.term
    sim.net.isolate(old.id, ids(sim), inbound=True, outbound=False)
    sim.wait_for(lambda: old.raw.role is not Role.LEADER, 3 * 4, "check-quorum step-down")
    sim.wait_for(lambda: other_leader(sim, old, term) is not None, 15 * 4, "a new leader")
    sim.net.heal_all()
    sim.quiesce()


def test_swizzle_then_recovery():
    sim = scenario(nodes=5, clients=3, election_ticks=4)
    everyone = ids(sim)
    sim.net.swizzle(everyone, everyone, step=200)
    sim.run_ticks(21)  # 5 cuts then 5 heals, 2 ticks apart: no majority in the middle of it
    assert not sim.net.cut
    acked = sim.stats["writes_acked"]
    sim.wait_for(lambda: sim.stats["writes_acked"] > acked + 5, 60, "writes after the swizzle")
    sim.quiesce()


def test_power_loss_everywhere_keeps_acknowledged_writes():
    sim = scenario(
        nodes=3, clients=4, election_ticks=4, disk_max=30, think_max=0, torn_writes="true"
    )
    sim.run_ticks(20)
    acked = sim.stats["writes_acked"]
    assert acked > 5
    for node in sim.up_nodes():
        sim.crash(node)
    sim.run_ticks(40)
    sim.quiesce()  # checks that every acknowledged write is applied everywhere, once
    assert sim.stats["crashes"] == 3


def test_new_learner_gets_a_snapshot_in_chunks_and_is_promoted():
    sim = scenario(
        nodes=3, clients=3, election_ticks=4, snapshot_every=5, max_snapshot_chunk=48, think_max=0
    )
    sim.run_ticks(15)
    leader = sim.current_leader()
    assert leader.raw.first_index > 2  # the leader compacted its log
    learner = sim.new_node()
    added = sim.spawn(
        leader, lambda: leader.raft.add_member(learner.id, sim.address(learner.id), 10.0)
    )
    sim.wait_for(lambda: added.done, 200, "add_member")
    assert added.error is None, added.error
    assert learner.id in leader.raw.membership.voters
    assert learner.raw.stats["snapshots_installed"] >= 1 and sim.stats["snapshot_chunks0_sent"] >= 1
    sim.quiesce()


def test_leader_removing_itself_hands_over_and_is_refused_with_two_voters():
    sim = scenario(nodes=2, clients=0, election_ticks=4)
    old = sim.current_leader()
    refused = sim.spawn(old, lambda: old.raft.remove_member(old.id, 5.0))
    sim.wait_for(lambda: refused.done, 5, "the refusal")
    assert isinstance(refused.error, InvalidConfChange) and "transfer leadership" in str(
        refused.error
    )

    sim = scenario(nodes=3, clients=1, election_ticks=4)
    old = sim.current_leader()
    removed = sim.spawn(old, lambda: old.raft.remove_member(old.id, 10.0))
    sim.wait_for(lambda: removed.done, 100, "the removal")
    assert removed.error is None, removed.error
    others = [n for n in sim.up_nodes() if n is not old]
    sim.wait_for(
        lambda: any(n.raw.role is Role.LEADER for n in others), 30, "a remaining voter taking over"
    )
    sim.quiesce()
    assert old.retired


# -------------------------------------------------- the driver's own duties (issue 12)
def lag_then_snapshot(sim: Sim):
    """Crash a follower, let the others compact past what it has, restart it:
    the leader must send it a snapshot."""
    leader = sim.current_leader()
    follower = next(n for n in sim.up_nodes() if n is not leader)
    sim.crash(follower)
    sim.run_ticks(30)
    assert leader.raw.first_index > follower.disk.log.bounds()[1] + 1, (
        "no compaction past the follower"
    )
    return leader, follower


def snapshot_install_crash(**knobs) -> Sim:
    sim = scenario(
        nodes=3, clients=3, election_ticks=4, snapshot_every=4, think_max=0, down_max=2000, **knobs
    )
    _, follower = lag_then_snapshot(sim)
    # The follower comes back and loses power between storing the leader's
    # snapshot and resetting its log (the failpoint right before log.reset).
    follower.armed = "log.reset"
    sim.restart(follower.id)
    sim.wait_for(lambda: not follower.up, 60, "the power cut inside the snapshot install")
    snap = follower.disk.snaps.latest()
    assert snap is not None and follower.disk.log.bounds()[1] < snap.index  # the window is open
    sim.restart(follower.id)
    sim.run_ticks(30)
    sim.quiesce()
    return sim


def test_a_crash_inside_a_snapshot_install_is_repaired_at_the_next_start():
    """Defect 1 of issue 12: the snapshot is stored, the log not yet reset, and
    the power goes out.  The next start must reset the log to the snapshot
    (on main the next append raised "append at index N outside [1, M]" on
    every restart)."""
    sim = snapshot_install_crash()
    assert sim.stats["log_repairs"] >= 1


def test_without_the_repair_the_half_installed_snapshot_breaks_the_node(monkeypatch):
    monkeypatch.setattr(RaftNode, "_reconcile_log", lambda self, snapshot: None)
    with pytest.raises(SimFailure, match="outside|lost|does not hold|no entry before"):
        snapshot_install_crash()


def test_a_log_that_disagrees_with_the_snapshot_loses_no_acknowledged_entry(monkeypatch):
    """Defect 1 (b): the log holds another term at the snapshot's index.  The
    driver must reset it before acknowledging new entries, or the next start
    drops entries a leader has counted towards commit."""
    from consensus.types import Entry, EntryKind

    sim = scenario(
        nodes=3, clients=3, election_ticks=4, snapshot_every=4, think_max=0, down_max=2000
    )
    leader, follower = lag_then_snapshot(sim)
    # What a crash between finish() and reset() can leave: the old log runs past
    # the new snapshot with entries of an older term.
    last = follower.disk.log.bounds()[1]
    fake = [Entry(1, i, EntryKind.NORMAL, b"") for i in range(last + 1, leader.raw.first_index + 3)]
    follower.disk.log.append(fake)
    follower.disk.log.sync()
    follower.armed = "log.reset"
    sim.restart(follower.id)
    sim.wait_for(lambda: not follower.up, 60, "the power cut inside the snapshot install")
    sim.restart(follower.id)
    sim.run_ticks(20)
    sim.quiesce()  # every acknowledged write present and applied once, everywhere


def deposed_leaders_removal() -> tuple[Sim, object]:
    sim = scenario(nodes=3, clients=2, election_ticks=4, check_quorum="false", pre_vote="false")
    old = sim.current_leader()
    victim = next(n for n in sim.up_nodes() if n is not old)
    sim.net.isolate(old.id, ids(sim))
    removal = sim.spawn(old, lambda: old.raft.remove_member(victim.id, 30.0))
    term = old.raw.term
    sim.wait_for(lambda: other_leader(sim, old, term) is not None, 60, "a new leader")
    new = other_leader(sim, old, term)
    sim.wait_for(
        lambda: new.raw.commit_index > old.raw.last_index,
        60,
        "the new leader passing the removal's index",
    )
    sim.net.heal_all()
    sim.wait_for(lambda: removal.done, 60, "the deposed leader's answer")
    assert victim.id in new.raw.membership.members()  # it was never removed
    sim.quiesce()
    return sim, removal


def test_a_membership_change_overwritten_by_a_new_leader_is_reported_lost():
    """Defect 2 of issue 12: on main, remove_member answered success once the
    applied index passed the change's index, whatever entry was there."""
    _, removal = deposed_leaders_removal()
    assert isinstance(removal.error, ChangeLost), removal.error


def test_stop_waits_for_the_write_under_way_before_closing_the_stores():
    """Defect 5 of issue 12: stop() closed the stores while the persist was
    still writing in its worker thread (here: a slow disk)."""
    sim = scenario(nodes=3, clients=4, think_max=0, election_ticks=10, disk_min=60, disk_max=100)
    leader = sim.current_leader()
    sim.wait_for(
        lambda: leader.raft._persisting is not None and not leader.raft._persisting.done(),
        20,
        "a write",
    )
    sim.stop_and_restart(leader)
    sim.run_ticks(30)
    sim.quiesce()
    assert sim.stats["graceful_stops"] == 1


def test_stop_without_waiting_is_caught(monkeypatch):
    async def hasty_stop(self):  # today's main: close the stores under the running write
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await self._transport.close()
        for store in (self._log, self._stable, self._snaps):
            store.close()

    monkeypatch.setattr(RaftNode, "stop", hasty_stop)
    with pytest.raises(SimFailure, match="closed"):
        test_stop_waits_for_the_write_under_way_before_closing_the_stores()


def test_a_node_cut_off_from_the_quorum_refuses_writes_within_two_seconds():
    """Production timing (50 ms ticks, 10-tick elections): an isolated follower
    and an isolated leader answer NoQuorum within 2 s, so clients move on."""
    for isolate_leader in (False, True):
        sim = scenario(nodes=3, clients=0, election_ticks=10, tick_ms=50)
        leader = sim.current_leader()
        node = leader if isolate_leader else next(n for n in sim.up_nodes() if n is not leader)
        held = sim.spawn(node, lambda n=node: n.raft.propose(b"held", timeout=30.0))
        sim.net.isolate(node.id, ids(sim))
        t0 = sim.loop.time()
        sim.wait_for(lambda h=held: h.done, 60, "an answer to the held write")
        assert isinstance(held.error, NoQuorum) and held.error.handed_on, held.error
        assert sim.loop.time() - t0 < 2.0, f"held for {sim.loop.time() - t0:.2f} s"
        fresh = sim.spawn(node, lambda n=node: n.raft.propose(b"new", timeout=30.0))
        t1 = sim.loop.time()
        sim.wait_for(lambda f=fresh: f.done, 60, "an answer to a new write")
        assert isinstance(fresh.error, NoQuorum) and not fresh.error.handed_on
        assert sim.loop.time() - t1 < 1.0
        sim.net.heal_all()
        sim.quiesce()


@pytest.mark.parametrize("seed", [146217, 178171])
def test_a_single_voter_that_loses_power_never_reuses_its_term(seed):
    """Soak seeds 146217 and 178171 (one voter): elected, it appended its term's first
    entries in the same Ready and lost power before the log's fsync, before the new term
    was saved; it restarted in the old term, won the same term again and wrote other
    entries at the same indices (log matching broken).  The driver now makes a new term
    durable before it writes any entry of it; both seeds fail without that."""
    result = run_seed(seed)
    assert result.ok, result.error


def test_a_follower_keeps_entries_that_overtook_a_snapshot_in_transfer():
    """Soak seed 172293: appends took a follower's log past the index of a snapshot
    still arriving in chunks; the last chunk reset its log, dropping an entry it had
    acknowledged, and the leader, which counted it, probed the follower at that index
    for ever (no final commit within 180 ticks).  Fails without the fix in
    RawNode._handle_snapshot."""
    result = run_seed(172293)
    assert result.ok, result.error


def test_an_operator_stops_removed_nodes_before_a_leader_is_needed():
    """Soak seed 174027 (no pre-vote, no check-quorum): removed nodes that never heard
    of their removal campaigned at ever higher terms and deposed each leader before it
    could send a new member its snapshot.  The quiet phase now stops nodes that a
    committed membership no longer lists, as an operator would, before it waits for
    a leader (the Raft thesis, 4.2.3, on removed servers)."""
    result = run_seed(174027)
    assert result.ok, result.error


def test_a_removed_leader_that_alone_knows_its_removal_committed_is_not_stopped_early():
    """Soak seed 204593: a leader committed its own removal and crashed before telling
    the remaining voter; that voter still needed its vote.  Stopping it as removed left
    the voter campaigning alone for ever; the quiet phase now stops a removed node only
    once every voter of the new membership has applied the removal."""
    result = run_seed(204593)
    assert result.ok, result.error


# ---------------------------------------------------------------------- the checker has teeth
def first_failure(seeds, overrides=None) -> str | None:
    for seed in seeds:
        result = run_seed(seed, overrides=overrides)
        if not result.ok:
            return result.error
    return None


def _figure8(monkeypatch):
    from consensus import quorum
    from consensus.raft import RawNode

    def commit_by_counting_any_term(self):
        match = {peer: pr.match for peer, pr in self._progress.items()}
        index = quorum.committed_index(self.membership.voters, match)
        if index > self.log.committed:
            self.log.commit_to(index)
            self._apply_committed_conf()
            self._release_reads_after_commit()
            return True
        return False

    monkeypatch.setattr(RawNode, "_maybe_commit", commit_by_counting_any_term)


def _ack_before_fsync(monkeypatch):
    from consensus.raft import RawNode

    monkeypatch.setattr(RawNode, "_send_after_persist", RawNode._send)


def _two_changes_in_flight(monkeypatch):
    from consensus.raft import RawNode

    original = RawNode.propose_conf_change

    def without_the_pending_check(self, change):
        self._pending_conf_index = 0
        return original(self, change)

    monkeypatch.setattr(RawNode, "propose_conf_change", without_the_pending_check)


def _no_log_repair(monkeypatch):
    monkeypatch.setattr(RaftNode, "_reconcile_log", lambda self, snapshot: None)


def _success_by_index(monkeypatch):
    def settle(self, committed):  # what main did: success once the index is applied
        for index in [i for i in self._conf_waits if i <= committed[-1].index]:
            fut = self._conf_waits.pop(index)[2]
            if not fut.done():
                fut.set_result(None)

    monkeypatch.setattr(RaftNode, "_settle_conf_waits", settle)


def _retry_with_a_new_request(monkeypatch):
    from tests.sim.workload import Workload

    def retry_everything(self, write, maybe_written):  # what the API client did (defect 3)
        if self.sim.chaos or write.cmd.startswith(b"final"):
            self.sim.at(self.rng.randint(0, 100), self._write, write)

    monkeypatch.setattr(Workload, "_retry_or_give_up", retry_everything)


def _forget_by_index(monkeypatch):
    from consensus.session import SessionTable

    original = SessionTable.apply

    def forgetful(self, index, data):  # what the table did: forget after N indices
        answer = original(self, index, data)
        for session in self._sessions.values():
            for seq in [s for s, (i, _) in session.results.items() if i < index - 3]:
                del session.results[seq]
        return answer

    monkeypatch.setattr(SessionTable, "apply", forgetful)


def _votes_for_stale_logs(monkeypatch):
    from consensus.log import RaftLog

    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)


def _reads_without_a_round(monkeypatch):
    from consensus.raft import RawNode

    monkeypatch.setattr(
        RawNode,
        "_leader_read",
        lambda self, ctx, requester: self._answer_read(ctx, self.log.committed, requester),
    )


def _fsync_that_does_nothing(monkeypatch):
    from consensus.memstore import MemoryLogStore

    monkeypatch.setattr(MemoryLogStore, "sync", lambda self: None)


BREAKAGES = [
    # (breakage, seeds it must be caught within, knobs, what the failure names)
    (_figure8, 30, None, "commit rule|commit safety|lost"),
    (_ack_before_fsync, 10, None, "durable|lost"),
    (
        _two_changes_in_flight,
        60,
        {"operator_every_min": "1", "operator_every_max": "3"},
        "one membership change",
    ),
    (_no_log_repair, 30, {"failpoint": "log.reset"}, "outside|lost|no entry before|does not hold"),
    (
        _success_by_index,
        40,
        {
            "check_quorum": "false",
            "pre_vote": "false",
            "operator_every_min": "1",
            "operator_every_max": "3",
        },
        "reported success",
    ),
    (_retry_with_a_new_request, 10, {"session_share": "0"}, "exactly once"),
    (_forget_by_index, 20, None, "exactly once"),
    (_votes_for_stale_logs, 30, None, "leader completeness|commit|lost"),
    (_reads_without_a_round, 60, None, "linearizab|commit"),
    (_fsync_that_does_nothing, 10, None, "durable|lost"),
]


@pytest.mark.parametrize(
    ("breakage", "within", "knobs", "expected"),
    BREAKAGES,
    ids=[b[0].__name__.strip("_") for b in BREAKAGES],
)
def test_the_checker_catches_a_deliberate_breakage(monkeypatch, breakage, within, knobs, expected):
    import re

    breakage(monkeypatch)
    error = first_failure(range(within), knobs)
    assert error is not None, f"{breakage.__name__} went unnoticed in {within} seeds"
    assert "replay: python -m tests.sim --seed" in error
    assert re.search(expected, error.splitlines()[0]), error.splitlines()[0]
