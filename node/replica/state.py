"""The node's replicated state: one log, several deterministic sub-machines.

`NodeState` is the consensus.fsm.StateMachine of a node.  It decodes each entry
with the one codec, dispatches the command on its type to the task queue, the
knowledge base or the accounts, and tells its listeners (the executor, the event
stream, the metrics) what was applied and how it came out.  Nothing in the log can
stop it: an entry that does not decode, or whose application raises, is refused
the same way on every replica (counted, logged), and the log goes on.

Two rules join the machines, both inside one entry, so no replica sees half:
- an Upload records the file (its raw bytes) AND queues the ingest task that will
  index it, so an accepted upload always has a task and vice versa; an Upload
  whose idempotency key is already known for its owner stores nothing and
  answers what the first copy created;
- when an ingest task ends failed or cancelled, its document version is marked
  failed (the previous version, if any, keeps serving) and the raw bytes dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from consensus.fsm import NewerFormat
from node.replica import codec
from node.replica import commands as c
from node.replica.accounts import Accounts
from node.replica.peers import PeerKeys
from node.replica.policy import Policy
from node.replica.refusal import Refusal, RefusalCode, refuse
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskState, TaskType

log = logging.getLogger("ragraft.state")

# listener(command, outcome): outcome is the result, or the Refusal
Listener = Callable[[c.Command, Any], None]

_TASK_COMMANDS = (
    c.Submit,
    c.Claim,
    c.Progress,
    c.Complete,
    c.Fail,
    c.Release,
    c.Cancel,
    c.Abort,
    c.Expire,
    c.NodeStatus,
    c.RequeueNode,
    c.DrainNode,
)
_KB_COMMANDS = (c.PutChunks, c.FinishIngest, c.FailIngest, c.DeleteDocument, c.SetEnabled)
_ACCOUNT_COMMANDS = (
    c.InitAccounts,
    c.PutKey,
    c.DeleteKey,
    c.PutUser,
    c.UpdateUser,
    c.DeleteUser,
)
_PEER_COMMANDS = (c.AdmitNode, c.RevokeNode, c.PutJoinToken)
# Task commands after which an ingest task may have ended failed or cancelled.
_MAY_END_INGEST = (c.Cancel, c.Fail, c.Abort, c.Release)


class KnowledgeMachine(Protocol):
    """What NodeState needs of the knowledge base (node/rag/knowledge.py)."""

    def apply(self, cmd: c.KnowledgeCommand) -> dict[str, Any]: ...
    def put_upload(self, doc: c.DocumentUpload, at: int) -> dict[str, Any]: ...
    def get(self, doc_id: str) -> dict[str, Any] | None: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class NodeState:
    def __init__(
        self,
        tasks: TaskQueue,
        kb: KnowledgeMachine | None = None,
        accounts: Accounts | None = None,
    ) -> None:
        self.tasks = tasks
        self.kb = kb
        self.accounts = accounts or Accounts()
        self.peers = PeerKeys()
        self.policy = Policy(self.accounts, tasks)
        tasks.running_limit = self.policy.running_limit
        self.applied_index = 0
        self.refused_entries = 0  # entries that were not commands, or whose apply raised
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------ StateMachine
    def apply(self, index: int, command: bytes) -> Any:
        """Apply one entry; returns its outcome in the codec's wire form (what the
        session table keeps), a refusal included."""
        self.applied_index = index
        try:
            cmd = codec.decode(command)
        except codec.CodecError as exc:
            self.refused_entries += 1
            log.error("log entry %d is not a command (%s): refused, nothing changed", index, exc)
            return codec.outcome_to_wire(refuse(RefusalCode.BAD_COMMAND, f"not a command: {exc}"))
        outcome = self.execute(cmd, index)
        for listener in self._listeners:
            try:
                listener(cmd, outcome)
            except Exception:
                log.exception("a listener failed on entry %d", index)
        return codec.outcome_to_wire(outcome)

    def execute(self, cmd: c.Command, index: int = 0) -> Any:
        """Apply a decoded command: its result, or the Refusal."""
        try:
            return self._dispatch(cmd)
        except Refusal as refusal:
            return refusal
        except Exception as exc:
            self.refused_entries += 1
            log.exception("applying entry %d (%s) failed", index, codec.tag_of(cmd))
            return refuse(RefusalCode.INTERNAL, f"applying the command failed: {exc!r}")

    def _dispatch(self, cmd: c.Command) -> Any:
        if isinstance(cmd, c.Submit):
            if cmd.idem_key is None or self._replay(cmd) is None:
                self.policy.submit(cmd)
        elif isinstance(cmd, (c.Cancel, c.Abort)):
            cmd = self.policy.scoped(cmd)
        elif isinstance(cmd, (c.DeleteDocument, c.SetEnabled)):
            self.policy.kb_change(cmd.by)
        elif isinstance(cmd, c.DrainNode):
            self.policy.admin_only(cmd.by, "drain a node")
        if isinstance(cmd, _TASK_COMMANDS):
            result = self.tasks.apply(cmd)
            if self.kb is not None and isinstance(cmd, _MAY_END_INGEST):
                self._close_failed_ingest(cmd.task_id, cmd.at)
            return result
        if isinstance(cmd, c.Upload):
            return self._upload(cmd)
        if isinstance(cmd, _KB_COMMANDS):
            if self.kb is None:
                raise refuse(RefusalCode.BAD_COMMAND, "this node has no knowledge base")
            return self.kb.apply(cmd)
        if isinstance(cmd, _ACCOUNT_COMMANDS):
            return self.accounts.apply(cmd)
        if isinstance(cmd, _PEER_COMMANDS):
            if isinstance(cmd, c.AdmitNode) and cmd.by is not None:
                self.policy.admin_only(cmd.by, "admit a node")
            if isinstance(cmd, c.PutJoinToken):
                self.policy.admin_only(cmd.by, "make a join token")
            return self.peers.apply(cmd)
        raise refuse(RefusalCode.BAD_COMMAND, f"{type(cmd).__name__} is not a command")

    def _upload(self, cmd: c.Upload) -> dict[str, Any]:
        if self.kb is None:
            raise refuse(RefusalCode.BAD_COMMAND, "this node has no knowledge base")
        if cmd.idem_key is not None:
            replayed = self.tasks.replay(cmd.owner, cmd.idem_key, cmd.fingerprint or "", cmd.at)
            if replayed is not None:
                return {"document": self._uploaded(replayed), "task": replayed}
        self.policy.upload(cmd)
        if not cmd.may_replace and self.kb.get(cmd.doc.doc_id) is not None:
            raise refuse(
                RefusalCode.FORBIDDEN,
                f"only an editor or admin can replace a document ({cmd.doc.doc_id} exists); "
                "upload without an id",
            )
        document = self.kb.put_upload(cmd.doc, cmd.at)
        submit = c.Submit(
            task_id=cmd.task_id,
            type=TaskType.INGEST,
            input={
                "doc_id": document["doc_id"],
                "version": document["version"],
                "filename": cmd.doc.source or document["doc_id"],
                "media_type": cmd.doc.media_type,
            },
            params=TaskParams(),
            owner=cmd.owner,
            at=cmd.at,
            priority=cmd.priority,
            idem_key=cmd.idem_key,
            fingerprint=cmd.fingerprint,
        )
        try:
            task = self.tasks.apply(submit)
        except Refusal as refusal:
            self.kb.apply(
                c.FailIngest(
                    document["doc_id"],
                    document["version"],
                    f"its ingest task was refused: {refusal.message}",
                    cmd.at,
                )
            )
            raise
        return {"document": document, "task": task}

    def _replay(self, cmd: c.Submit) -> dict[str, Any] | None:
        # A retried submission answers as its first copy did, whatever the quota now.
        assert cmd.idem_key is not None
        return self.tasks.replay(cmd.owner, cmd.idem_key, cmd.fingerprint or "", cmd.at)

    def _uploaded(self, replayed: dict[str, Any]) -> dict[str, Any] | None:
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

    def _close_failed_ingest(self, task_id: str, at: int) -> None:
        assert self.kb is not None
        task = self.tasks.get(task_id)
        if task is None or task.type != TaskType.INGEST:
            return
        if task.state not in (TaskState.FAILED, TaskState.CANCELLED):
            return
        reason = task.error or str(task.state)
        # A no-op refusal (conflict) when the version is no longer pending.
        try:
            self.kb.apply(
                c.FailIngest(
                    task.input.get("doc_id", ""),
                    task.input.get("version", 0),
                    f"ingest {task.state}: {reason}",
                    at,
                )
            )
        except Refusal:
            pass

    # ------------------------------------------------------------ snapshots
    def snapshot_format(self) -> int:
        """The oldest format that reads this state right: 2 once a node is draining (a
        release of format 1 would grant it tasks), else 1."""
        return 2 if any("draining" in info for info in self.tasks.nodes.values()) else 1

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {
                "format": self.snapshot_format(),
                "applied": self.applied_index,
                "tasks": self.tasks.snapshot(),
                "kb": self.kb.snapshot() if self.kb is not None else None,
                "accounts": self.accounts.snapshot(),
                "peers": self.peers.snapshot(),
            },
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        version = state.get("format", 1)  # snapshots before formats: 1
        if version > codec.CODEC_VERSION:
            raise NewerFormat(
                f"a snapshot of format {version}; this node's ragraft reads formats up to "
                f"{codec.CODEC_VERSION}: upgrade it to the release the other nodes run"
            )
        self.applied_index = state["applied"]
        self.tasks.restore(state["tasks"])
        if self.kb is not None and state.get("kb") is not None:
            self.kb.restore(state["kb"])
        if state.get("accounts") is not None:
            self.accounts.restore(state["accounts"])
        if state.get("peers") is not None:  # snapshots from before node keys have none
            self.peers.restore(state["peers"])
