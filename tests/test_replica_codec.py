"""node/replica/codec.py: every command round-trips; anything else is a CodecError;
entries of the previous release ({"op": ...} maps) still read."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.rag.knowledge import KnowledgeBase
from node.replica import codec
from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import KeyScope, Quota, SearchMode, TaskParams, TaskType, UserRole

text = st.text(max_size=20)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
ints = st.integers(min_value=0, max_value=2**53)
ms = st.integers(min_value=0, max_value=2**45)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
params = st.builds(
    TaskParams,
    top_k=st.none() | st.integers(1, 100),
    mode=st.none() | st.sampled_from(SearchMode),
    min_score=st.none() | st.floats(-1e9, 1e9),
    doc_ids=st.none() | st.lists(ids, max_size=3).map(tuple),
    tags=st.none() | st.lists(ids, max_size=3).map(tuple),
    max_new_tokens=st.none() | st.integers(1, 2048),
    temperature=st.none() | st.floats(0.0, 5.0),
    top_p=st.none() | st.floats(1e-6, 1.0),
    stop=st.none() | st.lists(text, max_size=8).map(tuple),
    seed=st.none() | st.integers(0, 2**63 - 1),
)
task_types = st.sampled_from(TaskType)
quotas = st.builds(
    Quota,
    max_queued=st.none() | st.integers(0, 1000),
    max_running=st.none() | st.integers(0, 1000),
    max_priority=st.none() | st.integers(0, 9),
)
maybe = st.none

STRATEGIES = {
    c.Submit: st.builds(
        c.Submit,
        task_id=ids,
        type=task_types,
        input=objects,
        params=params,
        owner=text,
        at=ms,
        priority=st.integers(0, 9),
        max_attempts=maybe() | st.integers(1, 10),
        idem_key=maybe() | text,
        fingerprint=maybe() | text,
        retry_of=maybe() | ids,
        by=maybe() | text,
    ),
    c.Claim: st.builds(
        c.Claim,
        node=ids,
        slots=st.integers(1, 64),
        at=ms,
        max=st.integers(1, 64),
        types=maybe() | st.lists(task_types, max_size=5).map(tuple),
        fair_window_ms=ints,
    ),
    c.Progress: st.builds(
        c.Progress, task_id=ids, attempt=ints, node=ids, progress=st.floats(0, 1), note=text
    ),
    c.Complete: st.builds(c.Complete, task_id=ids, attempt=ints, node=ids, at=ms, result=objects),
    c.Fail: st.builds(
        c.Fail,
        task_id=ids,
        attempt=ints,
        node=ids,
        at=ms,
        error=text,
        retryable=st.booleans(),
        aborted=st.booleans(),
    ),
    c.Release: st.builds(c.Release, task_id=ids, attempt=ints, node=ids, at=ms, reason=text),
    c.Cancel: st.builds(c.Cancel, task_id=ids, at=ms, by=text, owner=maybe() | text),
    c.Abort: st.builds(c.Abort, task_id=ids, at=ms, by=text, owner=maybe() | text),
    c.Expire: st.builds(c.Expire, before=ms),
    c.NodeStatus: st.builds(
        c.NodeStatus, node=ids, at=ms, alive=st.booleans(), slots=maybe() | st.integers(0, 256)
    ),
    c.RequeueNode: st.builds(c.RequeueNode, node=ids, at=ms, reason=text),
    c.DrainNode: st.builds(c.DrainNode, node=ids, at=ms, by=ids, draining=st.booleans()),
    c.Upload: st.builds(
        c.Upload,
        doc=st.builds(
            c.DocumentUpload,
            doc_id=ids,
            title=text,
            source=text,
            media_type=text,
            tags=st.lists(ids, max_size=3).map(tuple),
            data=st.binary(max_size=64),
        ),
        task_id=ids,
        owner=text,
        at=ms,
        priority=st.integers(0, 9),
        idem_key=maybe() | text,
        fingerprint=maybe() | text,
        may_replace=st.booleans(),
    ),
    c.PutChunks: st.builds(
        c.PutChunks,
        doc_id=ids,
        version=st.integers(1, 1000),
        batch_no=st.integers(0, 1000),
        chunks=st.lists(
            st.builds(c.Chunk, ordinal=ints, page=st.integers(1, 999), text=text), max_size=3
        ).map(tuple),
        vectors=st.binary(max_size=48),
        n_batches=maybe() | st.integers(1, 100),
    ),
    c.FinishIngest: st.builds(c.FinishIngest, doc_id=ids, version=ints, node=ids, at=ms),
    c.FailIngest: st.builds(c.FailIngest, doc_id=ids, version=ints, error=text, at=ms),
    c.DeleteDocument: st.builds(c.DeleteDocument, doc_id=ids, at=ms, by=maybe() | text),
    c.SetEnabled: st.builds(
        c.SetEnabled, doc_id=ids, enabled=st.booleans(), at=ms, by=maybe() | text
    ),
    c.InitAccounts: st.builds(
        c.InitAccounts,
        admin_hash=text,
        at=ms,
        token_secret=maybe() | text,
        users=st.lists(st.deferred(lambda: STRATEGIES[c.PutUser]), max_size=2).map(tuple),
    ),
    c.PutKey: st.builds(
        c.PutKey,
        key_id=ids,
        user=text,
        sha256=text,
        at=ms,
        label=text,
        expires_at=maybe() | ms,
        scope=st.sampled_from(KeyScope),
    ),
    c.DeleteKey: st.builds(c.DeleteKey, key_id=ids, at=ms, user=maybe() | text),
    c.PutUser: st.builds(
        c.PutUser,
        name=ids,
        role=st.sampled_from(UserRole),
        password_hash=text,
        at=ms,
        quota=quotas,
        seed=st.booleans(),
    ),
    c.UpdateUser: st.builds(
        c.UpdateUser,
        name=ids,
        at=ms,
        role=maybe() | st.sampled_from(UserRole),
        password_hash=maybe() | text,
        disabled=maybe() | st.booleans(),
        quota=maybe() | quotas,
    ),
    c.DeleteUser: st.builds(c.DeleteUser, name=ids, at=ms),
    c.AdmitNode: st.builds(
        c.AdmitNode,
        node=ids,
        public_key=text,
        at=ms,
        by=maybe() | text,
        token_id=maybe() | ids,
        token_sha256=maybe() | text,
    ),
    c.RevokeNode: st.builds(c.RevokeNode, node=ids, at=ms),
    c.PutJoinToken: st.builds(
        c.PutJoinToken,
        token_id=ids,
        sha256=text,
        at=ms,
        expires_at=ms,
        by=text,
        node=maybe() | ids,
    ),
}


def test_every_command_has_a_tag_and_a_strategy():
    assert set(codec.TAGS) == set(STRATEGIES)
    assert len(set(codec.TAGS.values())) == len(codec.TAGS)


@settings(max_examples=60, deadline=None)
@given(st.one_of(*STRATEGIES.values()))
def test_every_command_round_trips(cmd):
    data = codec.encode(cmd)
    assert codec.decode(data) == cmd
    assert codec.encode(codec.decode(data)) == data  # one form, byte for byte


def test_defaults_are_left_out_of_the_entry():
    cmd = c.Claim("n1", 2, 1_700_000_000_000)
    assert msgpack.unpackb(codec.encode(cmd)) == [
        1,
        "claim",
        {"node": "n1", "slots": 2, "at": 1_700_000_000_000},
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", "not msgpack"),
        (b"\x93\x01\xa1x\x81\x90\x00", "not msgpack"),  # a map keyed by a list (unhashable)
        (msgpack.packb([0, "claim", {}]), "command of format 0"),
        (
            msgpack.packb([1, "drain", {"node": "n1", "at": 1, "by": "admin"}]),
            "'drain' is a command of format 2, marked 1",
        ),
        (msgpack.packb([1, "drop_tables", {}]), "unknown command 'drop_tables'"),
        (msgpack.packb([1, "claim", {"node": "n1", "at": 1}]), "missing field 'slots'"),
        (
            msgpack.packb([1, "claim", {"node": "n1", "slots": 1, "at": 1, "evil": 1}]),
            "unknown field 'evil'",
        ),
        (msgpack.packb([1, "claim", {"node": 7, "slots": 1, "at": 1}]), "expected str"),
        (msgpack.packb([1, "claim", {"node": "n", "slots": True, "at": 1}]), "expected an integer"),
        (
            msgpack.packb([1, "claim", {"node": "n", "slots": 1, "at": 1, "types": ["x"]}]),
            "unknown TaskType",
        ),
        (
            msgpack.packb(
                [
                    1,
                    "submit",
                    {
                        "task_id": "t",
                        "type": "qa",
                        "input": {},
                        "owner": "",
                        "at": 1,
                        "params": {"top_k": 10**6},
                    },
                ]
            ),
            "params.top_k must be",
        ),
        (msgpack.packb({"op": "drop_tables"}), "unknown command"),
        (msgpack.packb({"op": "claim"}), "malformed claim"),
        (msgpack.packb("hello"), "not a [version, tag, fields]"),
    ],
)
def test_anything_else_is_a_codec_error_that_says_why(data, reason):
    with pytest.raises(codec.CodecError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        codec.decode(data)


def test_entries_of_the_previous_release_still_read():
    # Deliberately legacy: {"op": ...} maps are what the previous release logged.
    legacy = {
        "op": "submit",
        "id": "t1",
        "type": "qa",
        "owner": "alice",
        "at": 5,
        "priority": 7,
        "input": {"query": "why?"},
        "params": {"top_k": 3, "unknown": 1, "temperature": 99},
    }
    cmd = codec.decode(msgpack.packb(legacy))
    assert cmd == c.Submit("t1", TaskType.QA, {"query": "why?"}, TaskParams(top_k=3), "alice", 5, 7)
    chunks = {
        "op": "kb.put_chunks",
        "doc_id": "d",
        "version": 1,
        "batch_no": 0,
        "chunks": [{"ordinal": 0, "page": 2, "text": "x"}],
        "vectors": b"\0" * 4,
    }
    assert codec.decode(msgpack.packb(chunks, use_bin_type=True)).chunks == (c.Chunk(0, 2, "x"),)
    for op in (
        "claim",
        "complete",
        "fail",
        "cancel",
        "abort",
        "expire",
        "node",
        "requeue_node",
        "kb.upload",
        "kb.finish_ingest",
        "kb.fail_ingest",
        "kb.delete",
        "kb.set_enabled",
        "auth.init",
        "auth.put_key",
        "auth.delete_key",
        "progress",
        "release",
    ):
        assert op in codec._LEGACY


def test_a_refusal_survives_the_session_tables_wire_form():
    refusal = Refusal(RefusalCode.CONFLICT, "t1 is running", {"state": "running"})
    wire = codec.outcome_to_wire(refusal)
    assert codec.outcome_from_wire(msgpack.unpackb(msgpack.packb(wire))) == refusal
    result = {"id": "t1", "state": "queued"}
    assert codec.outcome_from_wire(codec.outcome_to_wire(result)) is result


def test_commands_are_frozen_values():
    cmd = c.Expire(5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.before = 6  # type: ignore[misc]
    assert c.Expire(5) == cmd and hash(c.Expire(5)) == hash(cmd)


# ---------------------------------------------------------------------- garbage
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    sorted({f.name for cls in codec.TAGS for f in dataclasses.fields(cls)} | {"op", "id"})
)
# Well-formed envelopes around wrong fields: a known tag, fields of the right names
# with values of any type (most are wrong), or an {"op": ...} map of the previous
# release with the same.
envelopes = st.one_of(
    st.tuples(
        st.just(codec.CODEC_VERSION),
        st.sampled_from(sorted(codec.TAGS.values())),
        st.dictionaries(field_names, wire_values, max_size=8),
    ).map(list),
    st.builds(
        lambda op, rest: {**rest, "op": op},
        st.sampled_from(sorted(codec._LEGACY)),
        st.dictionaries(field_names, wire_values, max_size=8),
    ),
    wire_values,
)


def _decodes_or_codec_error(data: bytes) -> None:
    """A command, or CodecError; or NewerFormat for a [version, ...] list whose version
    is beyond this release (what the next release may write: stop, do not skip)."""
    from consensus.fsm import NewerFormat

    try:
        cmd = codec.decode(data)
    except codec.CodecError:
        return
    except NewerFormat:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        assert isinstance(raw, list) and len(raw) == 3 and raw[0] > codec.CODEC_VERSION
        return
    assert type(cmd) in codec.TAGS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_bytes_are_a_codec_error(data):
    _decodes_or_codec_error(data)


@settings(max_examples=500, deadline=None)
@given(envelopes)
def test_wrong_field_types_are_a_codec_error(value):
    _decodes_or_codec_error(msgpack.packb(value, use_bin_type=True))


def _wrong_values(hint: Any) -> list[Any]:
    """Wire values that are not of type `hint` (None is right for an optional)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        return [v for v in _wrong_values(inner) if v is not None]
    if hint is bool:
        return [1, "true", None]
    if hint is int:
        return ["7", 2.5, True, None]
    if hint is float:
        return ["x", True, None, float("nan")]
    if hint is str:
        return [7, b"x", None, ["x"]]
    if hint is bytes:
        return ["x", 7, None]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return ["no-such-value", 1, None]
    if hint is TaskParams:
        return [[1], "x", {"top_k": "3"}, {"no_such_param": 1}]
    if origin is dict:
        return [[1], "x", {1: "integer key"}, None]
    if origin is tuple:
        return ["x", {"a": 1}, [object_marker], None]
    if dataclasses.is_dataclass(hint):
        optional = all(f.default is not dataclasses.MISSING for f in dataclasses.fields(hint))
        return ["x", [1], None] if optional else ["x", [1], {}, None]  # {}: all defaults
    raise AssertionError(f"no wrong values for {hint!r}")


