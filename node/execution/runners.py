"""Task runners for the RAG task types: the executor's side of node/rag/engine.py.

`RagRunner` runs `qa`, `generate` and `retrieve`.  `IngestRunner` runs `ingest`:
it reads the upload's raw bytes from the local replica, parses, chunks and
embeds them here (once, for the whole cluster), then commits the chunks with
their vectors in bounded batches and closes the ingest; every node indexes them
when it applies those entries.  Both map the engine's errors onto the
executor's: bad input fails without retry, a cancellation ends the attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from node.execution.executor import TaskAborted, TaskFailure
from node.ids import now_ms
from node.rag.engine import BadInput, Cancelled, RagEngine
from node.rag.generation import GenerationError
from node.replica import commands as c
from node.replica.refusal import Refused
from node.replica.tasks import TaskSpec
from node.replica.vocabulary import CancelledFn, ProgressFn

log = logging.getLogger("ragraft.runners")

# commit(command) -> the command's result once applied on this node; blocking
# (called from a worker thread), retrying until it commits (Replica.propose_blocking);
# raises Refused, or NoQuorum only when the node is stopping.  A retry may apply
# after an earlier copy: commands sent this way must be idempotent.
CommitFn = Callable[[c.Command], Any]


class RagRunner:
    def __init__(self, engine: RagEngine) -> None:
        self.engine = engine

    def run(self, task: TaskSpec, progress: ProgressFn, cancelled: CancelledFn) -> Any:
        try:
            return self.engine.run(
                task.type, task.input, task.params.to_wire(), progress, cancelled
            )
        except BadInput as exc:
            raise TaskFailure(str(exc), retryable=False) from None
        except Cancelled:
            raise TaskAborted() from None
        except GenerationError as exc:  # e.g. the OpenAI-compatible server is down
            raise TaskFailure(f"generation failed: {exc}", retryable=True) from None


class IngestRunner:
    def __init__(self, engine: RagEngine, node_id: str, commit: CommitFn) -> None:
        self.engine = engine
        self.node_id = node_id
        self.commit = commit

    def run(self, task: TaskSpec, progress: ProgressFn, cancelled: CancelledFn) -> Any:
        source = task.input
        doc_id, version = source.get("doc_id"), source.get("version")
        kb = self.engine.kb
        data = kb.upload_data(doc_id, version) if isinstance(doc_id, str) else None
        if data is None:
            doc = kb.get(doc_id) if isinstance(doc_id, str) else None
            where = "deleted" if doc is None else f"v{doc['version']} is {doc['state']}"
            raise TaskFailure(
                f"document {doc_id!r} v{version} is no longer waiting to be ingested ({where})",
                retryable=False,
            )
        # The replica wrote this input from the upload (node/replica/state.py, _upload): a
        # str doc_id (upload_data found it) and an int version.
        if not isinstance(doc_id, str) or not isinstance(version, int):
            raise TaskFailure(
                f"ingest task input names no document version ({doc_id!r} v{version!r})",
                retryable=False,
            )
        started = time.perf_counter()
        try:
            batches = self.engine.prepare_ingest(
                data,
                source.get("filename") or doc_id,
                source.get("media_type"),
                progress,
                cancelled,
            )
        except BadInput as exc:
            raise TaskFailure(str(exc), retryable=False) from None
        except Cancelled:
            raise TaskAborted() from None
        embedded = time.perf_counter()
        chunks = 0
        for batch_no, batch in enumerate(batches):
            if cancelled():
                raise TaskAborted()
            cmd = c.PutChunks(
                doc_id=doc_id,
                version=version,
                batch_no=batch_no,
                chunks=tuple(
                    c.Chunk(int(ch["ordinal"]), int(ch["page"]), ch["text"])
                    for ch in batch["chunks"]
                ),
                vectors=batch["vectors"],
                n_batches=len(batches),
            )
            self._expect_ok(cmd, doc_id, version)
            chunks += len(batch["chunks"])
            progress(
                0.95 + 0.05 * (batch_no + 1) / len(batches),
                f"{chunks} chunks committed ({batch_no + 1}/{len(batches)} batches)",
            )
        finish = c.FinishIngest(doc_id=doc_id, version=version, node=self.node_id, at=now_ms())
        done = self._expect_ok(finish, doc_id, version)
        return {
            "doc_id": doc_id,
            "version": version,
            "chunks": chunks,
            "batches": len(batches),
            "replaced_version": done.get("replaced_version"),
            "timings": {
                "embed_ms": round((embedded - started) * 1000, 1),
                "commit_ms": round((time.perf_counter() - embedded) * 1000, 1),
                "chunks_per_s": round(chunks / max(embedded - started, 1e-9), 1),
            },
            "models": {"embedding": self.engine.embedder.model_id},
        }

    def _expect_ok(self, cmd: c.Command, doc_id: str, version: int) -> dict[str, Any]:
        try:
            result = self.commit(cmd)
        except Refused as exc:
            # A newer upload or a delete superseded this version: nothing left to do.
            raise TaskFailure(f"document {doc_id!r} v{version}: {exc}", retryable=False) from None
        return result if isinstance(result, dict) else {}
