"""The messages Raft peers exchange.

One frozen dataclass per message kind (h11's events are the model).  Every
message names its sender, its receiver and the sender's term; the core checks
the term once for all kinds before dispatching on the role.  The wire encoding
lives in consensus/codec.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.types import Entry, NodeId, SnapshotMeta


@dataclass(frozen=True, slots=True)
class VoteRequest:
    term: int
    src: NodeId
    dst: NodeId
    last_index: int
    last_term: int
    pre: bool = False  # a pre-vote: asks "would you vote for me?" without bumping terms
    transfer: bool = False  # sent after TimeoutNow: overrides the leader lease


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    src: NodeId
    dst: NodeId
    granted: bool
    pre: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    term: int
    src: NodeId
    dst: NodeId
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    term: int
    src: NodeId
    dst: NodeId
    success: bool
    # success: the follower's log matches the leader's up to `index`.
    # failure: `index` is the rejected prev_index; (hint_index, hint_term) let the
    # leader skip a whole conflicting term at once instead of one entry per round trip.
    index: int
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    term: int
    src: NodeId
    dst: NodeId
    commit: int
    ctx: bytes = b""  # a ReadIndex round's token, echoed back


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes = b""


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    term: int
    src: NodeId
    dst: NodeId
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    term: int
    src: NodeId
    dst: NodeId
    snapshot_index: int
    next_offset: int  # the byte the follower wants next; 0 restarts the transfer
    done: bool  # the whole snapshot is stored and installed


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the target starts an election at once."""

    term: int
    src: NodeId
    dst: NodeId


@dataclass(frozen=True, slots=True)
class CommitHint:
    """From a node that may not vote (removed, or a learner) to a candidate it
    rejected: entry `index` of term `log_term` is committed.  A voter whose lazily
    saved commit index went back in a crash may need it to learn that the change
    removing that node committed; the removed node, whose log may be longer, would
    otherwise refuse its votes forever while never campaigning itself."""

    term: int
    src: NodeId
    dst: NodeId
    index: int
    log_term: int


@dataclass(frozen=True, slots=True)
class ProposeRequest:
    """A follower forwards proposals to the leader it knows."""

    term: int
    src: NodeId
    dst: NodeId
    commands: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    term: int
    src: NodeId
    dst: NodeId
    index: int
    ctx: bytes


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | HeartbeatRequest
    | HeartbeatResponse
    | SnapshotRequest
    | SnapshotResponse
    | TimeoutNow
    | CommitHint
    | ProposeRequest
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: tuple[type, ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    CommitHint,
    ProposeRequest,
    ReadIndexRequest,
    ReadIndexResponse,
)
