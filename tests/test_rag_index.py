"""The RAG engine's retrieval layer: vector and keyword indexes, fusion, and the
replicated knowledge base (node/rag/).

Knowledge-base logic runs on a toy hashing embedding (fast, deterministic); one test
at the end uses the real bundled all-MiniLM-L6-v2, loaded once for the module.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest

from node.rag import vector_index
from node.rag.fusion import reciprocal_rank_fusion
from node.rag.keyword_index import KeywordIndex, tokenize
from node.rag.knowledge import KnowledgeBase, vectors_to_bytes
from node.rag.vector_index import VectorIndex
from node.replica import codec
from node.replica.commands import (
    Chunk,
    DeleteDocument,
    DocumentUpload,
    Expire,
    FailIngest,
    FinishIngest,
    KnowledgeCommand,
    PutChunks,
    SetEnabled,
    Upload,
)
from node.replica.refusal import Refusal, RefusalCode

DIM = 32


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [int(ids[i]) for i in order[:k]]


# ---- vector index ---------------------------------------------------------------------


@pytest.fixture
def no_exact_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the FAISS code paths that only large indexes take in production."""
    monkeypatch.setattr(vector_index, "EXACT_SCAN_LIMIT", 0)


@pytest.mark.parametrize("exact_limit", [0, 10_000])
def test_flat_matches_brute_force_with_removals_and_filters(
    monkeypatch: pytest.MonkeyPatch, exact_limit: int
) -> None:
    monkeypatch.setattr(vector_index, "EXACT_SCAN_LIMIT", exact_limit)
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 600)
    ids = np.arange(1000, 1600, dtype=np.int64)
    index = VectorIndex(DIM, "flat")
    index.add(ids[:300], vectors[:300])
    index.add(ids[300:], vectors[300:])
    removed = set(range(1000, 1600, 3))
    assert index.remove(removed | {99_999}) == len(removed)
    keep = np.array([i not in removed for i in ids.tolist()])
    live_ids, live_vectors = ids[keep], vectors[keep]
    assert len(index) == len(live_ids)

    allowed = set(live_ids[::7].tolist()) | {1000}  # 1000 was removed: must not come back
    excluded = set(live_ids[:50].tolist())
    for query in unit_rows(rng, 10):
        got = [i for i, _ in index.search(query, 10)]
        assert got == brute_force(live_ids, live_vectors, query, 10)
        scores = [s for _, s in index.search(query, 10)]
        assert scores == sorted(scores, reverse=True)

        in_allowed = np.array([i in allowed for i in live_ids.tolist()])
        got = [i for i, _ in index.search(query, 5, allowed=allowed)]
        assert got == brute_force(live_ids[in_allowed], live_vectors[in_allowed], query, 5)

        not_excluded = ~np.array([i in excluded for i in live_ids.tolist()])
        got = [i for i, _ in index.search(query, 5, excluded=excluded)]
        assert got == brute_force(live_ids[not_excluded], live_vectors[not_excluded], query, 5)


def test_flat_is_deterministic_and_round_trips() -> None:
    rng = np.random.default_rng(2)
    vectors = unit_rows(rng, 200)

    def build() -> VectorIndex:
        index = VectorIndex(DIM, "flat")
        index.add(np.arange(200), vectors)
        index.remove(range(0, 200, 5))
        index.add(np.arange(500, 510), vectors[:10])
        return index

    first, second = build(), build()
    assert first.to_bytes() == second.to_bytes()
    restored = VectorIndex.from_bytes(first.to_bytes())
    assert restored.to_bytes() == first.to_bytes()
    assert len(restored) == len(first) == 170
    query = vectors[7]
    assert restored.search(query, 5) == first.search(query, 5)
    restored.remove([7])
    first.remove([7])
    assert restored.to_bytes() == first.to_bytes()


