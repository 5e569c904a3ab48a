"""`ragraft tui`: the Textual job manager for operators on a server over SSH.

Keyboard first (bindings in the footer), usable at 80×24.  It talks to any node
of the cluster through the REST API, fails over to another node when the one in
use dies (the status bar says so), and follows the event stream so the task
table moves without polling.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from node.client.aio import ApiClient, ApiError
from node.replica.vocabulary import FINISHED, TaskState
from tui import format as fmt
from tui.views.detail import TaskDetail
from tui.views.knowledge import KnowledgeView
from tui.views.login import LoginScreen
from tui.views.overview import Overview
from tui.views.submit import SubmitForm
from tui.views.tasks import TaskList


class RagraftApp(App[None]):
    TITLE = "ragraft"
    CSS = """
    #status { dock: bottom; height: 1; background: $boost; color: $text-muted; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("o", "tab('overview')", "overview"),
        Binding("t", "tab('tasks')", "tasks"),
        Binding("n", "tab('submit')", "new task"),
        Binding("k", "tab('knowledge')", "knowledge"),
        Binding("slash", "filter", "filter"),
        Binding("left_square_bracket", "page(-1)", "prev page", show=False),
        Binding("right_square_bracket", "page(1)", "next page", show=False),
        Binding("c", "selected('cancel')", "cancel"),
        Binding("a", "selected('abort')", "abort"),
        Binding("r", "selected('retry')", "retry"),
        Binding("d", "delete_document", "delete doc", show=False),
    ]

    def __init__(self, api: ApiClient, refresh_s: float = 2.0, clock: bool = True) -> None:
        super().__init__()
        self.api = api
        self.refresh_s = refresh_s
        self.clock = clock
        self._reload_pending = False

    def compose(self) -> ComposeResult:
        yield Header(show_clock=self.clock)
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("Overview", id="overview"):
                yield Overview()
            with TabPane("Tasks", id="tasks"):
                yield TaskList()
            with TabPane("Submit", id="submit"):
                yield SubmitForm()
            with TabPane("Knowledge", id="knowledge"):
                yield KnowledgeView()
        yield Static("", id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.api.on_switch = self.say
        self.say(f"connected to {self.api.url}")
        if self.api.token is None:
            await self.push_screen_wait_login()
        else:
            self.start()

    async def push_screen_wait_login(self) -> None:
        self.push_screen(LoginScreen(), callback=lambda _: self.start())

    def start(self) -> None:
        self.say(f"logged in · {self.api.url}")
        self.refresh_all()
        self.set_interval(self.refresh_s, self.refresh_all)
        self.follow_events()

    # ------------------------------------------------------------ status bar
    def say(self, message: str) -> None:
        self.query_one("#status", Static).update(message)

    # ------------------------------------------------------------ loading
    @work(exclusive=True, group="refresh")
    async def refresh_all(self) -> None:
        try:
            stats, nodes, cluster = await asyncio.gather(
                self.api.request("GET", "/api/v1/stats"),
                self.api.request("GET", "/api/v1/nodes"),
                self.api.request("GET", "/api/v1/cluster"),
            )
            self.query_one(Overview).show(stats, nodes, cluster)
            await self.reload_tasks()
            self.query_one(KnowledgeView).show(
                await self.api.request("GET", "/api/v1/kb/documents")
            )
        except ApiError as exc:
            self.say(f"[red]{fmt.text(exc)}[/]")
        except NoMatches:
            pass  # the app is closing: its views are already gone

    async def reload_tasks(self) -> None:
        try:
            view = self.query_one(TaskList)
        except NoMatches:  # the app is closing (a reload timer fired during shutdown)
            return
        view.show(await self.api.request("GET", f"/api/v1/tasks?{view.query_string()}"))

    @work(exclusive=True, group="events")
    async def follow_events(self) -> None:
        async for kind, event in self.api.events():
            if kind == "reconnected":
                self.say(f"reconnected · events from {self.api.url}")
                self.refresh_all()
            elif kind == "task":
                self.schedule_task_reload()
            elif kind == "node":
                self.say(
                    fmt.text(
                        f"node {event['id']} is {event['status']} (seen by {event['seen_by']})"
                    )
                )

    def schedule_task_reload(self) -> None:
        # Bursts of events (a claim, then progress reports) become one reload.
        if not self._reload_pending:
            self._reload_pending = True
            self.set_timer(0.3, self._reload_now)

    async def _reload_now(self) -> None:
        self._reload_pending = False
        try:
            await self.reload_tasks()
        except ApiError as exc:
            self.say(f"[red]{fmt.text(exc)}[/]")

    # ------------------------------------------------------------ actions
    def action_tab(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name

    def action_filter(self) -> None:
        self.action_tab("tasks")
        self.query_one("#filter-q").focus()

    async def action_page(self, step: int) -> None:
        view = self.query_one(TaskList)
        if view.next_page() if step > 0 else view.previous_page():
            await self.reload_tasks()

    async def action_selected(self, action: str) -> None:
        task_id = self.query_one(TaskList).selected_id()
        if task_id:
            await self.task_action(action, task_id)

    async def task_action(self, action: str, task_id: str) -> None:
        method, path = {
            "cancel": ("DELETE", f"/api/v1/tasks/{task_id}"),
            "abort": ("POST", f"/api/v1/tasks/{task_id}/abort"),
            "retry": ("POST", f"/api/v1/tasks/{task_id}/retry"),
        }[action]
        try:
            answer = await self.api.request(method, path)
        except ApiError as exc:
            self.say(f"[red]{action} refused: {fmt.text(exc)}[/]")  # e.g. "task … is running; …"
            return
        self.say(fmt.text(f"{action}: task {answer['id']} is {answer['state']}"))
        self.schedule_task_reload()

    @on(TaskList.Opened)
    async def open_task(self, message: TaskList.Opened) -> None:
        if message.task_id:
            self.push_screen(TaskDetail(message.task_id))
        else:
            await self.reload_tasks()

    @on(SubmitForm.Submitted)
    async def submit(self, message: SubmitForm.Submitted) -> None:
        try:
            task = await self.api.submit(message.body)  # one idempotency key for all its tries
        except ApiError as exc:
            self.query_one("#submit-status", Static).update(f"[red]{fmt.text(exc)}[/]")
            return
        self.query_one("#submit-status", Static).update(f"submitted {fmt.text(task['id'])}")
        self.push_screen(TaskDetail(task["id"]))

    @on(KnowledgeView.Action)
    async def knowledge(self, message: KnowledgeView.Action) -> None:
        view = self.query_one(KnowledgeView)
        if message.kind == "search" and message.value:
            try:
                view.results(
                    await self.api.request("GET", f"/api/v1/kb/search?q={quote(message.value)}&k=5")
                )
            except ApiError as exc:
                self.say(f"[red]{fmt.text(exc)}[/]")
        elif message.kind == "add" and message.value:
            self.add_document(Path(message.value).expanduser())

    @work(group="upload")
    async def add_document(self, path: Path) -> None:
        view = self.query_one(KnowledgeView)
        try:
            answer = await self.api.upload(path.name, path.read_bytes())
        except OSError as exc:
            self.say(f"[red]cannot read {fmt.text(path)}: {fmt.text(exc.strerror)}[/]")
            return
        except ApiError as exc:
            self.say(f"[red]upload refused: {exc}[/]")
            return
        task_id = answer["tasks"][0]["id"]
        while True:  # follow the ingest task to its end
            task = await self.api.request("GET", f"/api/v1/tasks/{task_id}")
            view.progress(
                task["progress"] if task["state"] != TaskState.COMPLETED else 1.0,
                f"{path.name}: {task['state']} {task.get('progress_note', '')}",
            )
            if task["state"] in FINISHED:
                if task["state"] != TaskState.COMPLETED:
                    self.say(f"[red]{path.name}: {task.get('error')}[/]")
                break
            await asyncio.sleep(0.5)
        view.show(await self.api.request("GET", "/api/v1/kb/documents"))

    async def action_delete_document(self) -> None:
        doc_id = self.query_one(KnowledgeView).selected_id()
        if doc_id:
            try:
                await self.api.request("DELETE", f"/api/v1/kb/documents/{quote(doc_id)}")
                self.say(f"deleted {doc_id}")
            except ApiError as exc:
                self.say(f"[red]{fmt.text(exc)}[/]")

    async def on_unmount(self) -> None:
        await self.api.close()


def run(urls: list[str], token: str | None = None) -> None:
    # discover: the nodes the cluster lists are failed over to as well as the given ones
    RagraftApp(ApiClient(urls, token, discover=True)).run()
