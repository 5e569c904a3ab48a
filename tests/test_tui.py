"""The Textual UI driven by its pilot against a real running cluster: log in, submit
and read the answer, cancel a queued task, filter, and fail over when the node in
use dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from textual.widgets import DataTable, Input, Select, Static

from node.client.aio import ApiClient
from tests.nodecluster import ADMIN_PASSWORD, NodeCluster, add_text_document, running_cluster
from tui.app import RagraftApp
from tui.views.detail import TaskDetail

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("tui"), models=True, extra_toml="[tasks]\nslots = 1\n"
    ) as cluster:
        add_text_document(
            cluster, "Lighthouses", "The lighthouse keeper polishes the great lens every Tuesday."
        )
        yield cluster


def app_for(cluster: NodeCluster, token: str | None = None) -> RagraftApp:
    urls = [cluster.api[n] for n in cluster.ids]
    return RagraftApp(ApiClient(urls, token), refresh_s=0.5)


async def wait_until(pilot, predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.2)


def test_log_in_submit_and_read_the_answer_with_citations(cluster: NodeCluster) -> None:
    asyncio.run(_log_in_submit_and_read_the_answer_with_citations(cluster))


async def _log_in_submit_and_read_the_answer_with_citations(cluster: NodeCluster) -> None:
    app = app_for(cluster)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause(0.5)
        app.screen.query_one("#password", Input).value = "wrong"
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: (
                "wrong username or password"
                in str(app.screen.query_one("#login-error", Static).render())
            ),
        )
        app.screen.query_one("#password", Input).value = ADMIN_PASSWORD
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: app.api.token is not None and not app.screen.query("#login")
        )
        await pilot.press("n")
        app.query_one("#submit-query", Input).value = "What does the lighthouse keeper polish?"
        app.query_one("#submit-tokens", Input).value = "24"
        app.query_one("#submit-query", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, TaskDetail))
        body = app.screen.query_one("#detail-body", Static)
        await wait_until(
            pilot, lambda: "completed" in str(body.render()) and "answer" in str(body.render())
        )
        text = str(body.render())
        assert "citations" in text or "passages" in text
        assert "lens" in text  # the retrieved passage is shown


def test_cancel_a_queued_task_and_filter(cluster: NodeCluster) -> None:
    asyncio.run(_cancel_a_queued_task_and_filter(cluster))


async def _cancel_a_queued_task_and_filter(cluster: NodeCluster) -> None:
    token = cluster.admin_token()
    # one slot per node: three slow tasks keep every slot busy, so the next one waits
    for _ in range(3):
        cluster.request(
            "n1",
            "POST",
            "/api/v1/tasks",
            {"type": "noop", "input": {"duration_ms": 20_000}, "priority": 9},
        )
    _, waiting = cluster.request(
        "n2", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 1}, "priority": 0}
    )
    app = app_for(cluster, token)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        table = app.query_one("#task-table", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0)
        app.query_one("#filter-state", Select).value = "queued"
        await wait_until(
            pilot,
            lambda: (
                table.row_count >= 1
                and all("queued" in str(table.get_row_at(i)[2]) for i in range(table.row_count))
            ),
        )
        row = table.get_row_index(waiting["id"])
        table.focus()
        table.move_cursor(row=row)
        await pilot.press("c")
        await wait_until(
            pilot, lambda: "is cancelled" in str(app.query_one("#status", Static).render())
        )
    assert (
        cluster.request("n1", "GET", f"/api/v1/tasks/{waiting['id']}")[1].get("state")
        == "cancelled"
    )
    await asyncio.sleep(1)
    task = cluster.request("n3", "GET", f"/api/v1/tasks/{waiting['id']}")[1]
    assert task["state"] == "cancelled" and task["started_at"] is None  # it never ran


def test_fails_over_when_the_node_in_use_dies(cluster: NodeCluster) -> None:
    asyncio.run(_fails_over_when_the_node_in_use_dies(cluster))


async def _fails_over_when_the_node_in_use_dies(cluster: NodeCluster) -> None:
    app = app_for(cluster, cluster.admin_token())
    async with app.run_test(size=(100, 30)) as pilot:
        status = app.query_one("#status", Static)
        await wait_until(pilot, lambda: app.query_one("#nodes", DataTable).row_count == 3)
        cluster.kill("n1")
        await wait_until(pilot, lambda: "now using" in str(status.render()), timeout=30)
        assert app.api.url != cluster.api["n1"]
        # still working through the other node: the node table keeps updating
        await wait_until(
            pilot,
            lambda: (
                "dead"
                in " ".join(
                    str(c)
                    for i in range(app.query_one("#nodes", DataTable).row_count)
                    for c in app.query_one("#nodes", DataTable).get_row_at(i)
                )
            ),
            timeout=30,
        )
