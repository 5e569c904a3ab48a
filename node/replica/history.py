"""The queue's recent past, rebuilt from the task records themselves: how many
tasks were in each state at evenly spaced instants, and histograms of wait and
run times.

Nothing is sampled in the background: every task carries submitted_at,
started_at and finished_at, so the curve for the last N minutes is the same on
every node, right after a restart, and for a dashboard opened a second ago.
Requeued tasks count as queued from their submission until their latest start
(the record keeps only that one), which is close enough for a chart.

Counting is done with sorted arrays and binary search: a task is in the queue at t
when it arrived by t and had not left by t, so queued(t) = #arrived(t) - #left(t)
— O(n log n) for n tasks, whatever the number of instants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from node.replica.tasks import Task
from node.replica.vocabulary import FINISHED, LATENCY_EDGES_MS

_NEVER = np.iinfo(np.int64).max


def history(tasks: Mapping[str, Task], now_ms: int, window_ms: int, points: int) -> dict[str, Any]:
    """{"t": [ms...], "states": {state: [count at each t]}, "latency": {...}}."""
    step = max(1, window_ms // max(1, points - 1))
    instants = np.array([now_ms - step * (points - 1 - i) for i in range(points)], dtype=np.int64)
    arrived, left_queue, finished, final_state = [], [], [], []
    waits, runs = [], []
    window_start = now_ms - window_ms
    for task in tasks.values():
        started, ended = task.started_at, task.finished_at
        arrived.append(task.submitted_at)
        if task.state == "queued":  # never started, or handed back: waiting since submission
            left_queue.append(_NEVER)
            finished.append(_NEVER)
            final_state.append("")
            continue
        left_queue.append(
            started if started is not None else (ended if ended is not None else _NEVER)
        )
        finished.append(ended if ended is not None else _NEVER)
        final_state.append(task.state if task.state in FINISHED else "")
        if ended is not None and ended >= window_start and started is not None:
            waits.append(started - task.submitted_at)
            runs.append(ended - started)
    states = {
        "queued": _count(arrived, instants) - _count(left_queue, instants),
        "running": _count(left_queue, instants) - _count(finished, instants),
    }
    for state in FINISHED:
        states[state] = _count([f for f, s in zip(finished, final_state) if s == state], instants)
    return {
        "t": instants.tolist(),
        "step_ms": step,
        "states": {name: counts.tolist() for name, counts in states.items()},
        "latency": {
            "edges_ms": list(LATENCY_EDGES_MS),
            "wait": _histogram(waits),
            "run": _histogram(runs),
            "window": "tasks finished in the window",
        },
    }


def _count(times: list[int], instants: np.ndarray) -> np.ndarray:
    """How many of `times` are <= each instant."""
    ordered = np.sort(np.array(times, dtype=np.int64))
    return np.searchsorted(ordered, instants, side="right").astype(np.int64)


def _histogram(values: list[int]) -> list[int]:
    edges = np.array(LATENCY_EDGES_MS[1:], dtype=np.int64)
    # bucket i holds edge[i] <= v < edge[i + 1]; values past the last edge join the last bucket
    index = np.minimum(
        np.searchsorted(edges, np.maximum(np.array(values, dtype=np.int64), 0), side="right"),
        len(edges) - 1,
    )
    counts: list[int] = np.bincount(index, minlength=len(edges)).astype(int).tolist()
    return counts