object_marker = {"not": "an item"}  # a map where list items of a scalar type belong


@settings(max_examples=300, deadline=None)
@given(st.one_of(*STRATEGIES.values()), st.data())
def test_a_wrongly_typed_field_is_a_codec_error(cmd, data):
    """Take a good entry and give one field a value of another type: refused."""
    version, tag, fields = msgpack.unpackb(codec.encode(cmd))
    hints = typing.get_type_hints(type(cmd))
    name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(cmd)]))
    if hints[name] == dict[str, Any]:
        return  # free-form maps (input, result) hold anything with string keys
    bad = data.draw(st.sampled_from(_wrong_values(hints[name])))
    if bad == [object_marker] and typing.get_args(hints[name])[0] is c.Chunk:
        bad = ["not a chunk"]
    fields[name] = bad
    with pytest.raises(codec.CodecError):
        codec.decode(msgpack.packb([version, tag, fields], use_bin_type=True))


def _busy_state() -> NodeState:
    """A node state with a task running, a document and an account."""
    state = NodeState(TaskQueue(), KnowledgeBase(dim=4))
    entries = [
        c.Submit("t1", TaskType.NOOP, {}, TaskParams(), "ann", 1),
        c.Submit("t2", TaskType.QA, {"query": "q"}, TaskParams(top_k=3), "ann", 2),
        c.Claim("n1", 1, 3),
        c.Upload(
            c.DocumentUpload("d1", "Doc", "d1.txt", "text/plain", ("x",), b"hello"), "T9", "ann", 4
        ),
        c.InitAccounts("hash", 5, users=(c.PutUser("ann", UserRole.USER, "scrypt$x", 5),)),
        c.PutKey("k1", "ann", "sha", 6),
    ]
    for index, cmd in enumerate(entries, start=1):
        outcome = codec.outcome_from_wire(state.apply(index, codec.encode(cmd)))
        assert not isinstance(outcome, Refusal), (cmd, outcome)
    return state


