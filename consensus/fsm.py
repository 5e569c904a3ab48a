"""The application's side of the replicated log.

`apply` must be deterministic: every node applies the same commands in the same
order and must reach the same state, so it may not read clocks, draw random
numbers or do I/O.  Anything time- or identity-dependent travels inside the
command.
"""

from __future__ import annotations

from typing import Any, Protocol


class NewerFormat(Exception):
    """An entry or a snapshot written by newer software, in a format this node does not
    read.  Neither applied nor skipped (the nodes that read it apply it: skipping would
    make this one differ): the node stops there, saying which release it needs, and
    picks up from the same place once upgraded.  Not a ValueError on purpose: what is
    merely malformed is skipped by every node alike; this is not."""


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed command; the return value resolves the proposer's
        future on the node that proposed it (and is discarded elsewhere).  Raises
        NewerFormat for a command of a format it does not know."""

    def snapshot(self) -> bytes:
        """Serialize the whole state as of the last applied command."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's."""
