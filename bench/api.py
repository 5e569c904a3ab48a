"""Task listing at 100,000 tasks: GET /api/v1/tasks through the real handler (aiohttp,
JSON encoding included) against SQLite answering the same queries from indexed
rows (the reference an operator might reach for), side by side in one run.
Also the dashboard's chart query, GET /api/v1/stats/history (tasks per state at 60
instants over 10 minutes), uncached, against SQLite counting the same at each instant.

    python -m bench.api [--tasks 100000] [--rounds 30]

Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.http.app import stale_marker
from node.http.errors import json_errors
from node.http.tasks import TaskAPI
from node.replica import commands as c
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskType

QUERIES: list[tuple[str, str, str]] = [
    # (name, our query string, SQL where/order/limit)
    ("newest", "limit=50", "ORDER BY seq DESC LIMIT 51"),
    ("state", "state=queued&limit=50", "WHERE state='queued' ORDER BY seq DESC LIMIT 51"),
    (
        "type+owner",
        "type=qa&owner=alice&limit=50",
        "WHERE type='qa' AND owner='alice' ORDER BY seq DESC LIMIT 51",
    ),
    ("text", "q=4242&limit=50", "WHERE search LIKE '%4242%' ORDER BY seq DESC LIMIT 51"),
    ("by priority", "sort=-priority&limit=50", "ORDER BY priority DESC, seq DESC LIMIT 51"),
    ("page 20", None, None),  # filled in: deep cursor paging
]


def populate(n: int, seed: int = 1) -> TaskQueue:
    rng = random.Random(seed)
    queue = TaskQueue()
    types = [TaskType.QA, TaskType.GENERATE, TaskType.RETRIEVE, TaskType.NOOP]
    for i in range(n):
        queue.apply(
            c.Submit(
                task_id=f"T{i:09d}",
                type=rng.choice(types),
                input={"query": f"question {i} about lighthouses"},
                params=TaskParams(),
                priority=rng.randint(0, 9),
                owner=rng.choice(["alice", "bob", "carol", "admin"]),
                at=1_000_000 + i,
            )
        )
    # about a third finish, a few run, the rest wait
    for _ in range(n // 3 // 100):
        node = rng.choice(["n1", "n2", "n3"])
        granted = queue.apply(c.Claim(node=node, slots=100, at=2_000_000, max=100))["tasks"]
        for task in granted[:97]:
            queue.apply(
                c.Complete(
                    task_id=task["id"],
                    attempt=task["attempt"],
                    node=task["node"],
                    at=2_100_000,
                    result={"answer": "x"},
                )
            )
    return queue


def sqlite_copy(queue: TaskQueue) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE t (id TEXT PRIMARY KEY, seq INT, type TEXT, state TEXT, owner TEXT, "
        "node TEXT, priority INT, submitted_at INT, started_at INT, finished_at INT, "
        "progress REAL, search TEXT)"
    )
    db.executemany(
        "INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                t.id,
                t.seq,
                t.type,
                t.state,
                t.owner,
                t.node,
                t.priority,
                t.submitted_at,
                t.started_at,
                t.finished_at,
                t.progress,
                t.search,
            )
            for t in queue.tasks.values()
        ],
    )
    for column in ("seq", "state, seq", "type, owner, seq", "priority, seq", "owner, seq"):
        db.execute(f"CREATE INDEX ix_{column.replace(', ', '_')} ON t ({column})")
    return db


def sqlite_page(db: sqlite3.Connection, clause: str) -> bytes:
    cursor = db.execute(f"SELECT * FROM t {clause}")
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    total = db.execute(f"SELECT COUNT(*) FROM t {clause.split('ORDER BY')[0]}").fetchone()[0]
    return json.dumps({"items": rows[:50], "total": total}).encode()


def sqlite_history(db: sqlite3.Connection, instants: list[int]) -> bytes:
    """Tasks per state at each instant, as one would ask SQLite: one aggregate per instant."""
    counts = []
    for t in instants:
        counts.append(
            db.execute(
                "SELECT SUM(CASE WHEN submitted_at <= :t AND (state = 'queued' OR "
                "COALESCE(started_at, finished_at, 9e18) > :t) THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN state != 'queued' AND started_at <= :t "
                "AND COALESCE(finished_at, 9e18) > :t THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN state = 'completed' AND finished_at <= :t THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN state = 'failed' AND finished_at <= :t THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN state = 'cancelled' AND finished_at <= :t THEN 1 ELSE 0 END) FROM t",
                {"t": t},
            ).fetchone()
        )
    return json.dumps(counts).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(queue: TaskQueue, db: sqlite3.Connection, rounds: int) -> dict:
    # Reads never touch Raft: a stand-in replica holding the state is enough.
    replica: Any = SimpleNamespace(state=NodeState(queue), leader="n1", node_id="n1")
    api = TaskAPI(replica, "n1")
    app = web.Application(middlewares=[json_errors, stale_marker(replica)])
    api.routes(app)
    figures: dict = {}
    async with TestClient(TestServer(app)) as client:
        first = await (await client.get("/api/v1/tasks?limit=50")).json()
        cursor = first["next_cursor"]
        for _ in range(19):
            cursor = (await (await client.get(f"/api/v1/tasks?limit=50&cursor={cursor}")).json())[
                "next_cursor"
            ]
        last_seq = (
            queue.tasks[
                (await (await client.get(f"/api/v1/tasks?limit=50&cursor={cursor}")).json())[
                    "items"
                ][0]["id"]
            ].seq
            + 1
        )
        for name, ours, clause in QUERIES:
            if name == "page 20":
                ours, clause = (
                    f"limit=50&cursor={cursor}",
                    f"WHERE seq < {last_seq} ORDER BY seq DESC LIMIT 51",
                )
            mine, ref = [], []
            for _ in range(rounds):  # alternate, so load spikes hit both sides alike
                started = time.perf_counter()
                response = await client.get(f"/api/v1/tasks?{ours}")
                await response.read()
                mine.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                sqlite_page(db, clause)
                ref.append((time.perf_counter() - started) * 1000)
            figures[name] = {
                "ours_p50_ms": round(statistics.median(mine), 2),
                "ours_p95_ms": round(percentile(mine, 0.95), 2),
                "sqlite_p50_ms": round(statistics.median(ref), 2),
                "sqlite_p95_ms": round(percentile(ref, 0.95), 2),
            }
            figures[name]["ours_vs_sqlite_p50"] = round(
                figures[name]["sqlite_p50_ms"] / max(figures[name]["ours_p50_ms"], 1e-6), 2
            )
        mine, ref = [], []
        for _ in range(max(3, rounds // 5)):
            api._history_cache.clear()  # measure the work, not the one-second cache
            started = time.perf_counter()
            body = await (await client.get("/api/v1/stats/history?minutes=10&points=60")).json()
            mine.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            sqlite_history(db, body["t"])
            ref.append((time.perf_counter() - started) * 1000)
        figures["history"] = {
            "ours_p50_ms": round(statistics.median(mine), 2),
            "ours_p95_ms": round(percentile(mine, 0.95), 2),
            "sqlite_p50_ms": round(statistics.median(ref), 2),
            "sqlite_p95_ms": round(percentile(ref, 0.95), 2),
        }
        figures["history"]["ours_vs_sqlite_p50"] = round(
            figures["history"]["sqlite_p50_ms"] / max(figures["history"]["ours_p50_ms"], 1e-6), 2
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"building {args.tasks:,} tasks...", file=sys.stderr, flush=True)
    queue = populate(args.tasks)
    db = sqlite_copy(queue)
    figures = asyncio.run(measure(queue, db, args.rounds))
    print(
        f"{'query':<12} {'ours p50':>9} {'ours p95':>9} "
        f"{'sqlite p50':>11} {'sqlite p95':>11} {'ratio':>6}"
    )
    for name, f in figures.items():
        print(
            f"{name:<12} {f['ours_p50_ms']:>9} {f['ours_p95_ms']:>9} {f['sqlite_p50_ms']:>11} "
            f"{f['sqlite_p95_ms']:>11} {f['ours_vs_sqlite_p50']:>6}"
        )
    worst = max(f["ours_p95_ms"] for f in figures.values())
    print(json.dumps({"tasks": args.tasks, "queries": figures, "worst_p95_ms": worst}))


if __name__ == "__main__":
    main()
