"""Which retrieved passage supports which sentence of an answer, found after the
answer is generated, whatever the model (the bundled 135M model rarely writes `[n]`).

For every sentence of the answer and every sentence of every passage given to the
model, two signals: the embedding model's cosine similarity (meaning), and the share
of the answer sentence's content words and numbers that the passage sentence (with
its neighbour, since an answer often merges two) also has (wording).  A number in the
answer that the span does not have halves its score: "3.12" is not supported by a
passage that says "3.11".  The support score is a weighted sum; a
passage supports a sentence when its best span scores at least SUPPORT_THRESHOLD.
The same scores verify the citations the model did write: a `[n]` whose passage does
not reach VERIFY_THRESHOLD for its sentence is flagged.

Sentences with fewer than MIN_CONTENT_WORDS content words ("Yes.", "I hope this
helps.") are not checked: they claim nothing a passage could support.

The thresholds and the weight were set on the project's QA set (bench/rag.py
--quality prints the figures they give).  Pure apart from the `embed` callable.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

SUPPORT_THRESHOLD = 0.45
VERIFY_THRESHOLD = 0.4
SIMILARITY_WEIGHT = 0.8  # the rest is the wording signal
MAX_SUPPORTS = 2  # passages cited per sentence, best first
SUPPORT_MARGIN = 0.08  # ... and within this much of the best
PASSAGE_CACHE_SIZE = 4096  # passage sentences whose vectors are kept
MIN_CONTENT_WORDS = 2
NUMBER_PENALTY = 0.5

Embed = Callable[[list[str]], np.ndarray]  # texts -> unit vectors, one row each

_MARKER = re.compile(r"\[\s*\d+(?:\s*[,;–-]\s*\d+)*\s*\]")
# A sentence ends at . ! ? (and closing quotes or brackets) before a space and a
# capital, digit or opening quote, or at a line break.
_BOUNDARY = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[A-Z0-9\"'“‘(\[])|\n+")
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
# Words that say nothing a passage could support (English, as the bundled models are;
# not "not": a negation the passage lacks should cost its sentence the support).
_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be because been
before being below between both but by can could did do does doing down during each few
for from further had has have having he her here hers herself him himself his how i if
in into is it its itself just me more most my myself now of off on once only
or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you
your yours yourself yourselves may might must shall one ones use used using like also
however thus therefore e.g i.e etc via per
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class Support:
    n: int  # the passage's number in the prompt, from 1
    start: int  # the supporting span, as character offsets in the passage's text
    end: int
    score: float
    similarity: float
    overlap: float


@dataclass(frozen=True)
class SentenceSupport:
    start: int  # the sentence, as character offsets in the answer
    end: int
    cited: tuple[int, ...]  # the [n] the model wrote in it
    checked: bool  # it has enough content words to be checked at all
    supports: tuple[Support, ...]  # at or above the threshold, best first
    best: dict[int, Support] = field(default_factory=dict)  # per passage, for verification

    @property
    def supported(self) -> bool:
        return bool(self.supports)


@dataclass(frozen=True)
class Attribution:
    sentences: tuple[SentenceSupport, ...]
    ms: float

    @property
    def checked(self) -> list[SentenceSupport]:
        return [s for s in self.sentences if s.checked]

    @property
    def score(self) -> float | None:
        """The share of checked sentences that some passage supports (None: nothing to
        check)."""
        checked = self.checked
        return sum(s.supported for s in checked) / len(checked) if checked else None


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-empty sentence of `text`, whitespace trimmed; citation
    marks written after a full stop ("Paris. [1]") stay with the sentence they follow."""
    spans: list[tuple[int, int]] = []
    start = 0
    for boundary in _BOUNDARY.finditer(text):
        _add_trimmed(text, start, boundary.start(), spans)
        start = boundary.end()
    _add_trimmed(text, start, len(text), spans)
    merged: list[tuple[int, int]] = []
    for span in spans:
        if merged and not _MARKER.sub("", text[span[0] : span[1]]).strip():
            merged[-1] = (merged[-1][0], span[1])
        else:
            merged.append(span)
    return merged


