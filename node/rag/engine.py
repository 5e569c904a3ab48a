"""The RAG engine: what a node does to run `qa`, `generate` and `retrieve` tasks, and
the compute half of an `ingest` task.

Everything here is blocking and runs in a task's worker thread.  Each entry point
takes `progress(fraction, note)` and `cancelled()`; cancellation is checked before
retrieval, between retrieval and generation and, through the generation request,
every few tokens.  A bad parameter raises `BadInput` (the task fails without
retry); a cancellation raises `Cancelled`.

Ingestion is split in two so that the knowledge base stays a replicated state
machine: `prepare_ingest` parses, chunks and embeds on the node that claimed the
task and returns `put_chunks` batches; the runtime commits them to the log, and
every node (this one included) indexes them by applying the log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from node.rag.attribution import Attributor
from node.rag.chunking import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, ChunkText, chunk_pages
from node.rag.documents import BadDocument, ParseCancelled, parse
from node.rag.embedding import EmbeddingCancelled
from node.rag.generation import (
    ChatMessage,
    GenerationBackend,
    GenRequest,
    GenResult,
    PromptTooLongError,
)
from node.rag.grounding import ground
from node.rag.knowledge import (
    MAX_K,
    SEARCH_MODES,
    KnowledgeBase,
    Passage,
    vectors_to_bytes,
)
from node.rag.prompts import (
    ContextTooSmallError,
    build_generate_prompt,
    build_qa_prompt,
    map_citations,
)
from node.replica.refusal import Refusal
from node.replica.vocabulary import CancelledFn, GroundingMode, ProgressFn

MAX_NEW_TOKENS = 2048
MAX_STOP_STRINGS = 8
MAX_QUERY_CHARS = 8000
# A put_chunks log entry stays below this size (text plus 4 bytes per dimension per
# chunk), so one ingest never blocks the log with a multi-megabyte entry.
DEFAULT_ENTRY_BYTES = 512 * 1024


class BadInput(ValueError):
    """The task's input or parameters are wrong; retrying cannot help."""


class Cancelled(Exception):
    """The task was aborted (or taken away from this node) at a checkpoint."""


class QueryEmbedder(Protocol):
    model_id: str
    dim: int

    def encode(
        self, texts: Sequence[str], batch_size: int = ..., progress: Any = ..., cancelled: Any = ...
    ) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray: ...


class Generator(Protocol):
    """A backend, or a batcher in front of one: one request at a time, blocking."""

    def generate(self, request: GenRequest) -> GenResult: ...


@dataclass(frozen=True)
class RagSettings:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    max_upload_bytes: int = 32 * 1024 * 1024
    entry_bytes: int = DEFAULT_ENTRY_BYTES
    embed_batch: int = 32
    top_k: int = 5
    mode: str = "hybrid"
    max_new_tokens: int = 256


class _Unbatched:
    def __init__(self, backend: GenerationBackend) -> None:
        self.backend = backend

    def generate(self, request: GenRequest) -> GenResult:
        return self.backend.generate([request], request.cancelled)[0]


def _never() -> bool:
    return False


def _ignore(_fraction: float, _note: str) -> None:
    pass


