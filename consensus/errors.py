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
        super().__init__("no leader is known (an election is in progress or there is no quorum); retry shortly")


class ConfChangeInProgress(RaftError):
    def __init__(self) -> None:
        super().__init__("a membership change is still being committed; retry once it is")


class InvalidConfChange(RaftError):
    pass


class TransferInProgress(RaftError):
    def __init__(self, target: NodeId) -> None:
        self.target = target
        super().__init__(f"leadership is being transferred to {target}; retry shortly")
