"""A task's detail: input, timeline, answer with citations and passages, or error."""

from __future__ import annotations

import json
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from tui import format as fmt


def render_task(task: dict) -> str:
    lines = [
        (
            f"[b]{fmt.text(task['id'])}[/b]  {fmt.text(task['type'])}  "
            f"{fmt.state(task['state'])}  priority {task['priority']}  "
            f"owner {fmt.text(task['owner'])}  "
            f"attempt {task['attempt']}/{task.get('max_attempts', '?')}"
        ),
        (
            f"node {fmt.text(task.get('node') or '—')}  "
            f"progress {task.get('progress', 0) * 100:.0f}% "
            f"{fmt.text(task.get('progress_note', ''))}"
        ),
        "",
        "[b]input[/b]",
        fmt.text(json.dumps(task.get("input"), indent=1)[:800]),
        "",
        "[b]timeline[/b]",
    ]
    for step in task.get("history", []):
        lines.append(
            f"  {fmt.clock(step['at'])}  {fmt.state(step['state']):<24} "
            f"node {fmt.text(step.get('node') or '—')}  attempt {step['attempt']}  "
            f"{fmt.text(step.get('note', ''))}"
        )
    result = task.get("result")
    if isinstance(result, dict):
        if "answer" in result:
            lines += ["", "[b]answer[/b]", fmt.text(result["answer"])]
        if result.get("citations"):
            lines += ["", "[b]citations[/b]"]
            lines += [
                fmt.text(
                    f"  [{c['n']}] {c.get('title') or c['doc_id']} "
                    f"(doc {c['doc_id']}, chunk {c['chunk']})"
                )
                for c in result["citations"]
            ]
        if result.get("passages"):
            lines += ["", "[b]passages[/b]"]
            for p in result["passages"]:
                lines.append(
                    fmt.text(
                        f"  [{p['n']}] {p.get('title') or p['doc_id']} · score {p['score']:.3f} "
                        f"(vector {p.get('vector_score')}, keyword {p.get('keyword_score')})"
                    )
                )
                lines.append("      " + fmt.text(p["text"][:300].replace("\n", " ")))
        if result.get("timings"):
            lines += [
                "",
                "[b]timings[/b] "
                + fmt.text(", ".join(f"{k} {v}" for k, v in result["timings"].items())),
            ]
    if task.get("error"):
        lines += ["", "[b red]error[/b red]", fmt.text(task["error"])]
    return "\n".join(lines)


class TaskDetail(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "back"),
        Binding("c", "act('cancel')", "cancel"),
        Binding("a", "act('abort')", "abort"),
        Binding("r", "act('retry')", "retry"),
    ]
    DEFAULT_CSS = """
    TaskDetail { align: center middle; }
    #detail { width: 95%; height: 90%; border: round $accent; padding: 0 1; background: $surface; }
    """

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail"):
            yield Static("loading…", id="detail-body")
        yield Footer()

    async def on_mount(self) -> None:
        await self.reload()
        self.set_interval(1.0, self.reload)

    async def reload(self) -> None:
        try:
            task = await self.app.api.request("GET", f"/api/v1/tasks/{self.task_id}")  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - shown, not raised: the screen stays usable
            self.query_one("#detail-body", Static).update(f"[red]{fmt.text(exc)}[/]")
            return
        self.query_one("#detail-body", Static).update(render_task(task))

    async def action_act(self, action: str) -> None:
        await self.app.task_action(action, self.task_id)  # type: ignore[attr-defined]
        await self.reload()
