"""The replicated task queue: a deterministic state machine applied on every node.

Commands arrive as msgpack maps {"op": ..., ...} through the Raft log.  `apply`
reads no clock and draws no random numbers: times (`at`, milliseconds since the
epoch) and task ids come inside the commands, chosen by the proposing node.
Every answer is a plain dict so the proposer can return it to its caller.

Lifecycle: queued -> running -> completed | failed | cancelled, with retries
(running -> queued, attempt + 1, after a backoff) and requeues of a dead node's
tasks.  Claims are the only way a task starts: a node with a free slot commits
a claim, and applying it grants the highest-priority, oldest eligible task, or
nothing.  Every report from an executor names the attempt it belongs to, so a
late report from a superseded attempt is refused (fencing); an executor that
finds the log granted it an attempt it is not running (its claim committed after
the proposer gave up) hands that attempt back with a fenced `release`.

Idempotency: a submit may carry `idem_key` and `fingerprint` (node/idempotency.py).
The queue remembers (owner, idem_key) -> (task id, fingerprint, at) for at least
IDEMPOTENCY_TTL_MS of command time after the original submission, also after the
task itself was expired by retention, and answers a repeat with the existing task
instead of creating one.  Times come from the commands (`at`), never a clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import msgpack

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
)
STATES = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)
FINISHED = (COMPLETED, FAILED, CANCELLED)
# How long a submission's idempotency key is remembered, in command time (ms).
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000


class TaskError(Exception):
    """A command that cannot apply; `code` maps to an HTTP status upstream."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": str(self), "details": self.details}}


def refused(result: Any) -> bool:
    """Whether a command's result is a refusal, {"error": {code, message, details}}
    (a task's own "error" field is text, or None)."""
    return isinstance(result, dict) and isinstance(result.get("error"), dict)


@dataclass(slots=True)
class Task:
    id: str
    type: str
    input: dict
    params: dict
    priority: int
    owner: str
    submitted_at: int
    seq: int  # apply order: breaks ties between equal priorities (older first)
    max_attempts: int
    state: str = QUEUED
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
    history: list = field(default_factory=list)  # [state, node, attempt, at, note]
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

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "input": self.input,
            "params": self.params,
            "priority": self.priority,
            "owner": self.owner,
            "submitted_at": self.submitted_at,
            "state": self.state,
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
                {"state": s, "node": n, "attempt": a, "at": t, "note": note}
                for s, n, a, t, note in self.history
            ],
        }

    def _row(self) -> list:
        return [
            self.id,
            self.type,
            self.input,
            self.params,
            self.priority,
            self.owner,
            self.submitted_at,
            self.seq,
            self.max_attempts,
            self.state,
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
            self.history,
        ]

    @classmethod
    def _from_row(cls, row: list) -> Task:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_ms: int = 2_000  # first retry waits this long, then doubles
    max_backoff_ms: int = 60_000

    def delay(self, attempt: int) -> int:
        return min(self.max_backoff_ms, self.backoff_ms * (2 ** max(0, attempt - 1)))


