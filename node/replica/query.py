"""Listing tasks: filters, sorting and cursor paging over the local replica.

Kept fast at 100,000 tasks without secondary indexes: the queue's dict is in
log order, so the default order (newest first) is a reversed walk that stops
once a page is full, with one cheap pass to count matches; other orders keep
only the best `offset + limit` matches in a heap instead of sorting them all.
`bench/api.py` measures it against SQLite with indexes on the same rows.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from node.replica.tasks import Task
from node.replica.vocabulary import INT64_MAX, TaskState

STATES = tuple(TaskState)

MAX_LIMIT = 500
MAX_QUERY_CHARS = 200
# sort key name -> value of a task (None sorts as the smallest value)
# Numeric keys pack the value and the log position into one int (ties keep log
# order): comparing ints is several times cheaper than comparing tuples.
_SEQ_BITS = 40
SORTS: dict[str, Callable[[Task], Any]] = {
    "submitted": lambda t: t.seq,
    "priority": lambda t: (t.priority << _SEQ_BITS) | t.seq,
    "started": lambda t: ((t.started_at or 0) << _SEQ_BITS) | t.seq,
    "finished": lambda t: ((t.finished_at or 0) << _SEQ_BITS) | t.seq,
    "waited": lambda t: (
        max(0, t.started_at - t.submitted_at) << _SEQ_BITS | t.seq
        if t.started_at is not None
        else t.seq
    ),
    "ran": lambda t: (
        max(0, t.finished_at - t.started_at) << _SEQ_BITS | t.seq
        if t.finished_at is not None and t.started_at is not None
        else t.seq
    ),
    "progress": lambda t: (int(t.progress * 1000) << _SEQ_BITS) | t.seq,
    "state": lambda t: (t.state, t.seq),
    "type": lambda t: (t.type, t.seq),
    "node": lambda t: (t.node or "", t.seq),
    "owner": lambda t: (t.owner, t.seq),
}

_PLAIN = {
    name: operator.attrgetter(attr)
    for name, attr in (
        ("priority", "priority"),
        ("state", "state"),
        ("type", "type"),
        ("owner", "owner"),
        ("progress", "progress"),
    )
}


class QueryError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TaskQuery:
    states: frozenset[str] | None = None
    types: frozenset[str] | None = None
    node: str | None = None
    owner: str | None = None
    priority: int | None = None
    text: str | None = None  # case-insensitive substring of id, query/prompt, owner, node, error
    since: int | None = None  # submitted_at >= since (ms)
    until: int | None = None  # submitted_at < until (ms)
    sort: str = "submitted"
    descending: bool = True
    limit: int = 50
    cursor: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str], owner_scope: str | None) -> TaskQuery:
        """From URL query parameters; `owner_scope` (a non-admin's name) overrides `owner`."""
        states = _set(params.get("state"))
        if states and not states <= set(STATES):
            raise QueryError("state", f"state must be among {', '.join(STATES)}")
        sort = params.get("sort", "-submitted")
        descending = sort.startswith("-")
        if sort.lstrip("-") not in SORTS:
            raise QueryError(
                "sort", f"sort must be one of {', '.join(SORTS)} (prefix - for descending)"
            )
        text = params.get("q") or None
        if text is not None and len(text) > MAX_QUERY_CHARS:
            raise QueryError("q", f"q is limited to {MAX_QUERY_CHARS} characters")
        return cls(
            states=states,
            types=_set(params.get("type")),
            node=params.get("node") or None,
            owner=owner_scope if owner_scope is not None else (params.get("owner") or None),
            priority=whole_number(params, "priority", 0, 9),
            text=text.lower() if text else None,
            since=whole_number(params, "since", 0, 2**63),
            until=whole_number(params, "until", 0, 2**63),
            sort=sort.lstrip("-"),
            descending=descending,
            limit=whole_number(params, "limit", 1, MAX_LIMIT) or 50,
            cursor=params.get("cursor") or None,
        )

    def select(self, tasks: Mapping[str, Task]) -> list[Task]:
        """The matching tasks in log order.  One comprehension per filter, each on
        what the previous left: a plain attribute test per task is several times
        cheaper than calling a combined predicate."""
        found = list(tasks.values())
        if self.states:
            states = self.states
            found = [t for t in found if t.state in states]
        if self.types:
            types = self.types
            found = [t for t in found if t.type in types]
        if self.owner is not None:
            owner = self.owner
            found = [t for t in found if t.owner == owner]
        if self.node is not None:
            node = self.node
            found = [t for t in found if t.node == node]
        if self.priority is not None:
            priority = self.priority
            found = [t for t in found if t.priority == priority]
        if self.since is not None:
            since = self.since
            found = [t for t in found if t.submitted_at >= since]
        if self.until is not None:
            until = self.until
            found = [t for t in found if t.submitted_at < until]
        if self.text is not None:
            text = self.text
            found = [
                t
                for t in found
                if text in t.search
                or (t.node is not None and text in t.node)
                or (t.error is not None and text in t.error.lower())
            ]
        return found


def run(tasks: Mapping[str, Task], query: TaskQuery) -> tuple[list[Task], str | None, int]:
    """(page, next_cursor, total matches)."""
    found = query.select(tasks)
    if query.sort == "submitted":
        return _by_log_order(found, query)
    offset = _cursor_value(query.cursor, "offset", INT64_MAX) if query.cursor else 0
    if query.sort in _PLAIN:
        # A C-level key and Python's stable sort (ties stay in log order, newest
        # first when descending) beat a Python key function per task.
        ordered = sorted(
            reversed(found) if query.descending else found,
            key=_PLAIN[query.sort],
            reverse=query.descending,
        )
        best = ordered[: offset + query.limit + 1]
    else:
        pick = heapq.nlargest if query.descending else heapq.nsmallest
        best = pick(offset + query.limit + 1, found, key=SORTS[query.sort])
    page = best[offset : offset + query.limit]
    more = len(best) > offset + query.limit
    return page, _encode({"offset": offset + query.limit}) if more else None, len(found)


def _by_log_order(found: list[Task], query: TaskQuery) -> tuple[list[Task], str | None, int]:
    # The cursor is the seq of the last task shown, so pages stay stable while new
    # tasks arrive; `found` is in log order, i.e. sorted by seq: bisect into it.
    after = _cursor_value(query.cursor, "seq", INT64_MAX) if query.cursor else None
    if query.descending:
        end = len(found) if after is None else bisect.bisect_left(found, after, key=_seq)
        page = found[max(0, end - query.limit) : end][::-1]
        more = end - query.limit > 0
    else:
        start = 0 if after is None else bisect.bisect_right(found, after, key=_seq)
        page = found[start : start + query.limit]
        more = start + query.limit < len(found)
    return page, _encode({"seq": page[-1].seq}) if more and page else None, len(found)


def _seq(task: Task) -> int:
    return task.seq


def summary(task: Task) -> dict[str, Any]:
    """What a task list shows: no result body, no history (GET /tasks/{id} has them)."""
    text = task.input.get("query") or task.input.get("prompt") or task.input.get("filename") or ""
    return {
        "id": task.id,
        "type": task.type,
        "state": task.state,
        "priority": task.priority,
        "owner": task.owner,
        "node": task.node,
        "attempt": task.attempt,
        "submitted_at": task.submitted_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "waited_ms": _waited(task),
        "ran_ms": _ran(task),
        "progress": task.progress,
        "progress_note": task.progress_note,
        "error": task.error,
        "input_excerpt": str(text)[:120],
    }


def _waited(task: Task) -> int | None:
    return task.started_at - task.submitted_at if task.started_at is not None else None


def _ran(task: Task) -> int | None:
    if task.started_at is None or task.finished_at is None:
        return None
    return task.finished_at - task.started_at


def _set(value: str | None) -> frozenset[str] | None:
    items = frozenset(v for v in (value or "").split(",") if v)
    return items or None


def whole_number(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(name, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise QueryError(name, f"{name} must be from {low} to {high}")
    return value


def _encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


_BAD_CURSOR = "cursor is not one this API returned for this listing; start again without it"


def _cursor_value(cursor: str, key: str, high: int) -> int:
    """The one whole number in 0..high that a cursor of this sort carries under `key`.
    A cursor is opaque to clients, so anything else is one made by hand (or for another
    sort): refused, never used in slicing or bisecting, where it would raise."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise QueryError("cursor", _BAD_CURSOR) from None
    value = data.get(key) if isinstance(data, dict) and len(data) == 1 else None
    if type(value) is not int or not 0 <= value <= high:
        raise QueryError("cursor", _BAD_CURSOR)
    return value


def statistics(
    tasks: Mapping[str, Task], counts: Mapping[TaskState, int], now_ms: int
) -> dict[str, Any]:
    """Counts, per-node counts, throughput over the last 1 and 5 minutes, and wait
    and run time percentiles of the tasks that finished in the last 5 minutes
    (all finished tasks when none did)."""
    by_node: dict[str, dict[str, int]] = {}
    recent: list[Task] = []
    finished: list[Task] = []
    window = now_ms - 300_000
    for task in tasks.values():
        if task.node is not None:
            per = by_node.get(task.node)
            if per is None:
                per = by_node[task.node] = dict.fromkeys(STATES, 0)
            per[task.state] += 1
        if task.finished_at is not None:
            finished.append(task)
            if task.finished_at >= window:
                recent.append(task)
    sample = recent or finished
    minute_ago = now_ms - 60_000
    done_1m = sum(
        1
        for t in recent
        if t.state == "completed" and t.finished_at is not None and t.finished_at >= minute_ago
    )
    done_5m = sum(1 for t in recent if t.state == "completed")
    return {
        **{state.value: n for state, n in counts.items()},
        "total": sum(counts.values()),
        "by_node": by_node,
        "throughput": {
            "completed_per_s_1m": round(done_1m / 60, 3),
            "completed_per_s_5m": round(done_5m / 300, 3),
        },
        "wait_ms": _percentiles([w for t in sample if (w := _waited(t)) is not None]),
        "run_ms": _percentiles([r for t in sample if (r := _ran(t)) is not None]),
        "window": "last 5 minutes" if recent else "all finished tasks",
    }


def _percentiles(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "count": 0}
    values.sort()

    def pick(q: float) -> int:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "count": len(values)}
