"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (or any sentence-transformers folder).

`Embedder.encode` is blocking; the runtime calls it from a worker thread. It returns
float32 rows of unit length, so inner product in the vector index is cosine similarity.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# OpenMP threads that spin while waiting collapse when the node's cores are shared with
# other work: embedding 20 short texts took 0.8-4 s with spinning threads on 2 busy
# cores, 0.25 s with passive ones. Read when torch loads, so it only helps if nothing
# imported torch earlier (node/rag/generation.py sets the same default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from node import models

log = logging.getLogger("ragraft.rag.embedding")

EmbedProgressFn = Callable[[int, int, str], None]
from node.replica.vocabulary import CancelledFn

BUNDLED_MODEL_ID = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 64


class EmbeddingCancelled(Exception):
    """`encode` stopped between two batches because `cancelled()` said so."""


def auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Loads the model once; `encode` may be called from several threads."""

    def __init__(self, model_dir: Path | None = None, device: str | None = None) -> None:
        path = model_dir if model_dir is not None else models.embedding_model_dir()
        self.model_id = BUNDLED_MODEL_ID if model_dir is None else Path(model_dir).name
        self.device = device or auto_device()
        started = time.perf_counter()
        self._model = SentenceTransformer(str(path), device=self.device)
        self._model.eval()
        # sentence-transformers 6 renamed the accessor; older releases only have the old name.
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim is None:
            raise ValueError(f"embedding model at {path} does not declare its dimension")
        self.dim: int = int(dim)
        # Torch modules are not guaranteed re-entrant; tasks embedding queries at the
        # same time take turns (one query embeds in a few milliseconds).
        self._lock = threading.Lock()
        log.info(
            "embedding model %s loaded on %s in %.2f s (dim %d)",
            self.model_id,
            self.device,
            time.perf_counter() - started,
            self.dim,
        )

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: EmbedProgressFn | None = None,
        cancelled: CancelledFn | None = None,
    ) -> np.ndarray:
        """Embed `texts` into a float32 array (len(texts), dim) of unit-length rows."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        total = len(texts)
        out = np.zeros((total, self.dim), dtype=np.float32)
        if total == 0:
            return out
        # Batches of similar length waste less padding; sentence-transformers sorts only
        # within one call, and we call it per batch to report progress and to cancel.
        order = sorted(range(total), key=lambda i: len(texts[i]), reverse=True)
        done = 0
        for start in range(0, total, batch_size):
            if cancelled is not None and cancelled():
                raise EmbeddingCancelled(f"cancelled after {done} of {total} texts")
            rows = order[start : start + batch_size]
            with self._lock:
                vectors = self._model.encode(
                    [texts[i] for i in rows],
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            out[rows] = vectors.astype(np.float32, copy=False)
            done += len(rows)
            if progress is not None:
                progress(done, total, "embedding")
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """One query as a (dim,) vector."""
        vector: np.ndarray = self.encode([text])[0]
        return vector
