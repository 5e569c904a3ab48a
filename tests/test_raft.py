"""Unit tests of the pure Raft core, one feature at a time, on tests/raft_harness.py."""

from __future__ import annotations

import ast
import pathlib

import pytest

from consensus.errors import ConfChangeInProgress, InvalidConfChange, NoLeader, TransferInProgress
from consensus.messages import (
    AppendRequest,
    AppendResponse,
    CommitHint,
    HeartbeatRequest,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
)
from consensus.raft import RaftConfig, RawNode
from consensus.types import ConfChange, ConfOp, Entry, EntryKind, Role, SnapshotMeta
from tests.raft_harness import Net

IDS = ["n1", "n2", "n3"]


def committed_everywhere(net: Net, data: bytes) -> bool:
    return all(any(d == data for _, d in p.applied) for p in net.peers.values())


# ---------------------------------------------------------------- purity
def test_core_does_no_io():
    """The core must stay pure: no asyncio, sockets, clocks, threads or files."""
    forbidden = {
        "asyncio",
        "zmq",
        "socket",
        "time",
        "os",
        "threading",
        "select",
        "io",
        "pathlib",
        "datetime",
    }
    core = pathlib.Path(__file__).parent.parent / "consensus"
    for name in [
        "raft.py",
        "log.py",
        "progress.py",
        "quorum.py",
        "types.py",
        "messages.py",
        "errors.py",
    ]:
        tree = ast.parse((core / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not forbidden & set(mods), f"{name} imports {mods}"
        assert "open(" not in (core / name).read_text(), name


# ---------------------------------------------------------------- elections
def test_randomized_timeout_elects_one_leader():
    net = Net(IDS, seed=7)
    for _ in range(60):
        net.tick()
        if net.leaders():
            break
    assert len(net.leaders()) == 1
    leader = net.leaders()[0]
    assert all(p.raw.leader == leader for p in net.peers.values())
    assert net.raw(leader).term == 2  # bootstrap entry is term 1; first election term 2


def test_timeouts_are_randomized_within_bounds():
    timeouts = set()
    for seed in range(50):
        net = Net(["a", "b", "c"], seed=seed, election_ticks=10)
        timeouts.add(net.raw("a")._randomized_timeout)
    assert min(timeouts) >= 10 and max(timeouts) < 20 and len(timeouts) > 3


def test_leader_appends_noop_and_commits_it():
    net = Net(IDS)
    net.elect("n1")
    raw = net.raw("n1")
    last = raw.entries(raw.last_index, raw.last_index + 1)[0]
    assert last.data == b"" and last.term == raw.term
    assert all(p.raw.commit_index == last.index for p in net.peers.values())


def test_pre_vote_keeps_partitioned_node_from_bumping_terms():
    net = Net(IDS)
    net.elect("n1")
    term = net.raw("n1").term
    net.isolate("n3")
    net.tick(100, nodes=["n3"])
    assert net.raw("n3").term == term  # pre-vote never won, so no term inflation
    assert net.raw("n3").role == Role.PRE_CANDIDATE
    net.heal()
    net.tick(3)
    assert net.raw("n1").role == Role.LEADER and net.raw("n1").term == term


def test_without_pre_vote_an_isolated_node_inflates_its_term():
    net = Net(IDS, pre_vote=False, check_quorum=False)
    net.elect("n1")
    net.isolate("n3")
    net.tick(100, nodes=["n3"])
    assert net.raw("n3").term > net.raw("n1").term


def test_check_quorum_leader_steps_down_when_isolated():
    net = Net(IDS)
    net.elect("n1")
    net.isolate("n1")
    net.tick(25, nodes=["n1"])
    assert net.raw("n1").role == Role.FOLLOWER


def test_leader_lease_ignores_disruptive_vote_requests():
    net = Net(IDS)
    net.elect("n1")
    term = net.raw("n1").term
    raw2 = net.raw("n2")
    raw2.step(VoteRequest(term + 5, "n3", "n2", 999, term + 4))
    assert raw2.term == term and raw2.stats["ignored_in_lease"] == 1


def test_vote_waits_for_persistence():
    net = Net(IDS)
    raw = net.raw("n2")
    raw.step(VoteRequest(5, "n1", "n2", 10, 4))
    rd = raw.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "n1" and rd.must_sync
    assert not rd.messages and len(rd.messages_after_persist) == 1
    assert rd.messages_after_persist[0].granted


def test_overwritten_entries_are_not_acknowledged_after_persist():
    """Soak seed 33659: a follower took entries from the term-1 leader, then, before
    its next Ready, a term-2 leader overwrote them. The acknowledgement to the first
    leader must not leave after the persist: the entries it promises are gone."""
    net = Net(IDS)
    raw = net.raw("n2")
    base = raw.log.last_index()  # the bootstrap membership entry, committed
    raw.step(AppendRequest(2, "n1", "n2", base, 1, (Entry(2, base + 1, data=b"a"),), base))
    raw.step(AppendRequest(2, "n1", "n2", base + 1, 2, (Entry(2, base + 2, data=b"b"),), base))
    raw.step(AppendRequest(3, "n3", "n2", base + 1, 2, (Entry(3, base + 2, data=b"c"),), base))
    rd = raw.ready()
    assert [e.data for e in rd.entries] == [b"a", b"c"]
    acks = [m for m in rd.messages_after_persist if isinstance(m, AppendResponse)]
    assert [(m.dst, m.index) for m in acks if m.success] == [("n1", base + 1), ("n3", base + 2)]


def test_candidate_with_stale_log_loses():
    net = Net(IDS)
    net.elect("n1")
    net.isolate("n3")
    net.raw("n1").propose(b"x")
    net.deliver()
    net.heal()
    net.raw("n3").campaign()
    net.deliver()
    assert net.raw("n3").role != Role.LEADER


# ---------------------------------------------------------------- replication
def test_proposals_commit_and_apply_everywhere():
    net = Net(IDS)
    net.elect("n1")
    for i in range(20):
        net.raw("n1").propose(b"cmd%d" % i)
    net.deliver()
    for p in net.peers.values():
        assert [d for _, d in p.applied] == [b"cmd%d" % i for i in range(20)]


def test_follower_forwards_proposals_to_leader():
    net = Net(IDS)
    net.elect("n1")
    net.raw("n3").propose(b"from-follower")
    net.deliver()
    assert committed_everywhere(net, b"from-follower")


def test_proposal_without_leader_raises():
    net = Net(IDS)
    with pytest.raises(NoLeader):
        net.raw("n2").propose(b"x")


def test_batching_many_proposals_into_one_append():
    net = Net(IDS)
    net.elect("n1")
    net.sent.clear()
    for i in range(100):
        net.raw("n1").propose(b"p%03d" % i)
    net.process("n1")
    appends = [m for m in net.sent if isinstance(m, AppendRequest) and m.dst == "n2"]
    assert len(appends) == 1 and len(appends[0].entries) == 100


def test_batches_are_size_bounded():
    net = Net(IDS, max_msg_bytes=1000)
    net.elect("n1")
    net.sent.clear()
    for i in range(20):
        net.raw("n1").propose(b"x" * 200)
    net.process("n1")
    appends = [m for m in net.sent if isinstance(m, AppendRequest) and m.dst == "n2"]
    assert len(appends) > 1
    assert all(sum(e.size() for e in a.entries) <= 1000 or len(a.entries) == 1 for a in appends)
    assert sum(len(a.entries) for a in appends) == 20  # pipelined: all sent without waiting
    net.deliver()
    assert len(net.peers["n3"].applied) == 20


def test_inflight_limit_bounds_unanswered_appends():
    net = Net(IDS, max_msg_bytes=100, max_inflight=3)
    net.elect("n1")
    net.cut.add(("n2", "n1"))  # n2's answers are lost
    net.sent.clear()
    for i in range(30):
        net.raw("n1").propose(b"y" * 90)
    net.process("n1")
    to_n2 = [m for m in net.sent if isinstance(m, AppendRequest) and m.dst == "n2" and m.entries]
    assert len(to_n2) == 3
    net.deliver()
    net.heal()
    net.tick(2)
    assert len(net.peers["n2"].applied) == 30


def test_fast_backtracking_skips_divergent_terms():
    net = Net(IDS)
    net.elect("n1")
    # n1 writes many entries that only it holds, in its term
    net.isolate("n1")
    for i in range(200):
        net.raw("n1").propose(b"lost%d" % i)
    net.deliver()
    # the others elect n2, which commits its own entries
    net.heal()
    net.isolate("n1")
    net.elect("n2")
    for i in range(5):
        net.raw("n2").propose(b"kept%d" % i)
    net.deliver()
    net.heal()
    net.sent.clear()
    net.tick(3)
    rejections = [
        m
        for m in net.sent
        if type(m).__name__ == "AppendResponse" and m.src == "n1" and not m.success
    ]
    assert len(rejections) <= 3, "conflict hints should skip the divergent term in one step"
    assert [d for _, d in net.peers["n1"].applied if d.startswith(b"kept")] == [
        b"kept%d" % i for i in range(5)
    ]
    assert not any(d.startswith(b"lost") for _, d in net.peers["n1"].applied)


def test_only_current_term_entries_commit_by_counting():
    """Figure 8 of the Raft paper: an old-term entry stored on a majority is not
    committed by counting replicas; only an entry of the leader's own term is."""
    net = Net(IDS)
    net.elect("n1")
    net.cut |= {("n1", "n2"), ("n1", "n3")}
    net.raw("n1").propose(b"old")  # term 2, reaches nobody
    net.deliver()
    old_index = net.raw("n1").last_index
    net.tick(25, nodes=["n1"])  # check-quorum: n1 steps down
    net.heal()
    for peer in net.peers.values():
        peer.raw._election_elapsed = 100  # leader leases expired
    raw1 = net.raw("n1")
    raw1.campaign()  # its log (with "old") is the most up to date: it wins
    net.deliver(until=lambda: raw1.role == Role.LEADER)
    # From now on nothing from n1 reaches the others, so n2's answer below is
    # fabricated as a slow network could deliver it: n2 stores "old", not the no-op.
    net.cut |= {("n1", "n2"), ("n1", "n3")}
    net.deliver()
    noop_index = raw1.last_index
    assert noop_index == old_index + 1 and raw1.term_at(old_index) < raw1.term
    before = raw1.commit_index
    from consensus.messages import AppendResponse

    raw1.step(AppendResponse(raw1.term, "n2", "n1", True, old_index))
    assert raw1.commit_index == before < old_index  # a majority holds it, yet not committed
    raw1.step(AppendResponse(raw1.term, "n2", "n1", True, noop_index))
    assert raw1.commit_index == noop_index  # committed together with the no-op


# ---------------------------------------------------------------- restart
def test_restart_recovers_log_and_term():
    net = Net(IDS)
    net.elect("n1")
    for i in range(5):
        net.raw("n1").propose(b"r%d" % i)
    net.deliver()
    term = net.raw("n2").term
    net.restart("n2")
    assert net.raw("n2").term == term
    net.tick(2)
    assert [d for _, d in net.peers["n2"].applied] == [b"r%d" % i for i in range(5)]


# ---------------------------------------------------------------- ReadIndex
def test_read_index_on_leader_and_follower():
    net = Net(IDS)
    net.elect("n1")
    net.raw("n1").propose(b"w")
    net.deliver()
    net.raw("n1").read_index(b"r1")
    net.raw("n3").read_index(b"r3")
    net.deliver()
    commit = net.raw("n1").commit_index
    assert [(r.index, r.ctx) for r in net.peers["n1"].reads] == [(commit, b"r1")]
    assert [(r.index, r.ctx) for r in net.peers["n3"].reads] == [(commit, b"r3")]


def test_read_index_needs_a_quorum():
    net = Net(IDS)
    net.elect("n1")
    net.isolate("n1")
    net.raw("n1").read_index(b"stale?")
    net.tick(3, nodes=["n1"])
    assert net.peers["n1"].reads == []


def test_read_index_batches_reads_into_one_round():
    net = Net(IDS)
    net.elect("n1")
    net.sent.clear()
    for i in range(10):
        net.raw("n1").read_index(b"%d" % i)
    net.deliver()
    heartbeats = [m for m in net.sent if isinstance(m, HeartbeatRequest) and m.dst == "n2"]
    assert len(heartbeats) == 1
    assert len(net.peers["n1"].reads) == 10


# ---------------------------------------------------------------- snapshots
def n3_behind_a_snapshot(entries: int) -> tuple[Net, SnapshotMeta]:
    """n1 leads; n3, cut off, misses `entries` entries, which n1 then snapshots (in
    64-byte chunks when sent).  n3 is still cut off."""
    net = Net(IDS, max_snapshot_chunk=64)
    net.elect("n1")
    net.isolate("n3")
    for i in range(entries):
        net.raw("n1").propose(b"s%d" % i)
    net.deliver()
    return net, net.snapshot("n1")


def test_lagging_follower_catches_up_through_chunked_snapshot():
    net, meta = n3_behind_a_snapshot(30)
    assert net.raw("n1").first_index == meta.index + 1
    net.heal()
    net.sent.clear()
    net.tick(3)
    chunks = [m for m in net.sent if isinstance(m, SnapshotRequest) and m.dst == "n3"]
    assert len(chunks) > 3 and chunks[-1].done
    raw3 = net.raw("n3")
    assert raw3.commit_index >= meta.index and raw3.snapshot_meta == meta
    assert net.peers["n3"].snaps.latest() == meta
    net.raw("n1").propose(b"after")
    net.deliver()
    assert net.peers["n3"].applied[-1][1] == b"after"


def test_a_snapshot_finishing_after_appends_overtook_it_keeps_the_acknowledged_entries():
    """Soak seed 172293: while a snapshot was on its way in chunks, an append took the
    follower's log past the snapshot's index and the follower acknowledged it; the last
    chunk then reset the log to the snapshot, dropping the acknowledged entry (a quorum
    may have counted it)."""
    net, meta = n3_behind_a_snapshot(10)
    net.raw("n1").propose(b"after")
    net.deliver()
    raw1, raw2, raw3 = net.raw("n1"), net.raw("n2"), net.raw("n3")
    behind = raw3.last_index
    assert behind < meta.index
    data = net.peers["n1"].snaps.read(meta, 0, meta.size)
    chunks = [
        SnapshotRequest(
            raw1.term, "n1", "n3", meta, off, data[off : off + 64], off + 64 >= meta.size
        )
        for off in range(0, meta.size, 64)
    ]
    assert len(chunks) > 2
    raw3.step(chunks[0])
    net.process("n3")
    overtaking = raw2.entries(behind + 1, raw2.last_index + 1)
    raw3.step(
        AppendRequest(
            raw1.term,
            "n1",
            "n3",
            behind,
            raw2.term_at(behind),
            tuple(overtaking),
            meta.index - 1,  # as in the soak: the commit index had not reached the snapshot
        )
    )
    net.process("n3")
    acked = [m for m in net.sent if isinstance(m, AppendResponse) and m.src == "n3"]
    assert acked and acked[-1].success and acked[-1].index == raw2.last_index
    for chunk in chunks[1:]:
        raw3.step(chunk)
        net.process("n3")
    assert raw3.last_index == raw2.last_index  # nothing acknowledged was dropped
    assert raw3.commit_index >= meta.index
    assert net.peers["n3"].log.bounds()[1] == raw2.last_index
    net.restart("n3")
    assert net.raw("n3").last_index == raw2.last_index


def test_restart_after_snapshot_install():
    net, meta = n3_behind_a_snapshot(10)
    net.heal()
    net.tick(3)
    net.restart("n3")
    assert net.raw("n3").snapshot_meta == meta and net.raw("n3").commit_index >= meta.index


# ---------------------------------------------------------------- membership
def test_add_learner_catch_up_promote_then_remove():
    net = Net(IDS)
    net.elect("n1")
    for i in range(10):
        net.raw("n1").propose(b"m%d" % i)
    net.deliver()
    net.add_empty("n4")
    net.raw("n1").propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, "n4", "addr-n4"))
    net.deliver()
    net.tick(2)
    raw1 = net.raw("n1")
    assert "n4" in raw1.membership.learners
    assert raw1.match_index("n4") == raw1.last_index  # caught up
    assert net.raw("n4").role == Role.FOLLOWER and net.raw("n4").status()["role"] == "learner"
    assert [d for _, d in net.peers["n4"].applied] == [b"m%d" % i for i in range(10)]
    # a learner never campaigns
    net.tick(50, nodes=["n4"])
    assert net.raw("n4").role == Role.FOLLOWER
    raw1.propose_conf_change(ConfChange(ConfOp.PROMOTE, "n4"))
    net.deliver()
    assert "n4" in net.raw("n2").membership.voters
    assert net.raw("n4").membership.address_of("n4") == "addr-n4"
    raw1.propose_conf_change(ConfChange(ConfOp.REMOVE, "n2"))
    net.deliver()
    assert net.raw("n1").membership.voters == {"n1", "n3", "n4"}
    net.raw("n1").propose(b"after-remove")
    net.deliver()
    assert net.peers["n4"].applied[-1][1] == b"after-remove"


