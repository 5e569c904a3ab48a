"""Majority arithmetic, as pure functions of a voter set (etcd's quorum/ package)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from consensus.types import NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voters: Collection[NodeId]) -> int:
    return len(voters) // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """The highest log index that a majority of voters have stored."""
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(voters) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(voters)
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[NodeId], active: Collection[NodeId]) -> bool:
    return sum(1 for v in voters if v in active) >= majority(voters)
