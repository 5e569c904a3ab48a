"""Tasks through the REST API of every node of a real 3-process cluster."""

from __future__ import annotations

import time

import pytest

from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path):
    c = NodeCluster(tmp_path, extra_toml="[tasks]\nslots = 2\n")
    c.start_all()
    c.wait_ready()
    yield c
    c.stop_all()


def wait_for(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def test_tasks_submitted_anywhere_run_once_spread_over_nodes(cluster):
    ids = []
    for i in range(30):
        status, task = cluster.request(
            cluster.ids[i % 3],
            "POST",
            "/api/v1/tasks",
            {"type": "noop", "input": {"duration_ms": 150}},
        )
        assert status == 201 and task["state"] == "queued", task
        ids.append(task["id"])

    def all_done():
        _status, page = cluster.request("n2", "GET", "/api/v1/tasks?state=completed&limit=500")
        return page["total"] == 30 and page

    wait_for(all_done, timeout=60)
    per_node: dict[str, int] = {}
    for task_id in ids:
        status, task = cluster.request("n3", "GET", f"/api/v1/tasks/{task_id}")
        assert status == 200 and task["state"] == "completed" and task["attempt"] == 1
        assert [h["state"] for h in task["history"]] == ["queued", "running", "completed"]
        per_node[task["node"]] = per_node.get(task["node"], 0) + 1
    assert set(per_node) == set(cluster.ids), per_node  # every node took work
    assert max(per_node.values()) - min(per_node.values()) <= 6, per_node
    status, stats = cluster.request("n1", "GET", "/api/v1/stats")
    assert stats["completed"] == 30 and stats["queued"] == 0


def test_cancel_queued_never_runs_and_errors_are_clear(cluster):
    # fill every slot (3 nodes x 2) with long tasks, then queue one more
    long = [
        cluster.request(
            "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 4000}}
        )[1]
        for _ in range(6)
    ]
    wait_for(lambda: cluster.request("n1", "GET", "/api/v1/stats")[1]["running"] == 6)
    status, victim = cluster.request(
        "n2", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 10}}
    )
    status, cancelled = cluster.request("n3", "DELETE", f"/api/v1/tasks/{victim['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    status, body = cluster.request("n1", "DELETE", f"/api/v1/tasks/{long[0]['id']}")
    assert status == 409 and body["error"]["details"]["state"] == "running"
    assert cluster.request("n1", "GET", "/api/v1/tasks/NOPE")[0] == 404
    status, body = cluster.request("n1", "POST", "/api/v1/tasks", {"type": "noop", "priority": 11})
    assert status == 422 and body["error"]["details"]["field"] == "priority"
    status, body = cluster.request("n1", "POST", "/api/v1/tasks", {"type": "teleport"})
    assert status == 422 and body["error"]["details"]["field"] == "type"
    wait_for(lambda: cluster.request("n1", "GET", "/api/v1/stats")[1]["completed"] == 6, timeout=30)
    status, task = cluster.request("n2", "GET", f"/api/v1/tasks/{victim['id']}")
    assert (
        task["state"] == "cancelled" and task["node"] is None and task["attempt"] == 0
    )  # it never ran
    # abort a running task: it stops at its next checkpoint
    status, slow = cluster.request(
        "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 20000}}
    )
    wait_for(
        lambda: (
            cluster.request("n1", "GET", f"/api/v1/tasks/{slow['id']}")[1].get("state") == "running"
        )
    )
    assert cluster.request("n2", "POST", f"/api/v1/tasks/{slow['id']}/abort")[0] == 200
    wait_for(
        lambda: (
            cluster.request("n1", "GET", f"/api/v1/tasks/{slow['id']}")[1].get("state")
            == "cancelled"
        ),
        timeout=5,
    )
    status, again = cluster.request("n3", "POST", f"/api/v1/tasks/{slow['id']}/retry")
    assert status == 201 and again["id"] != slow["id"] and again["input"] == slow["input"]


def test_without_a_majority_reads_work_marked_stale_and_writes_fail_clearly(cluster):
    status, task = cluster.request(
        "n3", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 0}}
    )
    assert status == 201
    wait_for(
        lambda: (
            cluster.request("n3", "GET", f"/api/v1/tasks/{task['id']}")[1].get("state")
            == "completed"
        )
    )
    cluster.kill("n1")
    cluster.kill("n2")
    time.sleep(1.5)  # the survivor notices the leader is gone
    status, body, headers = cluster.request_with_headers("n3", "GET", f"/api/v1/tasks/{task['id']}")
    assert status == 200 and body["state"] == "completed"
    assert headers.get("X-Ragraft-Stale") == "true"
    started = time.monotonic()
    status, body = cluster.request("n3", "POST", "/api/v1/tasks", {"type": "noop"})
    assert status == 503 and body["error"]["code"] == "no_quorum"
    assert "majority" in body["error"]["message"]
    assert time.monotonic() - started < 8


