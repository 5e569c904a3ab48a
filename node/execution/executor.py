"""Runs the tasks this node claims, off the event loop.

The loop: while a slot is free and the local replica shows queued work, commit
a claim; applying it grants a task to exactly one node.  The task then runs in
a worker thread (inference must never stall Raft heartbeats or the API); its
progress, completion or failure goes back through the log, each report naming
the attempt so that a superseded attempt's late report is refused.
Cancellation is cooperative: the runner polls `cancelled()` at its checkpoints,
which turns true when an abort was committed or the task was taken away from
this node (requeued after this node was declared dead).

Reconciliation: a claim can commit after its proposer gave up on it (a timeout,
a leader change), granting tasks that this executor never started.  About every
second, and soon after each claim, the executor compares the tasks the replicated
state shows running here with the attempts it runs; an attempt it does not run
is handed back (a fenced `release`) once it has been seen that way for
ORPHAN_GRACE_S, so a task granted a moment ago and still being started is left
alone.

Test hook: RAGRAFT_FAILPOINTS="executor.lose_claim=N" makes this executor drop
the answers of its first N claims that grant tasks, as if they had timed out
after committing: the defect reconciliation repairs, on a real cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.ids import now_ms
from node.replica import commands as c
from node.replica.refusal import Refused
from node.replica.replica import NoQuorum, Replica
from node.replica.tasks import TaskQueue, TaskSpec
from node.replica.vocabulary import CancelledFn, ProgressFn, TaskState, TaskType

log = logging.getLogger("ragraft.executor")

RECONCILE_INTERVAL_S = 1.0  # how often the replicated state is compared with what runs here
RECONCILE_SOON_S = 0.2  # after a claim's answer (or its failure), check this soon
ORPHAN_GRACE_S = 1.5  # how long an attempt must look orphaned before it is handed back


def _failpoint(name: str, environ: dict[str, str] | None = None) -> int:
    """The count RAGRAFT_FAILPOINTS gives `name` ("a=2,b" -> a: 2, b: 1), else 0."""
    for item in (
        (environ if environ is not None else os.environ).get("RAGRAFT_FAILPOINTS", "").split(",")
    ):
        key, _, count = item.strip().partition("=")
        if key == name:
            return int(count or 1)
    return 0


class TaskFailure(Exception):
    """A task's own failure.  `retryable=False` for bad input (retrying cannot help)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class TaskAborted(Exception):
    """Raised by a runner at a checkpoint after `cancelled()` turned true."""


class TaskRunner(Protocol):
    def run(self, task: TaskSpec, progress: ProgressFn, cancelled: CancelledFn) -> Any:
        """Blocking; runs in a worker thread.  Returns the result (msgpack-able)
        or raises TaskFailure / TaskAborted."""


class NoopRunner:
    """`noop`: sleeps input.duration_ms (for tests and control-plane benchmarks)."""

    def run(self, task: TaskSpec, progress: ProgressFn, cancelled: CancelledFn) -> Any:
        duration = float(task.input.get("duration_ms", 0)) / 1000
        if task.input.get("fail"):
            raise TaskFailure(
                str(task.input["fail"]), retryable=bool(task.input.get("retryable", True))
            )
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            if cancelled():
                raise TaskAborted()
            if elapsed >= duration:
                return {"slept_ms": round(elapsed * 1000)}
            progress(elapsed / duration if duration else 1.0, "sleeping")
            time.sleep(min(0.05, duration - elapsed))


@dataclass
class Running:
    id: str
    attempt: int
    type: TaskType
    started: float
    progress: float = 0.0
    note: str = ""
    reported: float = field(default=0.0)