class RagEngine:
    def __init__(
        self,
        kb: KnowledgeBase,
        embedder: QueryEmbedder,
        backend: GenerationBackend | None,
        settings: RagSettings | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.kb = kb
        self.embedder = embedder
        self.backend = backend
        self.settings = settings or RagSettings()
        # Tasks that run at the same time share generate() calls through a batcher.
        self.generator = generator or (_Unbatched(backend) if backend is not None else None)
        self.attributor = Attributor(self._embed_sentences)

    def _embed_sentences(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts, batch_size=64)

    @property
    def models(self) -> dict[str, str | None]:
        return {
            "embedding": self.embedder.model_id,
            "generator": self.backend.model_id if self.backend is not None else None,
        }

    # ---------------------------------------------------------------- tasks
    def run(
        self,
        task_type: str,
        task_input: dict[str, Any],
        params: dict[str, Any] | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> dict[str, Any]:
        """The result of one `qa`, `generate` or `retrieve` task."""
        progress = progress or _ignore
        cancelled = cancelled or _never
        params = dict(params or {})
        if task_type == "retrieve":
            return self._retrieve_task(task_input, params, progress, cancelled)
        if task_type == "qa":
            return self._qa_task(task_input, params, progress, cancelled)
        if task_type == "generate":
            return self._generate_task(task_input, params, progress, cancelled)
        raise BadInput(f"the RAG engine does not run {task_type!r} tasks")

    def retrieve(
        self, query: str, params: dict[str, Any], cancelled: CancelledFn = _never
    ) -> tuple[list[Passage], float]:
        """Ranked passages for `query` and the milliseconds it took."""
        if cancelled():
            raise Cancelled()
        k = _int_param(params, "top_k", self.settings.top_k, 1, MAX_K)
        mode = params.get("mode", self.settings.mode)
        if mode not in SEARCH_MODES:
            raise BadInput(f"params.mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
        min_score = params.get("min_score")
        if min_score is not None and (
            isinstance(min_score, bool) or not isinstance(min_score, (int, float))
        ):
            raise BadInput("params.min_score must be a number")
        started = time.perf_counter()
        vector = self.embedder.encode_query(query) if mode != "keyword" else None
        try:
            passages = self.kb.search(
                vector,
                query,
                mode=mode,
                k=k,
                doc_ids=params.get("doc_ids"),
                tags=params.get("tags"),
                min_score=min_score,
            )
        except Refusal as exc:
            raise BadInput(f"retrieval: {exc}") from None
        return passages, (time.perf_counter() - started) * 1000

    def _retrieve_task(
        self,
        task_input: dict[str, Any],
        params: dict[str, Any],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> dict[str, Any]:
        query = _text_input(task_input, "query")
        progress(0.1, "retrieving")
        passages, retrieve_ms = self.retrieve(query, params, cancelled)
        return {
            "passages": [_passage_dict(n, p) for n, p in enumerate(passages, start=1)],
            "timings": {"retrieve_ms": round(retrieve_ms, 2)},
            "models": {"embedding": self.embedder.model_id},
        }

    def _qa_task(
        self,
        task_input: dict[str, Any],
        params: dict[str, Any],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> dict[str, Any]:
        query = _text_input(task_input, "query")
        progress(0.05, "retrieving")
        passages, retrieve_ms = self.retrieve(query, params, cancelled)
        if cancelled():
            raise Cancelled()
        backend = self._need_backend()
        max_new = _int_param(
            params, "max_new_tokens", self.settings.max_new_tokens, 1, MAX_NEW_TOKENS
        )
        try:
            messages, used = build_qa_prompt(query, passages, backend, reserve_new_tokens=max_new)
        except ContextTooSmallError as exc:
            raise BadInput(str(exc)) from None
        mode = _grounding_param(params)
        progress(0.2, f"generating from {len(used)} passages")
        result = self._generate(messages, params, max_new, cancelled)
        progress(0.95, "finding the passages that support each sentence")
        answer, citations, grounding = ground(
            query, result.text.strip(), used, self.attributor, mode
        )
        timings = _timings(retrieve_ms, result)
        timings["attribution_ms"] = grounding["attribution_ms"]
        return {
            "answer": answer,
            "citations": citations,
            "grounding": grounding,
            "passages": [_passage_dict(n, p) for n, p in enumerate(used, start=1)],
            "finish_reason": result.finish_reason,
            "timings": timings,
            "models": self.models,
        }

    def _generate_task(
        self,
        task_input: dict[str, Any],
        params: dict[str, Any],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> dict[str, Any]:
        prompt = _text_input(task_input, "prompt")
        backend = self._need_backend()
        max_new = _int_param(
            params, "max_new_tokens", self.settings.max_new_tokens, 1, MAX_NEW_TOKENS
        )
        passages: list[Passage] = []
        retrieve_ms = None
        if params.get("retrieve") or task_input.get("query"):
            query = task_input.get("query") or prompt
            progress(0.05, "retrieving")
            passages, retrieve_ms = self.retrieve(
                _text_input({"query": query}, "query"), params, cancelled
            )
        try:
            messages, used = build_generate_prompt(
                prompt, passages, backend, reserve_new_tokens=max_new
            )
        except ContextTooSmallError as exc:
            raise BadInput(str(exc)) from None
        progress(0.2, "generating")
        result = self._generate(messages, params, max_new, cancelled)
        out: dict[str, Any] = {
            "answer": result.text,
            "finish_reason": result.finish_reason,
            "timings": _timings(retrieve_ms, result),
            "models": self.models,
        }
        if used:
            out["citations"] = [
                {
                    "n": c.n,
                    "doc_id": c.passage.doc_id,
                    "chunk": c.passage.ordinal,
                    "title": c.passage.title,
                }
                for c in map_citations(result.text, used)
            ]
            out["passages"] = [_passage_dict(n, p) for n, p in enumerate(used, start=1)]
        return out

    def _need_backend(self) -> GenerationBackend:
        if self.backend is None or self.generator is None:
            raise BadInput("this node has no generator configured ([models] generator)")
        return self.backend

    def _generate(
        self,
        messages: list[ChatMessage],
        params: dict[str, Any],
        max_new: int,
        cancelled: CancelledFn,
    ) -> GenResult:
        stop = params.get("stop", ())
        if isinstance(stop, str):
            stop = (stop,)
        if (
            not isinstance(stop, (list, tuple))
            or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) for s in stop)
        ):
            raise BadInput(
                f"params.stop must be a string or a list of at most {MAX_STOP_STRINGS} strings"
            )
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadInput("params.seed must be a whole number")
        try:
            request = GenRequest(
                messages=tuple(messages),
                max_new_tokens=max_new,
                temperature=_float_param(params, "temperature", 0.0),
                top_p=_float_param(params, "top_p", 1.0),
                stop=tuple(stop),
                seed=seed,
                cancelled=cancelled,
            )
        except ValueError as exc:
            raise BadInput(f"params: {exc}") from None
        assert self.generator is not None
        try:
            result = self.generator.generate(request)
        except PromptTooLongError as exc:
            raise BadInput(str(exc)) from None
        if result.finish_reason == "cancelled" or cancelled():
            raise Cancelled()
        return result

    # ---------------------------------------------------------------- ingestion
    def prepare_ingest(
        self,
        data: bytes,
        filename: str,
        media_type: str | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> list[dict[str, Any]]:
        """Parse, chunk and embed an upload: the `put_chunks` batches to commit, each
        `{"chunks": [{ordinal, page, text}], "vectors": bytes}` within `entry_bytes`.
        Raises `BadInput` (with the parser's message) for a file that cannot be read."""
        progress = progress or _ignore
        cancelled = cancelled or _never

        def parsed_pages(done: int, total: int, _what: str) -> None:
            progress(0.1 * done / max(total, 1), f"{done}/{total} pages parsed")

        try:
            document = parse(
                data,
                filename,
                media_type,
                max_bytes=self.settings.max_upload_bytes,
                progress=parsed_pages,
                cancelled=cancelled,
            )
        except BadDocument as exc:
            raise BadInput(str(exc)) from None
        except ParseCancelled:
            raise Cancelled() from None
        chunks = chunk_pages(document.pages, self.settings.chunk_size, self.settings.chunk_overlap)
        if not chunks:
            raise BadInput(f"{filename}: no text to index")

        def embedded(done: int, total: int, _what: str) -> None:
            progress(0.1 + 0.85 * done / max(total, 1), f"{done}/{total} chunks embedded")

        try:
            vectors = self.embedder.encode(
                [c.text for c in chunks],
                batch_size=self.settings.embed_batch,
                progress=embedded,
                cancelled=cancelled,
            )
        except EmbeddingCancelled:
            raise Cancelled() from None
        return _batches(chunks, vectors, self.settings.entry_bytes)


def _batches(
    chunks: list[ChunkText], vectors: np.ndarray, entry_bytes: int
) -> list[dict[str, Any]]:
    row_bytes = vectors.shape[1] * 4
    batches: list[dict[str, Any]] = []
    start, size = 0, 0
    for i, chunk in enumerate(chunks):
        # Characters can take up to 4 bytes in UTF-8; 64 covers the map's keys.
        cost = row_bytes + len(chunk.text.encode()) + 64
        if i > start and size + cost > entry_bytes:
            batches.append(_batch(chunks[start:i], vectors[start:i]))
            start, size = i, 0
        size += cost
    batches.append(_batch(chunks[start:], vectors[start:]))
    return batches


def _batch(chunks: list[ChunkText], vectors: np.ndarray) -> dict[str, Any]:
    return {
        "chunks": [{"ordinal": c.ordinal, "page": c.page, "text": c.text} for c in chunks],
        "vectors": vectors_to_bytes(vectors),
    }


def _passage_dict(n: int, passage: Passage) -> dict[str, Any]:
    return {
        "n": n,
        "doc_id": passage.doc_id,
        "title": passage.title,
        "chunk": passage.ordinal,
        "page": passage.page,
        "text": passage.text,
        "score": round(passage.score, 6),
        "vector_score": None if passage.vector_score is None else round(passage.vector_score, 6),
        "keyword_score": None if passage.keyword_score is None else round(passage.keyword_score, 6),
    }


def _timings(retrieve_ms: float | None, result: GenResult) -> dict[str, Any]:
    generate_ms = result.seconds * 1000
    return {
        "retrieve_ms": None if retrieve_ms is None else round(retrieve_ms, 2),
        "generate_ms": round(generate_ms, 1),
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens,
        "tokens_per_s": round(result.new_tokens / result.seconds, 2)
        if result.seconds > 0
        else None,
    }


def _text_input(task_input: dict[str, Any], key: str) -> str:
    value = task_input.get(key) if isinstance(task_input, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"input.{key} must be a non-empty string")
    if len(value) > MAX_QUERY_CHARS:
        raise BadInput(f"input.{key} is {len(value)} characters; the limit is {MAX_QUERY_CHARS}")
    return value


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInput(f"params.{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _grounding_param(params: dict[str, Any]) -> GroundingMode:
    value = params.get("grounding", GroundingMode.ANNOTATE)
    try:
        return GroundingMode(value)
    except ValueError:
        modes = ", ".join(m.value for m in GroundingMode)
        raise BadInput(f"params.grounding must be one of {modes}, not {value!r}") from None


def _float_param(params: dict[str, Any], name: str, default: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"params.{name} must be a number, not {value!r}")
    return float(value)
