"""Tasks: the server-side filtered, sorted and paged table, the selected task's
detail, and the cancel / abort / retry actions.

Filtering, sorting and paging all happen in the API (cursors), so the table holds
one page whatever the number of tasks; the browser never sorts a partial list.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import panel as pn

from node.client.aio import ApiClient, ApiError
from node.replica.vocabulary import PRIORITY_MAX, PRIORITY_MIN, TaskState, TaskType
from ui.charts import STATES
from ui.render import badge, clock, progress_bar, task_detail
from ui.tables import LiveTable

PAGE = 50
TYPES = [t.value for t in TaskType]
SORTS = {
    "newest first": "-submitted",
    "oldest first": "submitted",
    "priority (high first)": "-priority",
    "priority (low first)": "priority",
    "longest wait": "-waited",
    "longest run": "-ran",
    "progress": "-progress",
    "recently started": "-started",
    "recently finished": "-finished",
    "state": "state",
    "type": "type",
    "node": "node",
    "owner": "owner",
}
SINCE = {
    "any time": 0,
    "last 5 minutes": 5,
    "last 15 minutes": 15,
    "last hour": 60,
    "last 24 hours": 1440,
}


def _filter(kind: type, key: str, **options: Any) -> Any:
    # the class lets the browser tests find each filter
    return kind(css_classes=[f"f-{key}"], **options)


class TasksView:
    def __init__(
        self, api: ApiClient, nodes: list[str], on_change: Callable[[], Awaitable[None]]
    ) -> None:
        self.api = api
        self.on_change = on_change  # after an action: refresh everything now
        self.cursors: list[str | None] = [None]
        self.next_cursor: str | None = None
        self.followed: str | None = None
        self.since_ms = 0  # fixed when the filter is chosen, so pages stay consistent

        self.f_state = _filter(
            pn.widgets.Select, "state", name="state", options=["", *STATES], width=110
        )
        self.f_type = _filter(
            pn.widgets.Select, "type", name="type", options=["", *TYPES], width=100
        )
        self.f_node = _filter(
            pn.widgets.Select, "node", name="node", options=["", *nodes], width=90
        )
        self.f_owner = _filter(
            pn.widgets.TextInput, "owner", name="owner", placeholder="user", width=100
        )
        self.f_priority = _filter(
            pn.widgets.Select,
            "priority",
            name="priority",
            options=["", *map(str, range(PRIORITY_MIN, PRIORITY_MAX + 1))],
            width=80,
        )
        self.f_since = _filter(
            pn.widgets.Select, "since", name="submitted", options=list(SINCE), width=130
        )
        self.f_text = _filter(
            pn.widgets.TextInput,
            "text",
            name="search",
            placeholder="id, text, owner, error",
            width=220,
        )
        self.f_sort = _filter(
            pn.widgets.Select, "sort", name="sort", options=list(SORTS), width=170
        )
        filters = (
            self.f_state,
            self.f_type,
            self.f_node,
            self.f_owner,
            self.f_priority,
            self.f_since,
            self.f_text,
            self.f_sort,
        )
        for widget in filters:
            widget.param.watch(self._filters_changed, "value")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(),
            selectable="checkbox",
            disabled=True,
            show_index=False,
            sortable=False,
            formatters={"state": {"type": "html"}, "progress": {"type": "html"}},
            sizing_mode="stretch_width",
            height=460,
            css_classes=["tasks-table"],
            configuration={"renderVertical": "basic"},
        )  # a page is 50 rows: draw them all
        self.table.on_click(self._row_clicked)
        self.live = LiveTable(self.table)
        self.page_info = pn.pane.Markdown("", css_classes=["page-info"])
        buttons = []
        for label, action in (
            ("◀ prev", self._prev),
            ("next ▶", self._next),
            ("Cancel selected", self._cancel),
            ("Abort selected", self._abort),
            ("Retry selected", self._retry),
        ):
            button = pn.widgets.Button(name=label, width=130)
            button.on_click(action)
            buttons.append(button)
        self.notice = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.detail = pn.pane.HTML(
            "<i>click a row to see the task</i>", sizing_mode="stretch_width", name="task-detail"
        )
        self.panel = pn.Column(
            pn.Row(*filters),
            self.table,
            pn.Row(*buttons, self.page_info),
            self.notice,
            self.detail,
            name="Tasks",
            sizing_mode="stretch_width",
        )

    # ------------------------------------------------------------ data
    def query(self) -> str:
        params = {"limit": str(PAGE), "sort": SORTS[self.f_sort.value]}
        for key, widget in (
            ("state", self.f_state),
            ("type", self.f_type),
            ("node", self.f_node),
            ("owner", self.f_owner),
            ("priority", self.f_priority),
            ("q", self.f_text),
        ):
            if widget.value:
                params[key] = widget.value.strip()
        if self.since_ms:
            params["since"] = str(self.since_ms)
        if self.cursors[-1]:
            params["cursor"] = self.cursors[-1]
        return urlencode(params)

    async def refresh(self) -> None:
        page = await self.api.request("GET", f"/api/v1/tasks?{self.query()}")
        rows = [
            {
                "id": t["id"],
                "type": t["type"],
                "state": badge(t["state"]),
                "priority": t["priority"],
                "node": t.get("node") or "",
                "owner": t["owner"],
                "submitted": clock(t["submitted_at"]),
                "waited ms": t.get("waited_ms"),
                "ran ms": t.get("ran_ms"),
                "progress": progress_bar(t["progress"], t.get("progress_note", ""))
                if t["state"] == TaskState.RUNNING
                else "",
                "input": t.get("input_excerpt", ""),
            }
            for t in page.get("items", [])
        ]
        self.live.show(rows)
        self.next_cursor = page.get("next_cursor")
        last = " · last page" if not self.next_cursor else ""
        self.page_info.object = f"page {len(self.cursors)} · {page.get('total', 0)} tasks{last}"
        if self.followed:
            await self.show_detail(self.followed)

    async def show_detail(self, task_id: str) -> str:
        try:
            task = await self.api.request("GET", f"/api/v1/tasks/{quote(task_id)}")
        except ApiError as exc:
            self.detail.object = html.escape(str(exc))
            return self.detail.object
        self.detail.object = task_detail(task, scope="tasks")
        return self.detail.object

    def selected_ids(self) -> list[str]:
        return self.live.selected()

    # ------------------------------------------------------------ events
    async def _filters_changed(self, *_: Any) -> None:
        self.cursors = [None]
        minutes = SINCE[self.f_since.value]
        self.since_ms = int((time.time() - minutes * 60) * 1000) if minutes else 0
        await self.refresh()

    async def _prev(self, _: Any) -> None:
        if len(self.cursors) > 1:
            self.cursors.pop()
            await self.refresh()

    async def _next(self, _: Any) -> None:
        if self.next_cursor:
            self.cursors.append(self.next_cursor)
            await self.refresh()

    async def _row_clicked(self, event: Any) -> None:
        self.followed = self.live.row(event.row)["id"]
        await self.show_detail(self.followed)

    async def _act(self, method: str, suffix: str, verb: str) -> None:
        messages = []
        for task_id in self.selected_ids():
            try:
                task = await self.api.request(method, f"/api/v1/tasks/{quote(task_id)}{suffix}")
                stopping = task["state"] == TaskState.RUNNING and task.get("abort_requested")
                what = "abort requested; its node stops it" if stopping else task["state"]
                messages.append(f"{task_id}: {what}")
            except ApiError as exc:  # e.g. 409: the task started meanwhile
                messages.append(f"{task_id}: {verb} refused: {exc}")
        self.notice.object = html.escape("; ".join(messages)) or "select tasks first (checkboxes)"
        await self.on_change()

    async def _cancel(self, _: Any) -> None:
        await self._act("DELETE", "", "cancel")

    async def _abort(self, _: Any) -> None:
        await self._act("POST", "/abort", "abort")

    async def _retry(self, _: Any) -> None:
        await self._act("POST", "/retry", "retry")
