"""consensus/codec.py: every message survives the wire unchanged, and every
malformed frame is refused with a CodecError (which the transport counts)."""

from __future__ import annotations

import msgpack
import pytest

from consensus import codec
from consensus.codec import CodecError, decode, encode
from consensus.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    CommitHint,
    HeartbeatRequest,
    HeartbeatResponse,
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

MEMBERSHIP = Membership(
    voters=frozenset({"n1", "n2", "n3"}),
    learners=frozenset({"n4"}),
    addresses=(
        ("n1", "tcp://10.0.0.1:7001"),
        ("n2", "tcp://10.0.0.2:7001"),
        ("n3", "tcp://10.0.0.3:7001"),
        ("n4", "tcp://10.0.0.4:7001"),
    ),
)
META = SnapshotMeta(index=120, term=4, membership=MEMBERSHIP, size=1 << 20)

# One or more instances of every message kind, including the edge cases.
SAMPLES = [
    VoteRequest(3, "n1", "n2", 10, 2),
    VoteRequest(3, "n1", "n2", 10, 2, pre=True, transfer=True),
    VoteResponse(3, "n2", "n1", True),
    VoteResponse(4, "n2", "n1", False, pre=True),
    AppendRequest(5, "n1", "n2", 0, 0, (), 0),  # empty entries: a probe
    AppendRequest(
        5,
        "n1",
        "n2",
        41,
        4,
        (
            Entry(5, 42),  # the leader's no-op: empty data
            Entry(5, 43, EntryKind.NORMAL, b"\x00\xff" * 50),
            Entry(5, 44, EntryKind.CONF, b"conf"),
        ),
        40,
    ),
    AppendRequest(
        5,
        "n1",
        "n2",
        1,
        1,
        tuple(Entry(5, 2 + i, data=bytes([i % 256]) * 100) for i in range(500)),
        1,
    ),
    AppendResponse(5, "n2", "n1", True, 44),
    AppendResponse(5, "n2", "n1", False, 41, hint_index=30, hint_term=3),
    HeartbeatRequest(6, "n1", "n3", 44),
    HeartbeatRequest(6, "n1", "n3", 44, ctx=b"read-7"),
    HeartbeatResponse(6, "n3", "n1"),
    HeartbeatResponse(6, "n3", "n1", ctx=b"read-7"),
    SnapshotRequest(7, "n1", "n4", META, 0, b"", False),
    SnapshotRequest(7, "n1", "n4", META, 262144, bytes(range(256)) * 1024, True),
    SnapshotRequest(
        7, "n1", "n4", SnapshotMeta(1, 1, Membership()), 0, b"x", True
    ),  # empty membership
    SnapshotResponse(7, "n4", "n1", 120, 262144, False),
    SnapshotResponse(7, "n4", "n1", 120, 0, True),
    TimeoutNow(8, "n1", "n2"),
    CommitHint(8, "n1", "n2", 44, 7),
    ProposeRequest(8, "n3", "n1", ()),
    ProposeRequest(8, "n3", "n1", (b"cmd-1", b"", b"\x00" * 1000)),
    ReadIndexRequest(8, "n3", "n1", b"ctx"),
    ReadIndexResponse(8, "n1", "n3", 99, b"ctx"),
    # unicode node ids, big integers
    VoteRequest(2**63, "nœud-é", "节点-二", 2**64 - 1, 0),
    TimeoutNow(1, "", "🚀"),
]


def test_every_message_type_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    data = encode(msg)  # type: ignore[arg-type]
    assert isinstance(data, bytes)
    back = decode(data)
    assert back == msg
    assert type(back) is type(msg)


def test_decoded_entries_are_real_entries() -> None:
    msg = AppendRequest(5, "n1", "n2", 0, 0, (Entry(5, 1, EntryKind.CONF, b"c"), Entry(5, 2)), 0)
    back = decode(encode(msg))
    assert isinstance(back, AppendRequest)
    assert isinstance(back.entries, tuple)
    first = back.entries[0]
    assert type(first) is Entry and first.kind is EntryKind.CONF and first.size() == 25
    assert back.entries[1].kind is EntryKind.NORMAL
    with pytest.raises(AttributeError):  # still frozen despite the fast construction
        first.term = 9  # type: ignore[misc]
    assert hash(first) == hash(Entry(5, 1, EntryKind.CONF, b"c"))


def test_decoded_membership_and_commands_types() -> None:
    back = decode(encode(SnapshotRequest(7, "n1", "n4", META, 0, b"", False)))
    assert isinstance(back, SnapshotRequest)
    assert isinstance(back.meta.membership.voters, frozenset)
    assert back.meta.membership.address_of("n4") == "tcp://10.0.0.4:7001"
    prop = decode(encode(ProposeRequest(1, "a", "b", (b"x",))))
    assert (
        isinstance(prop, ProposeRequest)
        and prop.commands == (b"x",)
        and isinstance(prop.commands, tuple)
    )


