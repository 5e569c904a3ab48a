"""Retrieval and attribution quality over the shipped QA set hold their floors
(bench/rag.py measures both: hybrid recall@5 0.914, keyword 0.926, vector 0.79 on 81
questions; of the bundled model's answers 0.95 cited, citation precision 0.86, recall
0.81, 8 % of sentences unsupported).  The floors sit a little below the measurements, so a regression fails
while model noise does not."""

from __future__ import annotations

from typing import Any

import pytest

from bench.rag import answer_quality, build_kb, load_engine, qa_items, retrieval_quality
from tests.nodecluster import MODEL_CACHE

FLOORS = {
    "hybrid": (0.85, 0.72),
    "keyword": (0.85, 0.75),
    "vector": (0.72, 0.6),
}  # recall@5, MRR@10
QA_ITEMS = 15  # answers generated (about 4 s each on 2 cores)
# measured on these 15: cited 0.93, precision 0.88, recall 0.92, unsupported 0.12, cost 6 %
ATTRIBUTION_FLOORS = {"cited_share": 0.85, "citation_precision": 0.75, "citation_recall": 0.75}
MAX_UNSUPPORTED_SHARE = 0.25
MAX_ATTRIBUTION_VS_GENERATION = 0.15


@pytest.fixture(scope="module")
def corpus() -> tuple[Any, dict[str, str]]:
    # (the test clusters' converted weights: converted once per run)
    engine = load_engine(with_generator=True, cache_dir=MODEL_CACHE)  # missing: fails, no skip
    return engine, build_kb(engine)


@pytest.mark.timeout(400)
def test_recall_and_mrr_stay_above_their_floors(corpus: tuple[Any, dict[str, str]]) -> None:
    engine, names = corpus
    items = qa_items()
    assert len(items) >= 60
    figures = retrieval_quality(engine, names, items)
    for mode, (recall_floor, mrr_floor) in FLOORS.items():
        assert figures[mode]["recall_at_5"] >= recall_floor, (mode, figures)
        assert figures[mode]["mrr_at_10"] >= mrr_floor, (mode, figures)
    assert (
        figures["hybrid"]["recall_at_5"] >= figures["vector"]["recall_at_5"]
    )  # fusion earns its keep


@pytest.mark.timeout(600)
def test_answers_are_attributed_to_the_gold_passages(corpus: tuple[Any, dict[str, str]]) -> None:
    """The bundled 135M model's answers, attributed after generation: most are cited,
    the citations point at the gold document and find the gold passage when it was
    retrieved, few sentences are left unsupported, and the check costs a small part of
    the generation's time."""
    engine, names = corpus
    figures = answer_quality(engine, names, qa_items()[:QA_ITEMS])
    print(figures)  # (pytest -s: the figures behind the floors)
    for name, floor in ATTRIBUTION_FLOORS.items():
        assert figures[name] is not None and figures[name] >= floor, (name, figures)
    assert figures["unsupported_share"] <= MAX_UNSUPPORTED_SHARE, figures
    assert figures["attribution_vs_generation"] <= MAX_ATTRIBUTION_VS_GENERATION, figures
