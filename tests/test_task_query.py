"""Task listing: filters, sorts and cursors over a real TaskQueue."""

from __future__ import annotations

import pytest

from node.replica import commands as c
from node.replica import query as task_query
from node.replica.query import QueryError, TaskQuery
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskType

TYPES = (TaskType.QA, TaskType.NOOP, TaskType.RETRIEVE)


@pytest.fixture(scope="module")
def queue() -> TaskQueue:
    q = TaskQueue()
    for i in range(1000):
        q.apply(
            c.Submit(
                task_id=f"T{i:05d}",
                type=TYPES[i % 3],
                input={"query": f"question number {i}"},
                params=TaskParams(),
                priority=i % 10,
                owner=("alice", "bob")[i % 2],
                at=1_000 + i,
            )
        )
    granted = q.apply(c.Claim(node="n1", slots=50, at=5_000, max=50))["tasks"]
    for task in granted[:20]:
        q.apply(c.Complete(task["id"], task["attempt"], node="n1", at=6_000, result={}))
    return q


def page(queue: TaskQueue, scope: str | None = None, **params: str) -> tuple[list, str | None, int]:
    return task_query.run(queue.tasks, TaskQuery.from_params(params, scope))


def test_default_is_newest_first_and_cursors_walk_every_match_once(queue: TaskQueue) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        items, cursor, total = page(queue, limit="300", **({"cursor": cursor} if cursor else {}))
        assert total == 1000
        seen += [t.id for t in items]
        if cursor is None:
            break
    assert seen == [f"T{i:05d}" for i in reversed(range(1000))]


def test_filters_combine(queue: TaskQueue) -> None:
    items, _, total = page(queue, type="qa", priority="3", limit="500")
    assert total == len(items) == sum(1 for i in range(1000) if i % 3 == 0 and i % 10 == 3)
    items, _, total = page(queue, state="completed,running")
    assert total == 50 and all(t.node == "n1" for t in items)
    _, _, total = page(queue, q="NUMBER 42", since="1000", until="1500")
    assert total == len([i for i in range(500) if "number 42" in f"question number {i}"])
    items, _, total = page(queue, owner="alice", type="noop")
    assert all(t.owner == "alice" and t.type == "noop" for t in items)


def test_a_users_scope_overrides_the_owner_parameter(queue: TaskQueue) -> None:
    items, _, total = page(queue, scope="bob", owner="alice")
    assert total == 500 and {t.owner for t in items} == {"bob"}


def test_other_sorts_page_through_the_heap(queue: TaskQueue) -> None:
    first, cursor, total = page(queue, sort="-priority", limit="100")
    second, _, _ = page(queue, sort="-priority", limit="100", cursor=cursor)
    keys = [(t.priority, t.seq) for t in first + second]
    assert keys == sorted(keys, reverse=True) and total == 1000
    assert first[0].priority == 9 and len({t.id for t in first + second}) == 200
    ascending, _, _ = page(queue, sort="waited", state="completed")
    assert [t.started_at - t.submitted_at for t in ascending] == sorted(
        t.started_at - t.submitted_at for t in ascending
    )


@pytest.mark.parametrize(
    "params, field",
    [
        ({"state": "done"}, "state"),
        ({"sort": "colour"}, "sort"),
        ({"limit": "0"}, "limit"),
        ({"priority": "x"}, "priority"),
        ({"cursor": "!!!"}, "cursor"),
        ({"q": "x" * 300}, "q"),
    ],
)
def test_bad_parameters_name_their_field(queue: TaskQueue, params: dict, field: str) -> None:
    with pytest.raises(QueryError) as err:
        page(queue, **params)
    assert err.value.field == field


def _cursor(data: object) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize("sort", ["submitted", "-priority"])
@pytest.mark.parametrize(
    "cursor",
    [
        _cursor({"offset": "ten"}),
        _cursor({"seq": "ten"}),
        _cursor({"offset": -5}),
        _cursor({"seq": -5}),
        _cursor({"offset": True}),
        _cursor({"seq": 1.5}),
        _cursor({"offset": 2**70}),
        _cursor({"seq": None}),
        _cursor([1, 2]),
        _cursor({}),
        _cursor({"seq": 3, "offset": 3}),
        "!!!",
        "",
    ],
)
def test_a_hand_made_cursor_is_refused_not_a_crash(queue: TaskQueue, sort: str, cursor: str):
    """Hand-made cursors used to reach slicing and bisecting (a TypeError: a 500)."""
    if not cursor:
        assert page(queue, sort=sort, cursor=cursor)[0]  # empty means no cursor
        return
    with pytest.raises(QueryError) as err:
        page(queue, sort=sort, cursor=cursor)
    assert err.value.field == "cursor"


def test_a_cursor_past_the_end_is_an_empty_page_not_an_error(queue: TaskQueue) -> None:
    """Tasks expire between pages: a cursor that now points past the end is honest."""
    for sort, data in (("-priority", {"offset": 10**6}), ("submitted", {"seq": 10**6})):
        items, cursor, total = page(queue, sort=sort, cursor=_cursor(data))
        assert items == [] and cursor is None and total == 1000


def test_statistics(queue: TaskQueue) -> None:
    stats = task_query.statistics(queue.tasks, queue.counts(), now_ms=6_500)
    assert stats["completed"] == 20 and stats["running"] == 30 and stats["queued"] == 950
    assert stats["by_node"]["n1"]["completed"] == 20
    assert stats["run_ms"]["count"] == 20 and stats["run_ms"]["p50"] == 1_000
    assert stats["throughput"]["completed_per_s_1m"] == round(20 / 60, 3)
