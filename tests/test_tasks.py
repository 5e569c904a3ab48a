"""The replicated task queue (node/replica/tasks.py) as a state machine, without Raft."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from node.replica import codec
from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskState, TaskType


class Q:
    """Feeds commands the way the log would: through the codec, a dict out (or a
    Refusal raised)."""

    def __init__(self) -> None:
        self.sm = TaskQueue()

    def __call__(self, cmd: c.TaskCommand) -> dict:
        return self.sm.apply(codec.decode(codec.encode(cmd)))

    def outcome(self, cmd: c.TaskCommand) -> dict | Refusal:
        """What NodeState hands its listeners: the result, or the Refusal."""
        try:
            return self(cmd)
        except Refusal as refusal:
            return refusal

    def submit(self, task_id: str, priority: int = 5, at: int = 0, **kw: Any) -> dict:
        return self(
            c.Submit(
                task_id=task_id,
                type=kw.pop("type", TaskType.NOOP),
                input={},
                params=TaskParams(),
                owner="",
                at=at,
                priority=priority,
                **kw,
            )
        )

    def claim(self, node: str, at: int = 0, slots: int = 1) -> dict | None:
        return self(c.Claim(node=node, slots=slots, at=at))["task"]


def test_lifecycle_and_history():
    q = Q()
    assert q.submit("t1", at=1)["state"] == "queued"
    task = q.claim("n1", at=2)
    assert (
        task["id"] == "t1"
        and task["state"] == "running"
        and task["attempt"] == 1
        and task["node"] == "n1"
    )
    q(c.Progress("t1", attempt=1, node="n1", progress=0.5, note="half"))
    done = q(c.Complete("t1", attempt=1, node="n1", at=3, result={"answer": 42}))
    assert (
        done["state"] == "completed"
        and done["result"] == {"answer": 42}
        and done["finished_at"] == 3
    )
    assert [h["state"] for h in done["history"]] == ["queued", "running", "completed"]
    assert q.sm.counts() == {"queued": 0, "running": 0, "completed": 1, "failed": 0, "cancelled": 0}


def test_claims_take_highest_priority_then_oldest():
    q = Q()
    q.submit("low", priority=1)
    q.submit("mid-old", priority=5)
    q.submit("urgent", priority=9)
    q.submit("mid-new", priority=5)
    order = [q.claim("n1", slots=10)["id"] for _ in range(4)]
    assert order == ["urgent", "mid-old", "mid-new", "low"]
    assert q.claim("n1", slots=10) is None


def test_no_free_slot_no_task():
    q = Q()
    q.submit("a")
    q.submit("b")
    assert q.claim("n1", slots=1)["id"] == "a"
    assert q.claim("n1", slots=1) is None
    assert q.sm.running_on("n1") == ["a"]


def test_stale_attempt_is_fenced():
    q = Q()
    q.submit("t")
    q.claim("n1")
    # n1 declared dead: requeued, attempt stays 1
    q(c.NodeStatus("n1", at=5, alive=False))
    again = q.claim("n2", at=6)
    assert again["id"] == "t" and again["attempt"] == 2 and again["node"] == "n2"
    with pytest.raises(Refusal) as late:
        q(c.Complete("t", attempt=1, node="n1", at=7, result={"answer": "late"}))
    assert late.value.code is RefusalCode.STALE_ATTEMPT
    assert q.sm.get("t").state == "running"
    done = q(c.Complete("t", attempt=2, node="n2", at=8, result={"answer": "ok"}))
    assert done["result"] == {"answer": "ok"}


def test_cancel_only_queued_with_clear_errors():
    q = Q()
    q.submit("queued")
    q.submit("running")
    q(c.Claim(node="n1", slots=1, at=0))  # takes "queued" (older)
    assert q(c.Cancel("running", at=1, by="admin"))["state"] == "cancelled"
    with pytest.raises(Refusal) as err:
        q(c.Cancel("queued", at=1, by="admin"))
    assert (
        err.value.code is RefusalCode.CONFLICT
        and "running" in err.value.message
        and "abort" in err.value.message
    )
    q(c.Complete("queued", attempt=1, node="n1", at=2, result={}))
    with pytest.raises(Refusal) as err:
        q(c.Cancel("queued", at=3, by="admin"))
    assert err.value.details["state"] == "completed"
    with pytest.raises(Refusal) as err:
        q(c.Cancel("nope", at=3, by="admin"))
    assert err.value.code is RefusalCode.NOT_FOUND
    # a cancelled task is never claimed
    assert q.claim("n2") is None


def test_retry_with_backoff_then_fail():
    q = Q()
    q.submit("t", max_attempts=2)
    q.claim("n1", at=1000)
    r = q(c.Fail("t", attempt=1, node="n1", at=1000, error="boom", retryable=True))
    assert r["state"] == "queued" and r["not_before"] == 1000 + q.sm.policy.delay(1)
    assert q.claim("n1", at=1500) is None  # still backing off
    assert q.claim("n1", at=r["not_before"])["attempt"] == 2
    final = q(c.Fail("t", attempt=2, node="n1", at=5000, error="boom again", retryable=True))
    assert final["state"] == "failed" and final["error"] == "boom again"


def test_bad_input_is_not_retried():
    q = Q()
    q.submit("t", max_attempts=5)
    q.claim("n1")
    r = q(c.Fail("t", attempt=1, node="n1", at=1, error="empty document", retryable=False))
    assert r["state"] == "failed"


def test_abort_running_and_queued():
    q = Q()
    q.submit("run")
    q.submit("wait")
    q.claim("n1")
    assert q(c.Abort("wait", at=1, by="admin"))["state"] == "cancelled"
    flagged = q(c.Abort("run", at=1, by="admin"))
    assert flagged["state"] == "running" and flagged["abort_requested"]
    assert q(c.Progress("run", attempt=1, node="n1", progress=0.1))["abort_requested"]
    stopped = q(c.Fail("run", attempt=1, node="n1", at=2, error="aborted", aborted=True))
    assert stopped["state"] == "cancelled"


def test_dead_node_tasks_are_requeued_and_expire_cleans_up():
    q = Q()
    for i in range(3):
        q.submit(f"t{i}")
    q.claim("n1", slots=3)
    q.claim("n1", slots=3)
    r = q(c.NodeStatus("n1", at=10, alive=False))
    assert sorted(r["requeued"]) == ["t0", "t1"]
    assert q.sm.counts()[TaskState.QUEUED] == 3
    for i in range(3):
        t = q.claim("n2", slots=3, at=11)
        q(c.Complete(t["id"], attempt=t["attempt"], node="n2", at=20 + i, result={}))
    assert q(c.Expire(before=22))["expired"] == 2
    assert len(q.sm.tasks) == 1 and next(iter(q.sm.tasks.values())).finished_at == 22


def test_fairness_equal_nodes_differ_by_at_most_one():
    q = Q()
    for i in range(12):
        q.submit(f"t{i}")
    rng = random.Random(4)
    nodes = ["n1", "n2", "n3"]
    for n in nodes:  # every node is asking for work
        q(c.Claim(node=n, slots=8, at=0))
    for _ in range(200):
        q(c.Claim(node=rng.choice(nodes), slots=8, at=1))
        loads = [len(q.sm.running_on(n)) for n in nodes]
        assert max(loads) - min(loads) <= 1, loads
    assert sum(len(q.sm.running_on(n)) for n in nodes) == 12


def test_replicas_fed_the_same_log_are_identical_and_snapshots_round_trip():
    a, b = Q(), Q()
    rng = random.Random(9)
    replays = 0
    for i in range(300):
        op = rng.random()
        cmd: c.TaskCommand
        if op < 0.4:
            # some with idempotency keys from a small pool, so that repeats replay
            keyed = rng.random() < 0.5
            cmd = c.Submit(
                task_id=f"t{i}",
                type=TaskType.NOOP,
                input={},
                params=TaskParams(),
                owner="",
                at=i,
                priority=rng.randrange(10),
                idem_key=f"k{rng.randrange(20)}" if keyed else None,
                fingerprint="f" if keyed else None,
            )
        elif op < 0.7:
            cmd = c.Claim(node=rng.choice(["n1", "n2"]), slots=3, at=i)
        elif op < 0.85:
            running = [t for t in a.sm.tasks.values() if t.state == "running"]
            if not running:
                continue
            t = rng.choice(running)
            assert t.node is not None
            report = rng.choice(["complete", "fail", "release"])
            if report == "complete":
                cmd = c.Complete(t.id, t.attempt, t.node, at=i, result={})
            elif report == "fail":
                cmd = c.Fail(t.id, t.attempt, t.node, at=i, error="failed")
            else:
                cmd = c.Release(t.id, t.attempt, t.node, at=i, reason="")
        else:
            cmd = c.Cancel(f"t{rng.randrange(i + 1)}", at=i, by="?")
        answer = a.outcome(cmd)
        assert answer == b.outcome(cmd)
        replays += isinstance(answer, dict) and answer.get("replayed") is True
    assert a.sm.snapshot() == b.sm.snapshot()
    assert any(h[4].startswith("released by") for t in a.sm.tasks.values() for h in t.history)
    assert replays > 0
    restored = TaskQueue()
    restored.restore(a.sm.snapshot())
    assert restored.snapshot() == a.sm.snapshot()
    assert restored.counts() == a.sm.counts()
    # the restored queue claims in the same order
    for _ in range(5):
        claim = c.Claim(node="n9", slots=99, at=10_000)
        assert restored.apply(claim) == a.sm.apply(claim)


def test_malformed_commands_are_refused_instead_of_raising():
    # Entries that are not commands never reach the queue: NodeState refuses them
    # (an unknown tag; a submit without its fields) and the log goes on.
    state = NodeState(TaskQueue())
    for entry in (
        msgpack.packb([codec.CODEC_VERSION, "explode", {}]),
        msgpack.packb([codec.CODEC_VERSION, "submit", {}]),
    ):
        outcome = codec.outcome_from_wire(state.apply(1, entry))
        assert isinstance(outcome, Refusal) and outcome.code is RefusalCode.BAD_COMMAND
    assert state.tasks.tasks == {}
    # Commands that decode but cannot apply are refusals with a code and details.
    q = Q()
    with pytest.raises(Refusal) as err:
        q.submit("t", priority=12)
    assert err.value.code is RefusalCode.INVALID and err.value.details["field"] == "priority"
    q.submit("t")
    with pytest.raises(Refusal) as err:
        q.submit("t")
    assert err.value.code is RefusalCode.CONFLICT
