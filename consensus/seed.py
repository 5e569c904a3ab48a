"""Seeding a new node's storage with a snapshot: how a cluster restored from a backup
starts (consensus/driver.py `RaftNode.backup` took it).

Every first member of the new cluster gets the same snapshot, with the new
cluster's membership in it, and a hard state in the snapshot's term.  On start the
driver finds the snapshot (so it does not bootstrap), restores the state machine
from it and continues the log after its index; the first election is in a later
term than the backup's, so nothing the old cluster wrote can be mistaken for the
new one's.
"""

from __future__ import annotations

from consensus.storage import LogStore, SnapshotStore, StableStore
from consensus.types import HardState, SnapshotMeta


class NotEmpty(ValueError):
    """The storage already holds a node's state: seeding it would mix two histories."""


def is_empty(log: LogStore, stable: StableStore, snapshots: SnapshotStore) -> bool:
    return snapshots.latest() is None and stable.load() == HardState() and log.bounds() == (1, 0)


def seed(
    log: LogStore,
    stable: StableStore,
    snapshots: SnapshotStore,
    meta: SnapshotMeta,
    data: bytes,
) -> None:
    """Write `data` as the node's latest snapshot (described by `meta`), an empty
    log that continues it, and the hard state (term, no vote, committed up to it).
    The snapshot goes first: a crash after it leaves a node that starts from the
    snapshot in term 0, which is also correct (the term is an optimisation here)."""
    if not is_empty(log, stable, snapshots):
        raise NotEmpty("this node's storage is not empty")
    if meta.size != len(data):
        raise ValueError(f"snapshot size {meta.size} does not match its {len(data)} bytes")
    if not meta.membership.voters:
        raise ValueError("a seeded snapshot needs at least one voter")
    snapshots.create(meta, data)
    log.reset(meta.index)
    log.sync()
    stable.save(HardState(term=meta.term, vote=None, commit=meta.index), sync=True)
