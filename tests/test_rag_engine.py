"""The engine's pieces that need no model: entry batching, parameter checks, and the
node-state rules that tie uploads to their ingest tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from node.rag.chunking import ChunkText
from node.rag.engine import BadInput, RagEngine, _batches
from node.rag.knowledge import KnowledgeBase
from node.replica import codec
from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskType


class HashEmbedder:
    """Deterministic unit vectors from text hashes: enough to exercise retrieval plumbing."""

    model_id = "hash"
    dim = 384

    def encode(self, texts, batch_size=32, progress=None, cancelled=None) -> np.ndarray:
        rows = []
        for text in texts:
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            v = rng.standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.vstack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def test_batches_stay_under_the_entry_size_and_keep_order() -> None:
    chunks = [ChunkText(i, 1, "word " * (50 + i % 7)) for i in range(300)]
    vectors = np.ones((300, 384), dtype=np.float32)
    batches = _batches(chunks, vectors, entry_bytes=64 * 1024)
    assert len(batches) > 1
    assert [c["ordinal"] for b in batches for c in b["chunks"]] == list(range(300))
    for n, batch in enumerate(batches):
        entry = c.PutChunks(
            doc_id="a-document-id",
            version=1,
            batch_no=n,
            chunks=tuple(c.Chunk(**chunk) for chunk in batch["chunks"]),
            vectors=batch["vectors"],
            n_batches=len(batches),
        )
        assert len(codec.encode(entry)) <= 64 * 1024
        assert len(batch["vectors"]) == 384 * 4 * len(batch["chunks"])
    # one chunk larger than the bound still travels (alone)
    big = _batches(
        [ChunkText(0, 1, "x" * 100_000)], np.ones((1, 384), np.float32), entry_bytes=1024
    )
    assert len(big) == 1


def test_prepare_ingest_refuses_bad_files_with_the_parser_message() -> None:
    engine = RagEngine(KnowledgeBase(), HashEmbedder(), None)
    with pytest.raises(BadInput, match="empty"):
        engine.prepare_ingest(b"", "a.txt")
    with pytest.raises(BadInput, match="unsupported|not supported"):
        engine.prepare_ingest(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "a.png")
    batches = engine.prepare_ingest(b"One sentence. Another sentence.", "a.txt")
    assert batches[0]["chunks"][0]["text"].startswith("One sentence")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": "5"}, "top_k"),
        ({"mode": "semantic"}, "mode"),
        ({"min_score": "high"}, "min_score"),
    ],
)
def test_bad_retrieval_parameters_are_bad_input(params: dict, message: str) -> None:
    engine = RagEngine(KnowledgeBase(), HashEmbedder(), None)
    with pytest.raises(BadInput, match=message):
        engine.run("retrieve", {"query": "q"}, params)


def test_missing_query_or_generator_is_bad_input() -> None:
    engine = RagEngine(KnowledgeBase(), HashEmbedder(), None)
    with pytest.raises(BadInput, match="input.query"):
        engine.run("qa", {"question": "q"})
    with pytest.raises(BadInput, match="no generator"):
        engine.run("qa", {"query": "q"})
    assert engine.run("retrieve", {"query": "q"})["passages"] == []


def apply(state: NodeState, index: int, cmd: c.Command) -> Any:
    """As the log does: encoded, applied, the outcome back from its wire form (the
    result, or the Refusal)."""
    return codec.outcome_from_wire(state.apply(index, codec.encode(cmd)))


def upload_cmd(task_id: str = "T1", data: bytes = b"hello world") -> c.Upload:
    return c.Upload(
        doc=c.DocumentUpload(
            doc_id="d1",
            title="Hello",
            source="hello.txt",
            media_type="text/plain",
            tags=("x",),
            data=data,
        ),
        task_id=task_id,
        owner="ann",
        at=1000,
        priority=7,
    )


def test_an_upload_and_its_ingest_task_are_one_entry() -> None:
    state = NodeState(TaskQueue(), KnowledgeBase())
    result = apply(state, 1, upload_cmd())
    assert result["document"]["state"] == "uploaded"
    task = state.tasks.get("T1")
    assert task is not None and task.type == "ingest" and task.priority == 7 and task.owner == "ann"
    assert task.input == {
        "doc_id": "d1",
        "version": 1,
        "filename": "hello.txt",
        "media_type": "text/plain",
    }
    # a refused upload leaves neither a document nor a task
    bad = apply(state, 2, upload_cmd("T2", data=b""))
    assert isinstance(bad, Refusal) and bad.code is RefusalCode.INVALID
    assert state.tasks.get("T2") is None and state.kb.get("d1")["version"] == 1


def test_a_cancelled_ingest_fails_its_document_and_drops_the_bytes() -> None:
    state = NodeState(TaskQueue(), KnowledgeBase())
    apply(state, 1, upload_cmd())
    assert state.kb.upload_data("d1") == b"hello world"
    apply(state, 2, c.Cancel("T1", at=2000, by="ann"))
    doc = state.kb.get("d1")
    assert doc["state"] == "failed" and "cancelled" in doc["error"]
    assert state.kb.upload_data("d1") is None


def test_an_exception_in_apply_is_an_error_result_not_a_stopped_log() -> None:
    state = NodeState(TaskQueue(), KnowledgeBase())
    state.tasks.apply = None  # type: ignore[assignment,method-assign]  # a bug in a sub-machine
    result = apply(state, 1, c.Submit("x", TaskType.NOOP, {}, TaskParams(), owner="", at=1))
    assert isinstance(result, Refusal) and result.code is RefusalCode.INTERNAL
    assert state.applied_index == 1
