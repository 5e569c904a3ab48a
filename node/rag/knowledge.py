"""The knowledge base: a deterministic state machine fed by the replicated log.

An upload is committed with its raw bytes (`put_upload`). One node parses, chunks and
embeds it, then commits the chunks with their vectors in bounded batches
(`put_chunks`) and closes the ingest (`finish_ingest`, or `fail_ingest`). Every node
applies the same commands, so embeddings are computed once and every node ends with
the same documents, chunks and indexes (`digest()` proves it).

Rules that keep replicas identical: no clock, randomness or I/O in a command; times
and ids arrive inside commands; chunk ids come from a counter in the state and are
never reused; every command validates everything before it changes anything, so a
rejected command (a `Refusal`) leaves no trace.

Versions. Uploading an existing id starts version n+1. Its chunks go into both indexes
as they arrive but stay hidden; the previous version keeps answering searches until
`finish_ingest` swaps them in one step. A failed or superseded ingest drops its
chunks and leaves the serving version untouched. Raw bytes are dropped when the
ingest finishes or fails. Hidden chunks (staged, or of disabled documents) still count
in the BM25 statistics (corpus size, document frequencies); they never appear in
results.

Record fields describe the latest upload (`version`, `state`, `title`, ...);
`serving` describes the version that answers searches (None until one finishes).

Thread safety: commands arrive on the node's apply path while searches run in worker
threads; one lock serializes them (FAISS must not search while it removes).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np

from node.rag.fusion import reciprocal_rank_fusion
from node.rag.keyword_index import KeywordIndex
from node.rag.vector_index import INDEX_KINDS, IndexKind, VectorIndex
from node.replica.commands import (
    DeleteDocument,
    DocumentUpload,
    FailIngest,
    FinishIngest,
    KnowledgeCommand,
    PutChunks,
    SetEnabled,
)
from node.replica.refusal import Refusal, RefusalCode, refuse
from node.replica.vocabulary import MAX_TOP_K

SearchMode = Literal["vector", "keyword", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("vector", "keyword", "hybrid")
DocState = Literal["uploaded", "ingesting", "ready", "failed"]

DEFAULT_DIM = 384
MAX_K = MAX_TOP_K
# Each ranking contributes this many candidates to a hybrid fusion: a chunk ranked low
# by one method but high by the other must be in both lists to be fused fairly.
HYBRID_DEPTH = 50
MAX_ID_CHARS = 200
MAX_TITLE_CHARS = 500
MAX_SOURCE_CHARS = 2000
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_CHUNKS_PER_BATCH = 4096
MAX_CHUNK_CHARS = 32_000
MAX_ERROR_CHARS = 2000
# Vectors must arrive unit-length (inner product = cosine); re-normalizing here could
# differ in the last bit between CPUs, so out-of-tolerance vectors are rejected instead.
NORM_TOLERANCE = 1e-3

_SNAPSHOT_FORMAT = 1


def _refusal(code: str, message: str, **details: Any) -> Refusal:
    return refuse(RefusalCode(code), message, **details)


@dataclass(frozen=True, slots=True)
class Passage:
    chunk_id: int
    doc_id: str
    title: str
    ordinal: int
    page: int | None
    text: str
    score: float  # the ranking score of the mode: cosine, BM25, or fused RRF
    vector_score: float | None
    keyword_score: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Chunk:
    doc_id: str
    version: int
    ordinal: int
    page: int | None
    text: str


@dataclass(slots=True)
class _Upload:
    version: int
    data: bytes


@dataclass(slots=True)
class _Staging:
    """Chunks of a version still being ingested: indexed, but hidden."""

    version: int
    n_batches: int | None = None
    batches: set[int] = field(default_factory=set)
    chunk_ids: list[int] = field(default_factory=list)
    ordinals: set[int] = field(default_factory=set)


def vectors_to_bytes(vectors: np.ndarray) -> bytes:
    """The `put_chunks` wire form: float32 little-endian, row after row."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


# ---- validation helpers (raise _refusal("invalid"), never mutate) ----------------------


def _invalid(message: str, **details: Any) -> Refusal:
    return _refusal("invalid", message, **details)