def test_http_refusals_are_json_errors(tmp_path):
    from tests.nodecluster import NodeCluster

    cluster = NodeCluster(tmp_path, size=1, extra_toml="[rag]\nmax_upload_mb = 1\n")
    cluster.start_all()
    try:
        cluster.wait_ready()
        status, body = cluster.request("n1", "GET", "/api/v1/nope")
        assert (
            status == 404
            and body["error"]["code"] == "not_found"
            and "/openapi.json" in body["error"]["message"]
        )
        status, body = cluster.request("n1", "PUT", "/api/v1/tasks")
        assert status == 405 and body["error"]["code"] == "method_not_allowed"
        status, body = cluster.request(
            "n1",
            "POST",
            "/api/v1/tasks",
            {"type": "noop", "input": {"pad": "x" * (3 * 1024 * 1024)}},
        )
        assert status == 413 and body["error"]["code"] == "too_large"
        status, body = cluster.request(
            "n1", "POST", "/api/v1/tasks", {"type": "qa", "input": {"query": "q" * 9000}}
        )
        assert status == 422 and body["error"]["details"]["field"] == "input.query"
    finally:
        cluster.stop_all()


def _submit(cluster, count: int, duration_ms: int) -> list[str]:
    ids = []
    for i in range(count):
        status, task = cluster.request(
            cluster.ids[i % 3],
            "POST",
            "/api/v1/tasks",
            {"type": "noop", "input": {"duration_ms": duration_ms}},
        )
        assert status == 201, task
        ids.append(task["id"])
    return ids


def _finished(cluster, ids: list[str], timeout: float = 60) -> dict[str, dict]:
    def done():
        tasks = {i: cluster.request("n1", "GET", f"/api/v1/tasks/{i}")[1] for i in ids}
        return tasks if all(t.get("state") == "completed" for t in tasks.values()) else None

    return wait_for(done, timeout=timeout, interval=0.3)


def _ragraft(cluster, *args: str):
    import os
    import subprocess
    import sys

    from tests.nodecluster import ADMIN_PASSWORD

    return subprocess.run(
        [sys.executable, "-m", "node.cli.main", *args, "--config", str(cluster.config)],
        cwd=cluster.root,
        env={**os.environ, "RAGRAFT_ADMIN_PASSWORD": ADMIN_PASSWORD},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_drain_lets_running_tasks_finish_gives_no_new_ones_and_moves_the_leadership(cluster):
    """`ragraft node drain` of the leader while it runs tasks: they finish there, nothing
    new is granted to it, the leadership moves to another voter, and `resume` gives it
    work again; the cluster writes format 2 (the drain command's) because every voter
    announces it reads it."""
    leader = cluster.wait_ready()
    view = cluster.request("n1", "GET", "/api/v1/cluster")[1]
    assert view["format"]["in_use"] == view["format"]["newest"] >= 2, view["format"]
    first = _submit(cluster, 6, 2500)
    wait_for(
        lambda: any(
            n["id"] == leader and n["running"]
            for n in cluster.request("n1", "GET", "/api/v1/nodes")[1]["items"]
        )
    )
    other = next(n for n in cluster.ids if n != leader)
    for bad in ({"wait_s": -1}, {"wait_s": "soon"}, {"wait_s": 1, "force": True}):
        status, body = cluster.request(other, "POST", f"/api/v1/nodes/{leader}/drain", bad)
        assert status == 422 and body["error"]["details"]["field"] in ("wait_s", "force"), body
    nodes = {n["id"]: n for n in cluster.request(other, "GET", "/api/v1/nodes")[1]["items"]}
    assert not nodes[leader]["draining"]  # a refused request changed nothing
    done = _ragraft(cluster, "node", "drain", leader, "--wait", "60", "--url", cluster.api[other])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{leader} is drained" in done.stdout, done.stdout
    after = cluster.request(other, "GET", "/api/v1/cluster")[1]
    assert after["leader"] not in (None, leader), after
    nodes = {n["id"]: n for n in cluster.request(other, "GET", "/api/v1/nodes")[1]["items"]}
    assert nodes[leader]["draining"] and nodes[leader]["running"] == []
    assert all(nodes[n]["format"] == view["format"]["newest"] for n in cluster.ids)
    ran_there = [t for t in _finished(cluster, first).values() if t["node"] == leader]
    assert ran_there and all(t["attempt"] == 1 for t in ran_there)  # finished, not requeued
    second = _submit(cluster, 8, 200)
    assert all(t["node"] != leader for t in _finished(cluster, second).values())

    missing = _ragraft(cluster, "node", "drain", "n9", "--url", cluster.api[other])
    assert missing.returncode != 0 and "no node 'n9'" in missing.stderr
    resumed = _ragraft(cluster, "node", "resume", leader, "--url", cluster.api[other])
    assert resumed.returncode == 0 and "takes tasks again" in resumed.stdout, resumed.stderr
    third = _submit(cluster, 12, 400)
    assert any(t["node"] == leader for t in _finished(cluster, third).values())