def test_encoding_is_compact() -> None:
    # positional arrays: a heartbeat is a couple of dozen bytes, an entry of
    # 100 bytes costs a handful more on the wire
    assert len(encode(HeartbeatRequest(6, "n1", "n3", 44))) < 20
    one = len(encode(AppendRequest(5, "n1", "n2", 0, 0, (Entry(5, 1, data=b"x" * 100),), 0)))
    two = len(encode(AppendRequest(5, "n1", "n2", 0, 0, (Entry(5, 1, data=b"x" * 100),) * 2, 0)))
    assert two - one <= 100 + 8


# --- malformed frames -------------------------------------------------------------

TAG_VOTE_RESPONSE = codec.WIRE_VERSION << 5 | 2


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "frame, fragment",
    [
        (b"", "not a msgpack frame"),
        (b"\xc1", "not a msgpack frame"),  # a reserved, never-valid byte
        (
            _pack([TAG_VOTE_RESPONSE, 3, "a", "b", True, False])[:-1],
            "not a msgpack frame",
        ),  # truncated
        (
            _pack([TAG_VOTE_RESPONSE, 3, "a", "b", True, False]) + b"\x00",
            "not a msgpack frame",
        ),  # trailing data
        (
            b"\x96" + b"\x22\x03\xa1\xff\xa1b\xc3\xc2",
            "not a msgpack frame",
        ),  # invalid UTF-8 in a string
        (_pack({"tag": 1}), "expected a non-empty array"),
        (_pack([]), "expected a non-empty array"),
        (_pack(42), "expected a non-empty array"),
        (_pack(["x", 1]), "bad message tag"),
        (_pack([(codec.WIRE_VERSION << 5) | 31, 1]), "unknown message kind 31"),
        (_pack([(2 << 5) | 2, 3, "a", "b", True, False]), "wire version 2, this node speaks 1"),
        (_pack([0, 1]), "wire version 0"),
        (_pack([TAG_VOTE_RESPONSE, 3, "a", "b", True]), "VoteResponse: expected 5 fields, got 4"),
        (_pack([TAG_VOTE_RESPONSE, 3, "a", "b", True, False, 1]), "expected 5 fields, got 6"),
        (
            _pack([TAG_VOTE_RESPONSE, "3", "a", "b", True, False]),
            "VoteResponse.term: expected a non-negative integer",
        ),
        (_pack([TAG_VOTE_RESPONSE, -1, "a", "b", True, False]), "VoteResponse.term"),
        (_pack([TAG_VOTE_RESPONSE, True, "a", "b", True, False]), "VoteResponse.term"),
        (
            _pack([TAG_VOTE_RESPONSE, 3, b"a", "b", True, False]),
            "VoteResponse.src: expected a string",
        ),
        (
            _pack([TAG_VOTE_RESPONSE, 3, "a", "b", 1, False]),
            "VoteResponse.granted: expected a boolean",
        ),
        (_pack([TAG_VOTE_RESPONSE, 3.0, "a", "b", True, False]), "VoteResponse.term"),
        (_pack([TAG_VOTE_RESPONSE, None, "a", "b", True, False]), "VoteResponse.term"),
    ],
)
def test_malformed_frames_raise_codec_error(frame: bytes, fragment: str) -> None:
    with pytest.raises(CodecError, match=None) as info:
        decode(frame)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def _append_frame(entries: object, commit: object = 0) -> bytes:
    return _pack([codec.WIRE_VERSION << 5 | 3, 5, "n1", "n2", 0, 0, entries, commit])


@pytest.mark.parametrize(
    "entries",
    [
        "not-a-list",
        [[5, 1, 0]],  # three fields
        [[5, 1, 0, b"x", 0]],  # five fields
        [[5, 1, 2, b"x"]],  # unknown entry kind
        [[5, 1, -1, b"x"]],
        [[5, 1, True, b"x"]],
        [[5, 1, 0, "text, not bytes"]],
        [[5, -1, 0, b"x"]],
        [[5, 1, 0, b"x"], "oops"],
        [{"term": 5}],
    ],
)
def test_bad_entries_rejected(entries: object) -> None:
    with pytest.raises(CodecError, match=r"AppendRequest\.entries"):
        decode(_append_frame(entries))


def test_good_append_frame_built_by_hand_decodes() -> None:
    msg = decode(_append_frame([[5, 1, 1, b"c"]], 1))
    assert msg == AppendRequest(5, "n1", "n2", 0, 0, (Entry(5, 1, EntryKind.CONF, b"c"),), 1)


