"""The node's RAG engine: models loaded once at start, then the RAG task types.

Loading takes seconds (tens of seconds the first time a GGUF is converted), so
it runs in a thread while Raft, gossip and the API are already up.  Until the
models are in, the executor claims only `noop` tasks, so a node still loading
never holds a RAG task another node could run; `/readyz` reports the progress.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.config import ModelSettings, RagConfig
from node.execution.executor import Executor
from node.rag.knowledge import KnowledgeBase
from node.replica.replica import Replica
from node.replica.vocabulary import TaskType

if TYPE_CHECKING:  # node.execution.runners imports torch: only the loader thread may pay for that
    from node.execution.executor import TaskRunner

log = logging.getLogger("ragraft.models")


def import_libraries(node_id: str) -> None:
    """Import torch, transformers and sentence-transformers, before Raft starts.

    Their imports hold the GIL for seconds at a time; done in the loader thread
    while the node runs, they starved its event loop (heartbeats late, gossip
    suspecting live peers).  Done first, they only delay the node's start.
    """
    started = time.monotonic()
    print(
        f"node {node_id}: models: importing torch, transformers and sentence-transformers",
        flush=True,
    )
    import node.execution.runners  # noqa: F401  (imports the engine and, through it, everything above)

    print(
        f"node {node_id}: models: libraries imported in {time.monotonic() - started:.1f} s",
        flush=True,
    )


@dataclass
class ModelStatus:
    state: str = "loading"  # loading | ready | failed | disabled
    step: str = "starting"
    error: str | None = None
    embedding: str | None = None
    generator: str | None = None
    device: str | None = None
    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "step": self.step,
            "error": self.error,
            "embedding": self.embedding,
            "generator": self.generator,
            "device": self.device,
            "seconds": self.seconds,
        }


class RagService:
    def __init__(
        self,
        node_id: str,
        kb: KnowledgeBase,
        models: ModelSettings,
        rag: RagConfig,
        data_dir: Path,
        executor: Executor,
        replica: Replica,
    ) -> None:
        self.node_id = node_id
        self.kb = kb
        self.settings = models
        self.rag = rag
        self.data_dir = data_dir
        self.executor = executor
        # the ingest runner commits chunk batches from its worker thread
        self.commit = replica.propose_blocking
        self.status = ModelStatus(
            state="loading" if models.load else "disabled",
            step="queued" if models.load else "models.load is false",
        )
        self.engine: Any = None
        self._batcher: Any = None

    @property
    def ready(self) -> bool:
        return self.status.state in ("ready", "disabled")

    async def start(self) -> None:
        if not self.settings.load:
            return
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._load, args=(loop,), name="model-loader", daemon=True)
        thread.start()

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    def _step(self, message: str) -> None:
        self.status.step = message
        print(f"node {self.node_id}: models: {message}", flush=True)

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            engine = self._build()
        except Exception as exc:
            self.status.state, self.status.error = "failed", f"{type(exc).__name__}: {exc}"
            self._step(
                f"FAILED: {exc}. RAG tasks will run on the other nodes; "
                "fix [models] and restart this node"
            )
            log.exception("model loading failed")
            return
        self.engine = engine
        self.status.seconds = round(time.monotonic() - self.status.started, 1)
        self.status.state = "ready"
        self._step(f"ready in {self.status.seconds} s")
        loop.call_soon_threadsafe(self._register, engine)

    def _build(self) -> Any:
        # Heavy imports happen here, in the loader thread, so the node is up at once.
        from transformers.utils import logging as hf_logging

        from node.rag.batcher import GenerationBatcher
        from node.rag.embedding import Embedder
        from node.rag.engine import RagEngine, RagSettings
        from node.rag.generation import load_backend

        # Our own progress lines instead of tqdm bars (transformers leaves it unannotated).
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        settings = self.settings
        self._step(f"loading embedding model {settings.embedding}")
        spec = settings.embedding
        if spec.startswith("bundled:") and spec != "bundled:all-MiniLM-L6-v2":
            raise ValueError(
                f"unknown bundled embedding model {spec!r}; bundled: bundled:all-MiniLM-L6-v2"
            )
        model_dir = None if spec.startswith("bundled:") else Path(spec)
        embedder = Embedder(
            model_dir, device=None if settings.device == "auto" else settings.device
        )
        self.status.embedding, self.status.device = embedder.model_id, str(embedder.device)
        if self.kb.dim != embedder.dim:
            raise ValueError(
                f"the embedding model has dimension {embedder.dim}, "
                f"the knowledge base {self.kb.dim}"
            )
        backend = None
        if settings.generator.lower() != "none":
            self._step(f"loading generator {settings.generator}")
            cache = settings.cache_dir or (self.data_dir / "model-cache")
            backend = load_backend(
                settings.generator,
                cache_dir=cache,
                device=settings.device,
                progress=lambda message: self._step(f"generator: {message}"),
                context_tokens=settings.context_tokens,
            )
            self.status.generator = backend.model_id
            self._batcher = GenerationBatcher(backend, max_batch=settings.max_batch)
        rag = self.rag
        return RagEngine(
            self.kb,
            embedder,
            backend,
            RagSettings(
                chunk_size=rag.chunk_size,
                chunk_overlap=rag.chunk_overlap,
                max_upload_bytes=rag.max_upload_mb * 1024 * 1024,
                top_k=rag.top_k,
                mode=rag.mode,
                max_new_tokens=rag.max_new_tokens,
            ),
            generator=self._batcher,
        )

    def _register(self, engine: Any) -> None:
        from node.execution.runners import IngestRunner, RagRunner

        runner = RagRunner(engine)
        types: dict[TaskType, TaskRunner] = {
            TaskType.RETRIEVE: runner,
            TaskType.INGEST: IngestRunner(engine, self.node_id, self.commit),
        }
        if engine.backend is not None:
            types.update({TaskType.QA: runner, TaskType.GENERATE: runner})
        self.executor.runners.update(types)
        self.executor.poke()