class TaskQueue:
    """consensus.fsm.StateMachine for the task log."""

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
        self._counts = dict.fromkeys(STATES, 0)
        self.nodes: dict[str, dict] = {}  # node -> {"slots", "alive", "since"}
        # (owner, idempotency key) -> (task id, fingerprint, at), in apply order, so
        # the oldest keys are at the front and pruning stops at the first young one.
        self._keys: dict[tuple[str, str], tuple[str, str, int]] = {}
        # The latest command time applied: "now" for pruning keys in commands that
        # carry no time of their own (expire).  Derived from the log, so deterministic.
        self._clock = 0

    # ------------------------------------------------------------ StateMachine
    def apply(self, index: int, command: bytes) -> Any:
        return self.execute(msgpack.unpackb(command, raw=False))

    def execute(self, cmd: dict) -> Any:
        """Apply one decoded command (node/state.py routes here)."""
        op = cmd.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return TaskError("bad_command", f"unknown operation {op!r}").to_dict()
        at = cmd.get("at")
        if isinstance(at, (int, float)) and not isinstance(at, bool) and at > self._clock:
            self._clock = int(at)
        try:
            return handler(cmd)
        except TaskError as exc:
            return exc.to_dict()
        except (KeyError, TypeError, ValueError) as exc:
            # a malformed command must not stop the log: answer with the error
            return TaskError("bad_command", f"malformed {op} command: {exc!r}").to_dict()

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
        self.__init__(self.policy, self.idempotency_ttl_ms)
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
            if task.state == QUEUED:
                heapq.heappush(self._queue, (-task.priority, task.seq, task.id))
            elif task.state == RUNNING and task.node is not None:
                self._running.setdefault(task.node, set()).add(task.id)

    # ------------------------------------------------------------ queries
    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

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
            raise TaskError("not_found", f"no task {task_id}")
        return task

    def _move(self, task: Task, state: str, at: int, note: str = "") -> None:
        if task.state == RUNNING and task.node is not None:
            self._running.get(task.node, set()).discard(task.id)
        self._counts[task.state] -= 1
        task.state = state
        self._counts[state] += 1
        if state == QUEUED:
            heapq.heappush(self._queue, (-task.priority, task.seq, task.id))
        elif state == RUNNING and task.node is not None:
            self._running.setdefault(task.node, set()).add(task.id)
        if state in FINISHED:
            task.finished_at = at
        task.history.append([state, task.node, task.attempt, at, note])

    def _fenced(self, cmd: dict) -> Task:
        """The task an executor report is about, if that report is still current."""
        task = self._task(cmd["id"])
        if task.state != RUNNING or task.attempt != cmd["attempt"] or task.node != cmd["node"]:
            raise TaskError(
                "stale_attempt",
                f"task {task.id} attempt {cmd['attempt']} on {cmd['node']} is no longer current "
                f"(state {task.state}, attempt {task.attempt} on {task.node})",
                state=task.state,
                attempt=task.attempt,
            )
        return task

    # ------------------------------------------------------------ operations
    def replay(self, owner: str, key: str, fingerprint: str, at: int) -> dict | None:
        """The answer to a repeated submission of (owner, key) at command time `at`:
        the existing task marked `replayed`, a refusal if the key came with another
        request, or None when the key is new (or forgotten: older than the TTL).
        node/state.py asks before a `kb.upload` stores a second copy of its file."""
        self._forget_keys(at)
        known = self._keys.get((owner, key))
        if known is None:
            return None
        task_id, known_print, submitted_at = known
        if known_print != fingerprint:
            return TaskError(
                "idempotency_mismatch",
                f"the idempotency key was already used for a different request (task {task_id}); "
                "use a new key for a new request",
                task_id=task_id,
            ).to_dict()
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

    @staticmethod
    def _idempotency(cmd: dict) -> tuple[str, str] | None:
        key = cmd.get("idem_key")
        if key is None:
            return None
        fingerprint = cmd.get("fingerprint", "")
        if not isinstance(key, str) or not key or not isinstance(fingerprint, str):
            raise TaskError(
                "bad_command", "idem_key must be a non-empty string and fingerprint a string"
            )
        return key, fingerprint

    def _op_submit(self, cmd: dict) -> dict:
        task_id = cmd["id"]
        idempotency = self._idempotency(cmd)
        if idempotency is not None:
            answer = self.replay(cmd.get("owner", ""), *idempotency, cmd["at"])
            if answer is not None:
                return answer
        if task_id in self.tasks:
            raise TaskError("conflict", f"task {task_id} already exists")
        priority = int(cmd.get("priority", 5))
        if not 0 <= priority <= 9:
            raise TaskError("invalid", "priority must be 0-9", field="priority")
        self._seq += 1
        task = Task(
            id=task_id,
            type=cmd["type"],
            input=cmd.get("input", {}),
            params=cmd.get("params", {}),
            priority=priority,
            owner=cmd.get("owner", ""),
            submitted_at=cmd["at"],
            seq=self._seq,
            max_attempts=int(cmd.get("max_attempts", self.policy.max_attempts)),
        )
        self.tasks[task_id] = task
        self._counts[QUEUED] += 1
        heapq.heappush(self._queue, (-priority, task.seq, task_id))
        task.history.append([QUEUED, None, 0, task.submitted_at, "submitted"])
        if idempotency is not None:
            self._keys[(task.owner, idempotency[0])] = (task_id, idempotency[1], task.submitted_at)
        return task.to_dict()

    def _op_node(self, cmd: dict) -> dict:
        """A node announces itself (or its new slot count) or is declared dead."""
        node = cmd["node"]
        entry = self.nodes.setdefault(node, {"slots": 0, "alive": True, "since": cmd["at"]})
        entry["slots"] = int(cmd.get("slots", entry["slots"]))
        alive = bool(cmd.get("alive", True))
        if alive != entry["alive"]:
            entry["since"] = cmd["at"]
        entry["alive"] = alive
        requeued = self._requeue_node(node, cmd["at"]) if not alive else []
        return {"node": node, **entry, "requeued": requeued}

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

    def _op_requeue_node(self, cmd: dict) -> dict:
        """Give back every task running on a node (it restarted and lost them)."""
        return {
            "node": cmd["node"],
            "requeued": self._requeue_node(cmd["node"], cmd["at"], cmd.get("reason", "died")),
        }

    def _op_claim(self, cmd: dict) -> dict:
        """Grant up to `max` tasks (one per free slot) to the claiming node."""
        node, at = cmd["node"], cmd["at"]
        slots = int(cmd.get("slots", 1))
        info = self.nodes.setdefault(node, {"slots": slots, "alive": True, "since": at})
        info["slots"], info["alive"], info["last_claim"] = slots, True, at
        want = max(1, int(cmd.get("max", 1)))
        window = int(cmd.get("fair_window_ms", 2_000))
        granted: list[dict] = []
        reason = ""
        while len(granted) < want:
            task, reason = self._grant_one(node, slots, at, cmd.get("types"), window)
            if task is None:
                break
            granted.append(task.to_dict())
        return {
            "task": granted[0] if granted else None,
            "tasks": granted,
            "reason": "" if granted else reason,
        }

    def _grant_one(
        self, node: str, slots: int, at: int, types: list | None, window: int
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

    def _op_progress(self, cmd: dict) -> dict:
        task = self._fenced(cmd)
        task.progress = float(cmd.get("progress", task.progress))
        task.progress_note = str(cmd.get("note", ""))
        return {"id": task.id, "progress": task.progress, "abort_requested": task.abort_requested}

    def _op_complete(self, cmd: dict) -> dict:
        task = self._fenced(cmd)
        task.result = cmd.get("result")
        task.progress = 1.0
        self._move(task, COMPLETED, cmd["at"], "completed")
        return task.to_dict()

    def _op_fail(self, cmd: dict) -> dict:
        task = self._fenced(cmd)
        at = cmd["at"]
        task.error = str(cmd.get("error", "failed"))
        if cmd.get("aborted"):
            self._move(task, CANCELLED, at, "aborted")
        elif cmd.get("retryable", True) and task.attempt < task.max_attempts:
            task.not_before = at + self.policy.delay(task.attempt)
            self._move(task, QUEUED, at, f"attempt {task.attempt} failed: {task.error}; retry")
            task.node = None
        else:
            self._move(task, FAILED, at, task.error)
        return task.to_dict()

    def _owned_task(self, cmd: dict) -> Task:
        """The task a user command is about; `owner` (absent for admins) must match,
        and another user's task is reported as not found rather than forbidden."""
        task = self._task(cmd["id"])
        owner = cmd.get("owner")
        if owner is not None and task.owner != owner:
            raise TaskError("not_found", f"no task {cmd['id']}")
        return task

    def _op_cancel(self, cmd: dict) -> dict:
        task = self._owned_task(cmd)
        if task.state != QUEUED:
            hint = " (abort stops a running task)" if task.state == RUNNING else ""
            raise TaskError(
                "conflict",
                f"task {task.id} is {task.state}; only a queued task can be cancelled{hint}",
                state=task.state,
            )
        self._move(task, CANCELLED, cmd["at"], f"cancelled by {cmd.get('by', '?')}")
        return task.to_dict()

    def _op_abort(self, cmd: dict) -> dict:
        task = self._owned_task(cmd)
        if task.state == QUEUED:
            self._move(task, CANCELLED, cmd["at"], f"cancelled by {cmd.get('by', '?')}")
        elif task.state == RUNNING:
            task.abort_requested = True
        else:
            raise TaskError(
                "conflict",
                f"task {task.id} is {task.state}; it has already finished",
                state=task.state,
            )
        return task.to_dict()

    def _op_expire(self, cmd: dict) -> dict:
        before = cmd["before"]
        gone = [
            t.id
            for t in self.tasks.values()
            if t.state in FINISHED and (t.finished_at or 0) < before
        ]
        for task_id in gone:
            task = self.tasks.pop(task_id)
            self._counts[task.state] -= 1
        # Idempotency keys outlive their tasks (a late retry still finds the id) but
        # not the TTL; the sweep prunes them too when no submissions come.
        return {"expired": len(gone), "forgotten_keys": self._forget_keys(self._clock)}

    def _op_release(self, cmd: dict) -> dict:
        """{"op": "release", "id", "attempt", "node", "at", "reason"}: the executor of
        `node` hands back an attempt the log granted it but it is not running (the
        claim committed after its proposer gave up).  Fenced like a report, so a
        release that arrives after the attempt moved on is refused as stale."""
        task = self._fenced(cmd)
        at, node = cmd["at"], task.node
        reason = str(cmd.get("reason", "not running"))
        if task.abort_requested:  # nobody runs it, and its owner wanted it stopped
            self._move(task, CANCELLED, at, f"aborted; released by {node}: {reason}")
            return task.to_dict()
        # That attempt never ran, so it does not count against the task's retries;
        # the attempt number itself must still grow (it is the fencing token).
        task.max_attempts += 1
        self._move(task, QUEUED, at, f"released by {node}: {reason}; requeued")
        task.node = None
        task.not_before = at
        task.progress, task.progress_note = 0.0, ""
        return task.to_dict()
