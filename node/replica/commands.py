"""Every command of the replicated log, as a frozen dataclass.

A command carries everything its application needs, times and ids included
(`at`: milliseconds since the epoch by the proposer's clock; `task_id`: minted
by the proposing node), so that applying it is deterministic on every replica.
codec.py is their one wire form; NodeState dispatches on their type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    NO_QUOTA,
    KeyScope,
    Quota,
    TaskParams,
    TaskType,
    UserRole,
)

# ---------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class Submit:
    task_id: str
    type: TaskType
    input: dict[str, Any]
    params: TaskParams
    owner: str
    at: int
    priority: int = DEFAULT_PRIORITY
    max_attempts: int | None = None  # None: the cluster's retry policy
    idem_key: str | None = None  # the client's Idempotency-Key, scoped by owner
    fingerprint: str | None = None  # what the key was first sent with
    # A retry: the failed or cancelled task this one runs again, and who asked (the
    # owner, or an admin retrying another user's task).  Checked at apply.
    retry_of: str | None = None
    by: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A node with free slots asks for work; applying it grants the highest
    priority, oldest eligible tasks, or nothing (with the reason)."""

    node: str
    slots: int
    at: int
    max: int = 1
    types: tuple[TaskType, ...] | None = None  # None: every type
    fair_window_ms: int = 2_000


@dataclass(frozen=True, slots=True)
class Progress:
    task_id: str
    attempt: int
    node: str
    progress: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Complete:
    task_id: str
    attempt: int
    node: str
    at: int
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Fail:
    task_id: str
    attempt: int
    node: str
    at: int
    error: str
    retryable: bool = True
    aborted: bool = False  # stopped by an abort: ends cancelled


@dataclass(frozen=True, slots=True)
class Release:
    """Hand back an attempt this node was granted but does not run."""

    task_id: str
    attempt: int
    node: str
    at: int
    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """`by` may cancel their own tasks, an admin anyone's: decided at apply from the
    replicated role of `by`."""

    task_id: str
    at: int
    by: str
    owner: str | None = None  # also: only a task of this owner (entries of before roles)


@dataclass(frozen=True, slots=True)
class Abort:
    task_id: str
    at: int
    by: str
    owner: str | None = None  # as Cancel's


@dataclass(frozen=True, slots=True)
class Expire:
    """Retention: forget finished tasks that finished before `before`."""

    before: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node announces itself (or its slot count), or is declared dead (which
    requeues its running tasks)."""

    node: str
    at: int
    alive: bool = True
    slots: int | None = None


@dataclass(frozen=True, slots=True)
class RequeueNode:
    """Give back every task running on a node (it restarted, or is stopping)."""

    node: str
    at: int
    reason: str = "died"


@dataclass(frozen=True, slots=True)
class DrainNode:
    """Stop granting tasks to `node` (draining), or grant them again; asked by an
    admin (`by`).  Its running tasks finish where they are.  Format 2."""

    node: str
    at: int
    by: str
    draining: bool = True


# ---------------------------------------------------------------------- knowledge base


@dataclass(frozen=True, slots=True)
class DocumentUpload:
    doc_id: str
    title: str
    source: str
    media_type: str
    tags: tuple[str, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Upload:
    """A file and the ingest task that will index it, in one entry: an accepted
    upload always has its task."""

    doc: DocumentUpload
    task_id: str
    owner: str
    at: int
    priority: int = DEFAULT_PRIORITY
    idem_key: str | None = None
    fingerprint: str | None = None
    # Whether the uploader may replace an existing document of this id (an admin);
    # decided at apply against the replicated knowledge base, not a replica that may
    # lag.  True for entries written before the field existed, as they were applied.
    may_replace: bool = True


@dataclass(frozen=True, slots=True)
class Chunk:
    ordinal: int
    page: int
    text: str


@dataclass(frozen=True, slots=True)
class PutChunks:
    """One batch of a version's chunks with their vectors (float32 rows)."""

    doc_id: str
    version: int
    batch_no: int
    chunks: tuple[Chunk, ...]
    vectors: bytes
    n_batches: int | None = None


@dataclass(frozen=True, slots=True)
class FinishIngest:
    doc_id: str
    version: int
    node: str
    at: int


@dataclass(frozen=True, slots=True)
class FailIngest:
    doc_id: str
    version: int
    error: str
    at: int


@dataclass(frozen=True, slots=True)
class DeleteDocument:
    doc_id: str
    at: int
    by: str | None = None  # who asks: an editor or an admin (None: before roles)


@dataclass(frozen=True, slots=True)
class SetEnabled:
    doc_id: str
    enabled: bool
    at: int
    by: str | None = None


# ---------------------------------------------------------------------- accounts


@dataclass(frozen=True, slots=True)
class InitAccounts:
    """The built-in admin's password hash (and the token secret, when none is
    configured): the first initialisation of a cluster wins."""

    admin_hash: str
    at: int
    token_secret: str | None = None
    users: tuple[PutUser, ...] = ()  # the users of cluster.toml, seeded with the admin


@dataclass(frozen=True, slots=True)
class PutKey:
    key_id: str
    user: str
    sha256: str
    at: int
    label: str = ""
    expires_at: int | None = None  # ms; None: never (what keys made before expiry were)
    scope: KeyScope = KeyScope.ADMIN


@dataclass(frozen=True, slots=True)
class DeleteKey:
    key_id: str
    at: int
    user: str | None = None  # a user's own keys only; None: an admin's


@dataclass(frozen=True, slots=True)
class PutUser:
    """Create a user; refused if the name is taken.  `seed`: a user of cluster.toml,
    created only if the name was never used (an admin's deletion stays deleted)."""

    name: str
    role: UserRole
    password_hash: str
    at: int
    quota: Quota = NO_QUOTA
    seed: bool = False


@dataclass(frozen=True, slots=True)
class UpdateUser:
    """Change what is given: role, password (a reset), disabled, quota."""

    name: str
    at: int
    role: UserRole | None = None
    password_hash: str | None = None
    disabled: bool | None = None
    quota: Quota | None = None


@dataclass(frozen=True, slots=True)
class DeleteUser:
    """Remove a user and their API keys (their tasks stay, as history)."""

    name: str
    at: int


# ---------------------------------------------------------------------- node keys


@dataclass(frozen=True, slots=True)
class AdmitNode:
    """Trust `node`'s CURVE public key (z85), before it is added to the Raft membership:
    asked by an admin (`by`), or by the node itself with a join token (`token_id` and
    the SHA-256 of the token, checked and spent at apply)."""

    node: str
    public_key: str
    at: int
    by: str | None = None
    token_id: str | None = None
    token_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class RevokeNode:
    """Stop trusting `node`'s key (it was removed from the membership)."""

    node: str
    at: int


@dataclass(frozen=True, slots=True)
class PutJoinToken:
    """A join token an admin made: single use, until `expires_at` (ms); only its
    SHA-256 is kept."""

    token_id: str
    sha256: str
    at: int
    expires_at: int
    by: str
    node: str | None = None  # only for a node of this id; None: any new id


TaskCommand = (
    Submit
    | Claim
    | Progress
    | Complete
    | Fail
    | Release
    | Cancel
    | Abort
    | Expire
    | NodeStatus
    | RequeueNode
    | DrainNode
)
KnowledgeCommand = PutChunks | FinishIngest | FailIngest | DeleteDocument | SetEnabled
AccountCommand = InitAccounts | PutKey | DeleteKey | PutUser | UpdateUser | DeleteUser
PeerCommand = AdmitNode | RevokeNode | PutJoinToken
Command = TaskCommand | Upload | KnowledgeCommand | AccountCommand | PeerCommand