GARBAGE = [
    b"",
    b"\xc1",
    b"\x93\x01",  # truncated
    b"\x93\x01\xa1x\x81\x90\x00",  # a map keyed by a list: Python cannot hash the key
    msgpack.packb("hello"),
    msgpack.packb([codec.CODEC_VERSION, "drop_tables", {}]),
    msgpack.packb([codec.CODEC_VERSION, 7, {}]),
    msgpack.packb([codec.CODEC_VERSION, "claim", {"node": "n1", "slots": "all", "at": 1}]),
    msgpack.packb([codec.CODEC_VERSION, "expire", {"before": 2.5}]),
    msgpack.packb([codec.CODEC_VERSION, "kb.delete", {"doc_id": "d1"}]),
    msgpack.packb([codec.CODEC_VERSION, "cancel", {"task_id": "t2", "at": 9, "by": None}]),
    msgpack.packb([codec.CODEC_VERSION, "auth.delete_key", ["k1", 9]]),
    msgpack.packb({"op": "drop_tables"}),  # legacy: an unknown op
    msgpack.packb({"op": "cancel", "at": 9}),  # legacy: no task id
    msgpack.packb({"op": "expire", "before": "yesterday"}),  # legacy: not a time
]


@pytest.mark.parametrize("entry", GARBAGE, ids=range(len(GARBAGE)))
def test_node_state_refuses_what_is_not_a_command_and_changes_nothing(entry):
    state = _busy_state()
    before = state.snapshot()
    heard = []
    state.listen(lambda cmd, outcome: heard.append((cmd, outcome)))
    with pytest.raises(codec.CodecError):
        codec.decode(entry)
    outcome = codec.outcome_from_wire(state.apply(7, entry))
    assert isinstance(outcome, Refusal) and outcome.code is RefusalCode.BAD_COMMAND
    assert outcome.message.startswith("not a command")
    assert state.refused_entries == 1 and state.applied_index == 7
    assert heard == []  # nothing was applied, so nobody is told
    # Everything but the applied index is as it was.
    state.applied_index = 6
    assert state.snapshot() == before
    # and the log goes on
    done = state.apply(8, codec.encode(c.Complete("t1", 1, "n1", 9, {"ok": True})))
    assert done["state"] == "completed"


