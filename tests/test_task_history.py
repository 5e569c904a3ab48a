"""The queue's past rebuilt from task records (node/replica/history.py), checked
against a brute-force replay of the same records."""

from __future__ import annotations

import random

from node.replica import commands as c
from node.replica import history as task_history
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskState, TaskType


def build(seed: int) -> TaskQueue:
    """Submissions, claims, completions, failures (some retried), cancels, in time order."""
    rng = random.Random(seed)
    q = TaskQueue()
    at = 1_000
    running: list[dict] = []
    for i in range(300):
        at += rng.randint(0, 50)
        q.apply(
            c.Submit(
                task_id=f"T{i:04d}",
                type=TaskType.NOOP,
                input={},
                params=TaskParams(),
                priority=rng.randint(0, 9),
                owner="alice",
                at=at,
            )
        )
        if rng.random() < 0.5:
            running += q.apply(c.Claim(node="n1", slots=4, at=at, max=4))["tasks"]
        for task in list(running):
            if rng.random() < 0.3:
                running.remove(task)
                done = rng.choice(("complete", "complete", "fail")) == "complete"
                # (a refused report raises: every one of these must apply)
                q.apply(
                    c.Complete(task["id"], task["attempt"], "n1", at, result={})
                    if done
                    else c.Fail(task["id"], task["attempt"], "n1", at, "boom", rng.random() < 0.5)
                )
        if rng.random() < 0.05:
            queued = [t for t in q.tasks.values() if t.state == TaskState.QUEUED]
            if queued:
                q.apply(c.Cancel(queued[-1].id, at=at, by="alice", owner="alice"))
    return q


def state_at(task, t: int) -> str | None:
    if task.submitted_at > t:
        return None
    if task.state == "queued":
        return "queued"
    left = task.started_at if task.started_at is not None else task.finished_at
    if left is None or left > t:
        return "queued"
    if task.finished_at is None or task.finished_at > t:
        return "running"
    return task.state


def test_counts_match_a_replay_of_every_record_at_every_instant() -> None:
    for seed in range(5):
        q = build(seed)
        now = max(t.finished_at or t.submitted_at for t in q.tasks.values()) + 10
        out = task_history.history(q.tasks, now, window_ms=now - 500, points=40)
        assert len(out["t"]) == 40 and out["t"][-1] == now
        for i, instant in enumerate(out["t"]):
            expected: dict[str, int] = {}
            for task in q.tasks.values():
                state = state_at(task, instant)
                if state:
                    expected[state] = expected.get(state, 0) + 1
            got = {s: counts[i] for s, counts in out["states"].items() if counts[i]}
            assert got == expected, (seed, instant)
        # now: the counts are the queue's own
        assert {s: c[-1] for s, c in out["states"].items()} == q.counts()


def test_latency_histograms_count_each_finished_run_once() -> None:
    q = build(7)
    now = max(t.finished_at or t.submitted_at for t in q.tasks.values()) + 10
    out = task_history.history(q.tasks, now, window_ms=now, points=10)
    ran = [
        t.finished_at - t.started_at
        for t in q.tasks.values()
        if t.finished_at is not None and t.started_at is not None
    ]
    latency = out["latency"]
    assert sum(latency["run"]) == len(ran) == sum(latency["wait"])
    edges = latency["edges_ms"]
    for value in ran:
        bucket = max(i for i, edge in enumerate(edges[:-1]) if value >= edge)
        assert latency["run"][bucket] >= 1
    assert len(latency["run"]) == len(edges) - 1
