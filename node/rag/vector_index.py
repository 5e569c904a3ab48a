"""Vector top-k over unit-length embeddings, with deletes, filters and byte snapshots.

Two kinds, both keyed by caller-chosen int64 ids (the knowledge base's chunk ids):

* ``flat`` (default): ``IndexIDMap2(IndexFlatIP)``. Exact, and ``remove_ids`` compacts
  the storage in place, so the same adds and removes in the same order give the same
  bytes on every node.
* ``hnsw``: ``IndexHNSWFlat`` (inner product) for large knowledge bases: sub-linear
  search, approximate. HNSW graphs cannot delete, so a removed id becomes a tombstone
  that searches filter out; once tombstones pass `REBUILD_TOMBSTONE_FRACTION` of the
  graph it is rebuilt from the live vectors. FAISS builds a graph batch with several
  threads, so two nodes' HNSW bytes may differ even though they hold the same vectors;
  compare logical content (ids and vectors) across nodes, not hnsw snapshots.

Not thread-safe: the knowledge base serializes mutations and searches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Literal

# FAISS's OpenMP threads spin while waiting unless told otherwise; on a node whose cores
# are busy (generation, embedding, other tasks) that made a 10k-vector HNSW build 10x
# slower and a search 40x slower in our measurements. Read when the OpenMP runtime loads
# (shared with torch), so it only helps if faiss or torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss
import msgpack
import numpy as np

IndexKind = Literal["flat", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw")

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
# Above this share of dead entries an HNSW graph is rebuilt: searches waste work on
# them and, when they crowd a neighbourhood, recall drops.
REBUILD_TOMBSTONE_FRACTION = 0.2
# Candidate sets this small are scored exactly from their stored vectors: cheaper than
# scanning the whole index, and HNSW recall collapses under very selective filters.
EXACT_SCAN_LIMIT = 4096

_SNAPSHOT_FORMAT = 1
_ALL = faiss.IDSelectorAll()


def _id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        arr = ids.astype(np.int64, copy=False).reshape(-1)
    else:
        arr = np.fromiter((int(i) for i in ids), dtype=np.int64)
    return np.ascontiguousarray(arr)


def _selector(ids: Iterable[int]) -> faiss.IDSelectorBatch:
    arr = _id_array(sorted(ids))
    return faiss.IDSelectorBatch(arr)


def _ranked(pairs: Iterable[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """Best first; equal scores in id order so every node breaks ties the same way."""
    return sorted(pairs, key=lambda p: (-p[1], p[0]))[:k]


class VectorIndex:
    def __init__(
        self,
        dim: int,
        kind: IndexKind = "flat",
        *,
        hnsw_m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown vector index kind {kind!r}; expected one of {INDEX_KINDS}")
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.kind: IndexKind = kind
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._index = self._empty_index()
        self._live: set[int] = set()
        self._tombstones: set[int] = set()  # hnsw only

    def _empty_index(self) -> faiss.IndexIDMap2:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        graph.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(graph)

    # ---- mutation ----------------------------------------------------------------

    def add(self, ids: np.ndarray | Iterable[int], vectors: np.ndarray) -> None:
        """Add rows under new ids. Raises ValueError (and changes nothing) on bad input."""
        id_arr = _id_array(ids)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {vecs.shape}")
        if vecs.shape[0] != id_arr.shape[0]:
            raise ValueError(f"{id_arr.shape[0]} ids for {vecs.shape[0]} vectors")
        if id_arr.size == 0:
            return
        if not np.isfinite(vecs).all():
            raise ValueError("vectors contain NaN or infinity")
        new_ids = id_arr.tolist()
        if len(set(new_ids)) != len(new_ids):
            raise ValueError("duplicate ids in one add")
        clash = self._live.intersection(new_ids)
        if clash:
            raise ValueError(f"ids already present: {sorted(clash)[:5]}")
        if self._tombstones.intersection(new_ids):
            # IndexIDMap2 would map the id to both the dead and the new row.
            self._rebuild()
        self._index.add_with_ids(vecs, id_arr)
        self._live.update(new_ids)

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed."""
        gone = self._live.intersection(int(i) for i in ids)
        if not gone:
            return 0
        if self.kind == "flat":
            removed = self._index.remove_ids(_selector(gone))
            if removed != len(gone):
                raise RuntimeError(f"faiss removed {removed} of {len(gone)} ids")
            self._live -= gone
            return len(gone)
        self._live -= gone
        self._tombstones |= gone
        if len(self._tombstones) > REBUILD_TOMBSTONE_FRACTION * self._index.ntotal:
            self._rebuild()
        return len(gone)

    def _rebuild(self) -> None:
        """HNSW: a fresh graph from the live rows, in their insertion order."""
        if not self._tombstones:
            return
        all_ids = faiss.vector_to_array(self._index.id_map)
        keep = np.fromiter(
            (i not in self._tombstones for i in all_ids.tolist()), dtype=bool, count=all_ids.size
        )
        fresh = self._empty_index()
        if keep.any():
            vectors = self._index.index.reconstruct_n(0, self._index.ntotal)[keep]
            fresh.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(all_ids[keep]))
        self._index = fresh
        self._tombstones = set()

    # ---- queries -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, item: object) -> bool:
        return item in self._live

    def ids(self) -> np.ndarray:
        """Live ids, ascending."""
        return _id_array(sorted(self._live))

    def vectors(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Stored vectors of live ids, in the order given."""
        id_arr = _id_array(ids)
        missing = [i for i in id_arr.tolist() if i not in self._live]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        if id_arr.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(id_arr)

    def score(self, query: np.ndarray, ids: Iterable[int]) -> dict[int, float]:
        """Inner product of `query` with each live id among `ids` (others are skipped)."""
        present = [int(i) for i in ids if int(i) in self._live]
        if not present:
            return {}
        sims = self.vectors(present) @ self._query(query)[0]
        return dict(zip(present, (float(s) for s in sims)))

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: AbstractSet[int] | None = None,
        excluded: AbstractSet[int] | None = None,
    ) -> list[tuple[int, float]]:
        """Top-k `(id, inner product)` best first, among `allowed` (all if None) minus
        `excluded`."""
        q = self._query(query)
        if k < 1 or not self._live:
            return []
        if allowed is not None:
            candidates = self._live.intersection(allowed)
            if excluded:
                candidates -= excluded
            if len(candidates) <= EXACT_SCAN_LIMIT:
                return self._exact(q, candidates, k)
            return self._faiss_search(q, k, _selector(candidates), len(candidates))
        hidden = self._live.intersection(excluded) if excluded else set()
        searchable = len(self._live) - len(hidden)
        if self.kind == "hnsw" and searchable <= EXACT_SCAN_LIMIT:
            return self._exact(q, self._live - hidden, k)
        hidden |= self._tombstones
        if not hidden:
            return self._faiss_search(q, k, None, searchable)
        return self._faiss_search(q, k, faiss.IDSelectorNot(_selector(hidden)), searchable)

    def _query(self, query: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the index {self.dim}")
        return q

    def _exact(self, q: np.ndarray, ids: AbstractSet[int], k: int) -> list[tuple[int, float]]:
        if not ids:
            return []
        id_list = sorted(ids)
        sims = self._index.reconstruct_batch(_id_array(id_list)) @ q[0]
        return _ranked(zip(id_list, (float(s) for s in sims)), k)

    def _faiss_search(
        self, q: np.ndarray, k: int, selector: faiss.IDSelector | None, searchable: int
    ) -> list[tuple[int, float]]:
        want = min(k, searchable)
        if want < 1:
            return []
        if self.kind == "flat":
            # Without a selector FAISS splits one query over its OpenMP threads; on busy
            # cores that was 2-3x slower (median of 200 interleaved queries on 100k vectors:
            # 52-57 ms against 22-25 ms; 10k: 5.5 against 1.7 ms) than the
            # selector path, which scans in the calling thread. So always pass one.
            # faiss's stub omits the keyword arguments its Python wrapper accepts
            params = faiss.SearchParameters(  # type: ignore[call-arg]
                sel=selector if selector is not None else _ALL
            )
            scores, labels = self._index.search(q, want, params=params)
            return _ranked(self._pairs(scores[0], labels[0]), k)
        # HNSW: a filter can leave fewer than k hits within efSearch candidates; widen
        # the search (over-fetch) until it yields enough or covers the whole graph.
        ef = max(self.ef_search, want)
        while True:
            # faiss's stub lacks SearchParametersHNSW (the module has it)
            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
                sel=selector, efSearch=ef
            )
            scores, labels = self._index.search(q, want, params=params)
            pairs = self._pairs(scores[0], labels[0])
            if len(pairs) >= want or ef >= self._index.ntotal:
                return _ranked(pairs, k)
            ef = min(ef * 4, max(self._index.ntotal, 1))

    @staticmethod
    def _pairs(scores: np.ndarray, labels: np.ndarray) -> list[tuple[int, float]]:
        return [(int(i), float(s)) for s, i in zip(scores, labels) if i >= 0]

    # ---- persistence -------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "format": _SNAPSHOT_FORMAT,
                "kind": self.kind,
                "dim": self.dim,
                "hnsw": [self.hnsw_m, self.ef_construction, self.ef_search],
                "tombstones": sorted(self._tombstones),
                "faiss": faiss.serialize_index(self._index).tobytes(),
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        state = msgpack.unpackb(data, raw=False)
        if state.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported vector index snapshot format {state.get('format')!r}")
        m, ef_construction, ef_search = state["hnsw"]
        index = cls(
            state["dim"],
            state["kind"],
            hnsw_m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
        )
        restored = faiss.deserialize_index(np.frombuffer(state["faiss"], dtype=np.uint8))
        if not isinstance(restored, faiss.IndexIDMap2) or restored.d != index.dim:
            raise ValueError("vector index snapshot does not hold a matching IndexIDMap2")
        index._index = restored
        index._tombstones = set(state["tombstones"])
        all_ids = faiss.vector_to_array(restored.id_map).tolist()
        index._live = set(all_ids) - index._tombstones
        return index