def test_hnsw_recall_tombstones_and_rebuild(no_exact_scan: None) -> None:
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, 2000)
    ids = np.arange(2000, dtype=np.int64)
    index = VectorIndex(DIM, "hnsw")
    index.add(ids, vectors)
    removed = set(range(0, 2000, 8))  # 12.5%: below the rebuild threshold
    index.remove(removed)
    assert len(index) == 2000 - len(removed)
    assert index._index.ntotal == 2000  # tombstoned, not rebuilt yet
    keep = np.array([i not in removed for i in range(2000)])
    hits = total = 0
    for query in unit_rows(rng, 20):
        got = [i for i, _ in index.search(query, 10)]
        assert not removed.intersection(got)
        truth = brute_force(ids[keep], vectors[keep], query, 10)
        hits += len(set(got) & set(truth))
        total += 10
    assert hits / total >= 0.9

    index.remove(range(1, 2000, 8))  # now 25% dead: the graph is rebuilt without them
    assert index._index.ntotal == len(index) == 1500
    assert not index._tombstones
    restored = VectorIndex.from_bytes(index.to_bytes())
    assert len(restored) == 1500 and restored.kind == "hnsw"
    assert restored.search(vectors[2], 3)[0][0] == 2


def test_hnsw_selective_filter_over_fetches(no_exact_scan: None) -> None:
    rng = np.random.default_rng(4)
    vectors = unit_rows(rng, 3000)
    index = VectorIndex(DIM, "hnsw", ef_search=16)
    index.add(np.arange(3000), vectors)
    allowed = set(range(0, 3000, 100))  # 30 ids scattered through the graph
    for query in unit_rows(rng, 5):
        got = index.search(query, 10, allowed=allowed)
        assert len(got) == 10 and {i for i, _ in got} <= allowed


def test_hnsw_re_adding_a_removed_id_replaces_it(no_exact_scan: None) -> None:
    rng = np.random.default_rng(5)
    vectors = unit_rows(rng, 100)
    index = VectorIndex(DIM, "hnsw")
    index.add(np.arange(100), vectors)
    index.remove([42])
    new_vector = unit_rows(rng, 1)
    index.add([42], new_vector)
    assert len(index) == 100
    assert index.search(new_vector[0], 1)[0][0] == 42
    assert np.allclose(index.vectors([42])[0], new_vector[0])  # the old row is gone
    assert index._index.ntotal == 100


def test_vector_index_rejects_bad_input_without_change() -> None:
    index = VectorIndex(DIM)
    rng = np.random.default_rng(6)
    index.add([1, 2], unit_rows(rng, 2))
    before = index.to_bytes()
    with pytest.raises(ValueError):
        index.add([2, 3], unit_rows(rng, 2))  # 2 exists
    with pytest.raises(ValueError):
        index.add([4, 4], unit_rows(rng, 2))
    with pytest.raises(ValueError):
        index.add([5], unit_rows(rng, 1, DIM + 1))
    with pytest.raises(ValueError):
        index.add([6], np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(ValueError):
        VectorIndex(DIM, "ivf")  # type: ignore[arg-type]
    assert index.to_bytes() == before
    assert index.search(unit_rows(rng, 1)[0], 0) == []


# ---- fusion ---------------------------------------------------------------------------


def test_reciprocal_rank_fusion() -> None:
    by_vector = [(1, 0.9), (2, 0.8), (3, 0.7)]
    by_keyword = [(3, 12.0), (1, 4.0), (3, 1.0)]  # a repeat counts at its best rank
    fused = dict(reciprocal_rank_fusion([by_vector, by_keyword]))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert [i for i, _ in reciprocal_rank_fusion([by_vector, by_keyword])] == [1, 3, 2]
    # Equal fused scores: ordered by id, whatever the input order.
    assert reciprocal_rank_fusion([[(9, 1.0)], [(4, 1.0)]]) == [(4, 1 / 61), (9, 1 / 61)]
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[("b", 0), ("a", 0)]], k=0) == [("b", 1.0), ("a", 0.5)]


