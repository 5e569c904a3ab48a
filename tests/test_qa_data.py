"""The retrieval QA set (tests/data/qa.jsonl) is consistent with the corpus it is about.

Each item names a document under tests/data/corpus/ and a gold passage that must
appear verbatim (up to whitespace) in what `parse` extracts from that document, so
an evaluation can tell whether a retrieved chunk holds the answer.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from node.rag.documents import parse

DATA_DIR = Path(__file__).parent / "data"
CORPUS_DIR = DATA_DIR / "corpus"
QA_FILE = DATA_DIR / "qa.jsonl"
REQUIRED_FIELDS = ("id", "question", "answer", "doc", "gold")
MIN_ITEMS = 60


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def load_items() -> list[dict[str, Any]]:
    lines = QA_FILE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ITEMS = load_items()


@functools.cache
def parsed_text(doc: str) -> str:
    path = CORPUS_DIR / doc
    return normalise("\n\n".join(parse(path.read_bytes(), path.name).pages))


def test_enough_items_with_unique_ids_and_all_fields() -> None:
    assert len(ITEMS) >= MIN_ITEMS
    ids = Counter(item["id"] for item in ITEMS)
    assert [i for i, n in ids.items() if n > 1] == []
    for item in ITEMS:
        assert set(item) == set(REQUIRED_FIELDS), item.get("id")
        assert all(isinstance(item[f], str) and item[f].strip() for f in REQUIRED_FIELDS)


def test_questions_are_unique_and_spread_over_many_documents() -> None:
    assert len({normalise(item["question"]).lower() for item in ITEMS}) == len(ITEMS)
    per_doc = Counter(item["doc"] for item in ITEMS)
    assert len(per_doc) >= 15
    assert max(per_doc.values()) <= len(ITEMS) // 10  # no page dominates the set


def test_every_document_exists_in_the_corpus() -> None:
    missing = sorted({item["doc"] for item in ITEMS if not (CORPUS_DIR / item["doc"]).is_file()})
    assert missing == []


@pytest.mark.parametrize("item", ITEMS, ids=[item["id"] for item in ITEMS])
def test_gold_passage_is_in_the_parsed_document_and_holds_the_answer(item: dict) -> None:
    gold = normalise(item["gold"])
    assert gold in parsed_text(item["doc"])
    assert normalise(item["answer"]).lower() in gold.lower()
