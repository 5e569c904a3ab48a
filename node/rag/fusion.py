"""Reciprocal rank fusion: merge rankings whose scores live on different scales.

Cosine similarities and BM25 scores cannot be added, but ranks can: an item scores
sum(1 / (k + rank)) over the rankings that contain it (rank 1 = best), with k = 60 as in
Cormack, Clarke and Buettcher (2009).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

RRF_K = 60

Id = TypeVar("Id", bound=Hashable)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[tuple[Id, float]]], k: int = RRF_K
) -> list[tuple[Id, float]]:
    """Fused `(id, score)` best first. Each ranking is best first; its own scores are
    ignored (only the order counts). An id repeated within one ranking counts at its best
    rank. Equal fused scores are ordered by id, so the result never depends on dict or
    set order."""
    if k < 0:
        raise ValueError("k must not be negative")
    fused: dict[Id, float] = {}
    for ranking in rankings:
        seen: set[Id] = set()
        for rank, (item, _score) in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda p: (-p[1], p[0]))
