"""What the leader knows of each follower's log, and its flow control.

All transitions live in this class (etcd's tracker/progress.go regrets having
them strewn around).  States:

- PROBE: we do not know where the follower's log ends; send one AppendRequest
  at a time and wait for its answer (or a heartbeat answer) before the next.
- REPLICATE: the follower's log is known to match up to `match`; stream
  AppendRequests optimistically, at most `max_inflight` unanswered at once.
- SNAPSHOT: the entries the follower needs are compacted away; a snapshot is
  being sent chunk by chunk.
"""

from __future__ import annotations

import enum
from collections import deque

from consensus.types import SnapshotMeta


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "inflight",
        "is_learner",
        "match",
        "max_inflight",
        "next",
        "paused",
        "read_ack_round",
        "recent_active",
        "snapshot",
        "snapshot_idle_ticks",
        "snapshot_offset",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False
        # last index carried by each unanswered AppendRequest, oldest first
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.recent_active = False
        self.is_learner = is_learner
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_offset = 0  # bytes the follower has acknowledged
        self.snapshot_idle_ticks = 0  # ticks since the last snapshot answer
        self.read_ack_round = 0  # newest ReadIndex heartbeat round it answered

    # -- state changes -------------------------------------------------
    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT and self.snapshot is not None:
            # the snapshot got through: continue right after it
            self.next = max(self.match + 1, self.snapshot.index + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, meta: SnapshotMeta) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.snapshot = meta
        self.snapshot_offset = 0
        self.snapshot_idle_ticks = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.paused = False
        self.inflight.clear()
        if state != ProgressState.SNAPSHOT:
            self.snapshot = None
            self.snapshot_offset = 0

    # -- sending -------------------------------------------------------
    def can_send(self) -> bool:
        if self.state == ProgressState.PROBE:
            return not self.paused
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) < self.max_inflight
        return False

    def sent_entries(self, last_index: int, count: int) -> None:
        """An AppendRequest carrying entries up to `last_index` went out."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state == ProgressState.PROBE:
            self.paused = True

    # -- answers ---------------------------------------------------------
    def maybe_update(self, index: int) -> bool:
        """A successful append answer for `index`; True if it taught us something."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.paused = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, next_probe: int) -> bool:
        """A rejection of an append whose prev_index was `rejected`; `next_probe`
        is where the conflict hints say the logs may agree.  False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an answer to a message older than what we know
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, next_probe + 1), self.match + 1)
        self.paused = False
        return True

    def describe(self) -> str:
        text = f"{self.state.value} match={self.match} next={self.next}"
        if self.inflight:
            text += f" inflight={len(self.inflight)}"
        if self.paused:
            text += " paused"
        if self.snapshot is not None:
            text += f" snapshot={self.snapshot.index}@{self.snapshot_offset}/{self.snapshot.size}"
        if self.is_learner:
            text += " learner"
        return text