def _add_trimmed(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


def content_words(text: str) -> set[str]:
    words = _WORD.findall(_MARKER.sub(" ", text).lower())
    return {w for w in words if w not in _STOPWORDS and (len(w) >= 3 or w[0].isdigit())}


def _numbers(words: set[str]) -> set[str]:
    return {w for w in words if any(ch.isdigit() for ch in w)}


def cited_numbers(sentence: str) -> tuple[int, ...]:
    found: list[int] = []
    for marker in _MARKER.finditer(sentence):
        for part in re.split(r"\s*[,;]\s*", marker.group(0)[1:-1].strip()):
            bounds = [int(x) for x in re.split(r"\s*[–-]\s*", part) if x]
            if len(bounds) == 2 and 0 < bounds[1] - bounds[0] < 20:
                found.extend(range(bounds[0], bounds[1] + 1))
            elif bounds:
                found.append(bounds[0])
    return tuple(dict.fromkeys(found))


class Attributor:
    def __init__(self, embed: Embed, cache_size: int = PASSAGE_CACHE_SIZE) -> None:
        self.embed = embed
        # Passage sentences come back often (the same chunks answer related questions):
        # their vectors are kept, most recently used last.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def attribute(self, answer: str, passages: Sequence[str]) -> Attribution:
        started = time.perf_counter()
        sentences = split_sentences(answer)
        plain = [_MARKER.sub(" ", answer[s:e]).strip() for s, e in sentences]
        words = [content_words(t) for t in plain]
        checked = [len(w) >= MIN_CONTENT_WORDS for w in words]
        to_embed = [t for t, c in zip(plain, checked) if c]
        per_passage = [split_sentences(text) for text in passages]
        spans = [_windows(s) for s in per_passage]  # per passage: its sentences, then pairs
        window_words = [content_words(t[a:b]) for t, ws in zip(passages, spans) for a, b in ws]
        window_vectors = None
        answer_vectors = None
        if to_embed and any(per_passage):
            answer_vectors = self.embed(to_embed)
            window_vectors = np.concatenate(
                [self._window_vectors(t, s) for t, s in zip(passages, per_passage) if s]
            )
        out: list[SentenceSupport] = []
        row = 0
        for (start, end), text, sentence_words, check in zip(sentences, plain, words, checked):
            cited = cited_numbers(answer[start:end])
            if not check or answer_vectors is None or window_vectors is None:
                out.append(SentenceSupport(start, end, cited, check, ()))
                continue
            similarities = window_vectors @ answer_vectors[row]
            row += 1
            best = _best_per_passage(sentence_words, spans, window_words, similarities)
            ranked = sorted(best.values(), key=lambda s: (-s.score, s.n))
            top = ranked[0].score if ranked else 0.0
            # A second passage is cited only when it supports the sentence about as well:
            # a weaker one that merely shares its topic would dilute the citation.
            supports = [
                s
                for s in ranked
                if s.score >= SUPPORT_THRESHOLD and s.score >= top - SUPPORT_MARGIN
            ][:MAX_SUPPORTS]
            out.append(SentenceSupport(start, end, cited, True, tuple(supports), best))
        return Attribution(tuple(out), (time.perf_counter() - started) * 1000)

    def extract(
        self, query: str, passages: Sequence[str], count: int = 2
    ) -> list[tuple[int, int, int]]:
        """The `count` passage sentences closest to `query`: (passage n, start, end),
        in passage order, for an answer made of the passages' own words."""
        candidates = [
            (n, s, e)
            for n, text in enumerate(passages, start=1)
            for s, e in split_sentences(text)
            if len(content_words(text[s:e])) >= MIN_CONTENT_WORDS
        ]
        if not candidates:
            return []
        vectors = self.embed([query] + [passages[n - 1][s:e] for n, s, e in candidates])
        query_words = content_words(query)
        scores = []
        for (n, s, e), vector in zip(candidates, vectors[1:]):
            words = content_words(passages[n - 1][s:e])
            overlap = len(query_words & words) / len(query_words) if query_words else 0.0
            scores.append(
                SIMILARITY_WEIGHT * float(vector @ vectors[0]) + (1 - SIMILARITY_WEIGHT) * overlap
            )
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:count]
        return sorted(candidates[i] for i in order)

    def _window_vectors(self, text: str, sentences: list[tuple[int, int]]) -> np.ndarray:
        """Unit vectors of a passage's windows (_windows' order): each sentence's own, and
        for a pair the normalised sum of its two (one embedding per sentence, not three)."""
        texts = [text[s:e] for s, e in sentences]
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for t, vector in zip(missing, self.embed(missing)):
                self._cache[t] = np.asarray(vector, dtype=np.float32)
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        own = np.stack([self._cache[t] for t in texts])
        if len(own) < 2:
            return own
        pairs = own[:-1] + own[1:]
        pairs /= np.maximum(np.linalg.norm(pairs, axis=1, keepdims=True), 1e-12)
        return np.concatenate([own, pairs])


def _windows(sentences: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A passage's sentences, and each with the next: the spans a sentence may come from."""
    return list(sentences) + [(a[0], b[1]) for a, b in itertools.pairwise(sentences)]


def _best_per_passage(
    words: set[str],
    spans: list[list[tuple[int, int]]],
    window_words: list[set[str]],
    similarities: np.ndarray,
) -> dict[int, Support]:
    numbers = _numbers(words)
    best: dict[int, Support] = {}
    column = 0
    for n, windows in enumerate(spans, start=1):
        for start, end in windows:
            similarity = float(similarities[column])
            found = window_words[column]
            column += 1
            overlap = len(words & found) / len(words) if words else 0.0
            score = SIMILARITY_WEIGHT * similarity + (1 - SIMILARITY_WEIGHT) * overlap
            if numbers - found:  # a figure the span does not state: it cannot vouch for it
                score *= NUMBER_PENALTY
            current = best.get(n)
            # a single sentence is the tighter span: prefer it unless the pair is better
            if current is None or score > current.score + 1e-9:
                best[n] = Support(n, start, end, score, similarity, overlap)
    return best
