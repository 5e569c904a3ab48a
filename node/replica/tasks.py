"""The replicated task queue: a deterministic state machine applied on every node.

Commands (node/replica/commands.py) carry their own times (`at`, milliseconds
since the epoch) and ids, chosen by the proposing node: applying reads no clock
and draws no random number.  An answer is a plain dict (the API returns it as
JSON); a command that cannot apply raises a Refusal.

Lifecycle: queued -> running -> completed | failed | cancelled, with retries
(running -> queued, attempt + 1, after a backoff) and requeues of a dead node's
tasks.  Claims are the only way a task starts: a node with a free slot commits
a claim, and applying it grants the highest-priority, oldest eligible task, or
nothing.  Every report from an executor names the attempt it belongs to, so a
late report from a superseded attempt is refused (fencing); an executor that
finds the log granted it an attempt it is not running (its claim committed after
the proposer gave up) hands that attempt back with a fenced Release.

Idempotency: a Submit may carry `idem_key` and `fingerprint` (node/http/idempotency.py).
The queue remembers (owner, idem_key) -> (task id, fingerprint, at) for at least
IDEMPOTENCY_TTL_MS of command time after the original submission, also after the
task itself was expired by retention, and answers a repeat with the existing task
instead of creating one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from node.replica import commands as c
from node.replica.refusal import RefusalCode, refuse
from node.replica.vocabulary import (
    FINISHED,
    IDEMPOTENCY_TTL_MS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TaskParams,
    TaskState,
    TaskType,
)

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.COMPLETED,
    TaskState.FAILED,
    TaskState.CANCELLED,
)


@dataclass(slots=True)
class Task:
    id: str
    type: TaskType
    input: dict[str, Any]
    params: TaskParams
    priority: int
    owner: str
    submitted_at: int
    seq: int  # apply order: breaks ties between equal priorities (older first)
    max_attempts: int
    state: TaskState = QUEUED
    node: str | None = None
    attempt: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    not_before: int = 0  # retry backoff: not claimable before this time
    progress: float = 0.0
    progress_note: str = ""
    result: Any = None
    error: str | None = None
    abort_requested: bool = False
    history: list[Any] = field(default_factory=list[Any])  # [state, node, attempt, at, note]
    # Lower-cased id, query/prompt/filename and owner, for text search in listings;
    # derived from fixed fields, so not part of snapshots.
    search: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        text = (
            self.input.get("query") or self.input.get("prompt") or self.input.get("filename") or ""
            if isinstance(self.input, dict)
            else ""
        )
        self.search = f"{self.id} {text} {self.owner}".lower()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "input": self.input,
            "params": self.params.to_wire(),
            "priority": self.priority,
            "owner": self.owner,
            "submitted_at": self.submitted_at,
            "state": self.state.value,
            "node": self.node,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "not_before": self.not_before,
            "progress": self.progress,
            "progress_note": self.progress_note,
            "result": self.result,
            "error": self.error,
            "abort_requested": self.abort_requested,
            "history": [
                {"state": str(s), "node": n, "attempt": a, "at": t, "note": note}
                for s, n, a, t, note in self.history
            ],
        }

    def _row(self) -> list[Any]:
        return [
            self.id,
            self.type.value,
            self.input,
            self.params.to_wire(),
            self.priority,
            self.owner,
            self.submitted_at,
            self.seq,
            self.max_attempts,
            self.state.value,
            self.node,
            self.attempt,
            self.started_at,
            self.finished_at,
            self.not_before,
            self.progress,
            self.progress_note,
            self.result,
            self.error,
            self.abort_requested,
            [[str(s), n, a, t, note] for s, n, a, t, note in self.history],
        ]

    @classmethod
    def _from_row(cls, row: list[Any]) -> Task:
        task = cls(*row)
        task.type = TaskType(task.type)
        task.state = TaskState(task.state)
        # (TaskParams.lenient: a snapshot of the previous release stored params unchecked)
        task.params = TaskParams.lenient(task.params)
        task.history = [[TaskState(s), n, a, t, note] for s, n, a, t, note in task.history]
        return task


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What an executor needs to run one attempt of a task (from a claim's answer)."""

    id: str
    type: TaskType
    input: dict[str, Any]
    params: TaskParams
    attempt: int
    owner: str = ""
    priority: int = 5

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TaskSpec:
        """From a task record as commands answer it (Task.to_dict())."""
        return cls(
            id=record["id"],
            type=TaskType(record["type"]),
            input=dict(record.get("input") or {}),
            params=TaskParams.from_wire(record.get("params") or {}),
            attempt=int(record["attempt"]),
            owner=record.get("owner", ""),
            priority=int(record.get("priority", 5)),
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_ms: int = 2_000  # first retry waits this long, then doubles
    max_backoff_ms: int = 60_000

    def delay(self, attempt: int) -> int:
        return min(self.max_backoff_ms, self.backoff_ms * (1 << max(0, attempt - 1)))


def _no_limit(owner: str) -> int | None:
    return None


class TaskQueue:
    """The task sub-machine of NodeState (node/replica/state.py)."""

    def __init__(
        self, policy: RetryPolicy = RetryPolicy(), idempotency_ttl_ms: int = IDEMPOTENCY_TTL_MS
    ) -> None:
        self.policy = policy
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.tasks: dict[str, Task] = {}
        self._seq = 0
        # queued tasks by (-priority, seq); entries of tasks that left the queue
        # stay until popped (lazy deletion keeps claims O(log n))
        self._queue: list[tuple[int, int, str]] = []
        self._running: dict[str, set[str]] = {}  # node -> ids
        self._counts = dict.fromkeys(TaskState, 0)
        # owner -> [queued, running]: what quotas are checked against, kept as tasks move.
        self._live: dict[str, list[int]] = {}
        # The most tasks of an owner that may run at once (None: no limit); NodeState
        # sets it to read the replicated users' quotas.
        self.running_limit: Callable[[str], int | None] = _no_limit
        self.nodes: dict[str, dict[str, Any]] = {}  # node -> {"slots", "alive", "since"}
        # (owner, idempotency key) -> (task id, fingerprint, at), in apply order, so
        # the oldest keys are at the front and pruning stops at the first young one.
        self._keys: dict[tuple[str, str], tuple[str, str, int]] = {}
        # The latest command time applied: "now" for pruning keys in commands that
        # carry no time of their own (Expire).  Derived from the log, so deterministic.
        self._clock = 0
        self._handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
            c.Submit: self._submit,
            c.Claim: self._claim,
            c.Progress: self._progress,
            c.Complete: self._complete,
            c.Fail: self._fail,
            c.Release: self._release,
            c.Cancel: self._cancel,
            c.Abort: self._abort,
            c.Expire: self._expire,
            c.NodeStatus: self._node_status,
            c.RequeueNode: self._requeue,
            c.DrainNode: self._drain,
        }

    # ------------------------------------------------------------ applying
    def apply(self, cmd: c.TaskCommand) -> dict[str, Any]:
        """Apply one command; raises Refusal when it cannot."""
        at = getattr(cmd, "at", None)
        if at is not None and at > self._clock:
            self._clock = at
        return self._handlers[type(cmd)](cmd)

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {
                "seq": self._seq,
                "tasks": [t._row() for t in self.tasks.values()],
                "nodes": self.nodes,
                "keys": [[owner, key, *entry] for (owner, key), entry in self._keys.items()],
                "clock": self._clock,
            },
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False)
        limit = self.running_limit
        self.__init__(self.policy, self.idempotency_ttl_ms)  # type: ignore[misc]
        self.running_limit = limit
        self._seq = state["seq"]
        self.nodes = state["nodes"]
        # Snapshots from before idempotency keys have neither field.
        self._keys = {
            (owner, key): (task_id, fp, at) for owner, key, task_id, fp, at in state.get("keys", ())
        }
        self._clock = state.get("clock", 0)
        for row in state["tasks"]:
            task = Task._from_row(row)
            self.tasks[task.id] = task
            self._counts[task.state] += 1
            self._count_live(task.owner, task.state, 1)
            if task.state == QUEUED:
                heapq.heappush(self._queue, (-task.priority, task.seq, task.id))
            elif task.state == RUNNING and task.node is not None:
                self._running.setdefault(task.node, set()).add(task.id)

    # ------------------------------------------------------------ queries
    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def counts(self) -> dict[TaskState, int]:
        return dict(self._counts)

    def live(self, owner: str) -> tuple[int, int]:
        """(queued, running) tasks of an owner."""
        counts = self._live.get(owner)
        return (counts[0], counts[1]) if counts else (0, 0)

    def running_on(self, node: str) -> list[str]:
        return sorted(self._running.get(node, ()))

    def known_key(self, owner: str, key: str) -> str | None:
        """The task id an idempotency key stands for on this replica (read-only:
        the API's permission checks use it; only apply decides replays)."""
        known = self._keys.get((owner, key))
        return known[0] if known is not None else None

    # ------------------------------------------------------------ helpers
    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise refuse(RefusalCode.NOT_FOUND, f"no task {task_id}")
        return task

    def _move(self, task: Task, state: TaskState, at: int, note: str = "") -> None:
        if task.state == RUNNING and task.node is not None:
            self._running.get(task.node, set()).discard(task.id)
        self._counts[task.state] -= 1
        self._count_live(task.owner, task.state, -1)
        task.state = state
        self._counts[state] += 1
        self._count_live(task.owner, state, 1)
        if state == QUEUED:
            heapq.heappush(self._queue, (-task.priority, task.seq, task.id))
        elif state == RUNNING and task.node is not None:
            self._running.setdefault(task.node, set()).add(task.id)
        if state in FINISHED:
            task.finished_at = at
        task.history.append([state, task.node, task.attempt, at, note])

    def _count_live(self, owner: str, state: TaskState, delta: int) -> None:
        if state not in (QUEUED, RUNNING):
            return
        counts = self._live.setdefault(owner, [0, 0])
        counts[0 if state == QUEUED else 1] += delta
        if counts == [0, 0]:
            del self._live[owner]

    def _fenced(self, cmd: c.Progress | c.Complete | c.Fail | c.Release) -> Task:
        """The task an executor report is about, if that report is still current."""
        task = self._task(cmd.task_id)
        if task.state != RUNNING or task.attempt != cmd.attempt or task.node != cmd.node:
            raise refuse(
                RefusalCode.STALE_ATTEMPT,
                f"task {task.id} attempt {cmd.attempt} on {cmd.node} is no longer current "
                f"(state {task.state}, attempt {task.attempt} on {task.node})",
                state=str(task.state),
                attempt=task.attempt,
            )
        return task

    def _owned_task(self, cmd: c.Cancel | c.Abort) -> Task:
        """The task a user command is about; `owner` (None for admins) must match,
        and another user's task is reported as not found rather than forbidden."""
        task = self._task(cmd.task_id)
        if cmd.owner is not None and task.owner != cmd.owner:
            raise refuse(RefusalCode.NOT_FOUND, f"no task {cmd.task_id}")
        return task

    # ------------------------------------------------------------ idempotency
    def replay(self, owner: str, key: str, fingerprint: str, at: int) -> dict[str, Any] | None:
        """The answer to a repeated submission of (owner, key) at command time `at`:
        the existing task marked `replayed`, or None when the key is new (or
        forgotten: older than the TTL); Refusal if the key came with another
        request.  NodeState asks before an Upload stores a second copy of its file."""
        self._forget_keys(at)
        known = self._keys.get((owner, key))
        if known is None:
            return None
        task_id, known_print, submitted_at = known
        if known_print != fingerprint:
            raise refuse(
                RefusalCode.IDEMPOTENCY_MISMATCH,
                f"the idempotency key was already used for a different request (task {task_id}); "
                "use a new key for a new request",
                task_id=task_id,
            )
        task = self.tasks.get(task_id)
        if task is None:
            # Retention removed the record, the key outlives it: name the task, say so.
            return {
                "id": task_id,
                "owner": owner,
                "submitted_at": submitted_at,
                "replayed": True,
                "expired": True,
            }
        return {**task.to_dict(), "replayed": True}

    def _forget_keys(self, now: int) -> int:
        """Drop keys older than the TTL at command time `now`.  Keys are in apply
        order, so this stops at the first young one; a proposer's clock running
        behind only keeps a key a little longer, never shorter."""
        cutoff = now - self.idempotency_ttl_ms
        old = []
        for owner_key, (_, _, at) in self._keys.items():
            if at >= cutoff:
                break
            old.append(owner_key)
        for owner_key in old:
            del self._keys[owner_key]
        return len(old)

    # ------------------------------------------------------------ operations
    def _submit(self, cmd: c.Submit) -> dict[str, Any]:
        if cmd.idem_key is not None:
            answer = self.replay(cmd.owner, cmd.idem_key, cmd.fingerprint or "", cmd.at)
            if answer is not None:
                return answer
        if cmd.task_id in self.tasks:
            raise refuse(RefusalCode.CONFLICT, f"task {cmd.task_id} already exists")
        if not PRIORITY_MIN <= cmd.priority <= PRIORITY_MAX:
            raise refuse(
                RefusalCode.INVALID,
                f"priority must be {PRIORITY_MIN}-{PRIORITY_MAX}",
                field="priority",
            )
        self._seq += 1
        task = Task(
            id=cmd.task_id,
            type=cmd.type,
            input=cmd.input,
            params=cmd.params,
            priority=cmd.priority,
            owner=cmd.owner,
            submitted_at=cmd.at,
            seq=self._seq,
            max_attempts=cmd.max_attempts or self.policy.max_attempts,
        )
        self.tasks[task.id] = task
        self._counts[QUEUED] += 1
        self._count_live(task.owner, QUEUED, 1)
        heapq.heappush(self._queue, (-task.priority, task.seq, task.id))
        task.history.append([QUEUED, None, 0, task.submitted_at, "submitted"])
        if cmd.idem_key is not None:
            self._keys[(task.owner, cmd.idem_key)] = (task.id, cmd.fingerprint or "", cmd.at)
        return task.to_dict()

    def _node_status(self, cmd: c.NodeStatus) -> dict[str, Any]:
        """A node announces itself (or its new slot count) or is declared dead."""
        entry = self.nodes.setdefault(cmd.node, {"slots": 0, "alive": True, "since": cmd.at})
        if cmd.slots is not None:
            entry["slots"] = cmd.slots
        if cmd.alive != entry["alive"]:
            entry["since"] = cmd.at
        entry["alive"] = cmd.alive
        requeued = self._requeue_node(cmd.node, cmd.at) if not cmd.alive else []
        return {"node": cmd.node, **entry, "requeued": requeued}

    def _requeue_node(self, node: str, at: int, reason: str = "died") -> list[str]:
        requeued = []
        for task_id in sorted(self._running.get(node, ())):
            task = self.tasks[task_id]
            if task.abort_requested:
                self._move(task, CANCELLED, at, f"aborted; node {node} {reason}")
                continue
            self._move(task, QUEUED, at, f"node {node} {reason}; requeued")
            task.node = None
            task.not_before = at
            task.progress, task.progress_note = 0.0, ""
            requeued.append(task_id)
        return requeued

    def _requeue(self, cmd: c.RequeueNode) -> dict[str, Any]:
        """Give back every task running on a node (it restarted and lost them)."""
        return {"node": cmd.node, "requeued": self._requeue_node(cmd.node, cmd.at, cmd.reason)}

    def _drain(self, cmd: c.DrainNode) -> dict[str, Any]:
        """Mark a node draining (no new tasks) or not; its running tasks stay."""
        entry = self.nodes.setdefault(cmd.node, {"slots": 0, "alive": True, "since": cmd.at})
        if cmd.draining:
            entry["draining"] = cmd.at
        else:
            entry.pop("draining", None)
        return {
            "node": cmd.node,
            "draining": cmd.draining,
            "running": sorted(self._running.get(cmd.node, ())),
        }

    def draining(self, node: str) -> bool:
        return "draining" in self.nodes.get(node, {})

    def _claim(self, cmd: c.Claim) -> dict[str, Any]:
        """Grant up to `max` tasks (one per free slot) to the claiming node."""
        node, at, slots = cmd.node, cmd.at, cmd.slots
        info = self.nodes.setdefault(node, {"slots": slots, "alive": True, "since": at})
        info["slots"], info["alive"], info["last_claim"] = slots, True, at
        if "draining" in info:
            return {"task": None, "tasks": [], "reason": "this node is draining"}
        granted: list[dict[str, Any]] = []
        reason = ""
        while len(granted) < max(1, cmd.max):
            task, reason = self._grant_one(node, slots, at, cmd.types, cmd.fair_window_ms)
            if task is None:
                break
            granted.append(task.to_dict())
        return {
            "task": granted[0] if granted else None,
            "tasks": granted,
            "reason": "" if granted else reason,
        }

    def _grant_one(
        self, node: str, slots: int, at: int, types: tuple[TaskType, ...] | None, window: int
    ) -> tuple[Task | None, str]:
        busy = len(self._running.get(node, ()))
        if busy >= slots:
            return None, "no free slot"
        # Fairness: among the nodes that are asking for work (claimed within the
        # window) and have a free slot, only the least loaded may take a task, so
        # equal nodes never differ by more than one.  A node that stops asking
        # (busy loading a model, or dead) drops out of the comparison.
        least = min(
            (
                len(self._running.get(n, ()))
                for n, i in self.nodes.items()
                if i["alive"]
                and "draining" not in i
                and i.get("last_claim", -window) >= at - window
                and len(self._running.get(n, ())) < i["slots"]
            ),
            default=busy,
        )
        if busy > least:
            return None, "other nodes are less loaded"
        skipped: list[tuple[int, int, str]] = []
        granted = None
        while self._queue:
            entry = heapq.heappop(self._queue)
            task = self.tasks.get(entry[2])
            if task is None or task.state != QUEUED or task.seq != entry[1]:
                continue  # left the queue since: lazy deletion
            if task.not_before > at or (types is not None and task.type not in types):
                skipped.append(entry)
                continue
            limit = self.running_limit(task.owner)
            if limit is not None and self.live(task.owner)[1] >= limit:
                skipped.append(entry)  # its owner runs as many as their quota allows
                continue
            granted = task
            break
        for entry in skipped:
            heapq.heappush(self._queue, entry)
        if granted is None:
            return None, "queue empty"
        granted.node = node
        granted.attempt += 1
        granted.started_at = at
        granted.progress, granted.progress_note = 0.0, ""
        granted.abort_requested = False
        self._move(granted, RUNNING, at, "claimed")
        return granted, ""

    def _progress(self, cmd: c.Progress) -> dict[str, Any]:
        task = self._fenced(cmd)
        task.progress = cmd.progress
        task.progress_note = cmd.note
        return {"id": task.id, "progress": task.progress, "abort_requested": task.abort_requested}

    def _complete(self, cmd: c.Complete) -> dict[str, Any]:
        task = self._fenced(cmd)
        task.result = cmd.result
        task.progress = 1.0
        self._move(task, COMPLETED, cmd.at, "completed")
        return task.to_dict()

    def _fail(self, cmd: c.Fail) -> dict[str, Any]:
        task = self._fenced(cmd)
        task.error = cmd.error
        if cmd.aborted:
            self._move(task, CANCELLED, cmd.at, "aborted")
        elif cmd.retryable and task.attempt < task.max_attempts:
            task.not_before = cmd.at + self.policy.delay(task.attempt)
            self._move(task, QUEUED, cmd.at, f"attempt {task.attempt} failed: {task.error}; retry")
            task.node = None
        else:
            self._move(task, FAILED, cmd.at, task.error)
        return task.to_dict()

    def _cancel(self, cmd: c.Cancel) -> dict[str, Any]:
        task = self._owned_task(cmd)
        if task.state != QUEUED:
            hint = " (abort stops a running task)" if task.state == RUNNING else ""
            raise refuse(
                RefusalCode.CONFLICT,
                f"task {task.id} is {task.state}; only a queued task can be cancelled{hint}",
                state=str(task.state),
            )
        self._move(task, CANCELLED, cmd.at, f"cancelled by {cmd.by}")
        return task.to_dict()

    def _abort(self, cmd: c.Abort) -> dict[str, Any]:
        task = self._owned_task(cmd)
        if task.state == QUEUED:
            self._move(task, CANCELLED, cmd.at, f"cancelled by {cmd.by}")
        elif task.state == RUNNING:
            task.abort_requested = True
        else:
            raise refuse(
                RefusalCode.CONFLICT,
                f"task {task.id} is {task.state}; it has already finished",
                state=str(task.state),
            )
        return task.to_dict()

    def _expire(self, cmd: c.Expire) -> dict[str, Any]:
        gone = [
            t.id
            for t in self.tasks.values()
            if t.state in FINISHED and (t.finished_at or 0) < cmd.before
        ]
        for task_id in gone:
            task = self.tasks.pop(task_id)
            self._counts[task.state] -= 1
        # Idempotency keys outlive their tasks (a late retry still finds the id) but
        # not the TTL; the sweep prunes them too when no submissions come.
        return {"expired": len(gone), "forgotten_keys": self._forget_keys(self._clock)}

    def _release(self, cmd: c.Release) -> dict[str, Any]:
        """The executor of `node` hands back an attempt the log granted it but it
        is not running (the claim committed after its proposer gave up).  Fenced
        like a report, so a release that arrives after the attempt moved on is
        refused as stale."""
        task = self._fenced(cmd)
        node = task.node
        if task.abort_requested:  # nobody runs it, and its owner wanted it stopped
            self._move(task, CANCELLED, cmd.at, f"aborted; released by {node}: {cmd.reason}")
            return task.to_dict()
        # That attempt never ran, so it does not count against the task's retries;
        # the attempt number itself must still grow (it is the fencing token).
        task.max_attempts += 1
        self._move(task, QUEUED, cmd.at, f"released by {node}: {cmd.reason}; requeued")
        task.node = None
        task.not_before = cmd.at
        task.progress, task.progress_note = 0.0, ""
        return task.to_dict()
