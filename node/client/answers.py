"""How a `qa` result reads, for every client (CLI, TUI, dashboard): the answer sentence
by sentence, each with its citation marks and whether some passage supports it, and
the citations with their supporting spans (node/rag/grounding.py writes them).

The model's own `[n]` markers are taken out of the sentences and shown as marks like
every other citation, so a sentence never shows the same mark twice.  A result of a
release before grounding (no `grounding`, citations without `sentence`) reads as one
sentence with the citations the model wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_MARKER = re.compile(r"\s*\[\s*\d+(?:\s*[,;–-]\s*\d+)*\s*\]")


@dataclass(frozen=True)
class Sentence:
    text: str  # without the model's [n] markers
    citations: tuple[int, ...]  # indexes into AnswerView.citations
    supported: bool | None  # None: not checked (too few content words), or unknown


@dataclass(frozen=True)
class AnswerView:
    sentences: tuple[Sentence, ...]
    citations: tuple[dict[str, Any], ...]
    score: float | None  # share of checked sentences supported
    extractive: bool
    mode: str | None

    @property
    def unsupported(self) -> int:
        return sum(1 for s in self.sentences if s.supported is False)


def answer_view(result: dict[str, Any]) -> AnswerView:
    answer = str(result.get("answer") or "")
    citations = tuple(c for c in result.get("citations") or [] if isinstance(c, dict))
    grounding = result.get("grounding")
    if not isinstance(grounding, dict) or not isinstance(grounding.get("sentences"), list):
        whole = Sentence(_MARKER.sub("", answer).strip(), tuple(range(len(citations))), None)
        return AnswerView((whole,) if whole.text else (), citations, None, False, None)
    sentences = []
    for s in grounding["sentences"]:
        text = _MARKER.sub("", answer[s.get("start", 0) : s.get("end", 0)]).strip()
        cited = tuple(i for i in s.get("citations", []) if 0 <= i < len(citations))
        supported = s.get("supported") if s.get("checked", True) else None
        sentences.append(Sentence(text, cited, supported))
    return AnswerView(
        tuple(sentences),
        citations,
        grounding.get("score"),
        bool(grounding.get("extractive")),
        grounding.get("mode"),
    )


def mark(citation: dict[str, Any]) -> str:
    """`[2]`, or `[2?]` for a citation the model wrote that its passage does not support."""
    return f"[{citation.get('n')}{'' if citation.get('supported', True) else '?'}]"


def marked_text(view: AnswerView, unsupported_note: str = "") -> str:
    """The answer as plain text with its marks after each sentence (and `unsupported_note`
    after a sentence no passage supports)."""
    parts = []
    for sentence in view.sentences:
        marks = "".join(mark(view.citations[i]) for i in sentence.citations)
        note = unsupported_note if sentence.supported is False else ""
        parts.append(f"{sentence.text}{' ' + marks if marks else ''}{note}")
    return " ".join(parts)