class Executor:
    def __init__(
        self,
        replica: Replica,
        node_id: str,
        slots: int,
        runners: dict[TaskType, TaskRunner],
        poll_interval: float = 0.1,
        progress_interval: float = 0.5,
        orphan_grace: float = ORPHAN_GRACE_S,
        reconcile_interval: float = RECONCILE_INTERVAL_S,
    ) -> None:
        self.replica = replica
        self.node_id = node_id
        self.slots = slots
        self.runners = runners
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.running: dict[str, Running] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, slots), thread_name_prefix=f"task-{node_id}"
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._workers: set[asyncio.Task[None]] = set()
        self.claims = {"granted": 0, "empty": 0}
        self._stopping = False
        self.orphan_grace = orphan_grace
        self.reconcile_interval = reconcile_interval
        self.released = 0  # attempts handed back by reconciliation
        self._next_reconcile = 0.0  # time.monotonic() of the next comparison
        self._orphans: dict[
            str, tuple[int, float]
        ] = {}  # task id -> (attempt, first seen orphaned)
        self._releasing: set[str] = set()
        self._lose_claims = _failpoint("executor.lose_claim")

    @property
    def queue(self) -> TaskQueue:
        return self.replica.state.tasks

    def on_apply(self, cmd: c.Command, outcome: Any) -> None:
        """A NodeState listener: work may have appeared (a submission, an upload's
        ingest task, a retry after a failure, a node's tasks requeued)."""
        if isinstance(cmd, (c.Submit, c.Fail, c.NodeStatus, c.Upload, c.RequeueNode, c.Release)):
            self.poke()

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"executor-{self.node_id}")

    async def stop(self, handback_timeout: float = 3.0) -> None:
        """Stop claiming; running tasks stop at their next checkpoint without reporting,
        and are handed back to the queue in one committed entry, so another node takes
        them at once instead of after this node is declared dead."""
        self._stopping = True
        if self._task:
            self._task.cancel()
        if self.running:
            count = len(self.running)
            try:
                await asyncio.wait_for(
                    self.replica.propose(c.RequeueNode(self.node_id, now_ms(), "stopped")),
                    handback_timeout,
                )
                log.info("stopping: handed %d running tasks back to the queue", count)
            except (NoQuorum, Refused, TimeoutError) as exc:
                log.warning(
                    "stopping: could not hand %d running tasks back (%s); the cluster will requeue "
                    "them once this node is seen dead",
                    count,
                    exc,
                )
        for worker in list(self._workers):
            worker.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poke(self) -> None:
        """Something changed (a submission applied here): look for work now."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "slots_total": self.slots,
            "slots_used": len(self.running),
            "running": [
                {"id": r.id, "type": r.type, "progress": round(r.progress, 3)}
                for r in self.running.values()
            ],
        }

    # ------------------------------------------------------------ claiming
    async def _loop(self) -> None:
        await self._release_stale_claims()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() >= self._next_reconcile:
                self._reconcile()
            while (
                len(self.running) < self.slots
                and self.queue.counts()[TaskState.QUEUED] > 0
                and not self.queue.draining(self.node_id)  # (`ragraft node drain`)
            ):
                if not await self._claim_one():
                    break

    async def _release_stale_claims(self) -> None:
        """After a restart, tasks the log still shows running here were lost with
        the old process: give them back to the queue."""
        while True:
            try:
                await self.replica.read_barrier()
                if self.queue.running_on(self.node_id):
                    await self.replica.propose(c.RequeueNode(self.node_id, now_ms(), "restarted"))
                return
            except NoQuorum:
                await asyncio.sleep(0.5)

    async def _claim_one(self) -> bool:
        cmd = c.Claim(
            node=self.node_id,
            slots=self.slots,
            at=now_ms(),
            max=self.slots - len(self.running),
            types=tuple(sorted(self.runners)),
        )
        try:
            answer = await self.replica.propose(cmd)
        except (NoQuorum, Refused) as exc:
            # It may still commit later and grant tasks nobody here knows of: look soon.
            self._reconcile_soon()
            log.debug("claim not committed: %s", exc)
            await asyncio.sleep(self.poll_interval)
            return False
        self._reconcile_soon()
        records = answer.get("tasks") if isinstance(answer, dict) else None
        if not records:
            self.claims["empty"] += 1
            return False
        if self._lose_claims > 0:  # failpoint: as if this answer never came back
            self._lose_claims -= 1
            log.warning(
                "failpoint executor.lose_claim: dropping the grant of %s",
                [t["id"] for t in records],
            )
            return False
        for record in records:
            self.claims["granted"] += 1
            task = TaskSpec.from_json(record)
            if not self._still_granted(task.id, task.attempt):
                continue  # released or requeued before this answer came back: not ours any more
            run = Running(task.id, task.attempt, task.type, time.monotonic())
            self.running[task.id] = run
            worker = asyncio.create_task(self._execute(task, run), name=f"run-{task.id}")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return True

    def _still_granted(self, task_id: str, attempt: int) -> bool:
        current = self.queue.get(task_id)
        return (
            current is not None
            and current.state == TaskState.RUNNING
            and current.node == self.node_id
            and current.attempt == attempt
        )

    # ------------------------------------------------------------ reconciling
    def _reconcile_soon(self) -> None:
        self._next_reconcile = min(self._next_reconcile, time.monotonic() + RECONCILE_SOON_S)

    def orphans(self, now: float | None = None) -> list[tuple[str, int]]:
        """(task id, attempt) the replicated state shows running on this node that this
        executor does not run, for at least `orphan_grace` seconds now; remembers when
        each was first seen that way, so that a grant being started is left alone."""
        now = time.monotonic() if now is None else now
        seen: dict[str, tuple[int, float]] = {}
        for task_id in self.queue.running_on(self.node_id):
            task = self.queue.get(task_id)
            run = self.running.get(task_id)
            if task is None or (run is not None and run.attempt == task.attempt):
                continue
            first = self._orphans.get(task_id)
            seen[task_id] = (
                first if first is not None and first[0] == task.attempt else (task.attempt, now)
            )
        self._orphans = seen
        return [
            (task_id, attempt)
            for task_id, (attempt, since) in seen.items()
            if now - since >= self.orphan_grace and task_id not in self._releasing
        ]

    def _reconcile(self) -> None:
        self._next_reconcile = time.monotonic() + self.reconcile_interval
        if self._stopping:
            return
        for task_id, attempt in self.orphans():
            self._releasing.add(task_id)
            worker = asyncio.create_task(self._release(task_id, attempt), name=f"release-{task_id}")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _release(self, task_id: str, attempt: int) -> None:
        """Hand one orphaned attempt back to the queue; fenced, so harmless if it moved on."""
        cmd = c.Release(
            task_id=task_id,
            attempt=attempt,
            node=self.node_id,
            at=now_ms(),
            reason="granted to this node, which is not running it (its claim committed after "
            "the claimer gave up)",
        )
        try:
            answer = await self.replica.propose(cmd)
        except Refused as exc:
            log.debug("task %s attempt %d moved on before its hand-back: %s", task_id, attempt, exc)
            return
        except NoQuorum as exc:
            log.warning(
                "could not hand back task %s (attempt %d) yet: %s; retrying", task_id, attempt, exc
            )
            return  # still orphaned at the next comparison, so tried again then
        finally:
            self._releasing.discard(task_id)
            self._wake.set()
        self.released += 1
        self._orphans.pop(task_id, None)
        log.warning(
            "task %s (attempt %d) was running on this node only in the replicated state: "
            "handed back to the queue (%s)",
            task_id,
            attempt,
            answer.get("state"),
            extra={"event": "task_released", "task_id": task_id, "attempt": attempt},
        )

    # ------------------------------------------------------------ running
    async def _execute(self, task: TaskSpec, run: Running) -> None:
        loop = asyncio.get_running_loop()
        runner = self.runners[task.type]

        def cancelled() -> bool:
            current = self.queue.get(task.id)
            return (
                self._stopping
                or current is None
                or current.abort_requested
                or current.state != TaskState.RUNNING
                or current.attempt != run.attempt
                or current.node != self.node_id
            )

        def progress(fraction: float, note: str) -> None:
            run.progress, run.note = max(0.0, min(1.0, fraction)), note
            now = time.monotonic()
            if now - run.reported >= self.progress_interval:
                run.reported = now
                loop.call_soon_threadsafe(self._report_progress, run)

        report: Report
        try:
            result = await loop.run_in_executor(self._pool, runner.run, task, progress, cancelled)
            report = Report(c.Complete, {"result": result})
        except TaskAborted:
            report = Report(c.Fail, {"error": "aborted by request", "aborted": True})
        except TaskFailure as exc:
            report = Report(c.Fail, {"error": str(exc), "retryable": exc.retryable})
        except Exception as exc:  # a bug in a runner: fail the attempt, keep the node
            log.exception(
                "task %s crashed",
                task.id,
                extra={"event": "task_crashed", "task_id": task.id},
            )
            report = Report(c.Fail, {"error": f"internal error: {exc!r}", "retryable": True})
        if self._stopping:  # handed back in stop(): nothing to report
            self.running.pop(task.id, None)
            return
        outcome = report.outcome
        log.info(
            "task %s %s after %.0f ms (attempt %d)",
            task.id,
            outcome,
            (time.monotonic() - run.started) * 1000,
            run.attempt,
            extra={
                "event": f"task_{outcome}",
                "task_id": task.id,
                "task_type": str(task.type),
                "attempt": run.attempt,
                "run_ms": round((time.monotonic() - run.started) * 1000),
                "error": report.fields.get("error"),
            },
        )
        try:
            await self._report(task.id, run.attempt, report)
        finally:
            self.running.pop(task.id, None)
            self._wake.set()

    def _report_progress(self, run: Running) -> None:
        cmd = c.Progress(run.id, run.attempt, self.node_id, run.progress, run.note)
        task = asyncio.ensure_future(self.replica.propose(cmd))
        task.add_done_callback(lambda t: t.exception())  # progress is best effort

    async def _report(self, task_id: str, attempt: int, report: Report) -> None:
        """Completion must reach the log: retry until committed.  No request id is
        needed: the attempt fences it, so a copy that applies after an earlier copy
        did is refused as stale_attempt, which means done here, not a failure."""
        while True:
            cmd = report.command(task_id, attempt, self.node_id, now_ms())
            try:
                await self.replica.propose(cmd)
            except NoQuorum as exc:
                log.warning(
                    "report for task %s not committed yet (%s); retrying",
                    task_id,
                    exc,
                    extra={"event": "report_retry", "task_id": task_id},
                )
                await asyncio.sleep(0.5)
                continue
            except Refused as exc:
                # An earlier copy applied, or the attempt was taken away (requeued,
                # released): either way there is nothing left to report.
                log.debug(
                    "report %s for task %s attempt %d not applied: %s",
                    report.outcome,
                    task_id,
                    attempt,
                    exc,
                )
            return


@dataclass(frozen=True)
class Report:
    """How an attempt ended, before the time and fence are filled in at each try."""

    kind: type[c.Complete | c.Fail]
    fields: dict[str, Any]

    @property
    def outcome(self) -> str:
        if self.kind is c.Complete:
            return "complete"
        return "aborted" if self.fields.get("aborted") else "failed"

    def command(self, task_id: str, attempt: int, node: str, at: int) -> c.Complete | c.Fail:
        return self.kind(task_id=task_id, attempt=attempt, node=node, at=at, **self.fields)
