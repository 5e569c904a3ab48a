"""Exactly-once application of proposals (Raft dissertation, section 6.3).

A proposal travels as an envelope [request_id, command].  A proposer that times
out retries with the SAME request id, so the log may hold the command twice;
`SessionTable.apply` runs the state machine the first time and answers later
copies with the remembered index and result.  The table is replicated state: it
changes only through `apply`, forgets a request once `window` more entries have
been applied after it (deterministic: counted in log indices, not time), and is
part of every snapshot.  Results must therefore be msgpack-serializable.

The window bounds the table, and with it the snapshots: under a steady load a
node's data directory levels off once the window is full.  A retry must come
within the window to be recognised; proposers retry within seconds, so the
default covers thousands of commands per second.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgpack

from consensus.fsm import StateMachine

DEFAULT_WINDOW = 20_000


# One Packer for every envelope (msgpack.packb builds a new Packer per call,
# which is most of its cost for a small envelope).  Packing a str and bytes
# runs entirely in C under the GIL, so sharing it between threads is safe.
_pack = msgpack.Packer(use_bin_type=True).pack


def pack_envelope(request_id: str, command: bytes) -> bytes:
    return _pack([request_id, command])


def unpack_envelope(data: bytes) -> tuple[str, bytes]:
    request_id, command = msgpack.unpackb(data, raw=False)
    return request_id, command


class SessionTable:
    def __init__(self, machine: StateMachine, window: int = DEFAULT_WINDOW) -> None:
        self.machine = machine
        self.window = window
        self._results: dict[str, tuple[int, Any]] = {}
        self._order: deque[tuple[int, str]] = deque()  # (index, request id), oldest first
        self.duplicates = 0

    def apply(self, index: int, data: bytes) -> tuple[str, int, Any]:
        """Apply one committed envelope; returns (request_id, index, result) where
        a duplicate gets the index and result of its first copy."""
        request_id, command = unpack_envelope(data)
        results = self._results
        known = results.get(request_id)
        if known is not None:
            self.duplicates += 1
            return request_id, known[0], known[1]
        result = self.machine.apply(index, command)
        results[request_id] = (index, result)
        order = self._order
        order.append((index, request_id))
        horizon = index - self.window
        while order[0][0] <= horizon:
            del results[order.popleft()[1]]
        return request_id, index, result

    def __len__(self) -> int:
        return len(self._results)

    def snapshot(self) -> bytes:
        # _results is in the same order as _order (both oldest first): no lookups.
        rows = [(rid, index, result) for rid, (index, result) in self._results.items()]
        return msgpack.packb([self.window, rows, self.machine.snapshot()], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        window, rows, machine_state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        self.window = window
        self._results = {rid: (index, result) for rid, index, result in rows}
        self._order = deque((index, rid) for rid, index, _ in rows)
        self.machine.restore(machine_state)
