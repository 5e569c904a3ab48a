"""When each row of a batched ``model.generate`` call is done, and why."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from node.rag.generation.types import FinishReason
from node.replica.vocabulary import CancelledFn

# How often (in generated tokens) a running batch polls its cancellation checkpoints.
CANCEL_CHECK_EVERY_TOKENS = 4


class BatchMonitor(StoppingCriteria):
    """Per-row stop logic for one batched ``generate`` call.

    transformers asks every stopping criterion after each step; this one records,
    per row, at which step and why the row finished (end-of-sequence, a stop
    string, its own token limit, cancellation), so counts are exact despite the
    left padding and the pad tokens generate appends to finished rows.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_width: int,
        limits: list[int],
        stops: list[tuple[str, ...]],
        eos_ids: set[int],
        row_cancelled: list[CancelledFn | None],
        batch_cancelled: CancelledFn | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.limits = limits
        self.stops = stops
        self.eos_ids = eos_ids
        self.row_cancelled = row_cancelled
        self.batch_cancelled = batch_cancelled
        # A stop string of n characters spans at most 4n byte-level tokens.
        self.windows = [4 * max((len(s) for s in row), default=0) + 4 for row in stops]
        self.finished_at: list[int | None] = [None] * len(limits)
        self.reasons: list[FinishReason | None] = [None] * len(limits)

    def _finish(self, row: int, step: int, reason: FinishReason) -> None:
        self.finished_at[row] = step
        self.reasons[row] = reason

    def _hit_stop(self, ids: torch.Tensor, row: int) -> bool:
        start = max(self.prompt_width, ids.shape[0] - self.windows[row])
        tail = self.tokenizer.decode(ids[start:].tolist(), skip_special_tokens=True)
        return any(s in tail for s in self.stops[row])

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width  # tokens generated so far
        last_tokens = input_ids[:, -1].tolist()
        check_cancel = step % CANCEL_CHECK_EVERY_TOKENS == 0
        batch_cancel = check_cancel and self.batch_cancelled is not None and self.batch_cancelled()
        for row, token in enumerate(last_tokens):
            if self.finished_at[row] is not None:
                continue
            row_check = self.row_cancelled[row]
            if token in self.eos_ids or (self.stops[row] and self._hit_stop(input_ids[row], row)):
                self._finish(row, step, "stop")
            elif step >= self.limits[row]:
                self._finish(row, step, "length")
            elif batch_cancel or (check_cancel and row_check is not None and row_check()):
                self._finish(row, step, "cancelled")
        done = [f is not None for f in self.finished_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
