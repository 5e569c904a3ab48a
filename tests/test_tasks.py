"""The replicated task queue (node/tasks.py) as a state machine, without Raft."""

from __future__ import annotations

import random

import msgpack

from node.tasks import TaskQueue


class Q:
    """Feeds commands the way the log would: msgpack in, dict out."""

    def __init__(self) -> None:
        self.sm = TaskQueue()
        self.index = 0

    def __call__(self, **cmd):
        self.index += 1
        return self.sm.apply(self.index, msgpack.packb(cmd, use_bin_type=True))

    def submit(self, task_id: str, priority: int = 5, at: int = 0, **kw):
        return self(
            op="submit",
            id=task_id,
            type=kw.pop("type", "noop"),
            input={},
            priority=priority,
            at=at,
            **kw,
        )

    def claim(self, node: str, at: int = 0, slots: int = 1):
        return self(op="claim", node=node, at=at, slots=slots)["task"]


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
    q(op="progress", id="t1", attempt=1, node="n1", progress=0.5, note="half")
    done = q(op="complete", id="t1", attempt=1, node="n1", result={"answer": 42}, at=3)
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
    q(op="node", node="n1", alive=False, at=5)  # n1 declared dead: requeued, attempt stays 1
    again = q.claim("n2", at=6)
    assert again["id"] == "t" and again["attempt"] == 2 and again["node"] == "n2"
    late = q(op="complete", id="t", attempt=1, node="n1", result="late", at=7)
    assert late["error"]["code"] == "stale_attempt"
    assert q.sm.get("t").state == "running"
    assert q(op="complete", id="t", attempt=2, node="n2", result="ok", at=8)["result"] == "ok"


def test_cancel_only_queued_with_clear_errors():
    q = Q()
    q.submit("queued")
    q.submit("running")
    q(op="claim", node="n1", slots=1, at=0)  # takes "queued" (older)
    assert q(op="cancel", id="running", at=1)["state"] == "cancelled"
    err = q(op="cancel", id="queued", at=1)["error"]
    assert err["code"] == "conflict" and "running" in err["message"] and "abort" in err["message"]
    q(op="complete", id="queued", attempt=1, node="n1", at=2)
    err = q(op="cancel", id="queued", at=3)["error"]
    assert err["details"]["state"] == "completed"
    assert q(op="cancel", id="nope", at=3)["error"]["code"] == "not_found"
    # a cancelled task is never claimed
    assert q.claim("n2") is None


def test_retry_with_backoff_then_fail():
    q = Q()
    q.submit("t", max_attempts=2)
    q.claim("n1", at=1000)
    r = q(op="fail", id="t", attempt=1, node="n1", error="boom", retryable=True, at=1000)
    assert r["state"] == "queued" and r["not_before"] == 1000 + q.sm.policy.delay(1)
    assert q.claim("n1", at=1500) is None  # still backing off
    assert q.claim("n1", at=r["not_before"])["attempt"] == 2
    final = q(op="fail", id="t", attempt=2, node="n1", error="boom again", retryable=True, at=5000)
    assert final["state"] == "failed" and final["error"] == "boom again"


def test_bad_input_is_not_retried():
    q = Q()
    q.submit("t", max_attempts=5)
    q.claim("n1")
    r = q(op="fail", id="t", attempt=1, node="n1", error="empty document", retryable=False, at=1)
    assert r["state"] == "failed"


def test_abort_running_and_queued():
    q = Q()
    q.submit("run")
    q.submit("wait")
    q.claim("n1")
    assert q(op="abort", id="wait", at=1)["state"] == "cancelled"
    flagged = q(op="abort", id="run", at=1)
    assert flagged["state"] == "running" and flagged["abort_requested"]
    assert q(op="progress", id="run", attempt=1, node="n1", progress=0.1)["abort_requested"]
    assert (
        q(op="fail", id="run", attempt=1, node="n1", error="aborted", aborted=True, at=2)["state"]
        == "cancelled"
    )


def test_dead_node_tasks_are_requeued_and_expire_cleans_up():
    q = Q()
    for i in range(3):
        q.submit(f"t{i}")
    q.claim("n1", slots=3)
    q.claim("n1", slots=3)
    r = q(op="node", node="n1", alive=False, at=10)
    assert sorted(r["requeued"]) == ["t0", "t1"]
    assert q.sm.counts()["queued"] == 3
    for i in range(3):
        t = q.claim("n2", slots=3, at=11)
        q(op="complete", id=t["id"], attempt=t["attempt"], node="n2", at=20 + i)
    assert q(op="expire", before=22)["expired"] == 2
    assert len(q.sm.tasks) == 1 and next(iter(q.sm.tasks.values())).finished_at == 22


def test_fairness_equal_nodes_differ_by_at_most_one():
    q = Q()
    for i in range(12):
        q.submit(f"t{i}")
    rng = random.Random(4)
    nodes = ["n1", "n2", "n3"]
    for n in nodes:  # every node is asking for work
        q(op="claim", node=n, slots=8, at=0)
    for _ in range(200):
        q(op="claim", node=rng.choice(nodes), slots=8, at=1)
        loads = [len(q.sm.running_on(n)) for n in nodes]
        assert max(loads) - min(loads) <= 1, loads
    assert sum(len(q.sm.running_on(n)) for n in nodes) == 12


def test_replicas_fed_the_same_log_are_identical_and_snapshots_round_trip():
    a, b = Q(), Q()
    rng = random.Random(9)
    replays = 0
    for i in range(300):
        op = rng.random()
        if op < 0.4:
            # some with idempotency keys from a small pool, so that repeats replay
            key = (
                {"idem_key": f"k{rng.randrange(20)}", "fingerprint": "f"}
                if rng.random() < 0.5
                else {}
            )
            cmds = [
                dict(op="submit", id=f"t{i}", type="noop", priority=rng.randrange(10), at=i, **key)
            ]
        elif op < 0.7:
            cmds = [dict(op="claim", node=rng.choice(["n1", "n2"]), slots=3, at=i)]
        elif op < 0.85:
            running = [t for t in a.sm.tasks.values() if t.state == "running"]
            if not running:
                continue
            t = rng.choice(running)
            report = rng.choice(["complete", "fail", "release"])
            cmds = [{"op": report, "id": t.id, "attempt": t.attempt, "node": t.node, "at": i}]
        else:
            cmds = [dict(op="cancel", id=f"t{rng.randrange(i + 1)}", at=i)]
        for cmd in cmds:
            answer = a(**cmd)
            assert answer == b(**cmd)
            replays += isinstance(answer, dict) and answer.get("replayed") is True
    assert a.sm.snapshot() == b.sm.snapshot()
    assert any(h[4].startswith("released by") for t in a.sm.tasks.values() for h in t.history)
    assert replays > 0
    c = TaskQueue()
    c.restore(a.sm.snapshot())
    assert c.snapshot() == a.sm.snapshot()
    assert c.counts() == a.sm.counts()
    # the restored queue claims in the same order
    for i in range(5):
        cmd = msgpack.packb(dict(op="claim", node="n9", slots=99, at=10_000), use_bin_type=True)
        assert c.apply(1, cmd) == a.sm.apply(1, cmd)


def test_malformed_commands_answer_errors_instead_of_raising():
    q = Q()
    assert q(op="explode")["error"]["code"] == "bad_command"
    assert q(op="submit")["error"]["code"] == "bad_command"
    assert q.submit("t", priority=12)["error"]["details"]["field"] == "priority"
    q.submit("t")
    assert q.submit("t")["error"]["code"] == "conflict"