def test_commit_of_a_membership_change_is_announced_only_once_durable():
    """Soak seed 56934: a leader told a follower it had committed a REMOVE, then lost
    its lazily saved commit index in a crash: the removed voter stopped campaigning
    while the restarted leader, back on the old membership, waited for its vote.
    Messages of the Ready that commits a change leave after its persist."""
    net = Net(IDS)
    net.elect("n1")
    raw = net.raw("n1")
    readies = []
    take = raw.ready

    def recording_ready():
        rd = take()
        readies.append(rd)
        return rd

    raw.ready = recording_ready  # type: ignore[method-assign]
    raw.propose_conf_change(ConfChange(ConfOp.REMOVE, "n3"))
    net.deliver()
    assert "n3" not in raw.membership.voters
    committing = [rd for rd in readies if any(e.kind == EntryKind.CONF for e in rd.committed)]
    assert committing, "the leader never committed the change"
    for rd in committing:
        assert rd.must_sync and rd.hard_state is not None
        assert not [m for m in rd.messages if getattr(m, "commit", 0) >= rd.hard_state.commit]


def test_a_removed_node_tells_a_candidate_what_is_committed():
    """Soak seed 33645: the voter left after a leader removed itself had lost its lazily
    saved commit index in a crash, so it still counted the removed node as a voter;
    the removed node, whose log was longer, refused its votes and never campaigned.
    The removed node's rejection carries a CommitHint; a matching log adopts it."""
    net = Net(IDS)
    net.elect("n1")
    net.raw("n1").propose_conf_change(ConfChange(ConfOp.REMOVE, "n3"))
    net.deliver()
    leader, removed = net.raw("n1"), net.raw("n3")
    # the leader stops replicating to a removed node: say the commit once more
    removed.step(HeartbeatRequest(leader.term, "n1", "n3", leader.commit_index))
    net.deliver()
    assert "n3" not in removed.membership.voters
    net.tick(30, nodes=["n3"])  # past the leader lease, in which votes are ignored
    removed.step(VoteRequest(removed.term + 1, "n2", "n3", 0, 0, pre=True))
    hints = [m for m in removed.ready().messages if isinstance(m, CommitHint)]
    assert [(h.dst, h.index) for h in hints] == [("n2", removed.commit_index)]

    # the receiving side: a hint for an entry we hold advances the commit index
    other = Net(IDS)
    raw = other.raw("n2")
    base = raw.log.last_index()
    raw.step(AppendRequest(2, "n1", "n2", base, 1, (Entry(2, base + 1, data=b"a"),), base))
    raw.step(CommitHint(2, "n3", "n2", base + 1, 1))  # another entry there: ignored
    assert raw.commit_index == base
    raw.step(CommitHint(2, "n3", "n2", base + 1, 2))
    assert raw.commit_index == base + 1