def test_an_entry_of_a_newer_format_stops_the_node_instead_of_being_skipped():
    """A release that reads format N meets an entry of N + 1 (a node of the next release
    wrote it): skipping it, as garbage is skipped, would make this replica differ from
    those that apply it, so it raises NewerFormat (the driver stops the node there) and
    changes nothing."""
    from consensus.fsm import NewerFormat

    state = _busy_state()
    before = state.snapshot()
    newer = msgpack.packb([codec.CODEC_VERSION + 1, "claim", {"node": "n1", "slots": 1, "at": 1}])
    with pytest.raises(NewerFormat, match=f"reads formats up to {codec.CODEC_VERSION}: upgrade"):
        codec.decode(newer)
    with pytest.raises(NewerFormat):
        state.apply(7, newer)
    assert state.refused_entries == 0
    state.applied_index = 6
    assert state.snapshot() == before
    # A snapshot of a newer format is refused the same way.
    fields = msgpack.unpackb(before, raw=False)
    fields["format"] = codec.CODEC_VERSION + 1
    with pytest.raises(NewerFormat, match="a snapshot of format"):
        _busy_state().restore(msgpack.packb(fields, use_bin_type=True))


def test_each_entry_is_marked_with_the_oldest_format_that_reads_it():
    assert msgpack.unpackb(codec.encode(c.Claim("n1", 2, 1)))[0] == 1
    assert msgpack.unpackb(codec.encode(c.DrainNode("n1", 1, "admin")))[0] == 2
    from node.replica.vocabulary import GroundingMode

    plain = c.Submit("t1", TaskType.QA, {"query": "q"}, TaskParams(top_k=2), "ann", 1)
    strict = c.Submit(
        "t1", TaskType.QA, {"query": "q"}, TaskParams(grounding=GroundingMode.STRICT), "ann", 1
    )
    assert msgpack.unpackb(codec.encode(plain))[0] == 1
    assert msgpack.unpackb(codec.encode(strict))[0] == 3  # a format-2 release refuses it
    assert codec.decode(codec.encode(strict)) == strict
    assert codec.CODEC_VERSION >= max(codec.INTRODUCED_IN.values())
    state = _busy_state()
    assert msgpack.unpackb(state.snapshot(), raw=False)["format"] == 1
    state.apply(7, codec.encode(c.DrainNode("n1", 8, "admin")))
    assert msgpack.unpackb(state.snapshot(), raw=False)["format"] == 2  # a draining node