@pytest.mark.parametrize(
    "meta, fragment",
    [
        ([1, 1, [[], [], []]], "snapshot meta"),  # three fields
        ([1, 1, [["a"], [], []], "big"], "non-negative integer"),
        ([1, 1, [["a"], []], 0], "membership"),
        ([1, 1, [[1], [], []], 0], "voters"),
        ([1, 1, [["a"], [None], []], 0], "learners"),
        ([1, 1, [["a"], [], [["a"]]], 0], "address pair"),
        ([1, 1, [["a"], [], [["a", 7]]], 0], "address pair"),
        ([1, 1, [["a"], [], "x"], 0], "addresses"),
    ],
)
def test_bad_snapshot_meta_rejected(meta: object, fragment: str) -> None:
    frame = _pack([codec.WIRE_VERSION << 5 | 7, 7, "n1", "n4", meta, 0, b"", False])
    with pytest.raises(CodecError, match=r"SnapshotRequest\.meta") as info:
        decode(frame)
    assert fragment in str(info.value)


def test_bad_commands_rejected() -> None:
    frame = _pack([codec.WIRE_VERSION << 5 | 10, 1, "a", "b", [b"ok", "text"]])
    with pytest.raises(CodecError, match=r"ProposeRequest\.commands"):
        decode(frame)


def test_long_values_are_abbreviated_in_errors() -> None:
    frame = _pack([TAG_VOTE_RESPONSE, "x" * 10_000, "a", "b", True, False])
    with pytest.raises(CodecError) as info:
        decode(frame)
    assert len(str(info.value)) < 200


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(CodecError, match="not a Raft message"):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="HeartbeatRequest"):
        encode(HeartbeatRequest(1, "a", "b", 0, ctx=object()))  # type: ignore[arg-type]


def test_kind_numbers_are_stable() -> None:
    # The wire must not change when messages.MESSAGE_TYPES is reordered: the
    # kind numbers are fixed in codec.py.  Changing one is a wire-version bump.
    assert encode(TimeoutNow(1, "a", "b"))[:2] == bytes([0x94, codec.WIRE_VERSION << 5 | 9])


def test_every_byte_flip_is_refused_or_decodes_to_a_message() -> None:
    # The decoder never raises anything but CodecError, whatever a corrupted
    # frame looks like (truncations and single-byte flips of a rich message).
    data = encode(SnapshotRequest(7, "n1", "n4", META, 3, b"abc", True))
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:cut])
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            corrupted = data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :]
            try:
                msg = decode(corrupted)
            except CodecError:
                continue
            assert type(msg) in MESSAGE_TYPES


# --- property: any well-typed message round-trips ------------------------------------

from hypothesis import given, settings  # a dev dependency: missing it is a failure, not a skip
from hypothesis import strategies as st

_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_small = st.integers(min_value=0, max_value=2**40)
_ids = st.text(max_size=12)
_blob = st.binary(max_size=300)
_entry = st.builds(Entry, _small, _small, st.sampled_from(list(EntryKind)), _blob)
_membership = st.builds(
    Membership,
    st.frozensets(_ids, max_size=5),
    st.frozensets(_ids, max_size=3),
    st.lists(st.tuples(_ids, st.text(max_size=30)), max_size=5).map(tuple),
)
_meta = st.builds(SnapshotMeta, _u64, _u64, _membership, _u64)


def _msg(cls: type, **extra: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(cls, term=_u64, src=_ids, dst=_ids, **extra)


_messages = st.one_of(
    _msg(VoteRequest, last_index=_u64, last_term=_u64, pre=st.booleans(), transfer=st.booleans()),
    _msg(VoteResponse, granted=st.booleans(), pre=st.booleans()),
    _msg(
        AppendRequest,
        prev_index=_u64,
        prev_term=_u64,
        entries=st.lists(_entry, max_size=20).map(tuple),
        commit=_u64,
    ),
    _msg(AppendResponse, success=st.booleans(), index=_u64, hint_index=_u64, hint_term=_u64),
    _msg(HeartbeatRequest, commit=_u64, ctx=_blob),
    _msg(HeartbeatResponse, ctx=_blob),
    _msg(SnapshotRequest, meta=_meta, offset=_u64, data=_blob, done=st.booleans()),
    _msg(SnapshotResponse, snapshot_index=_u64, next_offset=_u64, done=st.booleans()),
    _msg(TimeoutNow),
    _msg(CommitHint, index=_u64, log_term=_u64),
    _msg(ProposeRequest, commands=st.lists(_blob, max_size=8).map(tuple)),
    _msg(ReadIndexRequest, ctx=_blob),
    _msg(ReadIndexResponse, index=_u64, ctx=_blob),
)


@settings(max_examples=300, deadline=None)
@given(_messages)
def test_property_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_property_garbage_only_raises_codec_error(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass
