"""The backup file: what `ragraft backup` writes and `ragraft restore` reads.

    RAGRAFT-BACKUP\\n | header length (4 bytes, big-endian) | header (JSON) | payload

The payload is the replicated state as the Raft driver snapshots it (the session
table around tasks, knowledge base with both indexes, accounts and node keys),
sealed with the cluster's encryption key when it has one: a backup is data at rest
like any other.  The header is in the clear so that an operator (and `restore`)
can tell what a file holds without the key: which cluster, which log position,
when, and a summary to compare the restored cluster against.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.replica.state import NodeState

MAGIC = b"RAGRAFT-BACKUP\n"
FORMAT = 1  # what this code writes and the newest it reads
MAX_HEADER_BYTES = 64 * 1024
_LENGTH = struct.Struct(">I")


class BadBackup(ValueError):
    """Not a backup this version can read; the message says why and what to do."""


@dataclass(frozen=True)
class Summary:
    """What the state holds, counted when it was taken: the restored cluster must show
    the same."""

    kb_digest: str | None  # node/rag/knowledge.py KnowledgeBase.digest
    documents: int
    chunks: int
    tasks: int
    users: int

    @staticmethod
    def of(state: NodeState) -> Summary:
        kb: Any = state.kb  # node/rag/knowledge.py KnowledgeBase (digest, stats)
        stats = kb.stats() if kb is not None else {"documents": 0, "chunks": 0}
        return Summary(
            kb_digest=kb.digest() if kb is not None else None,
            documents=stats["documents"],
            chunks=stats["chunks"],
            tasks=len(state.tasks.tasks),
            users=len(state.accounts.users),
        )

    def describe(self) -> str:
        return (
            f"{self.documents} documents ({self.chunks} chunks), {self.tasks} tasks, "
            f"{self.users} users"
        )


@dataclass(frozen=True)
class Header:
    format: int
    cluster: str
    node: str  # the node that took it
    index: int  # the last log entry it contains
    term: int
    created_at_ms: int
    sealed: bool  # the payload is sealed with the cluster's encryption key
    payload_bytes: int
    payload_sha256: str
    summary: Summary

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Any) -> Header:
        if not isinstance(data, dict):
            raise BadBackup("the backup's header is not an object")
        version = data.get("format")
        if not isinstance(version, int):
            raise BadBackup("the backup's header has no format version")
        if version > FORMAT:
            raise BadBackup(
                f"backup format {version} is newer than this ragraft reads ({FORMAT}); "
                "restore it with the version that took it, or a newer one"
            )
        try:
            summary = Summary(**data["summary"])
            fields = {k: data[k] for k in Header.__dataclass_fields__ if k != "summary"}
            return Header(**fields, summary=summary)
        except (KeyError, TypeError) as exc:
            raise BadBackup(f"the backup's header is incomplete ({exc})") from None


def encode(header: Header, payload: bytes) -> bytes:
    head = json.dumps(header.to_json(), sort_keys=True).encode()
    return MAGIC + _LENGTH.pack(len(head)) + head + payload


def read_header(data: bytes) -> tuple[Header, int]:
    """The header, and where the payload starts."""
    if not data.startswith(MAGIC):
        raise BadBackup("not a ragraft backup (it does not start with RAGRAFT-BACKUP)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise BadBackup("the backup is truncated (no header)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > MAX_HEADER_BYTES or len(data) < start + length:
        raise BadBackup("the backup is truncated or damaged (bad header length)")
    try:
        raw = json.loads(data[start : start + length])
    except ValueError:
        raise BadBackup("the backup's header is not JSON: the file is damaged") from None
    return Header.from_json(raw), start + length


def decode(data: bytes) -> tuple[Header, bytes]:
    """Header and payload, the payload checked against the header's length and hash."""
    header, start = read_header(data)
    payload = data[start:]
    if len(payload) != header.payload_bytes:
        raise BadBackup(
            f"the backup is truncated: {len(payload)} of {header.payload_bytes} payload bytes"
        )
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise BadBackup("the backup is damaged: its payload does not match its checksum")
    return header, payload


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