def test_a_leader_ignores_commit_hints():
    """Soak seed 61208: a hint that reached a candidate after it won would let a leader
    commit an earlier term's entry without counting; a leader commits by counting."""
    net = Net(IDS)
    net.elect("n1")
    leader = net.raw("n1")
    net.isolate("n1")
    leader.propose(b"x")
    net.process("n1")
    before = leader.commit_index
    last = leader.log.last_index()
    leader.step(CommitHint(leader.term, "n3", "n1", last, leader.log.term_at(last)))
    assert leader.commit_index == before < last


def test_one_conf_change_at_a_time():
    """A second membership change is refused while the first is uncommitted, and
    accepted (and committed) as soon as the first has committed."""
    net = Net(IDS)
    net.elect("n1")
    raw1 = net.raw("n1")
    net.cut |= {("n1", "n2"), ("n1", "n3")}
    raw1.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, "n4", "a"))
    first = raw1.last_index
    second = ConfChange(ConfOp.ADD_LEARNER, "n5", "b")
    # persisted and sent, but neither follower hears of it: the change is in flight
    net.deliver()
    net.tick(2, nodes=["n1"])
    assert raw1.role == Role.LEADER and raw1.commit_index < first
    with pytest.raises(ConfChangeInProgress):
        raw1.propose_conf_change(second)
    assert raw1.last_index == first  # the refused change appended nothing
    net.heal()
    for _ in range(10):
        if raw1.commit_index >= first:
            break
        net.tick()
    assert raw1.commit_index >= first and raw1.membership.learners == {"n4"}
    raw1.propose_conf_change(second)  # the first has committed: no longer refused
    assert raw1.last_index == first + 1
    net.deliver()
    assert raw1.commit_index >= first + 1
    assert all(net.raw(n).membership.learners == {"n4", "n5"} for n in IDS)