def _check_text(name: str, value: Any, max_chars: int, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    if len(value) > max_chars:
        raise _invalid(f"{name} is longer than {max_chars} characters")
    if not allow_empty and not value:
        raise _invalid(f"{name} must not be empty")
    return value


def _check_doc_id(doc_id: Any) -> str:
    text = _check_text("doc_id", doc_id, MAX_ID_CHARS, allow_empty=False)
    if text.strip() != text or not text.isprintable():
        raise _invalid("doc_id must be printable, without surrounding whitespace")
    return text


def _check_int(name: str, value: Any, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _invalid(f"{name} must be an integer >= {minimum}")
    return value


def _check_time(at: Any) -> float:
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        raise _invalid("at must be a number (a time taken when the command was proposed)")
    return at


def _check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, (list, tuple)):
        raise _invalid("tags must be a list of strings")
    cleaned: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > MAX_TAG_CHARS:
            raise _invalid(
                f"each tag must be a non-empty string of at most {MAX_TAG_CHARS} characters"
            )
        cleaned.add(tag.strip())
    if len(cleaned) > MAX_TAGS:
        raise _invalid(f"at most {MAX_TAGS} tags")
    return sorted(cleaned)


def _check_chunks(chunks: Any) -> list[_Chunk]:
    """Chunk dicts -> _Chunk (doc_id/version filled in by the caller)."""
    if not isinstance(chunks, (list, tuple)) or not chunks:
        raise _invalid("chunks must be a non-empty list")
    if len(chunks) > MAX_CHUNKS_PER_BATCH:
        raise _invalid(f"at most {MAX_CHUNKS_PER_BATCH} chunks per batch")
    parsed: list[_Chunk] = []
    for n, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            raise _invalid(f"chunk {n} must be a map with ordinal, page and text")
        ordinal = _check_int(f"chunk {n} ordinal", chunk.get("ordinal"))
        page = chunk.get("page")
        if page is not None:
            _check_int(f"chunk {n} page", page)
        text = _check_text(f"chunk {n} text", chunk.get("text"), MAX_CHUNK_CHARS, allow_empty=False)
        parsed.append(_Chunk("", 0, ordinal, page, text))
    return parsed


def _decode_vectors(vectors: Any, rows: int, dim: int) -> np.ndarray:
    if isinstance(vectors, (bytearray, memoryview)):
        vectors = bytes(vectors)
    if not isinstance(vectors, bytes):
        raise _invalid("vectors must be bytes (float32 little-endian)")
    if len(vectors) != rows * dim * 4:
        raise _invalid(
            f"vectors must hold {rows} x {dim} float32 values "
            f"({rows * dim * 4} bytes), got {len(vectors)} bytes"
        )
    array = np.frombuffer(vectors, dtype="<f4").reshape(rows, dim).astype(np.float32)
    if not np.isfinite(array).all():
        raise _invalid("vectors contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    if np.any(np.abs(norms - 1.0) > NORM_TOLERANCE):
        raise _invalid(
            "vectors must be L2-normalized", worst_norm=float(norms[np.argmax(np.abs(norms - 1.0))])
        )
    return array


def _check_filter(name: str, values: Any) -> list[str] | None:
    """None or an empty list mean "no filter"."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise _invalid(f"{name} must be a list of strings")
    items = list(values)
    if not all(isinstance(v, str) for v in items):
        raise _invalid(f"{name} must be a list of strings")
    return sorted(set(items)) or None


def _sorted_map(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in sorted(record)}


class KnowledgeBase:
    def __init__(self, dim: int = DEFAULT_DIM, index_kind: IndexKind = "flat") -> None:
        if index_kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index_kind!r}; expected one of {INDEX_KINDS}")
        self.dim = dim
        self.index_kind: IndexKind = index_kind
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._documents: dict[str, dict[str, Any]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._staging: dict[str, _Staging] = {}
        self._serving_chunks: dict[str, list[int]] = {}  # doc -> chunk ids by ordinal
        self._chunks: dict[int, _Chunk] = {}
        self._hidden: set[int] = set()  # staged chunks and those of disabled documents
        # Last version of deleted ids, so a re-upload continues the numbering and a late
        # put_chunks of the deleted incarnation is recognised as stale.
        self._retired_versions: dict[str, int] = {}
        self._next_chunk_id = 1
        self._vectors = VectorIndex(self.dim, self.index_kind)
        self._keywords = KeywordIndex()

    # ---- commands ------------------------------------------------------------------

    def store_upload(
        self,
        doc_id: str,
        title: str,
        source: str,
        media_type: str,
        tags: Sequence[str] | None,
        data: bytes,
        at: float,
    ) -> dict[str, Any]:
        """A new document, or a new version of an existing one."""
        _check_doc_id(doc_id)
        title = _check_text("title", title, MAX_TITLE_CHARS) or doc_id
        _check_text("source", source, MAX_SOURCE_CHARS)
        _check_text("media_type", media_type, MAX_ID_CHARS)
        clean_tags = _check_tags(tags)
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes) or not data:
            raise _invalid("data must be non-empty bytes")
        _check_time(at)
        with self._lock:
            existing = self._documents.get(doc_id)
            previous_version = (
                existing["version"]
                if existing is not None
                else self._retired_versions.get(doc_id, 0)
            )
            superseded = None
            if existing is not None and existing["state"] in ("uploaded", "ingesting"):
                superseded = existing["version"]
            self._discard_staging(doc_id)
            self._retired_versions.pop(doc_id, None)
            version = previous_version + 1
            self._documents[doc_id] = {
                "id": doc_id,
                "title": title,
                "source": source,
                "media_type": media_type,
                "version": version,
                "size": len(data),
                "tags": clean_tags,
                "enabled": existing["enabled"] if existing is not None else True,
                "state": "uploaded",
                "error": None,
                "chunk_count": 0,
                "ingested_by": None,
                "created_at": existing["created_at"] if existing is not None else at,
                "updated_at": at,
                "serving": existing["serving"] if existing is not None else None,
            }
            self._uploads[doc_id] = _Upload(version, data)
            return {
                "doc_id": doc_id,
                "version": version,
                "state": "uploaded",
                "size": len(data),
                "superseded_version": superseded,
            }

    def put_chunks(
        self,
        doc_id: str,
        version: int,
        batch_no: int,
        chunks: list[dict[str, Any]],
        vectors: bytes,
        n_batches: int | None = None,
    ) -> dict[str, Any]:
        """One batch of a version's chunks with their vectors (row i embeds chunks[i]).
        Re-sending a batch already applied is a no-op (`duplicate: True`)."""
        _check_int("batch_no", batch_no)
        if n_batches is not None:
            _check_int("n_batches", n_batches, minimum=1)
            if batch_no >= n_batches:
                raise _invalid(f"batch_no {batch_no} is not below n_batches {n_batches}")
        parsed = _check_chunks(chunks)
        with self._lock:
            doc = self._pending_version(doc_id, version)
            staging = self._staging.get(doc_id)
            if staging is not None and batch_no in staging.batches:
                return {
                    "doc_id": doc_id,
                    "version": version,
                    "batch_no": batch_no,
                    "duplicate": True,
                    "chunk_count": doc["chunk_count"],
                }
            known_n = staging.n_batches if staging is not None else None
            if n_batches is not None and known_n is not None and n_batches != known_n:
                raise _refusal(
                    "conflict",
                    f"n_batches {n_batches} differs from {known_n} announced by an earlier batch",
                )
            expected_n = n_batches if n_batches is not None else known_n
            if expected_n is not None and batch_no >= expected_n:
                raise _invalid(f"batch_no {batch_no} is not below n_batches {expected_n}")
            ordinals = [c.ordinal for c in parsed]
            taken = set(ordinals) & (staging.ordinals if staging is not None else set())
            if len(set(ordinals)) != len(ordinals) or taken:
                raise _invalid(
                    "chunk ordinals must be unique within a version", repeated=sorted(taken)[:5]
                )
            array = _decode_vectors(vectors, len(parsed), self.dim)

            ids = list(range(self._next_chunk_id, self._next_chunk_id + len(parsed)))
            self._vectors.add(np.asarray(ids, dtype=np.int64), array)
            try:
                self._keywords.add(zip(ids, (c.text for c in parsed)))
            except Exception:
                self._vectors.remove(ids)
                raise
            self._next_chunk_id += len(parsed)
            if staging is None:
                staging = self._staging[doc_id] = _Staging(version)
            staging.n_batches = expected_n
            staging.batches.add(batch_no)
            staging.chunk_ids.extend(ids)
            staging.ordinals.update(ordinals)
            for chunk_id, chunk in zip(ids, parsed):
                chunk.doc_id, chunk.version = doc_id, version
                self._chunks[chunk_id] = chunk
            self._hidden.update(ids)
            doc["state"] = "ingesting"
            doc["chunk_count"] += len(parsed)
            return {
                "doc_id": doc_id,
                "version": version,
                "batch_no": batch_no,
                "duplicate": False,
                "chunk_count": doc["chunk_count"],
            }

    def finish_ingest(self, doc_id: str, version: int, node: str, at: float) -> dict[str, Any]:
        """All batches are in: the version becomes the one searches see, atomically."""
        _check_text("node", node, MAX_ID_CHARS, allow_empty=False)
        _check_time(at)
        with self._lock:
            finished = self._finished_by(doc_id, version, node)
            if finished is not None:
                return finished  # a retry of a finish that applied: same answer, nothing changes
            doc = self._pending_version(doc_id, version)
            staging = self._staging.get(doc_id)
            if staging is None:
                raise _refusal("conflict", f"{doc_id} v{version} has no chunks to finish")
            expected = (
                staging.n_batches if staging.n_batches is not None else max(staging.batches) + 1
            )
            missing = sorted(set(range(expected)) - staging.batches)
            if missing:
                raise _refusal(
                    "conflict",
                    f"{doc_id} v{version} is missing chunk batches",
                    missing=missing[:20],
                )
            old_ids = self._serving_chunks.pop(doc_id, [])
            old_version = doc["serving"]["version"] if doc["serving"] is not None else None
            self._drop_chunks(old_ids)
            new_ids = sorted(staging.chunk_ids, key=lambda i: self._chunks[i].ordinal)
            self._serving_chunks[doc_id] = new_ids
            if doc["enabled"]:
                self._hidden.difference_update(new_ids)
            del self._staging[doc_id]
            self._uploads.pop(doc_id, None)
            doc.update(
                state="ready", error=None, chunk_count=len(new_ids), ingested_by=node, updated_at=at
            )
            doc["serving"] = {
                "version": version,
                "title": doc["title"],
                "tags": list(doc["tags"]),
                "chunk_count": len(new_ids),
                "ingested_by": node,
                "ingested_at": at,
            }
            return {
                "doc_id": doc_id,
                "version": version,
                "state": "ready",
                "chunk_count": len(new_ids),
                "replaced_version": old_version,
                "removed_chunks": len(old_ids),
            }

    def fail_ingest(self, doc_id: str, version: int, error: str, at: float) -> dict[str, Any]:
        """The version cannot be ingested: drop its chunks and bytes, keep serving the
        previous version (if any)."""
        if not isinstance(error, str):
            raise _invalid("error must be a string")
        _check_time(at)
        with self._lock:
            doc = self._pending_version(doc_id, version)
            self._discard_staging(doc_id)
            self._uploads.pop(doc_id, None)
            doc.update(state="failed", error=error[:MAX_ERROR_CHARS], chunk_count=0, updated_at=at)
            serving = doc["serving"]["version"] if doc["serving"] is not None else None
            return {
                "doc_id": doc_id,
                "version": version,
                "state": "failed",
                "serving_version": serving,
            }

    def delete(self, doc_id: str, at: float) -> dict[str, Any]:
        _check_time(at)
        with self._lock:
            doc = self._require(doc_id)
            self._discard_staging(doc_id)
            old_ids = self._serving_chunks.pop(doc_id, [])
            self._drop_chunks(old_ids)
            self._uploads.pop(doc_id, None)
            self._retired_versions[doc_id] = doc["version"]
            del self._documents[doc_id]
            return {
                "doc_id": doc_id,
                "deleted": True,
                "version": doc["version"],
                "removed_chunks": len(old_ids),
            }

    def set_enabled(self, doc_id: str, enabled: bool, at: float) -> dict[str, Any]:
        if not isinstance(enabled, bool):
            raise _invalid("enabled must be true or false")
        _check_time(at)
        with self._lock:
            doc = self._require(doc_id)
            changed = doc["enabled"] != enabled
            if changed:
                doc["enabled"] = enabled
                doc["updated_at"] = at
                serving = self._serving_chunks.get(doc_id, [])
                if enabled:
                    self._hidden.difference_update(serving)
                else:
                    self._hidden.update(serving)
            return {"doc_id": doc_id, "enabled": enabled, "changed": changed}

    def apply(self, cmd: KnowledgeCommand) -> dict[str, Any]:
        """Apply one command of the log; raises Refusal (and changes nothing) when
        it cannot."""
        if isinstance(cmd, PutChunks):
            chunks = [
                {"ordinal": ch.ordinal, "page": ch.page, "text": ch.text} for ch in cmd.chunks
            ]
            return self.put_chunks(
                cmd.doc_id, cmd.version, cmd.batch_no, chunks, cmd.vectors, cmd.n_batches
            )
        if isinstance(cmd, FinishIngest):
            return self.finish_ingest(cmd.doc_id, cmd.version, cmd.node, cmd.at)
        if isinstance(cmd, FailIngest):
            return self.fail_ingest(cmd.doc_id, cmd.version, cmd.error, cmd.at)
        if isinstance(cmd, DeleteDocument):
            return self.delete(cmd.doc_id, cmd.at)
        if isinstance(cmd, SetEnabled):
            return self.set_enabled(cmd.doc_id, cmd.enabled, cmd.at)
        raise _refusal("bad_command", f"{type(cmd).__name__} is not a knowledge-base command")

    def put_upload(self, doc: DocumentUpload, at: float) -> dict[str, Any]:
        """A new document, or a new version of an existing one (the file part of
        an Upload; NodeState queues its ingest task in the same entry)."""
        return self.store_upload(
            doc.doc_id, doc.title, doc.source, doc.media_type, doc.tags, doc.data, at
        )

    # ---- command internals ---------------------------------------------------------

    def _require(self, doc_id: Any) -> dict[str, Any]:
        if not isinstance(doc_id, str):
            raise _invalid("doc_id must be a string")
        doc = self._documents.get(doc_id)
        if doc is None:
            raise _refusal("not_found", f"no document {doc_id!r}")
        return doc

    def _finished_by(self, doc_id: Any, version: Any, node: str) -> dict[str, Any] | None:
        """The answer of `finish_ingest` when `node` already finished this version."""
        doc = self._documents.get(doc_id) if isinstance(doc_id, str) else None
        if doc is None:
            return None
        serving = doc["serving"]
        if (
            serving is None
            or doc["version"] != version
            or serving["version"] != version
            or serving["ingested_by"] != node
        ):
            return None
        return {
            "doc_id": doc_id,
            "version": version,
            "state": "ready",
            "chunk_count": serving["chunk_count"],
            "replaced_version": None,
            "removed_chunks": 0,
            "duplicate": True,
        }

    def _pending_version(self, doc_id: Any, version: Any) -> dict[str, Any]:
        """The document whose latest version `version` is still being ingested."""
        _check_int("version", version, minimum=1)
        doc = self._require(doc_id)
        if version != doc["version"]:
            raise _refusal(
                "conflict",
                f"{doc_id} v{version} is stale: the latest version is v{doc['version']}",
                latest_version=doc["version"],
            )
        if doc["state"] not in ("uploaded", "ingesting"):
            raise _refusal(
                "conflict", f"{doc_id} v{version} is already {doc['state']}", state=doc["state"]
            )
        return doc

    def _discard_staging(self, doc_id: str) -> None:
        staging = self._staging.pop(doc_id, None)
        if staging is not None:
            self._drop_chunks(staging.chunk_ids)

    def _drop_chunks(self, ids: list[int]) -> None:
        if not ids:
            return
        self._vectors.remove(ids)
        self._keywords.remove(ids)
        for chunk_id in ids:
            del self._chunks[chunk_id]
        self._hidden.difference_update(ids)

    # ---- queries -------------------------------------------------------------------

    def get(self, doc_id: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._documents.get(doc_id)
            return _copy_record(doc) if doc is not None else None

    def list_documents(
        self, state: str | None = None, tag: str | None = None
    ) -> list[dict[str, Any]]:
        """Records by id; optionally only those in `state` or carrying `tag`."""
        with self._lock:
            return [
                _copy_record(doc)
                for doc_id, doc in sorted(self._documents.items())
                if (state is None or doc["state"] == state) and (tag is None or tag in doc["tags"])
            ]

    def upload_data(self, doc_id: str, version: int | None = None) -> bytes | None:
        """Raw bytes of the upload awaiting ingest (of `version`, if given), else None."""
        with self._lock:
            upload = self._uploads.get(doc_id)
            if upload is None or (version is not None and upload.version != version):
                return None
            return upload.data

    def search(
        self,
        query_vec: np.ndarray | None,
        query_text: str | None,
        mode: SearchMode = "hybrid",
        k: int = 5,
        doc_ids: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        min_score: float | None = None,
    ) -> list[Passage]:
        """Top-k passages of enabled, ingested documents.

        `doc_ids` / `tags` restrict to those documents / to documents carrying any of
        the tags. `min_score` thresholds the cosine similarity in vector and hybrid mode
        (fused RRF scores have no meaningful absolute scale) and the BM25 score in
        keyword mode. Each passage carries both per-method scores when both query forms
        are given; hybrid `score` is the fused one.
        """
        if mode not in SEARCH_MODES:
            raise _invalid(f"mode must be one of {SEARCH_MODES}")
        _check_int("k", k, minimum=1)
        if k > MAX_K:
            raise _invalid(f"k must be at most {MAX_K}")
        if min_score is not None and (
            not isinstance(min_score, (int, float)) or isinstance(min_score, bool)
        ):
            raise _invalid("min_score must be a number")
        doc_filter = _check_filter("doc_ids", doc_ids)
        tag_filter = _check_filter("tags", tags)
        query = None
        if query_vec is not None:
            query = np.asarray(query_vec, dtype=np.float32).reshape(-1)
            if query.shape[0] != self.dim:
                raise _invalid(f"query vector must have {self.dim} dimensions")
        if mode != "keyword" and query is None:
            raise _invalid(f"{mode} search needs a query vector")
        if mode != "vector" and not isinstance(query_text, str):
            raise _invalid(f"{mode} search needs a query text")
        text = query_text if isinstance(query_text, str) else None

        with self._lock:
            allowed = self._allowed_chunks(doc_filter, tag_filter)
            if allowed is not None and not allowed:
                return []
            excluded = self._hidden if allowed is None else None
            if mode == "vector":
                assert query is not None
                ranked = self._vectors.search(query, k, allowed, excluded)
                vector_scores = dict(ranked)
                if min_score is not None:
                    ranked = [(i, s) for i, s in ranked if s >= min_score]
                keyword_scores = (
                    self._keywords.score(text, [i for i, _ in ranked]) if text is not None else {}
                )
            elif mode == "keyword":
                assert text is not None
                ranked = self._keywords.search(text, k, allowed, excluded)
                if min_score is not None:
                    ranked = [(i, s) for i, s in ranked if s >= min_score]
                keyword_scores = dict(ranked)
                vector_scores = (
                    self._vectors.score(query, [i for i, _ in ranked]) if query is not None else {}
                )
            else:
                assert query is not None and text is not None
                depth = max(HYBRID_DEPTH, k)
                by_vector = self._vectors.search(query, depth, allowed, excluded)
                by_keyword = self._keywords.search(text, depth, allowed, excluded)
                fused = reciprocal_rank_fusion([by_vector, by_keyword])
                vector_scores = dict(by_vector)
                keyword_only = [i for i, _ in by_keyword if i not in vector_scores]
                vector_scores.update(self._vectors.score(query, keyword_only))
                if min_score is not None:
                    fused = [(i, s) for i, s in fused if vector_scores[i] >= min_score]
                ranked = fused[:k]
                keyword_scores = dict(by_keyword)
                vector_only = [i for i, _ in ranked if i not in keyword_scores]
                keyword_scores.update(self._keywords.score(text, vector_only))
            return [
                self._passage(i, s, vector_scores.get(i), keyword_scores.get(i)) for i, s in ranked
            ]

    def _allowed_chunks(self, doc_ids: list[str] | None, tags: list[str] | None) -> set[int] | None:
        """Visible chunks of the documents passing the filters; None when unfiltered."""
        if doc_ids is None and tags is None:
            return None
        wanted_tags = set(tags) if tags is not None else None
        candidates = doc_ids if doc_ids is not None else sorted(self._serving_chunks)
        allowed: set[int] = set()
        for doc_id in candidates:
            doc = self._documents.get(doc_id)
            if doc is None or not doc["enabled"] or doc["serving"] is None:
                continue
            if wanted_tags is not None and wanted_tags.isdisjoint(doc["serving"]["tags"]):
                continue
            allowed.update(self._serving_chunks.get(doc_id, []))
        return allowed

    def _passage(
        self, chunk_id: int, score: float, vector_score: float | None, keyword_score: float | None
    ) -> Passage:
        chunk = self._chunks[chunk_id]
        serving = self._documents[chunk.doc_id]["serving"]
        return Passage(
            chunk_id=chunk_id,
            doc_id=chunk.doc_id,
            title=serving["title"],
            ordinal=chunk.ordinal,
            page=chunk.page,
            text=chunk.text,
            score=score,
            vector_score=vector_score,
            keyword_score=keyword_score,
        )

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_state: dict[str, int] = {}
            for doc in self._documents.values():
                by_state[doc["state"]] = by_state.get(doc["state"], 0) + 1
            enabled = sum(1 for doc in self._documents.values() if doc["enabled"])
            staged = sum(len(s.chunk_ids) for s in self._staging.values())
            return {
                "documents": len(self._documents),
                "by_state": dict(sorted(by_state.items())),
                "enabled": enabled,
                "disabled": len(self._documents) - enabled,
                "chunks": len(self._chunks),
                "searchable_chunks": len(self._chunks) - len(self._hidden),
                "staged_chunks": staged,
                "pending_uploads": len(self._uploads),
                "pending_upload_bytes": sum(len(u.data) for u in self._uploads.values()),
                "vector_index": {
                    "kind": self.index_kind,
                    "dim": self.dim,
                    "size": len(self._vectors),
                },
                "keyword_vocabulary": self._keywords.vocabulary_size,
                "next_chunk_id": self._next_chunk_id,
            }

    # ---- replication: digest, snapshot, restore ------------------------------------

    def _logical_state(self) -> dict[str, Any]:
        """Everything but the indexes, in a canonical order."""
        chunk_ids = sorted(self._chunks)
        chunks = [self._chunks[i] for i in chunk_ids]
        return {
            "format": _SNAPSHOT_FORMAT,
            "dim": self.dim,
            "next_chunk_id": self._next_chunk_id,
            "documents": [_canonical_record(self._documents[d]) for d in sorted(self._documents)],
            "uploads": [[d, u.version, u.data] for d, u in sorted(self._uploads.items())],
            "staging": [
                [d, s.version, s.n_batches, sorted(s.batches), sorted(s.chunk_ids)]
                for d, s in sorted(self._staging.items())
            ],
            "retired_versions": sorted(self._retired_versions.items()),
            "chunks": {
                "ids": chunk_ids,
                "doc_ids": [c.doc_id for c in chunks],
                "versions": [c.version for c in chunks],
                "ordinals": [c.ordinal for c in chunks],
                "pages": [c.page for c in chunks],
                "texts": [c.text for c in chunks],
            },
        }

    def digest(self) -> str:
        """sha256 of the whole logical state, vectors and keyword index included. Equal on
        two nodes ⇔ same documents, chunks, vectors and BM25 postings (independent of the
        vector index kind and of HNSW graph layout)."""
        with self._lock:
            h = hashlib.sha256()
            h.update(msgpack.packb(self._logical_state(), use_bin_type=True))
            ids = self._vectors.ids()
            h.update(ids.astype("<i8").tobytes())
            h.update(np.ascontiguousarray(self._vectors.vectors(ids), dtype="<f4").tobytes())
            h.update(self._keywords.to_bytes())
            return h.hexdigest()

    def snapshot(self) -> bytes:
        """The whole state with both indexes serialized, so a restart restores without
        re-embedding. Flat indexes make equal states give equal bytes."""
        with self._lock:
            state = self._logical_state()
            state["index_kind"] = self.index_kind
            state["vector_index"] = self._vectors.to_bytes()
            state["keyword_index"] = self._keywords.to_bytes()
            return msgpack.packb(state, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        """Replace the state by a snapshot's. Builds everything aside first, so a bad
        snapshot raises and leaves the current state as it was. A snapshot taken with
        another index kind is converted to this node's kind (from the stored vectors)."""
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if state.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported knowledge-base snapshot format {state.get('format')!r}")
        if state["dim"] != self.dim:
            raise ValueError(f"snapshot dimension {state['dim']} differs from {self.dim}")
        vectors = VectorIndex.from_bytes(state["vector_index"])
        if vectors.kind != self.index_kind:
            converted = VectorIndex(self.dim, self.index_kind)
            ids = vectors.ids()
            converted.add(ids, vectors.vectors(ids))
            vectors = converted
        keywords = KeywordIndex.from_bytes(state["keyword_index"])

        columns = state["chunks"]
        chunks = {
            chunk_id: _Chunk(doc_id, version, ordinal, page, text)
            for chunk_id, doc_id, version, ordinal, page, text in zip(
                columns["ids"],
                columns["doc_ids"],
                columns["versions"],
                columns["ordinals"],
                columns["pages"],
                columns["texts"],
            )
        }
        documents = {record["id"]: record for record in state["documents"]}
        staging: dict[str, _Staging] = {}
        hidden: set[int] = set()
        for doc_id, version, n_batches, batches, chunk_ids in state["staging"]:
            staging[doc_id] = _Staging(
                version,
                n_batches,
                set(batches),
                list(chunk_ids),
                {chunks[i].ordinal for i in chunk_ids},
            )
            hidden.update(chunk_ids)
        serving_chunks: dict[str, list[int]] = {}
        for chunk_id, chunk in chunks.items():
            serving = documents[chunk.doc_id]["serving"]
            if serving is not None and chunk.version == serving["version"]:
                serving_chunks.setdefault(chunk.doc_id, []).append(chunk_id)
        for doc_id, by_ordinal in serving_chunks.items():
            by_ordinal.sort(key=lambda i: chunks[i].ordinal)
            if not documents[doc_id]["enabled"]:
                hidden.update(by_ordinal)
        if len(vectors) != len(chunks) or len(keywords) != len(chunks):
            raise ValueError("snapshot indexes do not match its chunks")

        with self._lock:
            self._documents = documents
            self._uploads = {d: _Upload(v, data) for d, v, data in state["uploads"]}
            self._staging = staging
            self._serving_chunks = serving_chunks
            self._chunks = chunks
            self._hidden = hidden
            self._retired_versions = {d: v for d, v in state["retired_versions"]}
            self._next_chunk_id = state["next_chunk_id"]
            self._vectors = vectors
            self._keywords = keywords


def _canonical_record(doc: dict[str, Any]) -> dict[str, Any]:
    record = _sorted_map(doc)
    if record["serving"] is not None:
        record["serving"] = _sorted_map(record["serving"])
    return record


def _copy_record(doc: dict[str, Any]) -> dict[str, Any]:
    record = dict(doc)
    record["tags"] = list(doc["tags"])
    if doc["serving"] is not None:
        record["serving"] = dict(doc["serving"], tags=list(doc["serving"]["tags"]))
    return record
