"""What every generation backend takes and gives: requests, results, errors, the protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

from node.replica.vocabulary import PARAMS, CancelledFn

FinishReason = Literal["stop", "length", "cancelled"]
StatusFn = Callable[[str], None]

# The API's bound, so that any temperature a task was accepted with is valid here.
_TEMPERATURE = next(spec for spec in PARAMS if spec.name == "temperature")
assert _TEMPERATURE.high is not None
MAX_TEMPERATURE: float = _TEMPERATURE.high


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class GenerationError(RuntimeError):
    """Generation could not run; the message says why and, when it can, what to do."""


class PromptTooLongError(GenerationError, ValueError):
    """A prompt does not leave room for even one new token in the model's context."""


@dataclass(frozen=True)
class GenRequest:
    """One generation: either a raw ``prompt`` (completed as-is) or chat ``messages``.

    ``temperature == 0`` means greedy decoding.  ``stop`` strings end the output
    and are not part of it.  ``cancelled`` (optional) cancels this request alone;
    the batch-level checkpoint passed to ``generate`` cancels all of them.
    """

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    cancelled: CancelledFn | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenRequest needs exactly one of prompt or messages")
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(self.messages))
            if not self.messages:
                raise ValueError("GenRequest.messages is empty")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(
                f"temperature must be within [0, {MAX_TEMPERATURE:g}], not {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be within (0, 1], not {self.top_p}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampling_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one ``model.generate`` call."""
        if self.greedy:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


@dataclass(frozen=True)
class GenResult:
    """The output of one request.

    ``new_tokens`` counts the tokens the model produced for this request (a final
    end-of-sequence token included, padding excluded).  ``seconds`` is the wall time
    of the batch the request ran in, so tokens/s per task is ``new_tokens / seconds``.
    """

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    finish_reason: FinishReason


class GenerationBackend(Protocol):
    """What the RAG engine needs from a generator."""

    @property
    def model_id(self) -> str: ...

    @property
    def context_tokens(self) -> int:
        """Prompt plus new tokens must fit in this many tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` on its own (no special tokens); an estimate for remote models."""
        ...

    def generate(
        self, requests: list[GenRequest], cancelled: CancelledFn | None = None
    ) -> list[GenResult]:
        """Run a batch; results are in request order."""
        ...


def report(progress: StatusFn | None, message: str) -> None:
    if progress is not None:
        progress(message)


def trim_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