def test_removed_leader_steps_down_and_others_elect():
    net = Net(IDS)
    net.elect("n1")
    net.raw("n1").propose_conf_change(ConfChange(ConfOp.REMOVE, "n1"))
    net.deliver()
    assert net.raw("n1").role == Role.FOLLOWER
    # at least the follower that acknowledged the change learns its commit at once
    assert any(net.raw(n).membership.voters == {"n2", "n3"} for n in ("n2", "n3"))
    for _ in range(60):
        net.tick(nodes=["n2", "n3"])
        if net.raw("n2").role == Role.LEADER or net.raw("n3").role == Role.LEADER:
            break
    leader = [n for n in ("n2", "n3") if net.raw(n).role == Role.LEADER]
    assert leader
    net.raw(leader[0]).propose(b"two-voters")
    net.deliver()
    assert all(net.raw(n).membership.voters == {"n2", "n3"} for n in IDS)
    assert any(d == b"two-voters" for _, d in net.peers["n3"].applied)


# ---------------------------------------------------------------- leadership transfer
def test_leadership_transfer():
    net = Net(IDS)
    net.elect("n1")
    net.isolate("n3")
    net.raw("n1").propose(b"t")
    net.deliver()
    net.heal()
    net.raw("n1").transfer_leadership("n3")
    with pytest.raises(TransferInProgress):
        net.raw("n1").propose(b"during")
    net.deliver()
    net.tick(1)
    assert net.raw("n3").role == Role.LEADER
    assert any(isinstance(m, TimeoutNow) for m in net.sent)
    net.raw("n3").propose(b"new-leader")
    net.deliver()
    assert committed_everywhere(net, b"new-leader")


