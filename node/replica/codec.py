"""The one wire form of commands: versioned, tagged msgpack.

    [format, tag, {field: value, ...}]

`format` is the format that introduced the command (INTRODUCED_IN; 1 for the
first ones), so that an entry says the oldest release that can apply it.  A node
that reads a format newer than CODEC_VERSION raises NewerFormat (it stops instead
of skipping what the others apply: consensus/fsm.py), and the cluster only
proposes a command of a new format once every voter announces in gossip that it
reads it (node/runtime/formats.py; the Replica refuses it before that).

Fields equal to their default are left out (smaller entries, and a field added
later with a default reads old entries).  `decode` checks everything it reads
against the dataclass's field types and raises CodecError for anything else: an
entry that is not a command is refused deterministically by every replica, it
never stops one.  Entries written before this codec (maps with an "op") are
still read: a data directory of the previous release upgrades in place.

Results of commands travel in memory; a refusal among them has one wire form too
(`outcome_to_wire` / `outcome_from_wire`), used where results are kept in the
session table and its snapshots.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any, cast

import msgpack

from consensus.fsm import NewerFormat
from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode
from node.replica.vocabulary import InvalidField, TaskParams, TaskType

# The newest format of log entries and snapshots this release reads and writes.
# Bump it with every new command, or any change an older release would misread.
CODEC_VERSION = 3


class CodecError(ValueError):
    """Bytes that are not a command of this codec (str() says what is wrong)."""


# Tag per command type: part of the wire format, never renamed.
TAGS: dict[type, str] = {
    c.Submit: "submit",
    c.Claim: "claim",
    c.Progress: "progress",
    c.Complete: "complete",
    c.Fail: "fail",
    c.Release: "release",
    c.Cancel: "cancel",
    c.Abort: "abort",
    c.Expire: "expire",
    c.NodeStatus: "node",
    c.RequeueNode: "requeue_node",
    c.Upload: "kb.upload",
    c.PutChunks: "kb.put_chunks",
    c.FinishIngest: "kb.finish_ingest",
    c.FailIngest: "kb.fail_ingest",
    c.DeleteDocument: "kb.delete",
    c.SetEnabled: "kb.set_enabled",
    c.InitAccounts: "auth.init",
    c.PutKey: "auth.put_key",
    c.DeleteKey: "auth.delete_key",
    c.PutUser: "auth.put_user",
    c.UpdateUser: "auth.update_user",
    c.DeleteUser: "auth.delete_user",
    c.AdmitNode: "peer.admit",
    c.RevokeNode: "peer.revoke",
    c.PutJoinToken: "peer.put_join_token",
    c.DrainNode: "drain",
}
_TYPES: dict[str, type] = {tag: cls for cls, tag in TAGS.items()}
# The format each command appeared in, where that is not the first.
INTRODUCED_IN: dict[type, int] = {c.DrainNode: 2}

_Convert = Callable[[Any, str], Any]


# ---------------------------------------------------------------------- field conversion
def _fail(where: str, what: str) -> CodecError:
    return CodecError(f"{where}: {what}")


def _to_wire(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, TaskParams):
        return value.to_wire()
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if dataclasses.is_dataclass(value):
        return _fields_to_wire(value)
    return value


def _fields_to_wire(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        out[f.name] = _to_wire(value)
    return out


def _reader(hint: Any) -> _Convert:
    """A function that checks and converts one wire value of type `hint`."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _reader(options[0])
        return lambda v, where: None if v is None else inner(v, where)
    if hint is Any:
        return lambda v, where: v
    if hint is bool:
        return _exact(bool)
    if hint is int:

        def read_int(v: Any, where: str) -> int:
            if type(v) is not int:
                raise _fail(where, f"expected an integer, got {type(v).__name__}")
            return v

        return read_int
    if hint is float:

        def read_float(v: Any, where: str) -> float:
            if type(v) not in (int, float) or not math.isfinite(v):
                raise _fail(where, "expected a finite number")
            return float(v)

        return read_float
    if hint in (str, bytes):
        return _exact(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):

        def read_enum(v: Any, where: str) -> enum.Enum:
            try:
                return hint(v)
            except ValueError:
                raise _fail(where, f"unknown {hint.__name__} {v!r}") from None

        return read_enum
    if hint is TaskParams:

        def read_params(v: Any, where: str) -> TaskParams:
            if not isinstance(v, dict):
                raise _fail(where, "expected a map of parameters")
            try:
                return TaskParams.from_wire(v)
            except InvalidField as exc:
                raise _fail(where, str(exc)) from None

        return read_params
    if origin is dict:

        def read_map(v: Any, where: str) -> dict[str, Any]:
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                raise _fail(where, "expected a map with string keys")
            return v

        return read_map
    if origin is tuple:
        item = _reader(typing.get_args(hint)[0])

        def read_tuple(v: Any, where: str) -> tuple[Any, ...]:
            if not isinstance(v, list):
                raise _fail(where, "expected a list")
            return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(v))

        return read_tuple
    if dataclasses.is_dataclass(hint):
        read_fields = _dataclass_reader(hint)
        return lambda v, where: read_fields(v, where)
    raise TypeError(f"the codec cannot read {hint!r}")


