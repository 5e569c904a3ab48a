"""Exactly-once application of proposals: client sessions (Raft dissertation, 6.3).

Every proposal travels as an envelope naming its *request*: the client session
it belongs to, its sequence number in that session, the lowest sequence number
the client still waits for (`ack_below`), and the proposer's clock.  A proposer
that times out, or re-proposes to a new leader, sends the same envelope again,
so the log may hold it twice; `SessionTable.apply` runs the state machine for
the first copy and answers later copies with the remembered index and result.

What the table remembers is bounded by what clients still wait for, not by a
count of log indices or by time:

- a session keeps the results of its requests from `ack_below` on; a client
  raises `ack_below` as answers arrive (or as it gives up on a request), and
  everything below it is forgotten.  A copy of a forgotten request is *stale*:
  it is not applied again, whatever its age;
- a session that has been idle for `ttl_ms` (measured with the proposers'
  clocks carried in the envelopes, so every replica expires the same sessions
  at the same entry) is dropped whole.  A request of an unknown session that
  started before that horizon is refused as *expired*: it cannot be told apart
  from a copy of a dropped one.  A proposer therefore starts a new session
  before its own is half a ttl idle (consensus/driver.py does).

The table is replicated state: it changes only through `apply`, and it is part
of every snapshot.  The ttl must be the same on every node (it is a constant of
the code, not configuration).  Results must be msgpack-serialisable.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack

from consensus.fsm import NewerFormat, StateMachine

ENVELOPE_VERSION = 1
SESSION_TTL_MS = 3_600_000  # an idle session is forgotten after an hour


@dataclass(frozen=True, slots=True)
class Request:
    """Which request an envelope carries.  `started_ms` is when the session's
    first request was made (the proposer's clock); `ack_below` promises that
    the client waits for no request of the session below that number."""

    session: str
    started_ms: int
    seq: int
    ack_below: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.session, self.seq)


class Stale:
    """The result of a copy that is not applied.  Never stored, never replicated:
    every replica decides the same way from the same log."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Stale({self.reason!r})"


STALE = Stale("stale: the request was already answered or given up by its client")
EXPIRED = Stale("expired: the request's session is older than the session ttl")


# One Packer for every envelope (msgpack.packb builds a new Packer per call,
# which is most of its cost for a small envelope).  Packing runs in C under the
# GIL, so sharing it between threads is safe.
_pack = msgpack.Packer(use_bin_type=True).pack


def pack_envelope(request: Request, at_ms: int, command: bytes) -> bytes:
    return _pack(
        [
            ENVELOPE_VERSION,
            request.session,
            request.started_ms,
            request.seq,
            request.ack_below,
            at_ms,
            command,
        ]
    )


def unpack_envelope(data: bytes) -> tuple[Request, int, bytes]:
    """(request, at_ms, command) of an envelope (for tools and tests)."""
    _, session, started, seq, ack, at, command = _unpack(data)
    return Request(session, started, seq, ack), at, command


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


class _Session:
    __slots__ = ("ack_below", "last_ms", "results", "started_ms")

    def __init__(self, started_ms: int, last_ms: int) -> None:
        self.started_ms = started_ms
        self.last_ms = last_ms
        self.ack_below = 0
        self.results: dict[int, tuple[int, Any]] = {}  # seq -> (index, result)


class SessionTable:
    def __init__(self, machine: StateMachine, ttl_ms: int = SESSION_TTL_MS) -> None:
        self.machine = machine
        self.ttl_ms = ttl_ms
        self.now_ms = 0  # the latest proposer clock applied: never goes back
        # least recently active first, so expiry pops from the front
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self.duplicates = 0
        self.stale = 0

    def apply(self, index: int, data: bytes) -> tuple[tuple[str, int], int, Any]:
        """Apply one committed envelope; returns (request key, index, result).  A
        copy of a request applied before gets the index and result of its first
        copy; a copy that must not apply gets (index, a Stale).  ValueError for
        data that is not an envelope (the caller decides what that means)."""
        try:
            fields = _unpack(data)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ValueError(f"not a msgpack envelope: {exc}") from None
        newer = type(fields) is list and fields and type(fields[0]) is int
        if newer and fields[0] > ENVELOPE_VERSION:
            raise NewerFormat(
                f"log entry {index} is a version-{fields[0]} envelope; this node reads up "
                f"to version {ENVELOPE_VERSION}: upgrade it"
            )
        if type(fields) is not list or len(fields) != 7 or fields[0] != ENVELOPE_VERSION:
            if type(fields) is list and len(fields) == 2 and type(fields[0]) is str:
                return self._apply_legacy(index, fields[0], fields[1])
            raise ValueError("not a version-1 envelope")
        _, sid, started, seq, ack, at, command = fields
        if not (
            type(sid) is str
            and type(started) is int
            and type(seq) is int
            and type(ack) is int
            and type(at) is int
            and type(command) is bytes
        ):
            raise ValueError("malformed envelope fields")
        key = (sid, seq)
        now = self.now_ms
        if at > now:
            self.now_ms = now = at
        sessions = self._sessions
        horizon = now - self.ttl_ms
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.last_ms >= horizon:
                break
            sessions.popitem(last=False)
        session = sessions.get(sid)
        # A session is active until at least its own start: a client clock ahead of
        # the proposers' must not let a session expire "before" it started, or a
        # late copy of its request would pass for a new session (seen in tests/sim).
        if session is None:
            if started < horizon:
                self.stale += 1
                return key, index, EXPIRED
            session = sessions[sid] = _Session(started, max(now, started))
        else:
            session.last_ms = max(now, session.started_ms)
            sessions.move_to_end(sid)
        results = session.results
        if ack > session.ack_below:
            session.ack_below = ack
            if results:
                for old in [s for s in results if s < ack]:
                    del results[old]
        if seq < session.ack_below:
            self.stale += 1
            return key, index, STALE
        known = results.get(seq)
        if known is not None:
            self.duplicates += 1
            return key, known[0], known[1]
        result = self.machine.apply(index, command)
        results[seq] = (index, result)
        return key, index, result

    def _apply_legacy(
        self, index: int, request_id: str, command: Any
    ) -> tuple[tuple[str, int], int, Any]:
        """[request_id, command]: an entry written before sessions (a log that was
        started by an older ragraft).  Applied as it was then; nobody waits for it now."""
        if type(command) is not bytes:
            raise ValueError("malformed legacy envelope")
        return ("legacy:" + request_id, 0), index, self.machine.apply(index, command)

    def __len__(self) -> int:
        return len(self._sessions)

    def remembered(self) -> int:
        """Results held for clients that may still ask (for status and tests)."""
        return sum(len(s.results) for s in self._sessions.values())

    def snapshot(self) -> bytes:
        rows = [
            [
                sid,
                s.started_ms,
                s.last_ms,
                s.ack_below,
                [[seq, index, result] for seq, (index, result) in s.results.items()],
            ]
            for sid, s in self._sessions.items()
        ]
        return msgpack.packb(
            [ENVELOPE_VERSION, self.now_ms, rows, self.machine.snapshot()], use_bin_type=True
        )

    def restore(self, data: bytes) -> None:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if len(fields) == 3:  # [window, rows, machine]: before sessions; nobody waits now
            self.now_ms, self._sessions = 0, OrderedDict()
            self.machine.restore(fields[2])
            return
        version, now_ms, rows, machine_state = fields
        if type(version) is int and version > ENVELOPE_VERSION:
            raise NewerFormat(
                f"a snapshot of session table version {version}; this node reads up to "
                f"version {ENVELOPE_VERSION}: upgrade it"
            )
        if version != ENVELOPE_VERSION:
            raise ValueError(f"snapshot of session table version {version}, expected 1")
        self.now_ms = now_ms
        self._sessions = OrderedDict()
        for sid, started, last, ack, results in rows:
            session = _Session(started, last)
            session.ack_below = ack
            session.results = {seq: (index, result) for seq, index, result in results}
            self._sessions[sid] = session
        self.machine.restore(machine_state)
