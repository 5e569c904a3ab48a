"""The backup file and `ragraft restore`, offline: a damaged, truncated or newer file
is refused with a reason; a restore refuses a data directory that holds a node,
a node that is not one of the first, a key that does not open the file and a
state that is not what its header says, and writes nothing then; a good restore
seeds every first node with the same snapshot, the new membership, and the state
without the old cluster's admitted node keys and join tokens.

The round trip through real clusters (a backup through a follower, a new cluster
started from it: same index digest, same tasks) is in tests/test_rag_cluster.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from consensus.cipher import Cipher, DecryptionError
from consensus.filestore import FileSnapshotStore, FileStableStore
from consensus.session import SessionTable
from node.backup import archive
from node.backup.restore import RestoreError, restore
from node.config import ClusterConfig, load
from node.replica import codec
from node.replica import commands as c
from node.replica.vocabulary import TaskParams, TaskType
from node.runtime.state import new_state

KEY = base64.b64encode(os.urandom(32)).decode()
TOML = """
[cluster]
name = "restored"
[security]
encryption_key = "{key}"
[[nodes]]
id = "n1"
host = "127.0.0.1"
raft_port = 17101
gossip_port = 17201
api_port = 18101
dashboard_port = 18301
data_dir = "data/n1"
[[nodes]]
id = "n2"
host = "127.0.0.1"
raft_port = 17102
gossip_port = 17202
api_port = 18102
dashboard_port = 18302
data_dir = "data/n2"
[[nodes]]
id = "n4"
host = "127.0.0.1"
raft_port = 17104
gossip_port = 17204
api_port = 18104
dashboard_port = 18304
data_dir = "data/n4"
join = true
"""


def config_in(root: Path, key: str = KEY) -> ClusterConfig:
    (root / "cluster.toml").write_text(TOML.format(key=key))
    return load(root / "cluster.toml", env={"RAGRAFT_INSECURE": "1"})


def a_backup(config: ClusterConfig, key: str | None = KEY, tamper: bool = False) -> bytes:
    """A state with tasks and an admitted node key, as a node's backup route writes it."""
    state = new_state(config)
    table = SessionTable(state)
    commands: list[c.Command] = [
        c.InitAccounts("hash", 1),
        c.Submit("t1", TaskType.NOOP, {"duration_ms": 1}, TaskParams(), "admin", 2),
        c.Submit("t2", TaskType.NOOP, {"duration_ms": 1}, TaskParams(), "admin", 3),
        c.AdmitNode("n9", "9" * 40, 4, by="admin"),
    ]
    for index, cmd in enumerate(commands, start=1):
        state.apply(index, codec.encode(cmd))
    assert state.peers.keys == {"n9": "9" * 40}
    summary = archive.Summary.of(state)
    if tamper:
        summary = archive.Summary(summary.kb_digest, summary.documents, 0, 7, summary.users)
    payload = table.snapshot()
    if key is not None:
        payload = Cipher.from_base64(key).seal(payload)
    header = archive.Header(
        archive.FORMAT,
        "old",
        "n3",
        len(commands),
        2,
        1234,
        key is not None,
        len(payload),
        archive.sha256(payload),
        summary,
    )
    return archive.encode(header, payload)


def test_a_file_that_is_not_a_whole_backup_is_refused_with_the_reason(tmp_path: Path) -> None:
    data = a_backup(config_in(tmp_path))
    header, payload = archive.decode(data)
    assert header.index == 4 and header.summary.tasks == 2 and header.sealed
    with pytest.raises(archive.BadBackup, match="not a ragraft backup"):
        archive.decode(b"PK\x03\x04" + data)
    with pytest.raises(archive.BadBackup, match="truncated"):
        archive.decode(data[:-10])
    with pytest.raises(archive.BadBackup, match="truncated"):
        archive.decode(data[:20])
    damaged = bytearray(data)
    damaged[-5] ^= 0xFF
    with pytest.raises(archive.BadBackup, match="checksum"):
        archive.decode(bytes(damaged))
    newer = archive.Header(**{**header.__dict__, "format": archive.FORMAT + 1})
    with pytest.raises(archive.BadBackup, match="newer than this ragraft reads"):
        archive.decode(archive.encode(newer, payload))


