"""A `qa` answer's citations and grounding, from its attribution (node/rag/attribution.py).

Every citation says where it comes from (`source`: the model wrote `[n]`, or the
attribution found the passage), which sentence of the answer it is for, the
supporting span of the passage (character offsets and the quoted text) and its
support score; a citation the model wrote is `supported: false` when its passage
does not support its sentence.  The grounding says which sentences no passage
supports and the share that one does.

Two modes, per task (params.grounding):
- annotate (the default): the answer as generated, unsupported sentences marked;
- strict: unsupported sentences are dropped; if nothing is left, the answer is made
  of the passages' sentences closest to the question (`extractive: true`), cited.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from node.rag.attribution import (
    VERIFY_THRESHOLD,
    Attribution,
    Attributor,
    SentenceSupport,
    Support,
)
from node.replica.vocabulary import GroundingMode


class CitedPassage(Protocol):
    """What is read of a retrieved passage (node/rag/knowledge.py Passage)."""

    @property
    def doc_id(self) -> str: ...
    @property
    def ordinal(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


def ground(
    query: str,
    answer: str,
    passages: Sequence[CitedPassage],
    attributor: Attributor,
    mode: GroundingMode,
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(answer, citations, grounding) of a generated answer."""
    texts = [p.text for p in passages]
    attribution = attributor.attribute(answer, texts)
    extractive = False
    extract_ms = 0.0
    if mode is GroundingMode.STRICT and attribution.checked:
        kept = [s for s in attribution.sentences if s.supported or not s.checked]
        if any(s.checked for s in kept):
            answer, attribution = _keep(answer, kept, attribution)
        else:
            answer, attribution, extract_ms = _extractive(query, passages, attributor)
            extractive = bool(answer)
    citations = _citations(attribution, passages)
    checked = attribution.checked
    grounding = {
        "mode": str(mode),
        "score": None if attribution.score is None else round(attribution.score, 3),
        "supported": sum(s.supported for s in checked),
        "unsupported": sum(not s.supported for s in checked),
        "extractive": extractive,
        "sentences": [
            {
                "start": s.start,
                "end": s.end,
                "checked": s.checked,
                "supported": s.supported if s.checked else None,
                "citations": [i for i, c in enumerate(citations) if c["sentence"] == index],
            }
            for index, s in enumerate(attribution.sentences)
        ],
        "attribution_ms": round(attribution.ms + extract_ms, 1),
    }
    return answer, citations, grounding


def _citations(attribution: Attribution, passages: Sequence[CitedPassage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, sentence in enumerate(attribution.sentences):
        seen: set[int] = set()
        for n in sentence.cited:
            if not 1 <= n <= len(passages) or n in seen:
                continue  # a number that is no passage: not a citation
            seen.add(n)
            support = sentence.best.get(n)
            verified = support is not None and support.score >= VERIFY_THRESHOLD
            out.append(_citation(index, n, passages[n - 1], support, "model", verified))
        for support in sentence.supports:
            if support.n not in seen:
                seen.add(support.n)
                out.append(
                    _citation(index, support.n, passages[support.n - 1], support, "attributed")
                )
    return out


def _citation(
    sentence: int,
    n: int,
    passage: CitedPassage,
    support: Support | None,
    source: str,
    supported: bool = True,
) -> dict[str, Any]:
    span = [support.start, support.end] if support is not None else None
    return {
        "n": n,
        "doc_id": passage.doc_id,
        "chunk": passage.ordinal,
        "title": passage.title,
        "source": source,
        "sentence": sentence,
        "span": span,
        "quote": passage.text[span[0] : span[1]] if span is not None else None,
        "score": round(support.score, 3) if support is not None else None,
        "supported": supported,
    }


def _keep(
    answer: str, kept: list[SentenceSupport], attribution: Attribution
) -> tuple[str, Attribution]:
    """The answer made of the kept sentences only, their offsets moved to match."""
    parts: list[str] = []
    moved: list[SentenceSupport] = []
    at = 0
    for sentence in kept:
        if parts:
            parts.append(" ")
            at += 1
        text = answer[sentence.start : sentence.end]
        moved.append(_moved(sentence, at, at + len(text)))
        parts.append(text)
        at += len(text)
    return "".join(parts), Attribution(tuple(moved), attribution.ms)


def _moved(sentence: SentenceSupport, start: int, end: int) -> SentenceSupport:
    return SentenceSupport(
        start, end, sentence.cited, sentence.checked, sentence.supports, sentence.best
    )


def _extractive(
    query: str, passages: Sequence[CitedPassage], attributor: Attributor
) -> tuple[str, Attribution, float]:
    """An answer of the passages' own sentences closest to the question, each cited
    with its own span (support 1: it is the passage's text)."""
    started = time.perf_counter()
    picked = attributor.extract(query, [p.text for p in passages])
    parts: list[str] = []
    sentences: list[SentenceSupport] = []
    at = 0
    for n, start, end in picked:
        if parts:
            parts.append(" ")
            at += 1
        text = passages[n - 1].text[start:end]
        support = Support(n, start, end, 1.0, 1.0, 1.0)
        sentences.append(SentenceSupport(at, at + len(text), (), True, (support,), {n: support}))
        parts.append(text)
        at += len(text)
    return (
        "".join(parts),
        Attribution(tuple(sentences), 0.0),
        (time.perf_counter() - started) * 1000,
    )