def test_config_validation():
    with pytest.raises(ValueError):
        RaftConfig(id="x", election_ticks=1, heartbeat_ticks=1)


def test_ready_must_be_advanced_before_next():
    net = Net(IDS)
    raw: RawNode = net.raw("n1")
    raw.campaign()
    raw.ready()
    with pytest.raises(RuntimeError):
        raw.ready()


def test_restart_prefers_snapshot_over_a_disagreeing_log():
    """A crash between storing a received snapshot and resetting the log leaves
    both on disk: the snapshot wins, a log that disagrees with it is dropped."""
    import random

    from consensus.memstore import MemorySnapshotStore
    from consensus.types import Entry, HardState, Membership, RestoredState, SnapshotMeta

    membership = Membership(frozenset(IDS))
    snap = SnapshotMeta(index=5, term=3, membership=membership, size=0)
    stale = [Entry(term=2, index=i) for i in range(1, 9)]  # term 2 at index 5: disagrees
    raw = RawNode(
        RaftConfig(id="n1"),
        RestoredState(HardState(3, None, 5), snap, stale),
        MemorySnapshotStore(),
        random.Random(1),
    )
    assert raw.last_index == 5 and raw.first_index == 6
    agreeing = [Entry(term=3, index=i) for i in range(4, 9)]  # compaction to 5 was lost
    raw = RawNode(
        RaftConfig(id="n1"),
        RestoredState(HardState(3, None, 5), snap, agreeing),
        MemorySnapshotStore(),
        random.Random(1),
    )
    assert raw.last_index == 8 and raw.first_index == 6


def test_leader_cannot_remove_itself_from_two_voters():
    net = Net(["n1", "n2"])
    net.elect("n1")
    with pytest.raises(InvalidConfChange, match="transfer leadership to n2 first"):
        net.raw("n1").propose_conf_change(ConfChange(ConfOp.REMOVE, "n1"))
    net.raw("n1").propose_conf_change(ConfChange(ConfOp.REMOVE, "n2"))  # the other one is fine
    net.deliver()
    assert net.raw("n1").membership.voters == {"n1"}
