"""`ragraft restore FILE`: a new cluster that starts from a backup.

Offline, before any node of the new cluster has started: the backup is opened
(with this cluster's encryption key, or RAGRAFT_BACKUP_KEY when another cluster
took it), loaded into a real replicated state to check it against its own summary,
and written as the starting snapshot of every first node (consensus/seed.py), into
data directories that must be empty.  The new cluster's members are this
configuration's first nodes; nodes the old cluster had admitted at run time, and
its unspent join tokens, are forgotten (they were trusted by another cluster).
Users, API keys, tasks and the knowledge base come back as they were; tasks that
were running are handed back to the queue by the new cluster, as after any crash.

On several hosts, run it on each with --node for that host's node, and the same file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import msgpack

from consensus.cipher import Cipher, DecryptionError
from consensus.filestore import FileLogStore, FileSnapshotStore, FileStableStore
from consensus.seed import seed
from consensus.session import SessionTable
from consensus.types import Membership, SnapshotMeta
from node.backup import archive
from node.config import ClusterConfig, NodeSpec
from node.replica.peers import PeerKeys
from node.runtime.state import new_state
from node.secrets import holds_raft_state

Say = Callable[[str], None]


class RestoreError(Exception):
    """Nothing was written; the message says what to do."""


def restore(
    config: ClusterConfig,
    path: Path,
    only: list[str] | None = None,
    backup_key: str | None = None,
    say: Say = print,
) -> archive.Header:
    """Seed the first nodes of `config` (or those of `only`) from the backup at
    `path`; the backup's header.  `config` carries this cluster's secrets."""
    targets = _targets(config, only)
    busy = [spec for spec in targets if holds_raft_state(spec.data_dir)]
    if busy:
        raise RestoreError(
            f"{busy[0].data_dir / 'raft'} already holds node {busy[0].id}'s state: a restore "
            "starts a new cluster in empty data directories; stop that node and move its "
            "data directory away (or pass --data-dir)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RestoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header, payload = archive.decode(data)
    except archive.BadBackup as exc:
        raise RestoreError(f"{path}: {exc}") from None
    say(
        f"backup of cluster {header.cluster} at log index {header.index} (term {header.term}), "
        f"taken by {header.node}: {header.summary.describe()}"
    )
    plain = _open(header, payload, config, backup_key)
    state_bytes = _checked_and_rekeyed(plain, header, config)
    if config.encryption_key:
        state_bytes = Cipher.from_base64(config.encryption_key).seal(state_bytes)
    first = [spec for spec in config.nodes if not spec.join]
    membership = Membership(
        frozenset(spec.id for spec in first),
        frozenset(),
        tuple(sorted((spec.id, spec.raft_address) for spec in first)),
    )
    meta = SnapshotMeta(header.index, header.term, membership, len(state_bytes))
    for spec in targets:
        _seed_node(spec, meta, state_bytes, config.raft.segment_bytes)
        say(f"  {spec.id}: {spec.data_dir / 'raft'} starts from the backup")
    return header


def _targets(config: ClusterConfig, only: list[str] | None) -> list[NodeSpec]:
    first = [spec for spec in config.nodes if not spec.join]
    if not only:
        return first
    by_id = {spec.id: spec for spec in first}
    unknown = [node for node in only if node not in by_id]
    if unknown:
        raise RestoreError(
            f"{unknown[0]} is not one of this cluster's first nodes "
            f"({', '.join(by_id)}): a node that joins later starts empty and catches up"
        )
    return [by_id[node] for node in only]


def _open(
    header: archive.Header, payload: bytes, config: ClusterConfig, backup_key: str | None
) -> bytes:
    if not header.sealed:
        return payload
    key = backup_key or config.encryption_key
    if key is None:
        raise RestoreError(
            f"the backup is sealed with cluster {header.cluster}'s encryption key and this "
            "cluster has none: set RAGRAFT_BACKUP_KEY to that key"
        )
    try:
        return Cipher.from_base64(key).open(payload)
    except DecryptionError:
        which = "RAGRAFT_BACKUP_KEY" if backup_key else "this cluster's encryption key"
        raise RestoreError(
            f"{which} does not open the backup: it was sealed with cluster "
            f"{header.cluster}'s key; set RAGRAFT_BACKUP_KEY to it (the encryption_key of "
            "that cluster's secrets bundle)"
        ) from None
    except ValueError as exc:  # a key that is not base64 of 32 bytes
        raise RestoreError(f"RAGRAFT_BACKUP_KEY: {exc}") from None


def _checked_and_rekeyed(plain: bytes, header: archive.Header, config: ClusterConfig) -> bytes:
    """The state loaded into a real NodeState (so a backup that would not restore on
    a node fails here, before anything is written) and compared with its summary;
    then taken again without the old cluster's node keys and join tokens."""
    state = new_state(config)
    table = SessionTable(state)
    try:
        table.restore(plain)
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise RestoreError(f"the state inside the backup does not load: {exc}") from None
    found = archive.Summary.of(state)
    if found != header.summary:
        raise RestoreError(
            f"the state inside the backup is not what its header says "
            f"(found {found.describe()}, digest {found.kb_digest}; header: "
            f"{header.summary.describe()}, digest {header.summary.kb_digest})"
        )
    state.peers = PeerKeys()
    return table.snapshot()


def _seed_node(spec: NodeSpec, meta: SnapshotMeta, data: bytes, segment_bytes: int) -> None:
    """Written aside, then renamed into place: a restore that stops half-way leaves
    no half-seeded node behind (only the aside directory, replaced next time)."""
    spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    raft = spec.data_dir / "raft"
    aside = spec.data_dir / "raft.restoring"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(mode=0o700)
    log = FileLogStore(aside / "log", segment_bytes=segment_bytes)
    snapshots = FileSnapshotStore(aside / "snapshots")
    try:
        seed(log, FileStableStore(aside / "state"), snapshots, meta, data)
    finally:
        log.close()
        snapshots.close()
    if raft.exists():
        raft.rmdir()  # empty (checked above)
    os.replace(aside, raft)
    fd = os.open(spec.data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
