"""Prompts with numbered passages, fitted to the model's context, and citation parsing.

The model sees the retrieved passages as ``[1] ...``, ``[2] ...`` in rank order and
is told to cite them the same way; `parse_citations` reads those numbers back so a
result can map each citation to its passage.

Fitting is done by token count: the lowest-ranked passages are dropped first, then
the last passage kept is cut, so the prompt plus the tokens reserved for the answer
fit the context.  Counts come from the backend's ``count_tokens`` plus a fixed
allowance per chat message for the template's markup (a few tokens for ChatML
models such as SmolLM2); an underestimate only shortens the answer, because the
backend clamps ``max_new_tokens`` to the room left.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from node.rag.generation import ChatMessage

# Chat-template markup per message (role header, end-of-turn) and for the
# assistant header the generation prompt adds.
CHAT_OVERHEAD_TOKENS_PER_MESSAGE = 8
GENERATION_PROMPT_TOKENS = 8
# Below this many tokens a cut passage is more noise than evidence: drop it instead.
MIN_PASSAGE_TOKENS = 24
PASSAGE_SEPARATOR = "\n\n"
ELLIPSIS = " …"

QA_SYSTEM = (
    "You answer questions using only the numbered passages the user gives you. "
    "Cite each passage you use by its number in square brackets, like [1] or [2][3]. "
    "If the passages do not contain the answer, say that you do not know."
)
GENERATE_SYSTEM = (
    "Use the numbered passages the user gives you as context when they are relevant, "
    "and cite a passage you use by its number in square brackets, like [1]."
)


class PassageLike(Protocol):
    """What prompts need of a retrieved passage (knowledge.Passage fits)."""

    @property
    def text(self) -> str: ...

    @property
    def title(self) -> str | None: ...


class TokenCounter(Protocol):
    """The part of a GenerationBackend that prompt fitting uses."""

    @property
    def context_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...


class ContextTooSmallError(ValueError):
    """Even without passages the prompt does not fit the token budget."""


P = TypeVar("P", bound=PassageLike)


@dataclass(frozen=True)
class Citation(Generic[P]):
    n: int  # 1-based number as shown to the model
    passage: P


def format_passage(n: int, passage: PassageLike, text: str | None = None) -> str:
    body = passage.text if text is None else text
    title = (passage.title or "").strip()
    return f"[{n}] {title}\n{body}" if title else f"[{n}] {body}"


def _chat_overhead(n_messages: int) -> int:
    return n_messages * CHAT_OVERHEAD_TOKENS_PER_MESSAGE + GENERATION_PROMPT_TOKENS


def _cut_to_fit(n: int, passage: PassageLike, counter: TokenCounter, budget: int) -> str | None:
    """The longest word-boundary prefix of the passage whose block fits ``budget`` tokens."""
    text = passage.text
    lo, hi = 0, len(text)  # invariant: a prefix of lo characters fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter.count_tokens(format_passage(n, passage, text[:mid] + ELLIPSIS)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    prefix = text[:lo]
    if lo < len(text):  # do not end on half a word
        space = prefix.rfind(" ")
        if space > lo // 2:
            prefix = prefix[:space]
    prefix = prefix.rstrip()
    return prefix + ELLIPSIS if prefix else None


def _numbered_passages(
    passages: Sequence[P], counter: TokenCounter, available: int
) -> tuple[str, list[P]]:
    """Passages in rank order as ``[n]`` blocks within ``available`` tokens."""
    blocks: list[str] = []
    used: list[P] = []
    separator_cost = counter.count_tokens(PASSAGE_SEPARATOR)
    for passage in passages:
        n = len(used) + 1
        block = format_passage(n, passage)
        cost = counter.count_tokens(block) + separator_cost
        if cost <= available:
            blocks.append(block)
            used.append(passage)
            available -= cost
            continue
        room = available - separator_cost
        if room >= MIN_PASSAGE_TOKENS:
            cut = _cut_to_fit(n, passage, counter, room)
            if cut is not None:
                blocks.append(format_passage(n, passage, cut))
                used.append(passage)
        break  # everything ranked lower is dropped
    return PASSAGE_SEPARATOR.join(blocks), used


def _fit(
    system: str,
    user_frame: str,
    passages: Sequence[P],
    counter: TokenCounter,
    max_context_tokens: int | None,
    reserve_new_tokens: int,
) -> tuple[list[ChatMessage], list[P]]:
    """Fill ``user_frame``'s ``{passages}`` slot with as many passages as fit."""
    context = (
        counter.context_tokens
        if max_context_tokens is None
        else min(max_context_tokens, counter.context_tokens)
    )
    budget = context - reserve_new_tokens
    fixed = (
        counter.count_tokens(system)
        + counter.count_tokens(user_frame.format(passages=""))
        + _chat_overhead(2)
    )
    if fixed >= budget:
        raise ContextTooSmallError(
            f"the prompt needs {fixed} tokens before any passage, but only {budget} of the "
            f"{context}-token context remain after reserving {reserve_new_tokens} for the answer"
        )
    available = budget - fixed
    # Token counts of the pieces do not add up exactly to the count of the joined
    # text, so measure the result and tighten until it fits (one pass in practice).
    for _ in range(4):
        text, used = _numbered_passages(passages, counter, available)
        user = user_frame.format(passages=text)
        total = counter.count_tokens(system) + counter.count_tokens(user) + _chat_overhead(2)
        if total <= budget:
            break
        available -= total - budget + 2
    messages: list[ChatMessage] = [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
    ]
    return messages, used