def test_a_restore_seeds_every_first_node_with_the_new_membership(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    file = tmp_path / "old.backup"
    file.write_bytes(a_backup(config))
    said: list[str] = []
    header = restore(config, file, say=said.append)
    assert header.cluster == "old" and len(said) == 3  # the header, then a line per node
    assert not (tmp_path / "data" / "n4").exists()  # a node that joins later starts empty
    seeded = []
    for node in ("n1", "n2"):
        raft = tmp_path / "data" / node / "raft"
        assert not (tmp_path / "data" / node / "raft.restoring").exists()
        snapshots = FileSnapshotStore(raft / "snapshots")
        meta = snapshots.latest()
        assert meta is not None and (meta.index, meta.term) == (4, 2)
        assert meta.membership.voters == {"n1", "n2"} and not meta.membership.learners
        assert dict(meta.membership.addresses)["n2"] == "tcp://127.0.0.1:17102"
        seeded.append(snapshots.read(meta, 0, meta.size))
        snapshots.close()
        stable = FileStableStore(raft / "state").load()
        assert (stable.term, stable.vote, stable.commit) == (2, None, 4)
    assert seeded[0] == seeded[1]  # one snapshot, as a leader would send it
    state = new_state(config)
    SessionTable(state).restore(Cipher.from_base64(KEY).open(seeded[0]))
    assert set(state.tasks.tasks) == {"t1", "t2"} and state.accounts.initialized
    assert state.peers.keys == {}  # the old cluster's admitted node is not trusted here


def test_restore_refuses_and_writes_nothing(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    file = tmp_path / "old.backup"
    file.write_bytes(a_backup(config))
    data = tmp_path / "data"
    with pytest.raises(RestoreError, match="n4 is not one of this cluster's first nodes"):
        restore(config, file, only=["n4"], say=lambda _: None)
    other_key = base64.b64encode(os.urandom(32)).decode()
    other = config_in(tmp_path, key=other_key)
    with pytest.raises(RestoreError, match="set RAGRAFT_BACKUP_KEY"):
        restore(other, file, say=lambda _: None)
    with pytest.raises(RestoreError, match="RAGRAFT_BACKUP_KEY does not open"):
        restore(other, file, backup_key=other_key, say=lambda _: None)
    file.write_bytes(a_backup(config, tamper=True))
    with pytest.raises(RestoreError, match="not what its header says"):
        restore(config, file, say=lambda _: None)
    file.write_bytes(a_backup(config, key=None)[:-1])
    with pytest.raises(RestoreError, match="truncated"):
        restore(config, file, say=lambda _: None)
    assert not data.exists()
    # one node restored on its own host; a second try over it is refused
    file.write_bytes(a_backup(config))
    restore(other, file, only=["n2"], backup_key=KEY, say=lambda _: None)
    assert (data / "n2" / "raft").is_dir() and not (data / "n1").exists()
    with pytest.raises(RestoreError, match="already holds node n2's state"):
        restore(config, file, say=lambda _: None)
    assert not (data / "n1").exists()


def test_an_unsealed_backup_restores_into_a_cluster_that_seals_it(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    file = tmp_path / "plain.backup"
    file.write_bytes(a_backup(config, key=None))
    restore(config, file, say=lambda _: None)
    snapshots = FileSnapshotStore(tmp_path / "data" / "n1" / "raft" / "snapshots")
    meta = snapshots.latest()
    assert meta is not None
    sealed = snapshots.read(meta, 0, meta.size)
    snapshots.close()
    assert b"duration_ms" not in sealed  # the tasks' input is sealed
    with pytest.raises(DecryptionError):
        Cipher.from_base64(base64.b64encode(os.urandom(32)).decode()).open(sealed)
    state = new_state(config)
    SessionTable(state).restore(Cipher.from_base64(KEY).open(sealed))
    assert set(state.tasks.tasks) == {"t1", "t2"}
