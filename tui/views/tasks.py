"""Tasks: a page of the task list with filters, updated live from the event stream."""

from __future__ import annotations

from urllib.parse import urlencode

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Select, Static

from node.replica.vocabulary import TaskState, TaskType
from tui import format as fmt

PAGE = 50
STATE_OPTIONS = [(s.value, s.value) for s in TaskState]
TYPE_OPTIONS = [(t.value, t.value) for t in TaskType]


class TaskList(Vertical):
    DEFAULT_CSS = """
    TaskList #filters { height: 3; }
    TaskList #filters Select { width: 20; }
    TaskList #filters Input { width: 1fr; }
    TaskList #page-info { height: 1; margin: 0 1; color: $text-muted; }
    """

    class Opened(Message):
        def __init__(self, task_id: str) -> None:
            super().__init__()
            self.task_id = task_id

    def compose(self) -> ComposeResult:
        with Horizontal(id="filters"):
            yield Select(STATE_OPTIONS, prompt="any state", id="filter-state")
            yield Select(TYPE_OPTIONS, prompt="any type", id="filter-type")
            yield Input(placeholder="node", id="filter-node")
            yield Input(placeholder="/ search: id, text, owner, error", id="filter-q")
        yield DataTable(id="task-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="page-info")

    def on_mount(self) -> None:
        self.cursors: list[str | None] = [None]  # cursor of each page seen, for going back
        table = self.query_one("#task-table", DataTable)
        table.add_columns(
            "id", "type", "state", "prio", "node", "submitted", "waited", "ran", "progress", "input"
        )

    def query_string(self) -> str:
        params = {"limit": str(PAGE)}
        state = self.query_one("#filter-state", Select).value
        kind = self.query_one("#filter-type", Select).value
        if isinstance(state, str):  # not the "any" blank
            params["state"] = state
        if isinstance(kind, str):
            params["type"] = kind
        for name in ("node", "q"):
            value = self.query_one(f"#filter-{name}", Input).value.strip()
            if value:
                params[name] = value
        if self.cursors[-1]:
            params["cursor"] = self.cursors[-1]
        return urlencode(params)

    def show(self, page: dict) -> None:
        table = self.query_one("#task-table", DataTable)
        selected = table.cursor_row
        table.clear()
        for t in page.get("items", []):
            progress = (
                f"{t['progress'] * 100:.0f}% {t.get('progress_note', '')}"
                if t["state"] == TaskState.RUNNING
                else ""
            )
            table.add_row(
                fmt.text(t["id"]),
                fmt.text(t["type"]),
                fmt.state(t["state"]),
                str(t["priority"]),
                fmt.text(t.get("node") or "—"),
                fmt.clock(t["submitted_at"]),
                fmt.ms(t.get("waited_ms")),
                fmt.ms(t.get("ran_ms")),
                fmt.text(progress[:24]),
                fmt.text((t.get("input_excerpt") or "")[:40]),
                key=t["id"],
            )
        if table.row_count:
            table.move_cursor(row=min(selected, table.row_count - 1))
        self.next_cursor = page.get("next_cursor")
        number = len(self.cursors)
        self.query_one("#page-info", Static).update(
            f"page {number} · {page.get('total', 0)} matching tasks · "
            "\\[ previous · ] next · enter details"
        )

    def next_page(self) -> bool:
        if getattr(self, "next_cursor", None):
            self.cursors.append(self.next_cursor)
            return True
        return False

    def previous_page(self) -> bool:
        if len(self.cursors) > 1:
            self.cursors.pop()
            return True
        return False

    def selected_id(self) -> str | None:
        table = self.query_one("#task-table", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(Select.Changed)
    @on(Input.Submitted)
    def filters_changed(self) -> None:
        self.cursors = [None]
        self.post_message(self.Opened(""))  # "" = reload the list

    @on(DataTable.RowSelected)
    def row_chosen(self, event: DataTable.RowSelected) -> None:
        self.post_message(self.Opened(str(event.row_key.value)))
