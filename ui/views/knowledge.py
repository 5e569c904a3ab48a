"""Knowledge base: multi-file upload with per-document ingest progress, the
document list, delete and replace, and a retrieval test box."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import panel as pn

from node.client.aio import ApiClient, ApiError
from node.replica.vocabulary import TaskState, TaskType
from ui.choices import FORM_MODES, bounds
from ui.render import badge, passage_list, progress_bar
from ui.tables import LiveTable

# a document's state drawn in the colour of the task state it resembles
DOC_STATES = {
    "uploaded": TaskState.QUEUED,
    "ingesting": TaskState.RUNNING,
    "ready": TaskState.COMPLETED,
    "failed": TaskState.FAILED,
}


class KnowledgeView:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.uploads: list[dict] = []  # this session's uploads: name, doc_id, task_id
        self.files = pn.widgets.FileInput(
            multiple=True, accept=".txt,.md,.markdown,.html,.htm,.pdf"
        )
        upload = pn.widgets.Button(name="Upload", button_type="primary", width=110)
        upload.on_click(self._upload)
        replace = pn.widgets.Button(name="Replace selected with file", width=210)
        replace.on_click(self._replace)
        self.progress = pn.pane.HTML("", sizing_mode="stretch_width", name="ingest-progress")
        self.docs = pn.widgets.Tabulator(
            pd.DataFrame(),
            selectable=1,
            disabled=True,
            show_index=False,
            sortable=False,
            formatters={"state": {"type": "html"}, "ingest": {"type": "html"}},
            sizing_mode="stretch_width",
            height=280,
            css_classes=["documents-table"],
        )
        self.live = LiveTable(self.docs)
        delete = pn.widgets.Button(name="Delete selected document", width=210)
        delete.on_click(self._delete)
        self.notice = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.k_query = pn.widgets.TextInput(name="retrieval test", placeholder="a query", width=400)
        self.k_mode = pn.widgets.Select(name="mode", options=FORM_MODES, width=110)
        self.k_top = pn.widgets.IntInput(name="top-k", value=5, width=80, **bounds("top_k"))
        search = pn.widgets.Button(name="Search", width=100)
        search.on_click(self._search)
        self.k_results = pn.pane.HTML("", sizing_mode="stretch_width", name="retrieval-results")
        self.panel = pn.Column(
            pn.Row(self.files, upload, replace),
            self.progress,
            self.docs,
            pn.Row(delete),
            self.notice,
            pn.Row(self.k_query, self.k_mode, self.k_top, search),
            self.k_results,
            name="Knowledge",
            sizing_mode="stretch_width",
        )

    async def refresh(self) -> None:
        docs = (await self.api.request("GET", "/api/v1/kb/documents"))["items"]
        ingesting = await self.api.request(
            "GET",
            "/api/v1/tasks?"
            + urlencode(
                {
                    "type": TaskType.INGEST.value,
                    "state": f"{TaskState.QUEUED},{TaskState.RUNNING}",
                    "limit": 500,
                    "full": 1,
                }
            ),
        )
        progress = {t["input"].get("doc_id"): t for t in ingesting["items"]}
        rows = []
        for d in docs:
            task = progress.get(d["id"])
            ingest = (
                ""
                if task is None
                else (
                    progress_bar(task["progress"], task.get("progress_note") or "")
                    if task["state"] == TaskState.RUNNING
                    else "waiting for a slot"
                )
            )
            rows.append(
                {
                    "id": d["id"],
                    "title": d["title"],
                    "state": badge_doc(d["state"]),
                    "ingest": ingest,
                    "version": d["version"],
                    "size": _size(d["size"]),
                    "chunks": d["chunk_count"],
                    "ingested by": d.get("ingested_by") or "",
                    "enabled": d.get("enabled", True),
                    "error": d.get("error") or "",
                }
            )
        self.live.show(rows)
        by_id = {d["id"]: d for d in docs}
        lines = []
        for up in self.uploads:
            doc, task = by_id.get(up["doc_id"]), progress.get(up["doc_id"])
            if up.get("error"):
                status = f'<b style="color:#c53030">refused: {html.escape(up["error"])}</b>'
            elif task is not None and task["state"] == TaskState.RUNNING:
                status = progress_bar(task["progress"], task.get("progress_note") or "")
            elif doc is None:
                status = "deleted"
            elif doc["state"] == "ready":
                status = (
                    f"{progress_bar(1.0)} ready: {doc['chunk_count']} chunks "
                    f"by {doc.get('ingested_by')}"
                )
            elif doc["state"] == "failed":
                status = (
                    f'<b style="color:#c53030">failed: {html.escape(doc.get("error") or "")}</b>'
                )
            else:
                status = "queued for ingest"
            lines.append(
                f'<div class="upload-line">{html.escape(up["name"])}: {up["note"]} — {status}</div>'
            )
        self.progress.object = "".join(lines)

    def _selected(self) -> str | None:
        selected = self.live.selected()
        return selected[0] if selected else None

    def _chosen_files(self) -> list[tuple[str, bytes]]:
        names, contents = self.files.filename or [], self.files.value or []
        if isinstance(names, str):
            names, contents = [names], [contents]
        return list(zip(names, contents))

    async def _send(self, name: str, content: bytes, doc_id: str | None = None) -> None:
        try:
            answer = await self.api.upload(name, content, doc_id)
        except ApiError as exc:
            self.uploads.append({"name": name, "doc_id": doc_id, "note": "", "error": str(exc)})
            return
        doc, task = answer["documents"][0], answer["tasks"][0]
        verb = f"version {doc['version']} of" if doc_id else "queued as"
        self.uploads.append(
            {
                "name": name,
                "doc_id": doc["doc_id"],
                "task_id": task["id"],
                "note": f"{verb} {html.escape(doc['doc_id'])}, ingest task {task['id']}",
            }
        )

    async def _upload(self, _: Any) -> None:
        files = self._chosen_files()
        if not files:
            self.notice.object = "choose files first"
            return
        for name, content in files:
            await self._send(name, content)
        await self.refresh()

    async def _replace(self, _: Any) -> None:
        doc_id, files = self._selected(), self._chosen_files()
        if doc_id is None or len(files) != 1:
            self.notice.object = (
                "select one document in the table and choose one file to replace it with"
            )
            return
        await self._send(*files[0], doc_id=doc_id)
        await self.refresh()

    async def _delete(self, _: Any) -> None:
        doc_id = self._selected()
        if doc_id is None:
            self.notice.object = "select a document first"
            return
        try:
            await self.api.request("DELETE", f"/api/v1/kb/documents/{quote(doc_id)}")
            self.notice.object = f"deleted {html.escape(doc_id)}"
        except ApiError as exc:
            self.notice.object = f"delete refused: {html.escape(str(exc))}"
        await self.refresh()

    async def _search(self, _: Any) -> None:
        try:
            answer = await self.api.request(
                "GET",
                "/api/v1/kb/search?"
                + urlencode(
                    {"q": self.k_query.value, "k": self.k_top.value, "mode": self.k_mode.value}
                ),
            )
        except ApiError as exc:
            self.k_results.object = html.escape(str(exc))
            return
        self.k_results.object = passage_list(answer["passages"])


def badge_doc(state: str) -> str:
    return badge(state, DOC_STATES.get(state))


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"