def build_qa_prompt(
    question: str,
    passages: Sequence[P],
    backend: TokenCounter,
    max_context_tokens: int | None = None,
    reserve_new_tokens: int = 256,
) -> tuple[list[ChatMessage], list[P]]:
    """Chat messages for a QA task, and the passages (a rank-order prefix) they include.

    Passage ``used[i]`` is shown as ``[i + 1]``; the last one may be cut short.
    """
    question = question.strip()
    if passages:
        frame = "Passages:\n{passages}\n\nQuestion: " + _escape(question)
    else:
        frame = "Passages: (none were found){passages}\n\nQuestion: " + _escape(question)
    return _fit(QA_SYSTEM, frame, passages, backend, max_context_tokens, reserve_new_tokens)


def build_generate_prompt(
    prompt: str,
    passages: Sequence[P] | None = None,
    backend: TokenCounter | None = None,
    max_context_tokens: int | None = None,
    reserve_new_tokens: int = 256,
) -> tuple[list[ChatMessage], list[P]]:
    """Chat messages for a free generation task, optionally grounded in passages.

    Without passages the prompt is the user's message as-is.  With passages and a
    ``backend`` they are fitted like QA passages; without a backend all are included.
    """
    if not passages:
        return [{"role": "user", "content": prompt}], []
    frame = "Passages:\n{passages}\n\n" + _escape(prompt)
    if backend is None:
        text = PASSAGE_SEPARATOR.join(format_passage(i + 1, p) for i, p in enumerate(passages))
        messages: list[ChatMessage] = [
            {"role": "system", "content": GENERATE_SYSTEM},
            {"role": "user", "content": frame.format(passages=text)},
        ]
        return messages, list(passages)
    return _fit(GENERATE_SYSTEM, frame, passages, backend, max_context_tokens, reserve_new_tokens)


def _escape(text: str) -> str:
    # The user's text goes through str.format with the passages; keep its braces literal.
    return text.replace("{", "{{").replace("}", "}}")


# A bracket holding numbers separated by commas/semicolons, or a range: [1], [1, 2], [2-4].
_CITATION = re.compile(r"\[\s*(\d+(?:\s*(?:[,;]|[-–])\s*\d+)*)\s*\]")
_ITEM = re.compile(r"(\d+)\s*[-–]\s*(\d+)|(\d+)")


def parse_citations(answer: str, n_passages: int) -> list[int]:
    """Passage numbers cited in ``answer``, in order of first mention, within 1..n_passages.

    Handles ``[1]``, ``[1, 2]``, ``[1][2]`` and ranges ``[1-3]``; numbers outside the
    shown passages (the model inventing ``[7]`` for 3 passages) are ignored.
    """
    seen: list[int] = []
    for bracket in _CITATION.finditer(answer):
        for item in _ITEM.finditer(bracket.group(1)):
            if item.group(3) is not None:
                numbers = [int(item.group(3))]
            else:
                first, last = int(item.group(1)), int(item.group(2))
                numbers = list(range(first, last + 1)) if first <= last <= n_passages else []
            for n in numbers:
                if 1 <= n <= n_passages and n not in seen:
                    seen.append(n)
    return seen


def map_citations(answer: str, used_passages: Sequence[P]) -> list[Citation[P]]:
    """Each citation in ``answer`` with the passage it refers to."""
    return [Citation(n, used_passages[n - 1]) for n in parse_citations(answer, len(used_passages))]
