"""Retrieval quality over the shipped QA set holds its floor (bench/rag.py measures
it: hybrid recall@5 0.914, keyword 0.926, vector 0.79 on 81 questions; the floors
sit a little below, so a regression fails while model noise does not)."""

from __future__ import annotations

import pytest

from bench.rag import build_kb, qa_items, retrieval_quality
from node.rag.embedding import Embedder
from node.rag.engine import RagEngine
from node.rag.knowledge import KnowledgeBase

FLOORS = {
    "hybrid": (0.85, 0.72),
    "keyword": (0.85, 0.75),
    "vector": (0.72, 0.6),
}  # recall@5, MRR@10


@pytest.mark.timeout(400)
def test_recall_and_mrr_stay_above_their_floors() -> None:
    engine = RagEngine(
        KnowledgeBase(), Embedder(), None
    )  # a missing model fails here, it is not skipped
    names = build_kb(engine)
    items = qa_items()
    assert len(items) >= 60
    figures = retrieval_quality(engine, names, items)
    for mode, (recall_floor, mrr_floor) in FLOORS.items():
        assert figures[mode]["recall_at_5"] >= recall_floor, (mode, figures)
        assert figures[mode]["mrr_at_10"] >= mrr_floor, (mode, figures)
    assert (
        figures["hybrid"]["recall_at_5"] >= figures["vector"]["recall_at_5"]
    )  # fusion earns its keep
