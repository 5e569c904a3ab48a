"""Knowledge base: documents, adding a file with its ingest progress, deleting, and a
retrieval test."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, ProgressBar, Static

from tui import format as fmt


class KnowledgeView(Vertical):
    DEFAULT_CSS = """
    KnowledgeView Horizontal { height: 3; }
    KnowledgeView Horizontal Input { width: 1fr; }
    KnowledgeView #kb-progress-line { height: 1; margin: 0 1; }
    KnowledgeView #kb-results { height: auto; max-height: 12; margin: 0 1; }
    """

    class Action(Message):
        def __init__(self, kind: str, value: str) -> None:
            super().__init__()
            self.kind, self.value = kind, value

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Input(
                placeholder="path of a file to add (text, Markdown, HTML, PDF)", id="kb-path"
            )
            yield Button("Add", id="kb-add")
        with Horizontal(id="kb-progress-row"):
            yield ProgressBar(total=100, show_eta=False, id="kb-progress")
            yield Static("", id="kb-progress-line")
        yield DataTable(id="kb-docs", cursor_type="row", zebra_stripes=True)
        with Horizontal():
            yield Input(placeholder="retrieval test: a query", id="kb-query")
            yield Button("Search", id="kb-search")
        yield Static("", id="kb-results")

    def on_mount(self) -> None:
        self.query_one("#kb-docs", DataTable).add_columns(
            "id", "title", "state", "version", "size", "chunks", "ingested by", "tags"
        )

    def show(self, documents: dict) -> None:
        table = self.query_one("#kb-docs", DataTable)
        table.clear()
        for d in documents.get("items", []):
            colour = {"ready": "green", "failed": "red"}.get(d["state"], "yellow")
            table.add_row(
                fmt.text(d["id"]),
                fmt.text(d["title"][:40]),
                f"[{colour}]{fmt.text(d['state'])}[/]",
                str(d["version"]),
                fmt.size(d["size"]),
                str(d["chunk_count"]),
                fmt.text(d.get("ingested_by") or "—"),
                fmt.text(",".join(d.get("tags", []))),
                key=d["id"],
            )

    def progress(self, fraction: float, note: str) -> None:
        self.query_one("#kb-progress", ProgressBar).update(progress=fraction * 100)
        self.query_one("#kb-progress-line", Static).update(fmt.text(note))

    def results(self, answer: dict) -> None:
        lines = [
            fmt.text(
                f"[{p['n']}] {p.get('title') or p['doc_id']} · {p['score']:.3f}  "
                f"{p['text'][:120]!r}"
            )
            for p in answer.get("passages", [])
        ]
        self.query_one("#kb-results", Static).update("\n".join(lines) or "no passages")

    def selected_id(self) -> str | None:
        table = self.query_one("#kb-docs", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(Button.Pressed, "#kb-add")
    @on(Input.Submitted, "#kb-path")
    def add(self) -> None:
        self.post_message(self.Action("add", self.query_one("#kb-path", Input).value.strip()))

    @on(Button.Pressed, "#kb-search")
    @on(Input.Submitted, "#kb-query")
    def search(self) -> None:
        self.post_message(self.Action("search", self.query_one("#kb-query", Input).value.strip()))