def test_the_cluster_writes_a_new_format_only_once_every_voter_reads_it():
    from node.replica.formats import announced_formats, cluster_format

    newest = codec.CODEC_VERSION
    view = cluster_format(["n1", "n2", "n3"], {"n1": newest, "n2": newest, "n3": newest})
    assert view.in_use == newest and view.behind(newest) == []
    # n3 still runs the previous release; n2 has not been heard from: the first format
    view = cluster_format(["n1", "n2", "n3"], {"n1": newest, "n3": newest - 1})
    assert view.in_use == 1 and view.behind(newest) == ["n2", "n3"]
    # a node of a later release than this one: this one's newest is the limit
    assert cluster_format(["n1"], {"n1": newest + 5}).in_use == newest
    table = {
        "n1": {"meta": {"format": 2}},
        "n2": {"meta": {}},
        "n3": {"meta": {"format": True}},
        "n4": {},
    }
    assert announced_formats(table) == {"n1": 2, "n2": None, "n3": None, "n4": None}


def test_the_replica_refuses_a_command_of_a_format_a_voter_does_not_read():
    """During a rolling upgrade (n3 still announces format 1) a drain — a format-2
    command — is refused before it reaches the log, with who is behind; commands of
    the first format go on; once n3 announces 2, the drain is proposed."""
    import asyncio
    from types import SimpleNamespace

    from node.replica.refusal import Refused
    from node.replica.replica import Replica

    class Raft:
        id = "n1"

        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def status(self) -> dict[str, Any]:
            return {"voters": ["n1", "n2", "n3"]}

        async def propose(self, data: bytes, timeout: float | None = None) -> Any:
            self.sent.append(data)
            return SimpleNamespace(index=len(self.sent), result={"ok": True})

    raft = Raft()
    replica = Replica(raft, NodeState(TaskQueue()))  # type: ignore[arg-type]
    newest = codec.CODEC_VERSION
    replica.announced_formats = lambda: {"n1": newest, "n2": newest, "n3": 1}
    drain = c.DrainNode("n2", 1, "admin")
    with pytest.raises(Refused) as refused:
        asyncio.run(replica.propose(drain))
    assert refused.value.refusal.code is RefusalCode.CONFLICT
    assert refused.value.refusal.details["behind"] == ["n3"]
    assert "finish the rolling upgrade" in refused.value.refusal.message
    assert raft.sent == []
    asyncio.run(replica.propose(c.Claim("n1", 1, 2)))
    assert len(raft.sent) == 1
    replica.announced_formats = lambda: {"n1": newest, "n2": newest, "n3": newest}
    asyncio.run(replica.propose(drain))
    assert msgpack.unpackb(raft.sent[-1])[0] == 2