def _exact(kind: type) -> _Convert:
    def read(v: Any, where: str) -> Any:
        if type(v) is not kind:
            raise _fail(where, f"expected {kind.__name__}, got {type(v).__name__}")
        return v

    return read


def _dataclass_reader(cls: Any) -> Callable[[Any, str], Any]:
    hints = typing.get_type_hints(cls)
    specs = [
        (f.name, _reader(hints[f.name]), f.default is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    ]
    names = {name for name, _, _ in specs}

    def read(v: Any, where: str) -> Any:
        if not isinstance(v, dict):
            raise _fail(where, "expected a map of fields")
        unknown = sorted(k for k in v if k not in names)
        if unknown:
            raise _fail(where, f"unknown field {unknown[0]!r}")
        kwargs = {}
        for name, convert, required in specs:
            if name in v:
                kwargs[name] = convert(v[name], f"{where}.{name}")
            elif required:
                raise _fail(where, f"missing field {name!r}")
        return cls(**kwargs)

    return read


_READERS: dict[type, Callable[[Any, str], c.Command]] = {
    cls: _dataclass_reader(cls) for cls in TAGS
}


# ---------------------------------------------------------------------- commands
_pack = msgpack.Packer(use_bin_type=True).pack


def encode(cmd: c.Command) -> bytes:
    tag = TAGS.get(type(cmd))
    if tag is None:
        raise TypeError(f"{type(cmd).__name__} is not a command")
    return _pack([format_of(cmd), tag, _fields_to_wire(cmd)])


def format_of(cmd: c.Command) -> int:
    """The oldest format that reads `cmd`: what its entry is marked with."""
    if isinstance(cmd, c.Submit) and cmd.params.grounding is not None:
        return 3  # params.grounding: a release of format 2 refuses the parameter
    return INTRODUCED_IN.get(type(cmd), 1)


def decode(data: bytes) -> c.Command:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # (TypeError: a map whose key is a list or a map, which Python cannot hash)
        raise CodecError(f"not msgpack: {exc}") from None
    if isinstance(raw, dict) and "op" in raw:
        return _from_legacy(raw)
    if not isinstance(raw, list) or len(raw) != 3:
        raise CodecError("not a [version, tag, fields] command")
    version, tag, fields = raw
    if type(version) is not int or version < 1:
        raise CodecError(f"command of format {version!r}")
    if version > CODEC_VERSION:
        raise NewerFormat(
            f"a {tag!r} command of format {version}; this node's ragraft reads formats up to "
            f"{CODEC_VERSION}: upgrade it to the release the other nodes run"
        )
    cls = _TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise CodecError(f"unknown command {tag!r}")
    if INTRODUCED_IN.get(cls, 1) > version:
        raise CodecError(f"{tag!r} is a command of format {INTRODUCED_IN[cls]}, marked {version}")
    return _READERS[cls](fields, tag)


def tag_of(cmd: c.Command) -> str:
    return TAGS[type(cmd)]


# ---------------------------------------------------------------------- outcomes
def outcome_to_wire(outcome: Any) -> Any:
    """A command's outcome as the session table keeps it (msgpack values)."""
    if isinstance(outcome, Refusal):
        return {"refused": outcome.to_json()}
    return outcome


def outcome_from_wire(value: Any) -> Any:
    """The outcome back: a Refusal, or the result as it was."""
    if isinstance(value, dict) and isinstance(value.get("refused"), dict) and len(value) == 1:
        r = value["refused"]
        try:
            code = RefusalCode(r.get("code"))
        except ValueError:
            code = RefusalCode.BAD_COMMAND
        return Refusal(code, str(r.get("message", "")), dict(r.get("details") or {}))
    return value


# ------------------------------------------------------ entries of the previous release
def _from_legacy(raw: dict[str, Any]) -> c.Command:
    """A {"op": ...} map as the previous release wrote them.  Only what it wrote is
    read; its unchecked extras (unknown task parameters) are dropped."""
    op = raw.get("op")
    try:
        build = _LEGACY.get(op) if isinstance(op, str) else None
        if build is None:
            raise CodecError(f"unknown command {op!r}")
        return build(raw)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"malformed {op} entry of the previous release: {exc!r}") from None


