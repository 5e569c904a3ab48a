"""The wire encoding of Raft messages: one msgpack array per message.

    [tag, field1, field2, ...]

Fields follow the dataclass's field order, positionally: no field names on the
wire, because AppendRequests with hundreds of entries are the hot path and a map
per entry would repeat every field name in every entry, in bytes and in time.
An Entry is the nested array [term, index, kind, data]; a SnapshotMeta is
[index, term, membership, size] with the membership as Membership.to_wire().

The tag carries two things in one small integer (a one-byte msgpack fixint):

    tag = WIRE_VERSION << 5 | kind

so that a node speaking another version of this format sees "wire version 2,
this node speaks 1" instead of misreading fields.  Kind numbers are fixed
below, independent of the order of messages.MESSAGE_TYPES, so that reordering
that tuple can never change the wire.

Everything coming off the network is untrusted: `decode` checks the tag, the
arity and the type of every field (integers must also be non-negative: no
term, index, offset or hint is ever negative) and raises CodecError, which the
transport counts and drops.  `encode` trusts the message objects the core built
and does not re-check them; the round-trip tests are what keep it honest.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

import msgpack

from consensus.messages import (
    AppendRequest,
    AppendResponse,
    CommitHint,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ProposeRequest,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from consensus.types import Entry, EntryKind, Membership, SnapshotMeta

WIRE_VERSION = 1
_KIND_BITS = 5  # up to 31 message kinds per version
_KIND_MASK = (1 << _KIND_BITS) - 1


class CodecError(ValueError):
    """A frame that is not a valid message of this wire version."""


class _Invalid(Exception):
    """Raised by a field check; `decode` turns it into a CodecError naming the field."""

    def __init__(self, expected: str, got: object) -> None:
        super().__init__(f"expected {expected}, got {_describe(got)}")


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


# --- field checks (decode side) ------------------------------------------------
# Each takes the raw msgpack value and returns the Python value, or raises
# _Invalid.  `type(x) is int` rather than isinstance: msgpack's booleans are
# ints to isinstance, and a True where a term belongs is a bug, not a 1.


def _uint(v: Any) -> int:
    if type(v) is int and v >= 0:
        return v
    raise _Invalid("a non-negative integer", v)


def _str(v: Any) -> str:
    if type(v) is str:
        return v
    raise _Invalid("a string", v)


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _Invalid("a boolean", v)


def _bytes(v: Any) -> bytes:
    if type(v) is bytes:
        return v
    raise _Invalid("bytes", v)


# EntryKind by wire value, looked up by index: constructing the enum per entry
# (EntryKind(k)) costs several times more on a 500-entry batch.
_ENTRY_KINDS: tuple[EntryKind, ...] = tuple(sorted(EntryKind, key=int))
assert [int(k) for k in _ENTRY_KINDS] == list(range(len(_ENTRY_KINDS)))

# Entries are built without Entry.__init__: a frozen dataclass's __init__ goes
# through object.__setattr__ once per field, which made it the largest single
# cost of decoding an AppendRequest (measured: 64 entries, ~135 us -> ~50 us).
# Writing the slots directly is only correct while Entry has exactly these four
# slots, all of them set here; the assertion catches a field being added.
assert Entry.__slots__ == ("term", "index", "kind", "data"), (
    "update _entries() for the new Entry field"
)
_new_entry = object.__new__
_set_term = Entry.__dict__["term"].__set__
_set_index = Entry.__dict__["index"].__set__
_set_kind = Entry.__dict__["kind"].__set__
_set_data = Entry.__dict__["data"].__set__


def _entries(v: Any) -> tuple[Entry, ...]:
    if type(v) is not tuple:
        raise _Invalid("an array of entries", v)
    out: list[Entry] = []
    append = out.append
    n_kinds = len(_ENTRY_KINDS)
    for e in v:
        # One combined test on the fast path; the slow path says what was wrong.
        if type(e) is tuple and len(e) == 4:
            term, index, kind, data = e
            if (
                type(term) is int
                and type(index) is int
                and type(kind) is int
                and type(data) is bytes
                and term >= 0
                and index >= 0
                and 0 <= kind < n_kinds
            ):
                entry = _new_entry(Entry)
                _set_term(entry, term)
                _set_index(entry, index)
                _set_kind(entry, _ENTRY_KINDS[kind])
                _set_data(entry, data)
                append(entry)
                continue
        raise _Invalid(f"an entry [term, index, kind(0..{n_kinds - 1}), data]", e)
    return tuple(out)


_entry_fields = attrgetter("term", "index", "kind", "data")


def _encode_entries(entries: tuple[Entry, ...]) -> list[tuple[Any, ...]]:
    # attrgetter builds each entry's tuple in C (msgpack packs tuples as arrays,
    # and an IntEnum kind as its plain integer): ~20% faster than a comprehension.
    return list(map(_entry_fields, entries))


def _str_list(v: Any, what: str) -> list[str]:
    if type(v) is not tuple or any(type(x) is not str for x in v):
        raise _Invalid(f"{what}: an array of strings", v)
    return list(v)


def _membership(v: Any) -> Membership:
    if type(v) is not tuple or len(v) != 3:
        raise _Invalid("a membership [voters, learners, addresses]", v)
    voters = _str_list(v[0], "voters")
    learners = _str_list(v[1], "learners")
    raw_addresses = v[2]
    if type(raw_addresses) is not tuple:
        raise _Invalid("addresses: an array of [node, address]", raw_addresses)
    addresses = []
    for pair in raw_addresses:
        if (
            type(pair) is not tuple
            or len(pair) != 2
            or type(pair[0]) is not str
            or type(pair[1]) is not str
        ):
            raise _Invalid("an address pair [node, address]", pair)
        addresses.append((pair[0], pair[1]))
    return Membership(frozenset(voters), frozenset(learners), tuple(addresses))


def _meta(v: Any) -> SnapshotMeta:
    if type(v) is not tuple or len(v) != 4:
        raise _Invalid("a snapshot meta [index, term, membership, size]", v)
    return SnapshotMeta(_uint(v[0]), _uint(v[1]), _membership(v[2]), _uint(v[3]))


def _encode_meta(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, meta.membership.to_wire(), meta.size]


def _commands(v: Any) -> tuple[bytes, ...]:
    if type(v) is not tuple or any(type(c) is not bytes for c in v):
        raise _Invalid("an array of byte strings", v)
    return v


# --- the schema ----------------------------------------------------------------

_Check = Callable[[Any], Any]
_Encode = Callable[[Any], Any]


class _Schema:
    """How one message class maps to its array: field names and checks in wire
    order, plus the fields that need converting on the way out."""

    __slots__ = ("arity", "checks", "cls", "converters", "getter", "kind", "names", "tag")

    def __init__(
        self,
        cls: type[Message],
        kind: int,
        fields: tuple[tuple[str, _Check], ...],
        converters: dict[str, _Encode] | None = None,
    ) -> None:
        declared = tuple(cls.__dataclass_fields__)
        names = tuple(name for name, _ in fields)
        # The wire order is the dataclass order; a message that gains a field
        # must gain it here too (and, if old nodes cannot cope, bump WIRE_VERSION).
        assert names == declared, f"{cls.__name__}: schema {names} != fields {declared}"
        assert 0 < kind <= _KIND_MASK
        self.cls: type[Message] = cls
        self.kind = kind
        self.tag = WIRE_VERSION << _KIND_BITS | kind
        self.names = names
        self.checks = tuple(check for _, check in fields)
        self.getter = attrgetter(*names)  # one C call fetching every field as a tuple
        self.converters = tuple((names.index(n), f) for n, f in (converters or {}).items())
        self.arity = 1 + len(names)


_HEADER: tuple[tuple[str, _Check], ...] = (("term", _uint), ("src", _str), ("dst", _str))

_SCHEMAS: tuple[_Schema, ...] = (
    _Schema(
        VoteRequest,
        1,
        _HEADER
        + (("last_index", _uint), ("last_term", _uint), ("pre", _bool), ("transfer", _bool)),
    ),
    _Schema(VoteResponse, 2, _HEADER + (("granted", _bool), ("pre", _bool))),
    _Schema(
        AppendRequest,
        3,
        _HEADER
        + (("prev_index", _uint), ("prev_term", _uint), ("entries", _entries), ("commit", _uint)),
        {"entries": _encode_entries},
    ),
    _Schema(
        AppendResponse,
        4,
        _HEADER
        + (("success", _bool), ("index", _uint), ("hint_index", _uint), ("hint_term", _uint)),
    ),
    _Schema(HeartbeatRequest, 5, _HEADER + (("commit", _uint), ("ctx", _bytes))),
    _Schema(HeartbeatResponse, 6, _HEADER + (("ctx", _bytes),)),
    _Schema(
        SnapshotRequest,
        7,
        _HEADER + (("meta", _meta), ("offset", _uint), ("data", _bytes), ("done", _bool)),
        {"meta": _encode_meta},
    ),
    _Schema(
        SnapshotResponse,
        8,
        _HEADER + (("snapshot_index", _uint), ("next_offset", _uint), ("done", _bool)),
    ),
    _Schema(TimeoutNow, 9, _HEADER),
    _Schema(ProposeRequest, 10, _HEADER + (("commands", _commands),)),
    _Schema(ReadIndexRequest, 11, _HEADER + (("ctx", _bytes),)),
    _Schema(ReadIndexResponse, 12, _HEADER + (("index", _uint), ("ctx", _bytes))),
    # (new in 0.x: an older node drops it as an unknown kind, and only misses the hint)
    _Schema(CommitHint, 13, _HEADER + (("index", _uint), ("log_term", _uint))),
)

_BY_CLASS: dict[type, _Schema] = {s.cls: s for s in _SCHEMAS}
_BY_TAG: dict[int, _Schema] = {s.tag: s for s in _SCHEMAS}
assert len(_BY_TAG) == len(_SCHEMAS), "duplicate kind number"


# --- public API ------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    schema = _BY_CLASS.get(type(msg))
    if schema is None:
        raise CodecError(f"cannot encode {type(msg).__name__}: not a Raft message")
    values = schema.getter(msg)
    if type(values) is not tuple:  # attrgetter of a single name returns the bare value
        values = (values,)
    frame = [schema.tag, *values]
    for position, convert in schema.converters:
        frame[1 + position] = convert(frame[1 + position])
    try:
        return msgpack.packb(frame, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # A field of the wrong type built by a local bug: fail loudly at the
        # sender rather than have every receiver count a decode error.
        raise CodecError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def decode(data: bytes) -> Message:
    try:
        # use_list=False: arrays come back as tuples, which is what the
        # dataclasses hold (entries, commands) and saves a conversion.
        raw = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except (
        Exception
    ) as exc:  # msgpack raises a zoo: ExtraData, FormatError, StackError, UnicodeDecodeError...
        raise CodecError(f"not a msgpack frame: {type(exc).__name__}: {exc}") from exc
    if type(raw) is not tuple or not raw:
        raise CodecError(f"expected a non-empty array, got {_describe(raw)}")
    tag = raw[0]
    if type(tag) is not int:
        raise CodecError(f"bad message tag {_describe(tag)}")
    schema = _BY_TAG.get(tag)
    if schema is None:
        version = tag >> _KIND_BITS
        if version != WIRE_VERSION:
            raise CodecError(f"wire version {version}, this node speaks {WIRE_VERSION} (tag {tag})")
        raise CodecError(f"unknown message kind {tag & _KIND_MASK} (tag {tag})")
    if len(raw) != schema.arity:
        raise CodecError(
            f"{schema.cls.__name__}: expected {schema.arity - 1} fields, got {len(raw) - 1}"
        )
    values = []
    for name, check, value in zip(schema.names, schema.checks, raw[1:]):
        try:
            values.append(check(value))
        except _Invalid as exc:
            raise CodecError(f"{schema.cls.__name__}.{name}: {exc}") from None
    return schema.cls(*values)
