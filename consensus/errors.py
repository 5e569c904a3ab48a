"""Errors the consensus layer raises to its callers.

Errors are the caller's business (h11's LocalProtocolError): a proposal made in
the wrong place or at the wrong time.  A bad or stale message from a peer is
never an exception; the core counts it and drops it.
"""

from __future__ import annotations

from consensus.types import NodeId


class RaftError(Exception):
    """Base class of everything consensus/ raises on purpose."""


class NotLeader(RaftError):
    def __init__(self, leader: NodeId | None) -> None:
        self.leader = leader
        hint = f"the leader is {leader}" if leader else "no leader is known"
        super().__init__(f"this node is not the leader; {hint}")


class NoLeader(RaftError):
    def __init__(self) -> None:
        super().__init__(
            "no leader is known (an election is in progress or there is no quorum); retry shortly"
        )


class ConfChangeInProgress(RaftError):
    def __init__(self) -> None:
        super().__init__("a membership change is still being committed; retry once it is")


class InvalidConfChange(RaftError):
    pass


class TransferInProgress(RaftError):
    def __init__(self, target: NodeId) -> None:
        self.target = target
        super().__init__(f"leadership is being transferred to {target}; retry shortly")


class NoQuorum(RaftError):
    """This node is cut off from a majority of the cluster: it has no leader and
    hears too few peers, or its leader does not answer it.  A proposal that was
    already handed on may still commit later; the caller retries (elsewhere)
    with the same request or idempotency key."""

    def __init__(self, cut_off_s: float, handed_on: bool) -> None:
        self.cut_off_s = cut_off_s
        self.handed_on = handed_on
        outcome = (
            "; the write may still be applied later: retry it with the same idempotency key"
            if handed_on
            else "; nothing was written"
        )
        super().__init__(
            f"this node cannot reach a majority of the cluster (cut off for {cut_off_s:.1f} s)"
            f"{outcome}; another node may be able to serve"
        )


class StaleRequest(RaftError):
    """The log holds a copy of a request that its session no longer waits for
    (or whose session expired): it was not applied."""


class ChangeLost(RaftError):
    """A membership change that this leader appended was overwritten by another
    leader's entry: it did not happen."""

    def __init__(self, what: str, index: int, term: int) -> None:
        super().__init__(
            f"{what} at index {index} (term {term}) was replaced by another leader's entry: "
            "it was not applied; retry on the current leader"
        )
