"""Kill -9 a node (the leader too) under a steady submit-and-execute load: no
acknowledged task is lost, each reaches exactly one terminal state, the
survivors accept submissions again within 2 s, the dead node's running tasks
are requeued, and the queue drains."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("victim_role", ["leader", "follower"])
def test_kill_a_node_under_load(tmp_path, victim_role):
    cluster = NodeCluster(tmp_path, extra_toml="[tasks]\nslots = 2\n")
    cluster.start_all()
    try:
        leader = cluster.wait_ready()
        victim = leader if victim_role == "leader" else next(n for n in cluster.ids if n != leader)
        survivors = [n for n in cluster.ids if n != victim]
        live = list(cluster.ids)
        acked: dict[str, float] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def submit(k: int) -> None:
            i = k
            while not stop.is_set():
                node = live[i % len(live)]
                i += 1
                issued = time.monotonic()
                try:
                    status, task = cluster.request(
                        node,
                        "POST",
                        "/api/v1/tasks",
                        {"type": "noop", "input": {"duration_ms": 300}},
                        timeout=5,
                    )
                except OSError:
                    continue
                if status == 201:
                    with lock:
                        acked[task["id"]] = issued
                time.sleep(0.05)

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        # kill the victim while it is running something: its tasks must be requeued
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status, page = cluster.request(
                survivors[0], "GET", f"/api/v1/tasks?state=running&node={victim}"
            )
            # both of its slots busy if possible, so that not all can finish before the kill
            if page["total"] >= (2 if time.monotonic() < deadline - 10 else 1):
                break
            time.sleep(0.02)
        assert page["total"] >= 1, "the victim never ran a task"
        cluster.kill(victim)
        killed = time.monotonic()
        # what the survivors still see running there was lost with the process
        status, page = cluster.request(
            survivors[0], "GET", f"/api/v1/tasks?state=running&node={victim}"
        )
        victims_tasks = [t["id"] for t in page["items"]]
        assert victims_tasks, (
            "the victim's tasks all finished just before the kill; nothing to requeue"
        )
        live[:] = survivors
        time.sleep(5)
        stop.set()
        for t in threads:
            t.join()
        after = sorted(issued for issued in acked.values() if issued > killed)
        assert after, "no submission succeeded after the kill"
        # the first submission issued after the kill that succeeded was issued within 2 s
        # of the kill (submitters keep trying every 50 ms)
        assert after[0] - killed < 2.0, after[0] - killed

        def drained() -> bool:
            stats = cluster.request(survivors[0], "GET", "/api/v1/stats")[1]
            return stats["queued"] == 0 and stats["running"] == 0

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not drained():
            time.sleep(0.25)
        assert drained(), cluster.request(survivors[0], "GET", "/api/v1/stats")[1]
        for task_id in acked:
            status, task = cluster.request(survivors[1], "GET", f"/api/v1/tasks/{task_id}")
            assert status == 200, f"acknowledged task {task_id} lost"
            assert task["state"] == "completed", task
            finals = [
                h for h in task["history"] if h["state"] in ("completed", "failed", "cancelled")
            ]
            assert len(finals) == 1, task["history"]
        for task_id in victims_tasks:
            task = cluster.request(survivors[1], "GET", f"/api/v1/tasks/{task_id}")[1]
            assert task["attempt"] >= 2 and task["node"] != victim, task
            requeue = next(h for h in task["history"] if "died" in (h["note"] or ""))
            print(
                f"\n{victim_role} {victim} killed; task {task_id} requeued "
                f"{(requeue['at'] / 1000 - time.time() + time.monotonic()) - killed:.2f} s after the kill"
            )
        status, nodes = cluster.request(survivors[0], "GET", "/api/v1/nodes")
        assert {n["id"]: n["status"] for n in nodes["items"]}[victim] == "dead"
    finally:
        cluster.stop_all()


def test_a_stopping_node_hands_its_running_tasks_back_at_once(tmp_path):
    """SIGTERM (Ctrl-C) on a node running long tasks: they are requeued by a committed
    entry before it exits, so others run them without waiting for failure detection."""
    from tests.nodecluster import NodeCluster

    cluster = NodeCluster(tmp_path, extra_toml="[tasks]\nslots = 1\n")
    cluster.start_all()
    try:
        cluster.wait_ready()
        ids = [
            cluster.request(
                "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 4000}}
            )[1]["id"]
            for _ in range(3)
        ]
        deadline = time.monotonic() + 10
        victim_task = None
        while time.monotonic() < deadline and victim_task is None:
            for task_id in ids:
                task = cluster.request("n1", "GET", f"/api/v1/tasks/{task_id}")[1]
                if task["state"] == "running" and task["node"] == "n3":
                    victim_task = task_id
            time.sleep(0.1)
        assert victim_task, "n3 never ran a task"
        stopped = time.monotonic()
        proc = cluster.procs.pop("n3")
        proc.terminate()
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()  # popped from cluster.procs: stop_all would not reap it
            proc.wait()
            pytest.fail(f"n3 still running 10 s after SIGTERM; log in {tmp_path / 'n3.log'}")
        # a clean shutdown, not a crash (1), a traceback or a death by signal (< 0)
        assert code == 0, f"n3 exited with {code} on SIGTERM; log in {tmp_path / 'n3.log'}"
        assert time.monotonic() - stopped < 6  # no wait for a long task to finish
        task = cluster.request("n1", "GET", f"/api/v1/tasks/{victim_task}")[1]
        assert task["state"] in ("queued", "running") and task["node"] != "n3"
        assert any("requeued" in (h["note"] or "") for h in task["history"])
        deadline = time.monotonic() + 30
        while (
            cluster.request("n1", "GET", f"/api/v1/tasks/{victim_task}")[1].get("state")
            != "completed"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        cluster.stop_all()
