"""Cluster benchmark: `noop` tasks through the REST API of all three nodes.

    python -m bench.cluster [--seconds 10] [--quick]

Measures, on a fresh 3-process cluster on loopback: submit->completed latency
(p50/p99, from the tasks' own timestamps), completed tasks/s, tasks per node
(fairness), the time until submissions succeed again after kill -9 of the
leader and of a follower, and the time until a killed node's running tasks are
requeued.  Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from tests.nodecluster import NodeCluster


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def submit_loop(
    cluster: NodeCluster,
    nodes: list[str],
    stop: threading.Event,
    out: list,
    offset: int,
    duration_ms: int = 0,
) -> None:
    i = offset
    while not stop.is_set():
        node = nodes[i % len(nodes)]
        i += 1
        try:
            status, task = cluster.request(
                node,
                "POST",
                "/api/v1/tasks",
                {"type": "noop", "input": {"duration_ms": duration_ms}},
                timeout=5,
            )
        except OSError:
            continue
        if status == 201:
            out.append((time.monotonic(), task["id"]))


def throughput(cluster: NodeCluster, seconds: float, threads: int) -> dict:
    stop = threading.Event()
    submitted: list = []
    workers = [
        threading.Thread(target=submit_loop, args=(cluster, cluster.ids, stop, submitted, k))
        for k in range(threads)
    ]
    start = time.monotonic()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    # wait for the queue to drain, then read every task's own timestamps
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = cluster.request("n1", "GET", "/api/v1/stats")[1]
        if stats["queued"] == 0 and stats["running"] == 0:
            break
        time.sleep(0.2)
    latencies, per_node, finished = [], {}, []
    cursor = None
    while True:
        path = "/api/v1/tasks?state=completed&limit=500" + (f"&cursor={cursor}" if cursor else "")
        page = cluster.request("n2", "GET", path)[1]
        for task in page["items"]:
            latencies.append(task["finished_at"] - task["submitted_at"])
            per_node[task["node"]] = per_node.get(task["node"], 0) + 1
            finished.append(task["finished_at"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    span = (max(finished) - min(finished)) / 1000 if len(finished) > 1 else seconds
    return {
        "submitted": len(submitted),
        "completed": len(latencies),
        "tasks_per_s": round(len(latencies) / max(span, 1e-9), 1),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
        "per_node": per_node,
        "fairness_max_min_ratio": round(max(per_node.values()) / max(1, min(per_node.values())), 3)
        if per_node
        else None,
        "wall_s": round(time.monotonic() - start, 1),
    }


def failover(cluster: NodeCluster, victim_role: str) -> float:
    """Seconds from kill -9 until a submission to a survivor succeeds again."""
    leader = cluster.wait_ready()
    victim = (
        leader
        if victim_role == "leader"
        else next(n for n in cluster.ids if n != leader and n in cluster.procs)
    )
    survivors = [n for n in cluster.procs if n != victim]
    cluster.kill(victim)
    killed = time.monotonic()
    i = 0
    while time.monotonic() - killed < 30:
        node = survivors[i % len(survivors)]
        i += 1
        try:
            status, _ = cluster.request(node, "POST", "/api/v1/tasks", {"type": "noop"}, timeout=5)
        except OSError:
            continue
        if status == 201:
            recovered = time.monotonic() - killed
            cluster.start(victim)
            cluster.wait_ready()
            return round(recovered, 3)
        time.sleep(0.01)
    raise RuntimeError(f"no successful submission within 30 s after killing the {victim_role}")


def requeue_time(cluster: NodeCluster) -> float | None:
    """Seconds from kill -9 of a node running tasks until they are queued/running elsewhere."""
    leader = cluster.wait_ready()
    ids = [
        cluster.request(
            cluster.ids[i % 3],
            "POST",
            "/api/v1/tasks",
            {"type": "noop", "input": {"duration_ms": 30_000}},
        )[1]["id"]
        for i in range(6)
    ]
    deadline = time.monotonic() + 15
    victim, theirs = None, []
    while time.monotonic() < deadline and not theirs:
        tasks = [cluster.request(leader, "GET", f"/api/v1/tasks/{t}")[1] for t in ids]
        theirs = [t["id"] for t in tasks if t["state"] == "running" and t["node"] != leader]
        victim = next((t["node"] for t in tasks if t["id"] in theirs), None)
        time.sleep(0.1)
    if not theirs:
        return None
    theirs = [
        t
        for t in theirs
        if cluster.request(leader, "GET", f"/api/v1/tasks/{t}")[1]["node"] == victim
    ]
    cluster.kill(victim)
    killed = time.monotonic()
    while time.monotonic() - killed < 60:
        tasks = [cluster.request(leader, "GET", f"/api/v1/tasks/{t}")[1] for t in theirs]
        if all(t["node"] != victim and t["attempt"] >= 2 or t["state"] == "queued" for t in tasks):
            elapsed = time.monotonic() - killed
            for t in ids:
                cluster.request(leader, "POST", f"/api/v1/tasks/{t}/abort")
            return round(elapsed, 3)
        time.sleep(0.05)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    with tempfile.TemporaryDirectory(prefix="ragraft-bench-") as tmp:
        cluster = NodeCluster(Path(tmp), extra_toml="[tasks]\nslots = 4\n")
        cluster.start_all()
        try:
            cluster.wait_ready()
            load = throughput(cluster, seconds, args.threads)
            leader_failover = failover(cluster, "leader")
            follower_failover = failover(cluster, "follower")
            requeue = requeue_time(cluster)
        finally:
            cluster.stop_all()
    figures = {
        **{k: v for k, v in load.items() if k != "per_node"},
        "tasks_per_node": load["per_node"],
        "failover_leader_s": leader_failover,
        "failover_follower_s": follower_failover,
        "requeue_dead_node_s": requeue,
    }
    print(f"{'figure':32} value")
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
