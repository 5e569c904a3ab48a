"""The node's replicated state: one log, several deterministic sub-machines.

Commands are msgpack maps with an "op"; ops starting with "kb." belong to the
knowledge base, "auth." to the accounts, the rest to the task queue.  Listeners (the executor, the
event stream) hear about every applied command on this node.

Two rules join the two machines, both applied inside one log entry so that no
replica can see half of them:
- `kb.upload` records an upload (its raw bytes) AND queues the `ingest` task that
  will index it, so an accepted upload always has a task and vice versa.
- When an `ingest` task ends failed or cancelled, its document version is marked
  failed (the previous version, if any, keeps serving) and the raw bytes dropped.
- A `kb.upload` whose ingest task carries an idempotency key already known for
  its owner stores nothing: it answers with the version and task the first copy
  created (a retried upload makes neither a second version nor a second task).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from node.accounts import Accounts
from node.tasks import CANCELLED, FAILED, TaskError, TaskQueue, refused

log = logging.getLogger("ragraft.state")

Listener = Callable[[dict, Any], None]


class SubMachine(Protocol):
    def execute(self, cmd: dict) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class NodeState:
    def __init__(
        self, tasks: TaskQueue, kb: SubMachine | None = None, accounts: Accounts | None = None
    ) -> None:
        self.tasks = tasks
        self.kb = kb
        self.accounts = accounts or Accounts()
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
        try:
            result = self._execute(cmd)
        except Exception as exc:  # a bug must not stop the log on every replica at once
            log.exception("applying entry %d failed", index)
            result = TaskError("internal", f"applying the command failed: {exc!r}").to_dict()
        if isinstance(cmd, dict):
            for listener in self._listeners:
                try:
                    listener(cmd, result)
                except Exception:
                    log.exception("a listener failed on entry %d", index)
        return result

    def _execute(self, cmd: Any) -> Any:
        op = cmd.get("op") if isinstance(cmd, dict) else None
        if isinstance(op, str) and op.startswith("auth."):
            return self.accounts.execute(cmd)
        if isinstance(op, str) and op.startswith("kb."):
            if self.kb is None:
                result: Any = TaskError("bad_command", "this node has no knowledge base").to_dict()
            elif op == "kb.upload":
                result = self._upload(cmd)
            else:
                result = self.kb.execute(cmd)
        elif isinstance(cmd, dict):
            result = self.tasks.execute(cmd)
            if (
                self.kb is not None
                and op in ("cancel", "fail", "abort", "release")
                and isinstance(cmd.get("id"), str)
            ):
                self._close_failed_ingest(cmd["id"], cmd.get("at", 0))
        else:
            result = TaskError("bad_command", "a command is a map with an 'op'").to_dict()
        return result

    def _upload(self, cmd: dict) -> dict:
        """{"op": "kb.upload", "doc": {doc_id, title, source, media_type, tags, data},
        "task": {id, priority, owner[, idem_key, fingerprint]}, "at": ms}"""
        assert self.kb is not None
        doc, task, at = cmd.get("doc"), cmd.get("task"), cmd.get("at")
        if (
            not isinstance(doc, dict)
            or not isinstance(task, dict)
            or not isinstance(task.get("id"), str)
            or not isinstance(at, int)
        ):
            return TaskError("bad_command", "kb.upload needs doc, task and at").to_dict()
        key, fingerprint = task.get("idem_key"), task.get("fingerprint", "")
        if key is not None:
            if not isinstance(key, str) or not key or not isinstance(fingerprint, str):
                return TaskError(
                    "bad_command", "idem_key must be a non-empty string and fingerprint a string"
                ).to_dict()
            replayed = self.tasks.replay(task.get("owner", ""), key, fingerprint, at)
            if replayed is not None:
                return (
                    replayed
                    if refused(replayed)
                    else {"document": self._uploaded(replayed), "task": replayed}
                )
        document = self.kb.execute({"op": "kb.put_upload", **doc, "at": at})
        if refused(document):
            return document
        submitted = self.tasks.execute(
            {
                "op": "submit",
                "id": task.get("id"),
                "type": "ingest",
                "at": at,
                "priority": task.get("priority", 5),
                "owner": task.get("owner", ""),
                "input": {
                    "doc_id": document["doc_id"],
                    "version": document["version"],
                    "filename": doc.get("source") or document["doc_id"],
                    "media_type": doc.get("media_type"),
                },
                **({"idem_key": key, "fingerprint": fingerprint} if key is not None else {}),
            }
        )
        if refused(submitted):
            self.kb.execute(
                {
                    "op": "kb.fail_ingest",
                    "doc_id": document["doc_id"],
                    "version": document["version"],
                    "error": "its ingest task was refused: " + submitted["error"]["message"],
                    "at": at,
                }
            )
            return submitted
        return {"document": document, "task": submitted}

    def _uploaded(self, replayed: dict) -> dict | None:
        """The document part of a replayed upload's answer: the version its ingest
        task indexes, in that version's state now ("replaced" once a newer version
        exists, "deleted" once the document is gone); None if the task has expired."""
        assert self.kb is not None
        task_input = replayed.get("input")
        if replayed.get("expired") or not isinstance(task_input, dict):
            return None
        doc_id, version = task_input.get("doc_id"), task_input.get("version")
        current = self.kb.get(doc_id) if isinstance(doc_id, str) else None
        if current is None:
            state, size = "deleted", None
        elif current["version"] != version:
            state, size = "replaced", None
        else:
            state, size = current["state"], current["size"]
        return {
            "doc_id": doc_id,
            "version": version,
            "state": state,
            "size": size,
            "superseded_version": None,
            "replayed": True,
        }

    def _close_failed_ingest(self, task_id: str, at: Any) -> None:
        assert self.kb is not None
        task = self.tasks.get(task_id)
        if task is None or task.type != "ingest" or task.state not in (FAILED, CANCELLED):
            return
        reason = task.error or ("cancelled" if task.state == CANCELLED else "failed")
        # A no-op (a conflict answer) when the version is no longer pending.
        self.kb.execute(
            {
                "op": "kb.fail_ingest",
                "doc_id": task.input.get("doc_id"),
                "version": task.input.get("version"),
                "error": f"ingest {task.state}: {reason}",
                "at": at if isinstance(at, (int, float)) else 0,
            }
        )

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {
                "applied": self.applied_index,
                "tasks": self.tasks.snapshot(),
                "kb": self.kb.snapshot() if self.kb is not None else None,
                "accounts": self.accounts.snapshot(),
            },
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        self.applied_index = state["applied"]
        self.tasks.restore(state["tasks"])
        if self.kb is not None and state.get("kb") is not None:
            self.kb.restore(state["kb"])
        if state.get("accounts") is not None:
            self.accounts.restore(state["accounts"])