# ---- keyword index --------------------------------------------------------------------


def test_tokenizer_is_simple_and_deterministic() -> None:
    assert tokenize("The Raft LOG, and the log's entries!") == [
        "raft",
        "log",
        "log",
        "s",
        "entries",
    ]
    assert tokenize("分布式检索") == ["分布", "布式", "式检", "检索"]
    assert tokenize("ｆｕｌｌ width café") == ["full", "width", "café"]


def test_bm25_ranking_and_scores() -> None:
    texts = {
        1: "raft elects a leader by majority vote",
        2: "the leader replicates the log; the log has entries; log compaction",
        3: "faiss builds a vector index",
        4: "bm25 ranks documents for a keyword query",
    }
    index = KeywordIndex()
    index.add(texts.items())
    assert [i for i, _ in index.search("log", 5)] == [2]
    assert index.search("the and of", 5) == []  # stopwords only
    ranked = index.search("leader log", 5)
    assert [i for i, _ in ranked] == [2, 1]
    # Okapi BM25 by hand for chunk 1 and the term "leader" (df 2, N 4).
    lengths = {i: len(tokenize(t)) for i, t in texts.items()}
    assert lengths == {1: 5, 2: 7, 3: 4, 4: 5}
    avg = sum(lengths.values()) / 4
    idf = np.log(1 + (4 - 2 + 0.5) / (2 + 0.5))
    expected = idf * 1 * 2.5 / (1 + 1.5 * (1 - 0.75 + 0.75 * lengths[1] / avg))
    assert index.score("leader", [1, 3])[1] == pytest.approx(expected)
    assert index.score("leader", [1, 3])[3] == 0.0
    assert [i for i, _ in index.search("leader log", 5, allowed={1, 3})] == [1]
    assert [i for i, _ in index.search("leader log", 5, excluded={2})] == [1]


def test_bm25_remove_equals_never_added() -> None:
    texts = {1: "alpha beta gamma", 2: "beta delta", 3: "gamma gamma epsilon", 4: "zeta"}
    full = KeywordIndex()
    full.add(texts.items())
    restored = KeywordIndex.from_bytes(full.to_bytes())  # removal after a restore too
    for index in (full, restored):
        assert index.remove([2, 4, 77]) == 2
    without = KeywordIndex()
    without.add((i, t) for i, t in texts.items() if i not in (2, 4))
    assert full.to_bytes() == restored.to_bytes() == without.to_bytes()
    assert (
        full.search("beta delta zeta", 5)
        == without.search("beta delta zeta", 5)
        == [(1, pytest.approx(full.score("beta", [1])[1]))]
    )
    with pytest.raises(ValueError):
        full.add([(1, "again")])


def test_bm25_ties_break_by_id() -> None:
    index = KeywordIndex()
    index.add([(30, "same words"), (10, "same words"), (20, "same words")])
    assert [i for i, _ in index.search("words", 3)] == [10, 20, 30]


# ---- knowledge base -------------------------------------------------------------------

KB_DIM = 64


