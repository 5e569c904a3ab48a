"""BM25 keyword search over chunks, updated one chunk batch at a time.

bm25s is fast at querying because it precomputes a (term x document) score matrix, but
every score in it depends on the corpus size and the average document length, so it
can only build a whole index at once: no add or remove. A knowledge base that changes a
chunk batch at a time (each Raft entry) would rebuild everything per entry. So this is
a small inverted index in dicts with scores computed at query time (Okapi BM25,
k1=1.5, b=0.75, Lucene's always-positive idf).

Deterministic: a canonical tokenizer, query terms summed in query order, ties broken by
id, and a sorted serialization, so equal contents give equal bytes.
"""

from __future__ import annotations

import heapq
import math
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import msgpack

K1 = 1.5
B = 0.75

_SNAPSHOT_FORMAT = 1

# Han, kana and hangul are written without spaces; a run of them becomes overlapping
# character bigrams (as Lucene's CJK analyzer does) so Chinese text is searchable too.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(f"[{_CJK}]+|[^\\W{_CJK}]+")
_CJK_RUN = re.compile(f"[{_CJK}]+")

STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "such",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    }
)


def tokenize(text: str) -> list[str]:
    """Lowercased unicode words minus stopwords; CJK runs as character bigrams."""
    normalized = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for match in _TOKEN.finditer(normalized):
        word = match.group()
        if _CJK_RUN.fullmatch(word):
            if len(word) == 1:
                tokens.append(word)
            else:
                tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
        elif word not in STOPWORDS:
            tokens.append(word)
    return tokens


def _unique_in_order(tokens: list[str]) -> list[str]:
    return list(dict.fromkeys(tokens))


class KeywordIndex:
    def __init__(self, k1: float = K1, b: float = B) -> None:
        self.k1 = k1
        self.b = b
        self._postings: dict[str, dict[int, int]] = {}  # term -> id -> term frequency
        self._lengths: dict[int, int] = {}  # id -> tokens in the chunk
        self._total_length = 0
        # id -> its distinct terms, to remove it without a scan. Only for chunks added
        # since this object was built: a restore does not rebuild it (at 100k chunks that
        # took 6 s); `remove` finds a restored chunk's terms with one vocabulary scan.
        self._terms: dict[int, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._lengths)

    def __contains__(self, item: object) -> bool:
        return item in self._lengths

    @property
    def vocabulary_size(self) -> int:
        return len(self._postings)

    def add(self, items: Iterable[tuple[int, str]]) -> None:
        """Index `(id, text)` pairs. Raises ValueError (and changes nothing) on a known id."""
        batch = [(int(i), text) for i, text in items]
        ids = [i for i, _ in batch]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        clash = [i for i in ids if i in self._lengths]
        if clash:
            raise ValueError(f"ids already present: {clash[:5]}")
        for chunk_id, text in batch:
            tokens = tokenize(text)
            counts = Counter(sys.intern(t) for t in tokens)
            for term, tf in counts.items():
                self._postings.setdefault(term, {})[chunk_id] = tf
            self._lengths[chunk_id] = len(tokens)
            self._total_length += len(tokens)
            self._terms[chunk_id] = tuple(counts)

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed."""
        gone = [i for i in dict.fromkeys(int(i) for i in ids) if i in self._lengths]
        if not gone:
            return 0
        restored = {i for i in gone if i not in self._terms}
        terms_of_restored = self._scan_terms(restored) if restored else {}
        for chunk_id in gone:
            terms = self._terms.pop(chunk_id, None)
            for term in terms if terms is not None else terms_of_restored[chunk_id]:
                posting = self._postings[term]
                del posting[chunk_id]
                if not posting:
                    del self._postings[term]
            self._total_length -= self._lengths.pop(chunk_id)
        return len(gone)

    def _scan_terms(self, ids: set[int]) -> dict[int, list[str]]:
        """Terms of `ids`, from one pass over the vocabulary (a set intersection per term,
        which iterates the smaller side)."""
        found: dict[int, list[str]] = {i: [] for i in ids}
        for term, posting in self._postings.items():
            for chunk_id in posting.keys() & ids:
                found[chunk_id].append(term)
        return found

    # ---- queries -----------------------------------------------------------------

    def _idf(self, document_frequency: int) -> float:
        n = len(self._lengths)
        return math.log(1.0 + (n - document_frequency + 0.5) / (document_frequency + 0.5))

    def _scores(self, text: str, only: AbstractSet[int] | None) -> dict[int, float]:
        if not self._lengths:
            return {}
        average_length = self._total_length / len(self._lengths) or 1.0
        # tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average)), constants hoisted:
        # this loop runs once per posting and dominates query time.
        k1_plus_1 = self.k1 + 1.0
        constant = self.k1 * (1.0 - self.b)
        per_token = self.k1 * self.b / average_length
        lengths = self._lengths
        scores: dict[int, float] = {}
        get = scores.get
        for term in _unique_in_order(tokenize(text)):
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = self._idf(len(posting))
            if only is None:
                matches: Iterable[int] = posting
            else:
                matches = posting.keys() & only
            for chunk_id in matches:
                tf = posting[chunk_id]
                scores[chunk_id] = get(chunk_id, 0.0) + idf * tf * k1_plus_1 / (
                    tf + constant + per_token * lengths[chunk_id]
                )
        return scores

    def search(
        self,
        text: str,
        k: int,
        allowed: AbstractSet[int] | None = None,
        excluded: AbstractSet[int] | None = None,
    ) -> list[tuple[int, float]]:
        """Top-k `(id, bm25)` best first (ties by id); only chunks sharing a term score."""
        if k < 1:
            return []
        scores = self._scores(text, allowed)
        if excluded:
            items: Iterable[tuple[int, float]] = (
                (i, s) for i, s in scores.items() if i not in excluded
            )
        else:
            items = scores.items()
        return heapq.nsmallest(k, items, key=lambda p: (-p[1], p[0]))

    def score(self, text: str, ids: Iterable[int]) -> dict[int, float]:
        """BM25 of `text` for each indexed id among `ids` (0.0 when no term matches)."""
        wanted = {int(i) for i in ids if int(i) in self._lengths}
        scores = self._scores(text, wanted)
        return {i: scores.get(i, 0.0) for i in sorted(wanted)}

    # ---- persistence -------------------------------------------------------------

    def to_bytes(self) -> bytes:
        postings = []
        for term in sorted(self._postings):
            posting = self._postings[term]
            ids = sorted(posting)
            postings.append([term, ids, [posting[i] for i in ids]])
        return msgpack.packb(
            {
                "format": _SNAPSHOT_FORMAT,
                "k1": self.k1,
                "b": self.b,
                "lengths": [[i, self._lengths[i]] for i in sorted(self._lengths)],
                "postings": postings,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeywordIndex:
        state = msgpack.unpackb(data, raw=False)
        if state.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported keyword index snapshot format {state.get('format')!r}")
        index = cls(k1=state["k1"], b=state["b"])
        index._lengths = {i: n for i, n in state["lengths"]}
        index._total_length = sum(index._lengths.values())
        index._postings = {
            sys.intern(term): dict(zip(ids, tfs)) for term, ids, tfs in state["postings"]
        }
        return index
