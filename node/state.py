"""The node's replicated state: one log, several deterministic sub-machines.

Commands are msgpack maps with an "op"; ops starting with "kb." belong to the
knowledge base, the rest to the task queue.  Listeners (the executor, the
event stream) hear about every applied command on this node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from node.tasks import TaskError, TaskQueue

Listener = Callable[[dict, Any], None]


class SubMachine(Protocol):
    def execute(self, cmd: dict) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class NodeState:
    def __init__(self, tasks: TaskQueue, kb: SubMachine | None = None) -> None:
        self.tasks = tasks
        self.kb = kb
        self.applied_index = 0
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def apply(self, index: int, command: bytes) -> Any:
        self.applied_index = index
        try:
            cmd = msgpack.unpackb(command, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            return TaskError("bad_command", f"undecodable command: {exc}").to_dict()
        op = cmd.get("op") if isinstance(cmd, dict) else None
        if isinstance(op, str) and op.startswith("kb."):
            if self.kb is None:
                result: Any = TaskError("bad_command", "this node has no knowledge base").to_dict()
            else:
                result = self.kb.execute(cmd)
        elif isinstance(cmd, dict):
            result = self.tasks.execute(cmd)
        else:
            result = TaskError("bad_command", "a command is a map with an 'op'").to_dict()
        for listener in self._listeners:
            listener(cmd, result)
        return result

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {"applied": self.applied_index, "tasks": self.tasks.snapshot(),
             "kb": self.kb.snapshot() if self.kb is not None else None},
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        self.applied_index = state["applied"]
        self.tasks.restore(state["tasks"])
        if self.kb is not None and state.get("kb") is not None:
            self.kb.restore(state["kb"])
