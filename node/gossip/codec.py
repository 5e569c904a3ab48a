"""The wire encoding of gossip messages: one msgpack array per message.

    Ping     [tag, src, src_addr, dst, seq, updates]
    Ack      [tag, src, src_addr, dst, seq, target, updates]
    PingReq  [tag, src, src_addr, dst, seq, target, target_addr, updates]
    Sync     [tag, src, src_addr, dst, reply, states]
    update   [status, node, address, incarnation, meta_version, meta | nil]

Positional arrays, no field names: a ping goes out twice a second from every
node, each carrying several updates.  As in consensus/codec.py the tag is
`WIRE_VERSION << 5 | kind`, so a node of another version reports "wire version
2" instead of misreading fields.  Gossip kinds are numbered from 20 while
Raft's run from 1: a gossip frame sent to a Raft port by a misconfigured
address (or the reverse) reads as an unknown kind, never as a valid message.

Everything from the network is untrusted: `decode` checks the tag, the arity
and the type of every field, and that metadata is JSON-like
(messages.check_meta), and raises CodecError, which the driver counts and
drops.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.gossip.messages import (
    MAX_INCARNATION,
    STATUS_CODES,
    Ack,
    GossipMessage,
    Ping,
    PingReq,
    Status,
    Sync,
    Update,
    check_meta,
)

WIRE_VERSION = 1
_KIND_BITS = 5
_KIND_MASK = (1 << _KIND_BITS) - 1

KIND_PING = 20
KIND_ACK = 21
KIND_PING_REQ = 22
KIND_SYNC = 23

_TAG_PING = WIRE_VERSION << _KIND_BITS | KIND_PING
_TAG_ACK = WIRE_VERSION << _KIND_BITS | KIND_ACK
_TAG_PING_REQ = WIRE_VERSION << _KIND_BITS | KIND_PING_REQ
_TAG_SYNC = WIRE_VERSION << _KIND_BITS | KIND_SYNC

_STATUS_BY_CODE: dict[int, Status] = {code: status for status, code in STATUS_CODES.items()}
_MAX_UINT64 = MAX_INCARNATION  # (every integer on the wire is an unsigned 64-bit one)
_MAX_ID_BYTES = 255  # a ZeroMQ routing id
_MAX_ADDRESS = 1024


class CodecError(ValueError):
    """A frame that is not a valid gossip message of this wire version."""


# --- encode ----------------------------------------------------------------------


def _update_wire(u: Update) -> list[Any]:
    return [STATUS_CODES[u.status], u.node, u.address, u.incarnation, u.meta_version, u.meta]


def _updates_wire(updates: tuple[Update, ...]) -> list[list[Any]]:
    return [_update_wire(u) for u in updates]


def encode(msg: GossipMessage) -> bytes:
    if type(msg) is Ping:
        frame: list[Any] = [
            _TAG_PING,
            msg.src,
            msg.src_addr,
            msg.dst,
            msg.seq,
            _updates_wire(msg.updates),
        ]
    elif type(msg) is Ack:
        frame = [
            _TAG_ACK,
            msg.src,
            msg.src_addr,
            msg.dst,
            msg.seq,
            msg.target,
            _updates_wire(msg.updates),
        ]
    elif type(msg) is PingReq:
        frame = [
            _TAG_PING_REQ,
            msg.src,
            msg.src_addr,
            msg.dst,
            msg.seq,
            msg.target,
            msg.target_addr,
            _updates_wire(msg.updates),
        ]
    elif type(msg) is Sync:
        frame = [_TAG_SYNC, msg.src, msg.src_addr, msg.dst, msg.reply, _updates_wire(msg.states)]
    else:
        raise CodecError(f"cannot encode {type(msg).__name__}: not a gossip message")
    try:
        return msgpack.packb(frame, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # A local bug (the core checks metadata when it is set): fail at the
        # sender rather than have every receiver count a decode error.
        raise CodecError(f"cannot encode {type(msg).__name__}: {exc}") from exc


# --- decode ----------------------------------------------------------------------


class _Invalid(Exception):
    pass


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:37] + '...' if len(text) > 40 else text}"


def _uint(v: Any, what: str) -> int:
    # `type(v) is int`: msgpack's booleans are ints to isinstance.
    if type(v) is not int or not 0 <= v <= _MAX_UINT64:
        raise _Invalid(f"{what}: expected an unsigned integer, got {_describe(v)}")
    return v


def _node_id(v: Any, what: str) -> str:
    if type(v) is not str or not 0 < len(v.encode("utf-8")) <= _MAX_ID_BYTES:
        raise _Invalid(f"{what}: expected a node id (1..255 bytes), got {_describe(v)}")
    return v


def _address(v: Any, what: str) -> str:
    if type(v) is not str or len(v) > _MAX_ADDRESS:
        raise _Invalid(f"{what}: expected an address string, got {_describe(v)}")
    return v


def _update(v: Any) -> Update:
    if type(v) is not list or len(v) != 6:
        raise _Invalid(
            "update: expected [status, node, address, incarnation, meta_version, meta], "
            f"got {_describe(v)}"
        )
    code, node, address, incarnation, meta_version, meta = v
    status = _STATUS_BY_CODE.get(code) if type(code) is int else None
    if status is None:
        raise _Invalid(f"update.status: unknown status {_describe(code)}")
    if meta is not None:
        try:
            check_meta(meta)
        except ValueError as exc:
            raise _Invalid(f"update.meta: {exc}") from None
    return Update(
        status,
        _node_id(node, "update.node"),
        _address(address, "update.address"),
        _uint(incarnation, "update.incarnation"),
        _uint(meta_version, "update.meta_version"),
        meta,
    )


def _updates(v: Any) -> tuple[Update, ...]:
    if type(v) is not list:
        raise _Invalid(f"updates: expected an array, got {_describe(v)}")
    return tuple(_update(u) for u in v)


def _header(raw: list[Any]) -> tuple[str, str, str]:
    return _node_id(raw[1], "src"), _address(raw[2], "src_addr"), _node_id(raw[3], "dst")


_ARITY = {_TAG_PING: 6, _TAG_ACK: 7, _TAG_PING_REQ: 8, _TAG_SYNC: 6}


def decode(data: bytes) -> GossipMessage:
    try:
        # use_list=True: metadata must come back as the lists it was sent as.
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo: ExtraData, FormatError, UnicodeDecodeError...
        raise CodecError(f"not a msgpack frame: {type(exc).__name__}: {exc}") from exc
    if type(raw) is not list or not raw:
        raise CodecError(f"expected a non-empty array, got {_describe(raw)}")
    tag = raw[0]
    if type(tag) is not int:
        raise CodecError(f"bad message tag {_describe(tag)}")
    arity = _ARITY.get(tag)
    if arity is None:
        version = tag >> _KIND_BITS
        if version != WIRE_VERSION:
            raise CodecError(f"wire version {version}, this node speaks {WIRE_VERSION} (tag {tag})")
        raise CodecError(f"unknown gossip message kind {tag & _KIND_MASK} (tag {tag})")
    if len(raw) != arity:
        raise CodecError(f"tag {tag}: expected {arity - 1} fields, got {len(raw) - 1}")
    try:
        src, src_addr, dst = _header(raw)
        if tag == _TAG_PING:
            return Ping(src, src_addr, dst, _uint(raw[4], "seq"), _updates(raw[5]))
        if tag == _TAG_ACK:
            return Ack(
                src,
                src_addr,
                dst,
                _uint(raw[4], "seq"),
                _node_id(raw[5], "target"),
                _updates(raw[6]),
            )
        if tag == _TAG_PING_REQ:
            return PingReq(
                src,
                src_addr,
                dst,
                _uint(raw[4], "seq"),
                _node_id(raw[5], "target"),
                _address(raw[6], "target_addr"),
                _updates(raw[7]),
            )
        if type(raw[4]) is not bool:
            raise _Invalid(f"reply: expected a bool, got {_describe(raw[4])}")
        return Sync(src, src_addr, dst, raw[4], _updates(raw[5]))
    except _Invalid as exc:
        raise CodecError(str(exc)) from None
