"""The application's side of the replicated log.

`apply` must be deterministic: every node applies the same commands in the same
order and must reach the same state, so it may not read clocks, draw random
numbers or do I/O.  Anything time- or identity-dependent travels inside the
command.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed command; the return value resolves the proposer's
        future on the node that proposed it (and is discarded elsewhere)."""

    def snapshot(self) -> bytes:
        """Serialize the whole state as of the last applied command."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's."""
