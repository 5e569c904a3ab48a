"""Sentence-aware chunking of page texts into overlapping passages.

A page is cut into *units*: sentences, and the paragraphs or lines that hold no
sentence end.  Units are packed greedily into chunks of at most `size` characters,
so a chunk boundary never falls inside a sentence; only a single unit longer than
`size` is split, at a line break if there is one, else at whitespace, else (one
unbroken run of characters) hard at `size`.  Consecutive chunks share whole trailing
units of up to `overlap` characters, so a fact that straddles a boundary is still
whole in one chunk.

A chunk is a verbatim slice of its page (units keep the whitespace between them),
never spans two pages, and never is empty.  The result depends only on the input,
so every node chunking the same document gets the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_CHUNK_SIZE = 800
DEFAULT_CHUNK_OVERLAP = 120

# Blank lines separate paragraphs.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? or … (with closing quotes or brackets) before whitespace
# and a character that is not a lower-case letter, so "e.g. this" stays whole.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+[^\sa-z])")


@dataclass(frozen=True)
class ChunkText:
    """One passage: `ordinal` counts from 0 across the document, `page` from 1."""

    ordinal: int
    page: int
    text: str


@dataclass(frozen=True)
class _Span:
    start: int
    end: int


def chunk_pages(
    pages: Sequence[str],
    size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[ChunkText]:
    """Chunks of at most `size` characters, in page order; see the module docstring."""
    _check_sizes(size, overlap)
    chunks: list[ChunkText] = []
    for page_number, page in enumerate(pages, start=1):
        for start, end in _pack(_units(page, size), size, overlap):
            chunks.append(ChunkText(ordinal=len(chunks), page=page_number, text=page[start:end]))
    return chunks


def chunk_spans(
    page: str, size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[tuple[int, int]]:
    """The (start, end) character offsets in `page` of the chunks `chunk_pages` makes of it."""
    _check_sizes(size, overlap)
    return _pack(_units(page, size), size, overlap)


def _check_sizes(size: int, overlap: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk size must be a positive whole number of characters, not {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"chunk overlap must be a whole number >= 0, not {overlap!r}")
    if overlap >= size:
        raise ValueError(f"chunk overlap ({overlap}) must be smaller than the chunk size ({size})")


def _units(page: str, size: int) -> list[_Span]:
    """Non-empty, whitespace-trimmed spans of `page`, in order, each at most `size` long."""
    units: list[_Span] = []
    for paragraph in _split(page, _PARAGRAPH_BREAK, 0, len(page)):
        for sentence in _sentences(page, paragraph):
            units.extend(_fit(page, sentence, size))
    return units


def _split(text: str, separator: re.Pattern[str], start: int, end: int) -> list[_Span]:
    spans: list[_Span] = []
    position = start
    for match in separator.finditer(text, start, end):
        spans.extend(_trimmed(text, position, match.start()))
        position = match.end()
    spans.extend(_trimmed(text, position, end))
    return spans


def _sentences(text: str, paragraph: _Span) -> list[_Span]:
    spans: list[_Span] = []
    position = paragraph.start
    for match in _SENTENCE_END.finditer(text, paragraph.start, paragraph.end):
        spans.extend(_trimmed(text, position, match.end()))
        position = match.end()
    spans.extend(_trimmed(text, position, paragraph.end))
    return spans


def _trimmed(text: str, start: int, end: int) -> list[_Span]:
    """The span without surrounding whitespace, or nothing if it is all whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [_Span(start, end)] if start < end else []


def _fit(text: str, unit: _Span, size: int) -> list[_Span]:
    """Split a unit longer than `size`: at the last line break, else whitespace, that fits."""
    pieces: list[_Span] = []
    start = unit.start
    while unit.end - start > size:
        window_end = start + size
        cut = text.rfind("\n", start + 1, window_end + 1)
        if cut == -1:
            cut = _last_space(text, start + 1, window_end + 1)
        if cut == -1:
            cut = window_end  # one unbroken run longer than a chunk
        pieces.extend(_trimmed(text, start, cut))
        start = cut
        while start < unit.end and text[start].isspace():
            start += 1
    pieces.extend(_trimmed(text, start, unit.end))
    return pieces


def _last_space(text: str, start: int, end: int) -> int:
    for position in range(end - 1, start - 1, -1):
        if text[position].isspace():
            return position
    return -1


def _pack(units: list[_Span], size: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy packing of units into (start, end) slices, with whole-unit overlap."""
    slices: list[tuple[int, int]] = []
    first = 0
    while first < len(units):
        last = first
        while last + 1 < len(units) and units[last + 1].end - units[first].start <= size:
            last += 1
        slices.append((units[first].start, units[last].end))
        if last + 1 == len(units):
            break
        first = _overlap_start(units, first, last, size, overlap)
    return slices


def _overlap_start(units: list[_Span], first: int, last: int, size: int, overlap: int) -> int:
    """First unit of the next chunk: the earliest unit after `first` such that the repeated
    units fit in `overlap` and the next new unit still fits in the chunk."""
    following = units[last + 1]
    for candidate in range(first + 1, last + 1):
        repeated = units[last].end - units[candidate].start
        if repeated <= overlap and following.end - units[candidate].start <= size:
            return candidate
    return last + 1