def _legacy_submit(d: dict[str, Any]) -> c.Submit:
    return c.Submit(
        task_id=d["id"],
        type=TaskType(d["type"]),
        input=dict(d.get("input") or {}),
        params=TaskParams.lenient(d.get("params")),
        owner=d.get("owner", ""),
        at=int(d["at"]),
        priority=int(d.get("priority", 5)),
        max_attempts=d.get("max_attempts"),
        idem_key=d.get("idem_key"),
        fingerprint=d.get("fingerprint"),
    )


def _legacy_upload(d: dict[str, Any]) -> c.Upload:
    doc, task = d["doc"], d["task"]
    return c.Upload(
        doc=c.DocumentUpload(
            doc_id=doc["doc_id"],
            title=doc.get("title", ""),
            source=doc.get("source", ""),
            media_type=doc.get("media_type", ""),
            tags=tuple(doc.get("tags") or ()),
            data=doc["data"],
        ),
        task_id=task["id"],
        owner=task.get("owner", ""),
        at=int(d["at"]),
        priority=int(task.get("priority", 5)),
        idem_key=task.get("idem_key"),
        fingerprint=task.get("fingerprint"),
    )


_LEGACY: dict[str, Callable[[dict[str, Any]], c.Command]] = {
    "submit": _legacy_submit,
    "claim": lambda d: c.Claim(
        d["node"],
        int(d.get("slots", 1)),
        int(d["at"]),
        max=int(d.get("max", 1)),
        types=tuple(TaskType(t) for t in d["types"]) if d.get("types") is not None else None,
        fair_window_ms=int(d.get("fair_window_ms", 2_000)),
    ),
    "progress": lambda d: c.Progress(
        d["id"], d["attempt"], d["node"], float(d.get("progress", 0.0)), str(d.get("note", ""))
    ),
    "complete": lambda d: c.Complete(
        d["id"], d["attempt"], d["node"], int(d["at"]), cast("dict[str, Any]", d.get("result"))
    ),
    "fail": lambda d: c.Fail(
        d["id"],
        d["attempt"],
        d["node"],
        int(d["at"]),
        str(d.get("error", "failed")),
        retryable=bool(d.get("retryable", True)),
        aborted=bool(d.get("aborted", False)),
    ),
    "release": lambda d: c.Release(
        d["id"], d["attempt"], d["node"], int(d["at"]), str(d.get("reason", ""))
    ),
    "cancel": lambda d: c.Cancel(d["id"], int(d["at"]), str(d.get("by", "?")), d.get("owner")),
    "abort": lambda d: c.Abort(d["id"], int(d["at"]), str(d.get("by", "?")), d.get("owner")),
    "expire": lambda d: c.Expire(int(d["before"])),
    "node": lambda d: c.NodeStatus(
        d["node"], int(d["at"]), alive=bool(d.get("alive", True)), slots=d.get("slots")
    ),
    "requeue_node": lambda d: c.RequeueNode(d["node"], int(d["at"]), str(d.get("reason", "died"))),
    "kb.upload": _legacy_upload,
    "kb.put_chunks": lambda d: c.PutChunks(
        d["doc_id"],
        d["version"],
        d["batch_no"],
        tuple(c.Chunk(ch["ordinal"], ch.get("page", 1), ch["text"]) for ch in d["chunks"]),
        d["vectors"],
        d.get("n_batches"),
    ),
    "kb.finish_ingest": lambda d: c.FinishIngest(
        d["doc_id"], d["version"], d["node"], int(d["at"])
    ),
    "kb.fail_ingest": lambda d: c.FailIngest(
        d["doc_id"], d["version"], str(d.get("error", "")), int(d.get("at", 0))
    ),
    "kb.delete": lambda d: c.DeleteDocument(d["doc_id"], int(d.get("at", 0))),
    "kb.set_enabled": lambda d: c.SetEnabled(d["doc_id"], d["enabled"], int(d.get("at", 0))),
    "auth.init": lambda d: c.InitAccounts(
        d["admin_hash"], int(d.get("at", 0)), d.get("token_secret")
    ),
    "auth.put_key": lambda d: c.PutKey(  # (before expiry and scopes: never, everything)
        d["id"], d["user"], d["sha256"], int(d["at"]), str(d.get("label", ""))
    ),
    "auth.delete_key": lambda d: c.DeleteKey(d["id"], int(d.get("at", 0)), d.get("user")),
}
