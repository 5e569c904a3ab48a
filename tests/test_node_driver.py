"""The asyncio driver (consensus/driver.py) on an in-process network and real
file stores: propose from any node, read-your-writes, dedup, ReadIndex,
failover, snapshots and restart.  Real processes: test_consensus_processes.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from consensus.driver import NodeOptions, ProposalTimeout, RaftNode
from consensus.errors import NoQuorum
from consensus.filestore import FileLogStore, FileSnapshotStore, FileStableStore
from consensus.kvserver import KVStateMachine
from consensus.memtransport import MemoryNetwork
from consensus.session import Request

IDS = ["n1", "n2", "n3"]
MEMBERS = {n: f"mem://{n}" for n in IDS}


def put(key: str, value: bytes = b"v") -> bytes:
    return msgpack.packb(["put", key, value], use_bin_type=True)


class Cluster:
    def __init__(self, root: Path, net: MemoryNetwork, **options) -> None:
        self.root = root
        self.net = net
        self.options = dict(tick_ms=10, retry_interval=0.3, proposal_timeout=5.0, **options)
        self.nodes: dict[str, RaftNode] = {}
        self.machines: dict[str, KVStateMachine] = {}

    async def start(self, node: str, join: bool = False) -> RaftNode:
        d = self.root / node
        options = NodeOptions(
            id=node,
            initial_members={} if join else MEMBERS,
            known_addresses=MEMBERS,
            **self.options,
        )
        machine = KVStateMachine()
        raft = RaftNode(
            options,
            machine,
            FileLogStore(d / "log"),
            FileStableStore(d / "state"),
            FileSnapshotStore(d / "snaps"),
            self.net.transport(node),
        )
        await raft.start()
        self.nodes[node], self.machines[node] = raft, machine
        return raft

    async def stop(self, node: str) -> None:
        await self.nodes.pop(node).stop()

    async def leader(self) -> RaftNode:
        for _ in range(500):
            leaders = [n for n in self.nodes.values() if n.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no leader")

    async def close(self) -> None:
        for node in list(self.nodes):
            await self.stop(node)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def cluster_factory(tmp_path):
    def make(**options):
        return Cluster(tmp_path, MemoryNetwork(seed=1), **options)

    return make


def test_propose_on_any_node_reads_its_own_write(cluster_factory):
    async def main():
        c = cluster_factory()
        for n in IDS:
            await c.start(n)
        leader = await c.leader()
        for node in c.nodes.values():
            applied = await node.propose(put(f"k-{node.id}", node.id.encode()))
            # applied locally before propose() returned: read-your-writes
            assert c.machines[node.id].data[f"k-{node.id}"] == node.id.encode()
            assert applied.result == applied.index
        follower = next(n for n in c.nodes.values() if n is not leader)
        index = await follower.read_barrier()
        assert index >= 4 and follower.raw.applied_index >= index
        await c.close()

    run(main())


def test_a_client_request_retried_on_another_node_applies_once(cluster_factory):
    async def main():
        c = cluster_factory()
        for n in IDS:
            await c.start(n)
        await c.leader()
        request = Request("client-1", int(time.time() * 1000), seq=1, ack_below=1)
        first = await c.nodes["n2"].propose(put("once"), request=request)
        again = await c.nodes["n3"].propose(put("once"), request=request)
        assert again == first
        await asyncio.sleep(0.1)
        assert all(n.session.duplicates == 1 for n in c.nodes.values())
        await c.close()

    run(main())


def test_leader_isolation_fails_over(cluster_factory):
    async def main():
        c = cluster_factory()
        for n in IDS:
            await c.start(n)
        old = await c.leader()
        await old.propose(put("before"))
        c.net.isolate(old.id)
        survivor = next(n for n in c.nodes.values() if n is not old)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await survivor.propose(put("after"))
        assert loop.time() - t0 < 2.0
        assert survivor.leader != old.id
        # the isolated old leader cannot commit on its own
        with pytest.raises((ProposalTimeout, NoQuorum)):
            await old.propose(put("lost?"), timeout=0.5)
        c.net.heal()
        await asyncio.sleep(0.5)
        assert all("after" in m.data for m in c.machines.values())
        await c.close()

    run(main())


def test_snapshot_and_restart_from_disk(cluster_factory):
    async def main():
        c = cluster_factory(snapshot_entries=50)
        for n in IDS:
            await c.start(n)
        await c.leader()
        await c.stop("n3")
        await asyncio.gather(*(c.nodes["n1"].propose(put(f"k{i}")) for i in range(300)))
        assert c.nodes["n1"].metrics["snapshots_taken"] >= 1
        restarted = await c.start("n3")
        await restarted.read_barrier()
        assert len(c.machines["n3"].data) == 300
        assert restarted.raw.stats["snapshots_installed"] >= 1
        # a full restart of everyone recovers from disk
        await c.close()
        for n in IDS:
            await c.start(n)
        await c.leader()
        await c.nodes["n1"].read_barrier()
        assert all(len(m.data) == 300 for m in c.machines.values())
        await c.close()

    run(main())


def test_add_and_remove_member(cluster_factory):
    async def main():
        c = cluster_factory()
        for n in IDS:
            await c.start(n)
        leader = await c.leader()
        await leader.propose(put("x"))
        # n4 starts empty (no bootstrap entry) and learns everything from the leader
        await c.start("n4", join=True)
        await leader.add_member("n4", "mem://n4")
        assert leader.raw.membership.voters == {"n1", "n2", "n3", "n4"}
        await asyncio.sleep(0.2)
        assert c.machines["n4"].data.get("x") == b"v"
        victim = next(n for n in IDS if n != leader.id)
        await leader.remove_member(victim)
        assert victim not in leader.raw.membership.members()
        await leader.propose(put("after-remove"))
        await asyncio.sleep(0.2)
        assert c.machines["n4"].data.get("after-remove") == b"v"
        await c.close()

    run(main())


def test_encryption_at_rest_leaves_no_plaintext_on_disk(tmp_path):
    """With a cipher, the log, the hard state and the snapshots hold only ciphertext."""
    from consensus.cipher import Cipher

    marker = b"TOP-SECRET-MARKER-7f3a"

    async def main():
        key = Cipher.generate_key()
        c = Cluster(
            tmp_path, MemoryNetwork(seed=3), snapshot_entries=20, cipher=Cipher.from_base64(key)
        )
        for n in IDS:
            await c.start(n)
        await c.leader()
        for i in range(40):  # enough to take a snapshot on every node
            await c.nodes["n2"].propose(put(f"k{i}", marker + b"-%d" % i))
        await asyncio.sleep(0.2)
        assert all(n.metrics["snapshots_taken"] >= 1 for n in c.nodes.values())
        await c.close()
        # restart from the encrypted files: the state comes back
        for n in IDS:
            await c.start(n)
        await c.leader()
        await c.nodes["n1"].read_barrier()
        assert c.machines["n1"].data["k39"] == marker + b"-39"
        await c.close()

    run(main())
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 9
    for path in files:
        assert marker not in path.read_bytes(), f"plaintext found in {path}"
        assert b"k39" not in path.read_bytes(), f"plaintext key found in {path}"


def test_without_a_cipher_the_marker_is_on_disk(tmp_path):
    """The control for the test above: the grep does find plaintext when it is there."""
    marker = b"PLAIN-MARKER-91c2"

    async def main():
        c = Cluster(tmp_path, MemoryNetwork(seed=3))
        for n in IDS:
            await c.start(n)
        await c.leader()
        await c.nodes["n1"].propose(put("k", marker))
        await c.close()

    run(main())
    assert any(marker in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- issue 12 regressions
def _stores(root: Path):
    return (
        FileLogStore(root / "log"),
        FileStableStore(root / "state"),
        FileSnapshotStore(root / "snaps"),
    )


def _half_installed_snapshot(
    root: Path, log_terms: list[int], snap_index: int, snap_term: int
) -> None:
    """What a power cut between SnapshotStore.finish() and LogStore.reset() leaves on
    disk: the snapshot from the leader, and the old log beside it."""
    from consensus.session import SessionTable
    from consensus.types import Entry, EntryKind, HardState, Membership, SnapshotMeta

    log, stable, snaps = _stores(root)
    log.append([Entry(t, i, EntryKind.NORMAL, b"") for i, t in enumerate(log_terms, start=1)])
    log.sync()
    stable.save(HardState(snap_term, None, 0), sync=True)
    data = SessionTable(KVStateMachine()).snapshot()
    membership = Membership(frozenset(IDS), frozenset(), tuple(sorted(MEMBERS.items())))
    snaps.create(SnapshotMeta(snap_index, snap_term, membership, len(data)), data)
    log.close()
    snaps.close()


@pytest.mark.parametrize("log_terms", [[1] * 6, [1] * 14], ids=["log-ends-before", "log-disagrees"])
def test_a_half_installed_snapshot_is_repaired_and_loses_no_acknowledged_entry(tmp_path, log_terms):
    """Defect 1 of issue 12, on the production file stores.  (a) a log that ends
    before the snapshot made every restart fail on the next append ("append at
    index 11 outside [1, 7]"); (b) a log that disagrees at the snapshot's index
    accepted and acknowledged entries that the next restart dropped."""
    from consensus.messages import AppendRequest
    from consensus.types import Entry, EntryKind

    root = tmp_path / "n3"
    _half_installed_snapshot(root, log_terms, snap_index=10, snap_term=2)

    async def start() -> RaftNode:
        options = NodeOptions(id="n3", initial_members=MEMBERS, known_addresses=MEMBERS, tick_ms=10)
        node = RaftNode(
            options, KVStateMachine(), *_stores(root), MemoryNetwork(seed=1).transport("n3")
        )
        await node.start()
        return node

    async def main():
        node = await start()
        assert node._log.bounds() == (11, 10)  # reset to the snapshot, durably
        entry = Entry(2, 11, EntryKind.NORMAL, b"")
        node._on_message(AppendRequest(2, "n1", "n3", 10, 2, (entry,), 11))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if node.raw.last_index == 11 and node.raw.log.persisted == 11:
                break
        assert node.fatal is None, node.fatal
        assert node.raw.last_index == 11
        await node.stop()
        again = await start()  # the acknowledged entry survives the next restart
        assert again.raw.last_index == 11 and again.raw.term_at(11) == 2
        await again.stop()

    run(main())


def test_stop_waits_for_a_persist_still_running_in_its_thread(tmp_path):
    """Defect 5 of issue 12: stop() closed the stores while _persist was still
    writing in its worker thread."""
    import threading

    events: list[str] = []

    class SlowLog(FileLogStore):
        def sync(self) -> None:
            events.append("sync started")
            threading.Event().wait(0.3)  # a slow disk
            super().sync()
            events.append("sync done")

        def close(self) -> None:
            events.append("close")
            super().close()

    async def main():
        root = tmp_path / "n1"
        options = NodeOptions(id="n1", initial_members={"n1": "mem://n1"}, tick_ms=10)
        node = RaftNode(
            options,
            KVStateMachine(),
            SlowLog(root / "log"),
            FileStableStore(root / "state"),
            FileSnapshotStore(root / "snaps"),
            MemoryNetwork(seed=1).transport("n1"),
        )
        await node.start()
        await node.wait_for_leader(5)
        await node.propose(put("a"))
        events.clear()
        task = asyncio.ensure_future(node.propose(put("b")))
        while "sync started" not in events:
            await asyncio.sleep(0.005)
        await node.stop()  # while the fsync of "b" is under way
        with pytest.raises(Exception):  # noqa: B017 - NodeStopped, or it committed just before
            await task
        assert events.index("sync done") < events.index("close"), events

    run(main())


def test_entries_that_cannot_be_opened_or_decoded_are_skipped_on_every_node(tmp_path):
    """Nothing in the log stops a node: an entry that is not sealed with the cluster's
    key, one sealed but not an envelope, and plain garbage are each skipped the same
    way on every node (counted in bad_entries), and the log goes on applying."""
    from consensus.cipher import Cipher

    async def main():
        cipher = Cipher.from_base64(Cipher.generate_key())
        c = Cluster(tmp_path, MemoryNetwork(seed=5), cipher=cipher)
        for n in IDS:
            await c.start(n)
        leader = await c.leader()
        await leader.propose(put("before"))
        # Written straight into the leader's log, past the driver that seals proposals:
        # what a peer without the key, or a bug, could replicate.
        for data in (b"\x00" * 40, put("unsealed"), cipher.seal(b"\xc1 not msgpack")):
            leader.raw.propose(data)
        await leader.propose(put("after"))
        for node in c.nodes.values():
            await node.read_barrier()
        for n in IDS:
            assert c.nodes[n].fatal is None
            assert c.nodes[n].metrics["bad_entries"] == 3, n
            assert set(c.machines[n].data) == {"before", "after"}, n
        await c.close()

    run(main())


def _seed_dir(d: Path, meta, data: bytes) -> None:
    from consensus.seed import seed

    log, stable, snaps = (
        FileLogStore(d / "log"),
        FileStableStore(d / "state"),
        FileSnapshotStore(d / "snaps"),
    )
    try:
        seed(log, stable, snaps, meta, data)
    finally:
        log.close()
        snaps.close()


def test_a_backup_seeds_a_new_cluster_that_continues_it(tmp_path):
    """RaftNode.backup on a follower after a read barrier, then consensus/seed.py
    into three empty data directories: the new cluster (other addresses, a fresh
    network) starts from the backup's state, dedups the old sessions' retries, and
    takes new writes in a later term."""
    from consensus.seed import NotEmpty
    from consensus.types import Membership, SnapshotMeta

    async def main():
        old = Cluster(tmp_path / "old", MemoryNetwork(seed=1), snapshot_entries=40)
        for n in IDS:
            await old.start(n)
        await old.leader()
        request = Request("client-1", int(time.time() * 1000), seq=1, ack_below=1)
        first = await old.nodes["n1"].propose(put("once"), request=request)
        await asyncio.gather(*(old.nodes["n2"].propose(put(f"k{i}")) for i in range(100)))
        follower = next(n for n in old.nodes.values() if not n.is_leader)
        barrier = await follower.read_barrier()
        taken = follower.backup()
        assert taken.index >= barrier and taken.term >= 1
        expected = dict(old.machines[follower.id].data)
        await old.close()

        addresses = {n: f"mem://new-{n}" for n in IDS}
        membership = Membership(frozenset(IDS), frozenset(), tuple(sorted(addresses.items())))
        meta = SnapshotMeta(taken.index, taken.term, membership, len(taken.data))
        for n in IDS:
            _seed_dir(tmp_path / "new" / n, meta, taken.data)
        with pytest.raises(NotEmpty):  # a second restore into the same directory
            _seed_dir(tmp_path / "new" / "n1", meta, taken.data)

        new = Cluster(tmp_path / "new", MemoryNetwork(seed=2))
        for n in IDS:
            await new.start(n)
        leader = await new.leader()
        assert leader.raw.term > taken.term
        assert all(m.data == expected for m in new.machines.values())
        again = await new.nodes["n3"].propose(put("once"), request=request)
        assert again == first  # the old cluster's session table came along
        await new.nodes["n2"].propose(put("after"))
        await new.nodes["n1"].read_barrier()
        assert all("after" in m.data and len(m.data) == 102 for m in new.machines.values())
        await new.close()

    run(main())


def test_a_node_too_old_for_an_entry_stops_there_and_goes_on_once_upgraded(tmp_path):
    """n3 runs a release that does not read one entry's format (NewerFormat): it stops
    applying at that entry instead of skipping it (which would make it differ), says
    why, and the others go on; restarted with a release that reads it (a plain
    machine), it applies the entry and everything after from its own disk."""
    from consensus.fsm import NewerFormat

    class OldRelease(KVStateMachine):
        def apply(self, index: int, command: bytes):
            if msgpack.unpackb(command, raw=False)[1].startswith("v2:"):
                raise NewerFormat("a command of format 2; this node reads up to 1: upgrade it")
            return super().apply(index, command)

    async def main():
        c = Cluster(tmp_path, MemoryNetwork(seed=3))
        for n in IDS:
            await c.start(n)
        old = c.nodes["n3"]
        old.session.machine = c.machines["n3"] = OldRelease()
        await c.leader()
        await c.nodes["n1"].propose(put("before"))
        await c.nodes["n1"].propose(put("v2:new"))
        await c.nodes["n1"].propose(put("after"))
        failed = await asyncio.wait_for(old.wait_failed(), 5)
        assert isinstance(failed, NewerFormat) and old.fatal is failed
        assert "before" in c.machines["n3"].data
        assert "v2:new" not in c.machines["n3"].data and "after" not in c.machines["n3"].data
        with pytest.raises(Exception):  # noqa: B017 - it takes nothing any more
            await old.propose(put("refused"), timeout=0.5)
        # the two others are a quorum: the cluster goes on
        await c.nodes["n2"].propose(put("meanwhile"))
        await c.stop("n3")
        upgraded = await c.start("n3")
        await upgraded.read_barrier()
        assert {"before", "v2:new", "after", "meanwhile"} <= set(c.machines["n3"].data)
        await c.close()

    run(main())
