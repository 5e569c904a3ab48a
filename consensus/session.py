"""Exactly-once application of proposals (Raft dissertation, section 6.3).

A proposal travels as an envelope [request_id, command].  A proposer that times
out retries with the SAME request id, so the log may hold the command twice;
`SessionTable.apply` runs the state machine the first time and answers later
copies with the remembered result.  The table is replicated state: it changes
only through `apply`, evicts deterministically (oldest first, by count) and is
part of every snapshot.  Results must therefore be msgpack-serializable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgpack

from consensus.fsm import StateMachine


def pack_envelope(request_id: str, command: bytes) -> bytes:
    return msgpack.packb([request_id, command], use_bin_type=True)


def unpack_envelope(data: bytes) -> tuple[str, bytes]:
    request_id, command = msgpack.unpackb(data, raw=False)
    return request_id, command


class SessionTable:
    def __init__(self, machine: StateMachine, capacity: int = 100_000) -> None:
        self.machine = machine
        self.capacity = capacity
        self._results: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self.duplicates = 0

    def apply(self, index: int, data: bytes) -> tuple[str, int, Any]:
        """Apply one committed envelope; returns (request_id, index, result) where
        a duplicate gets the index and result of its first copy."""
        request_id, command = unpack_envelope(data)
        if request_id in self._results:
            self.duplicates += 1
            first_index, result = self._results[request_id]
            return request_id, first_index, result
        result = self.machine.apply(index, command)
        self._results[request_id] = (index, result)
        if len(self._results) > self.capacity:
            self._results.popitem(last=False)
        return request_id, index, result

    def snapshot(self) -> bytes:
        return msgpack.packb(
            [self.capacity, list(self._results.items()), self.machine.snapshot()], use_bin_type=True
        )

    def restore(self, data: bytes) -> None:
        capacity, results, machine_state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        self.capacity = capacity
        self._results = OrderedDict((rid, (index, res)) for rid, (index, res) in results)
        self.machine.restore(machine_state)
