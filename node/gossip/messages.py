"""The messages SWIM gossip peers exchange, and the member statuses they carry.

One frozen dataclass per message kind, as in consensus/messages.py.  Every
message names its sender, the address the sender listens on (so a reply can
reach a node we have not heard of yet, such as a joiner) and its receiver (so
a message that reaches a port now owned by another node is dropped, not
misread).  Membership news rides along as `Update`s: piggybacked on pings and
acks, or a whole table at once in a `Sync` (join and periodic anti-entropy).
The wire encoding lives in node/gossip/codec.py.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NodeId = str


class Status(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"  # said goodbye itself: a clean stop, not a failure


# SWIM's override order between two claims about the same incarnation: suspect
# beats alive, dead beats both, and a node's own goodbye beats a verdict of
# death.  Any claim about a higher incarnation beats every claim about a lower
# one.  So one comparison of (incarnation, RANK[status]) decides every case.
RANK: dict[Status, int] = {Status.ALIVE: 0, Status.SUSPECT: 1, Status.DEAD: 2, Status.LEFT: 3}

# The wire carries incarnations as unsigned 64-bit integers.  A claim at the top cannot
# be outranked: a refutation there stays at the top (and is counted) rather than making
# a number the codec cannot encode.
MAX_INCARNATION = (1 << 64) - 1

# Wire codes of the statuses (codec.py); fixed here, independent of enum order.
STATUS_CODES: dict[Status, int] = {
    Status.ALIVE: 0,
    Status.SUSPECT: 1,
    Status.DEAD: 2,
    Status.LEFT: 3,
}


@dataclass(frozen=True, slots=True)
class Update:
    """One claim about one member: "`node` at `address` is `status` as of its
    incarnation `incarnation`".  `meta` (with its `meta_version`) rides on
    claims that carry it; None means "no metadata in this claim", never "the
    metadata is empty".  Treat `meta` as read-only: it is shared, not copied."""

    status: Status
    node: NodeId
    address: str
    incarnation: int
    meta_version: int = 0
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    src: NodeId
    src_addr: str
    dst: NodeId
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    src: NodeId
    src_addr: str
    dst: NodeId
    seq: int  # the seq of the Ping (or of the PingReq, when relayed) being answered
    target: NodeId  # the node found alive: src itself, or the target of a PingReq
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """The indirect probe, "please ping `target` for me".  The helper answers
    with an Ack(seq, target) only if the target answered it."""

    src: NodeId
    src_addr: str
    dst: NodeId
    seq: int
    target: NodeId
    target_addr: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Sync:
    """A full membership table (memberlist's push-pull).  A request
    (reply=False) is answered with the receiver's own table (reply=True)."""

    src: NodeId
    src_addr: str
    dst: NodeId
    reply: bool
    states: tuple[Update, ...] = ()


GossipMessage = Ping | Ack | PingReq | Sync

MAX_META_DEPTH = 8


def check_meta(meta: Any, *, depth: int = 0) -> None:
    """Raise ValueError unless `meta` is JSON-like: a dict with string keys whose
    values are None, bool, int, finite float, str, lists or such dicts.  The
    UI and the API serve it as JSON, and msgpack must round-trip it exactly."""
    if depth == 0 and type(meta) is not dict:
        raise ValueError("metadata must be a dict")
    if depth > MAX_META_DEPTH:
        raise ValueError(f"metadata nested deeper than {MAX_META_DEPTH} levels")
    if type(meta) is dict:
        for key, value in meta.items():
            if type(key) is not str:
                raise ValueError(f"metadata key {key!r} is not a string")
            check_meta(value, depth=depth + 1)
    elif type(meta) is list:
        for value in meta:
            check_meta(value, depth=depth + 1)
    elif type(meta) is float:
        if not math.isfinite(meta):
            raise ValueError("metadata holds a NaN or infinite float (not JSON)")
    elif meta is not None and type(meta) not in (bool, int, str):
        raise ValueError(f"metadata value of type {type(meta).__name__} is not JSON-like")


def freeze_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A checked private copy (lists and dicts copied deeply): later changes to
    the caller's dict can then never alter what was announced."""
    copy: dict[str, Any] = _deep_copy(dict(meta))
    check_meta(copy)
    return copy


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return [_deep_copy(v) for v in value]
    return value