def toy_embed(texts: Sequence[str]) -> np.ndarray:
    """Signed feature hashing of the BM25 tokens: texts sharing words are similar."""
    rows = np.zeros((len(texts), KB_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for token in tokenize(text) or ["<empty>"]:
            h = zlib.crc32(token.encode())
            rows[row, h % KB_DIM] += 1.0 if (h >> 16) & 1 else -1.0
        norm = np.linalg.norm(rows[row])
        if norm == 0:
            rows[row, 0], norm = 1.0, 1.0
        rows[row] /= norm
    return rows


@dataclass(frozen=True, slots=True)
class PutUpload:
    """The file half of an Upload (NodeState gives it to `put_upload`, and queues
    the ingest task itself): what the knowledge base alone applies of one."""

    doc: DocumentUpload
    at: int


KBCommand = KnowledgeCommand | PutUpload


def chunk_commands(
    doc_id: str, version: int, texts: Sequence[str], batch: int = 2, announce: bool = True
) -> Iterator[PutChunks]:
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    for n, part in enumerate(batches):
        first = n * batch
        yield PutChunks(
            doc_id=doc_id,
            version=version,
            batch_no=n,
            chunks=tuple(Chunk(first + j, 1, t) for j, t in enumerate(part)),
            vectors=vectors_to_bytes(toy_embed(part)),
            n_batches=len(batches) if announce else None,
        )


def document(doc_id: str, data: bytes, tags: Sequence[str] = (), title: str = "") -> DocumentUpload:
    return DocumentUpload(
        doc_id=doc_id,
        title=title,
        source=f"{doc_id}.txt",
        media_type="text/plain",
        tags=tuple(tags),
        data=data,
    )


def upload_command(doc_id: str, at: int, tags: Sequence[str] = (), title: str = "") -> PutUpload:
    data = f"raw bytes of {doc_id} at {at}".encode()
    return PutUpload(document(doc_id, data, tags, title or doc_id.title()), at)


def finish(doc_id: str, version: int, node: str, at: int) -> FinishIngest:
    return FinishIngest(doc_id=doc_id, version=version, node=node, at=at)


def ingest_commands(
    doc_id: str, version: int, texts: Sequence[str], at: int, tags: Sequence[str] = ()
) -> list[KBCommand]:
    return [
        upload_command(doc_id, at, tags),
        *chunk_commands(doc_id, version, texts),
        finish(doc_id, version, "n1", at + 1),
    ]


def apply(kb: KnowledgeBase, cmd: KBCommand) -> dict:
    """Apply as the runtime does: through the codec, then the knowledge base
    (an upload's file part through put_upload, as NodeState does)."""
    if isinstance(cmd, PutUpload):
        upload = codec.decode(codec.encode(Upload(cmd.doc, "T", "owner", cmd.at)))
        assert isinstance(upload, Upload)
        return kb.put_upload(upload.doc, upload.at)
    decoded = codec.decode(codec.encode(cmd))
    assert decoded == cmd
    return kb.apply(decoded)  # type: ignore[arg-type]


def run(kb: KnowledgeBase, commands: Sequence[KBCommand]) -> list[dict]:
    """Every command must apply (a Refusal fails the test)."""
    return [apply(kb, cmd) for cmd in commands]


RAFT = [
    "raft elects a leader with randomized election timeouts",
    "the leader appends entries to the replicated log of every follower",
    "a log entry is committed once a majority of nodes store it",
]
FAISS = [
    "faiss searches dense vectors by inner product",
    "an hnsw graph finds approximate nearest neighbours quickly",
]
COOKING = [
    "simmer the tomato sauce with garlic and basil",
    "bake the bread until the crust is golden",
]


@pytest.fixture
def kb() -> KnowledgeBase:
    base = KnowledgeBase(dim=KB_DIM)
    run(base, ingest_commands("raft", 1, RAFT, at=100, tags=["consensus", "papers"]))
    run(base, ingest_commands("faiss", 1, FAISS, at=200, tags=["retrieval", "papers"]))
    run(base, ingest_commands("cooking", 1, COOKING, at=300, tags=["kitchen"]))
    return base


def search(kb: KnowledgeBase, text: str, mode: str = "hybrid", **kwargs: Any) -> list:
    return kb.search(toy_embed([text])[0], text, mode=mode, **kwargs)  # type: ignore[arg-type]


def docs_of(passages: list) -> list[str]:
    return [p.doc_id for p in passages]


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_ingested_passages_are_searchable_in_every_mode(kb: KnowledgeBase, mode: str) -> None:
    passages = search(kb, "leader election timeouts", mode, k=3)
    top = passages[0]
    assert (top.doc_id, top.ordinal, top.page, top.title) == ("raft", 0, 1, "Raft")
    assert top.text == RAFT[0]
    assert top.vector_score is not None and top.keyword_score is not None
    expected = {"vector": top.vector_score, "keyword": top.keyword_score}.get(mode)
    if expected is not None:
        assert top.score == expected
    else:
        assert top.score == pytest.approx(2 / 61)  # first in both rankings
    # Keyword search returns only chunks sharing a term: RAFT[1] mentions no query word.
    assert len(passages) == (2 if mode == "keyword" else 3)
    assert kb.get("raft")["state"] == "ready"
    assert kb.get("raft")["chunk_count"] == 3
    assert kb.stats()["searchable_chunks"] == 7


def test_filters_by_document_and_tag(kb: KnowledgeBase) -> None:
    assert set(docs_of(search(kb, "leader log", k=10, doc_ids=["faiss"]))) == {"faiss"}
    assert set(docs_of(search(kb, "leader log", k=10, tags=["kitchen"]))) == {"cooking"}
    assert set(docs_of(search(kb, "log", "vector", k=10, tags=["papers"]))) == {"raft", "faiss"}
    assert search(kb, "leader", k=10, doc_ids=["nope"]) == []
    assert search(kb, "leader", k=10, doc_ids=["raft"], tags=["kitchen"]) == []


def test_min_score_thresholds(kb: KnowledgeBase) -> None:
    everything = search(kb, "tomato garlic basil", "vector", k=7)
    assert len(everything) == 7
    strict = search(kb, "tomato garlic basil", "vector", k=7, min_score=0.5)
    assert docs_of(strict) == ["cooking"] and strict[0].vector_score >= 0.5
    hybrid = search(kb, "tomato garlic basil", "hybrid", k=7, min_score=0.5)
    assert [p.chunk_id for p in hybrid] == [p.chunk_id for p in strict]
    keyword = search(kb, "tomato leader", "keyword", k=7, min_score=1.0)
    assert keyword and all(p.keyword_score >= 1.0 for p in keyword)


def test_disable_hides_and_enable_restores(kb: KnowledgeBase) -> None:
    run(kb, [SetEnabled("raft", enabled=False, at=400)])
    for mode in ("vector", "keyword", "hybrid"):
        assert "raft" not in docs_of(search(kb, "leader log majority", mode, k=10))
    assert search(kb, "leader", k=10, doc_ids=["raft"]) == []
    assert kb.get("raft")["enabled"] is False
    run(kb, [SetEnabled("raft", enabled=True, at=500)])
    assert docs_of(search(kb, "leader log majority", k=1)) == ["raft"]


def test_delete_removes_everything(kb: KnowledgeBase) -> None:
    result = run(kb, [DeleteDocument("raft", at=400)])[0]
    assert result["removed_chunks"] == 3
    assert kb.get("raft") is None
    for mode in ("vector", "keyword", "hybrid"):
        assert "raft" not in docs_of(search(kb, "leader log majority", mode, k=10))
    stats = kb.stats()
    assert stats["chunks"] == stats["vector_index"]["size"] == 4
    # Re-uploading the id continues the numbering, so stale batches cannot land.
    assert run(kb, [upload_command("raft", 500)])[0]["version"] == 2


def test_replace_swaps_versions_atomically(kb: KnowledgeBase) -> None:
    new_texts = [
        "raft version two explains joint consensus membership changes",
        "joint consensus overlaps old and new configurations",
        "membership changes happen one server at a time",
    ]
    run(kb, [upload_command("raft", 400, tags=["consensus", "v2"])])
    staged = list(chunk_commands("raft", 2, new_texts))
    run(kb, staged[:1])  # half of version 2 is in
    assert kb.get("raft")["state"] == "ingesting"
    assert kb.get("raft")["serving"]["version"] == 1
    for mode in ("vector", "keyword", "hybrid"):
        found = search(kb, "leader joint consensus membership", mode, k=10)
        assert "joint consensus" not in " ".join(p.text for p in found)
        assert "raft" in docs_of(found)
    assert search(kb, "leader", k=5, tags=["v2"]) == []  # still v1's tags
    run(kb, [*staged[1:], finish("raft", 2, "n2", 401)])
    found = search(kb, "leader joint consensus membership", "keyword", k=10)
    raft_texts = {p.text for p in found if p.doc_id == "raft"}
    assert raft_texts and raft_texts <= set(new_texts)
    doc = kb.get("raft")
    assert (doc["version"], doc["state"], doc["chunk_count"], doc["ingested_by"]) == (
        2,
        "ready",
        3,
        "n2",
    )
    assert doc["serving"]["version"] == 2 and doc["created_at"] == 100 and doc["updated_at"] == 401
    assert kb.stats()["chunks"] == kb.stats()["vector_index"]["size"] == 7
    assert docs_of(search(kb, "membership", k=5, tags=["v2"]))[0] == "raft"


def test_failed_ingest_keeps_the_serving_version(kb: KnowledgeBase) -> None:
    before = [p.chunk_id for p in search(kb, "leader log", k=5)]
    run(kb, [upload_command("raft", 400), *list(chunk_commands("raft", 2, ["broken text"]))])
    result = run(kb, [FailIngest("raft", version=2, error="corrupt PDF", at=401)])[0]
    assert result["serving_version"] == 1
    doc = kb.get("raft")
    assert (doc["state"], doc["error"], doc["serving"]["version"]) == ("failed", "corrupt PDF", 1)
    assert [p.chunk_id for p in search(kb, "leader log", k=5)] == before
    assert kb.upload_data("raft") is None
    assert kb.stats()["chunks"] == 7 and kb.stats()["staged_chunks"] == 0


def test_raw_bytes_are_dropped_once_ingested() -> None:
    kb = KnowledgeBase(dim=KB_DIM)
    run(kb, [upload_command("doc", 1)])
    assert kb.upload_data("doc") == b"raw bytes of doc at 1"
    assert kb.upload_data("doc", version=2) is None
    assert kb.stats()["pending_upload_bytes"] == len(b"raw bytes of doc at 1")
    run(kb, [*chunk_commands("doc", 1, ["some text"]), finish("doc", 1, "n1", 2)])
    assert kb.upload_data("doc") is None
    assert kb.stats()["pending_upload_bytes"] == 0
    assert b"raw bytes of doc" not in kb.snapshot()


def apply_unchecked(kb: KnowledgeBase, cmd: KBCommand) -> dict:
    """Straight to the knowledge base, without the codec's checks: it must refuse
    bad values itself (it validates everything before it changes anything)."""
    if isinstance(cmd, PutUpload):
        return kb.put_upload(cmd.doc, cmd.at)
    return kb.apply(cmd)


def test_rejected_commands_leave_no_trace(kb: KnowledgeBase) -> None:
    run(kb, [upload_command("faiss", 400), *list(chunk_commands("faiss", 2, FAISS * 2))[:1]])
    digest, snapshot = kb.digest(), kb.snapshot()
    good = next(chunk_commands("faiss", 2, ["x y", "y z"]))
    later = dataclasses.replace(good, batch_no=1)
    bad_commands: list[Any] = [
        Expire(before=1),  # not a knowledge-base command
        DeleteDocument("missing", at=1),
        dataclasses.replace(good, version=1),  # stale
        dataclasses.replace(later, n_batches=5),  # differs from the announced 2
        dataclasses.replace(later, vectors=good.vectors[:-4]),
        dataclasses.replace(later, vectors=vectors_to_bytes(2 * toy_embed(["x y", "y z"]))),
        dataclasses.replace(later, chunks=(Chunk(0, 1, "dup"), Chunk(5, 1, "ok"))),
        dataclasses.replace(later, chunks=(Chunk(2, 1, ""), Chunk(3, 1, "ok"))),
        finish("faiss", 2, "n1", 5),
        finish("raft", 1, "n2", 5),
        SetEnabled("raft", enabled="no", at=5),  # type: ignore[arg-type]
        PutUpload(document(" padded", b"x"), at=1),
        PutUpload(document("empty", b""), at=1),
    ]
    for cmd in bad_commands:
        with pytest.raises(Refusal) as refused:
            apply_unchecked(kb, cmd)
        assert refused.value.code in (
            RefusalCode.INVALID,
            RefusalCode.NOT_FOUND,
            RefusalCode.CONFLICT,
            RefusalCode.BAD_COMMAND,
        ), cmd
        assert kb.digest() == digest and kb.snapshot() == snapshot, cmd
    # What is not a command at all never reaches the knowledge base: the codec
    # refuses it (an unknown command, a missing argument).
    for entry in (
        msgpack.packb([codec.CODEC_VERSION, "kb.nope", {}]),
        msgpack.packb([codec.CODEC_VERSION, "kb.delete", {"doc_id": "raft"}]),
    ):
        with pytest.raises(codec.CodecError):
            codec.decode(entry)
    # A batch applied twice (a retried proposal) is a no-op.
    duplicate = next(chunk_commands("faiss", 2, FAISS * 2))
    assert apply(kb, duplicate)["duplicate"] is True
    assert kb.digest() == digest
    # So is a retried finish by the node that finished the version: same answer.
    again = apply(kb, finish("raft", 1, "n1", 9))
    assert again["state"] == "ready" and again["duplicate"] is True
    assert kb.digest() == digest and kb.snapshot() == snapshot
    with pytest.raises(Refusal):
        kb.search(None, "x", mode="vector")
    with pytest.raises(Refusal):
        kb.search(toy_embed(["x"])[0], "x", k=0)


def history() -> list[KBCommand]:
    """A command sequence touching every operation."""
    commands = [
        *ingest_commands("raft", 1, RAFT, at=100, tags=["consensus"]),
        *ingest_commands("faiss", 1, FAISS, at=200, tags=["retrieval"]),
        upload_command("cooking", 300, tags=["kitchen"]),
        *chunk_commands("cooking", 1, COOKING, announce=False),
        finish("cooking", 1, "n3", 301),
        SetEnabled("faiss", enabled=False, at=400),
        *ingest_commands("raft", 2, RAFT[::-1] + ["snapshots compact the log"], at=500),
        upload_command("faiss", 600),
        *chunk_commands("faiss", 2, FAISS),
        FailIngest("faiss", version=2, error="boom", at=601),
        DeleteDocument("cooking", at=700),
        upload_command("pending", 800, tags=["x"]),
        *list(chunk_commands("pending", 1, COOKING + RAFT))[:2],  # left mid-ingest
    ]
    return commands


def test_replicas_fed_the_same_log_are_identical() -> None:
    first, second = KnowledgeBase(dim=KB_DIM), KnowledgeBase(dim=KB_DIM)
    run(first, history())
    run(second, history())
    assert first.digest() == second.digest()
    assert first.snapshot() == second.snapshot()
    other = KnowledgeBase(dim=KB_DIM)
    run(other, history()[:-1])
    assert other.digest() != first.digest()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_snapshot_restore_round_trip(kind: str) -> None:
    original = KnowledgeBase(dim=KB_DIM, index_kind=kind)  # type: ignore[arg-type]
    run(original, history())
    restored = KnowledgeBase(dim=KB_DIM, index_kind=kind)  # type: ignore[arg-type]
    restored.restore(original.snapshot())
    assert restored.digest() == original.digest()
    assert restored.snapshot() == original.snapshot()
    assert restored.stats() == original.stats()
    assert restored.list_documents() == original.list_documents()
    for mode in ("vector", "keyword", "hybrid"):
        for text in ("leader log entries", "tomato bread", "vectors graph"):
            assert search(restored, text, mode, k=5) == search(original, text, mode, k=5)
    # Both keep evolving identically (removals after a restore included).
    more = [*chunk_commands("pending", 1, COOKING + RAFT)][2:] + [
        finish("pending", 1, "n1", 900),
        DeleteDocument("raft", at=901),
    ]
    run(original, more)
    run(restored, more)
    assert restored.digest() == original.digest()
    assert search(restored, "garlic", k=3) == search(original, "garlic", k=3)


def test_restore_converts_between_index_kinds() -> None:
    flat = KnowledgeBase(dim=KB_DIM)
    run(flat, history())
    hnsw = KnowledgeBase(dim=KB_DIM, index_kind="hnsw")
    hnsw.restore(flat.snapshot())
    assert hnsw.digest() == flat.digest()
    assert hnsw.stats()["vector_index"]["kind"] == "hnsw"
    with pytest.raises(ValueError):
        KnowledgeBase(dim=KB_DIM + 1).restore(flat.snapshot())


# ---- the real embedding model ---------------------------------------------------------

FACTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "The Great Wall of China stretches for thousands of kilometres.",
    "Mount Everest is the highest mountain above sea level.",
    "Penicillin was discovered by Alexander Fleming in 1928.",
    "The Pacific is the largest and deepest ocean on Earth.",
    "Honey bees communicate the location of flowers with a waggle dance.",
    "A leap year has 366 days, adding February 29.",
    "The speed of light in vacuum is about 300,000 kilometres per second.",
    "Python is a programming language created by Guido van Rossum.",
    "The human heart has four chambers that pump blood.",
    "Coffee beans are the roasted seeds of the coffee plant.",
    "Tokyo is the capital city of Japan.",
    "Chess is a board game played on an eight by eight grid.",
    "Volcanoes erupt when magma rises through the crust.",
    "The Moon orbits the Earth roughly every 27 days.",
    "Bicycles are powered by pedals turning a chain.",
    "Antibiotics do not work against viral infections like the flu.",
    "The violin is a string instrument played with a bow.",
    "Rainbows appear when sunlight is refracted by raindrops.",
]
PARAPHRASES = {
    "Which peak is the tallest in the world?": 3,
    "How do green plants make food from light?": 1,
    "Who invented the Python language?": 9,
    "Why are there colourful arcs in the sky after rain?": 19,
}


@pytest.fixture(scope="module")
def embedder() -> Any:
    from node.rag.embedding import Embedder  # imports torch: only for the last test

    return Embedder()


def test_real_embedder_retrieves_paraphrases(embedder: Any) -> None:
    from node.rag.embedding import EmbeddingCancelled

    assert embedder.dim == 384 and embedder.model_id == "all-MiniLM-L6-v2"
    progress: list[tuple[int, int]] = []
    vectors = embedder.encode(
        FACTS, batch_size=8, progress=lambda d, t, _w: progress.append((d, t))
    )
    assert vectors.shape == (20, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert progress[-1] == (20, 20) and len(progress) == 3
    # Batching and length-sorting do not change a text's embedding.
    assert np.allclose(embedder.encode([FACTS[4]])[0], vectors[4], atol=1e-5)
    with pytest.raises(EmbeddingCancelled):
        embedder.encode(FACTS, cancelled=lambda: True)

    kb = KnowledgeBase()
    run(kb, [upload_command("facts", 1)])
    run(
        kb,
        [
            PutChunks(
                doc_id="facts",
                version=1,
                batch_no=0,
                chunks=tuple(Chunk(i, 1, t) for i, t in enumerate(FACTS)),
                vectors=vectors_to_bytes(vectors),
                n_batches=1,
            ),
            finish("facts", 1, "n1", 2),
        ],
    )
    for question, expected in PARAPHRASES.items():
        query = embedder.encode_query(question)
        for mode in ("vector", "hybrid"):
            top = kb.search(query, question, mode=mode, k=3)[0]
            assert top.ordinal == expected, (mode, question, top.text)
