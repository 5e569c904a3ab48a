"""The dashboard page: one per browser session, built by `page()`.

After login it shows Overview, Tasks, Submit, Knowledge and Nodes tabs, refreshed
every second from the node's API and pushed to the browser over Panel's websocket
(never a page reload).  A small script watches the serving node: if it stops
answering, the page says so and links to the other nodes' dashboards.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import panel as pn

from ui.api import ApiError, SessionApi

STATE_COLOURS = {"queued": "#b7791f", "running": "#2b6cb0", "completed": "#2f855a", "failed": "#c53030",
                 "cancelled": "#805ad5"}
STATES = list(STATE_COLOURS)
PAGE = 50


def badge(state: str) -> str:
    return f'<span style="color:white;background:{STATE_COLOURS.get(state, "#555")};padding:1px 6px;' \
           f'border-radius:8px">{state}</span>'


def clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def watchdog(node_id: str, peers: dict[str, str]) -> pn.pane.HTML:
    links = " · ".join(f'<a href="{html.escape(url)}">{html.escape(n)}</a>' for n, url in sorted(peers.items()))
    script = f"""
<div id="node-down" style="display:none;background:#c53030;color:white;padding:8px;font-weight:bold">
  Node {html.escape(node_id)}, which serves this page, stopped answering. Open another node: {links}
</div>
<script>
setInterval(function() {{
  fetch(window.location.pathname, {{method: 'HEAD', cache: 'no-store'}})
    .then(function() {{ document.getElementById('node-down').style.display = 'none'; }})
    .catch(function() {{ document.getElementById('node-down').style.display = 'block'; }});
}}, 2000);
</script>"""
    return pn.pane.HTML(script, sizing_mode="stretch_width")


class Dashboard:
    def __init__(self, api_url: str, node_id: str, peers: dict[str, str]) -> None:
        self.api = SessionApi(api_url)
        self.node_id = node_id
        self.peers = peers
        self.cursors: list[str | None] = [None]
        self.next_cursor: str | None = None
        self.followed: str | None = None
        self.status = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["status"])
        self.root = pn.Column(sizing_mode="stretch_width")
        self._login_view()

    # ------------------------------------------------------------ login
    def _login_view(self) -> None:
        self.user = pn.widgets.TextInput(name="Username", value="admin", placeholder="username")
        self.password = pn.widgets.PasswordInput(name="Password", placeholder="password")
        button = pn.widgets.Button(name="Log in", button_type="primary")
        self.login_error = pn.pane.Markdown("")
        button.on_click(self._login)
        self.root[:] = [pn.pane.Markdown(f"## ragraft · node {self.node_id}"), self.user, self.password, button,
                        self.login_error]

    async def _login(self, _: Any) -> None:
        try:
            await self.api.login(self.user.value, self.password.value)
        except ApiError as exc:
            self.login_error.object = f"**{html.escape(str(exc))}**"
            return
        self._main_view()
        await self.refresh()
        pn.state.add_periodic_callback(self.refresh, period=1000)

    # ------------------------------------------------------------ layout
    def _main_view(self) -> None:
        self.cards = pn.Row(*[pn.indicators.Number(name=s, value=0, font_size="28pt", title_size="11pt",
                                                   default_color=STATE_COLOURS[s]) for s in STATES])
        self.rates = pn.pane.Markdown("")
        self.depth = pn.indicators.Trend(name="queue depth", data={"x": [], "y": []}, height=160, width=330)
        self.throughput = pn.indicators.Trend(name="completed / s (1 min)", data={"x": [], "y": []}, height=160,
                                              width=330)
        self.per_node = pn.pane.Markdown("")
        self.cluster_strip = pn.pane.HTML("", sizing_mode="stretch_width")
        overview = pn.Column(self.cards, self.rates, pn.Row(self.depth, self.throughput, self.per_node),
                             self.cluster_strip, name="Overview")

        self.f_state = pn.widgets.Select(name="state", options=["", *STATES], width=130)
        self.f_type = pn.widgets.Select(name="type", options=["", "qa", "generate", "retrieve", "ingest", "noop"],
                                        width=130)
        self.f_node = pn.widgets.TextInput(name="node", width=100)
        self.f_text = pn.widgets.TextInput(name="search", placeholder="id, text, owner, error", width=240)
        for widget in (self.f_state, self.f_type, self.f_node, self.f_text):
            widget.param.watch(self._filters_changed, "value")
        self.table = pn.widgets.Tabulator(pd.DataFrame(), selectable="checkbox", disabled=True, show_index=False,
                                          formatters={"state": {"type": "html"}}, sizing_mode="stretch_width",
                                          height=420, name="tasks-table")
        self.table.on_click(self._row_clicked)
        self.page_info = pn.pane.Markdown("")
        buttons = []
        for label, action in (("◀ prev", self._prev), ("next ▶", self._next), ("Cancel selected", self._cancel),
                              ("Abort selected", self._abort), ("Retry selected", self._retry)):
            button = pn.widgets.Button(name=label, width=130)
            button.on_click(action)
            buttons.append(button)
        self.detail = pn.pane.HTML("", sizing_mode="stretch_width", name="task-detail")
        self.notice = pn.pane.Markdown("", sizing_mode="stretch_width")
        tasks = pn.Column(pn.Row(self.f_state, self.f_type, self.f_node, self.f_text), self.table,
                          pn.Row(*buttons, self.page_info), self.notice, self.detail, name="Tasks")

        self.s_type = pn.widgets.Select(name="type", options=["qa", "generate", "retrieve"], width=120)
        self.s_query = pn.widgets.TextAreaInput(name="question or prompt", height=80, sizing_mode="stretch_width")
        self.s_priority = pn.widgets.IntInput(name="priority", value=5, start=0, end=9, width=90)
        self.s_topk = pn.widgets.IntInput(name="top-k", value=5, start=1, end=100, width=90)
        self.s_mode = pn.widgets.Select(name="mode", options=["hybrid", "vector", "keyword"], width=110)
        self.s_tokens = pn.widgets.IntInput(name="max tokens", value=128, start=1, end=2048, width=110)
        self.s_temp = pn.widgets.FloatInput(name="temperature", value=0.0, start=0, end=5, step=0.1, width=110)
        submit = pn.widgets.Button(name="Submit", button_type="primary", width=120)
        submit.on_click(self._submit)
        self.s_result = pn.pane.HTML("", sizing_mode="stretch_width")
        submit_tab = pn.Column(self.s_query, pn.Row(self.s_type, self.s_priority, self.s_topk, self.s_mode,
                                                    self.s_tokens, self.s_temp), submit, self.s_result, name="Submit")

        self.files = pn.widgets.FileInput(multiple=True, accept=".txt,.md,.markdown,.html,.htm,.pdf")
        upload = pn.widgets.Button(name="Upload", button_type="primary", width=120)
        upload.on_click(self._upload)
        self.docs = pn.widgets.Tabulator(pd.DataFrame(), selectable=1, disabled=True, show_index=False,
                                         sizing_mode="stretch_width", height=260)
        delete = pn.widgets.Button(name="Delete selected document", width=220)
        delete.on_click(self._delete_doc)
        self.k_query = pn.widgets.TextInput(name="retrieval test", placeholder="a query", width=400)
        self.k_mode = pn.widgets.Select(name="mode", options=["hybrid", "vector", "keyword"], width=110)
        search = pn.widgets.Button(name="Search", width=100)
        search.on_click(self._search)
        self.k_results = pn.pane.HTML("", sizing_mode="stretch_width")
        self.ingests = pn.pane.HTML("")
        knowledge = pn.Column(pn.Row(self.files, upload), self.ingests, self.docs, delete,
                              pn.Row(self.k_query, self.k_mode, search), self.k_results, name="Knowledge")

        self.nodes = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False,
                                          formatters={"gossip": {"type": "html"}}, sizing_mode="stretch_width",
                                          height=200, name="nodes-table")
        self.raft_view = pn.pane.Markdown("")
        nodes = pn.Column(self.raft_view, self.nodes, name="Nodes")

        self.tabs = pn.Tabs(overview, tasks, submit_tab, knowledge, nodes, dynamic=False)
        header = pn.pane.Markdown(f"## ragraft · node {self.node_id} · {self.api.user}")
        self.root[:] = [watchdog(self.node_id, self.peers), header, self.status, self.tabs]

    # ------------------------------------------------------------ refresh
    async def refresh(self) -> None:
        try:
            stats = await self.api.call("GET", "/api/v1/stats")
            cluster = await self.api.call("GET", "/api/v1/cluster")
            nodes = await self.api.call("GET", "/api/v1/nodes")
            page = await self.api.call("GET", f"/api/v1/tasks?{self._query()}")
            docs = await self.api.call("GET", "/api/v1/kb/documents")
        except ApiError as exc:
            self.status.object = f"⚠ {html.escape(str(exc))}"
            return
        self.status.object = ""
        self._show_overview(stats, nodes)
        self._show_tasks(page)
        self._show_docs(docs)
        self._show_nodes(cluster, nodes)
        if self.followed:
            await self._show_detail(self.followed)

    def _show_overview(self, stats: dict, nodes: dict) -> None:
        for card in self.cards:
            card.value = stats.get(card.name, 0)
        now = time.time()
        self.depth.stream({"x": [now], "y": [stats.get("queued", 0)]}, rollover=300)
        rate = stats.get("throughput", {})
        self.throughput.stream({"x": [now], "y": [rate.get("completed_per_s_1m", 0)]}, rollover=300)
        wait, run = stats.get("wait_ms", {}), stats.get("run_ms", {})
        self.rates.object = (f"throughput **{rate.get('completed_per_s_1m', 0)}/s** (1 min), "
                             f"**{rate.get('completed_per_s_5m', 0)}/s** (5 min) · wait p50 {wait.get('p50')} ms, "
                             f"p95 {wait.get('p95')} ms · run p50 {run.get('p50')} ms, p95 {run.get('p95')} ms")
        self.per_node.object = "**tasks per node**\n\n" + "\n".join(
            f"- {n}: {c.get('completed', 0)} completed, {c.get('running', 0)} running"
            for n, c in sorted(stats.get("by_node", {}).items()))
        cells = []
        for n in nodes.get("items", []):
            m = n.get("metrics") or {}
            colour = {"alive": "#2f855a", "suspect": "#b7791f", "dead": "#c53030"}.get(n["status"], "#555")
            cells.append(f'<div class="node-card" data-node="{n["id"]}" style="border-left:6px solid {colour};'
                         f'padding:4px 10px;margin:4px;display:inline-block">'
                         f'<b>{n["id"]}</b> {n.get("raft_role") or ""} · <span class="gossip">{n["status"]}</span>'
                         f' · cpu {m.get("cpu_percent", "—")}% · mem {m.get("mem_percent", "—")}%'
                         f' · slots {m.get("slots_used", "—")}/{m.get("slots_total", "—")}</div>')
        self.cluster_strip.object = "".join(cells)

    def _query(self) -> str:
        params = {"limit": str(PAGE)}
        for key, widget in (("state", self.f_state), ("type", self.f_type), ("node", self.f_node),
                            ("q", self.f_text)):
            if widget.value:
                params[key] = widget.value
        if self.cursors[-1]:
            params["cursor"] = self.cursors[-1]
        return urlencode(params)

    def _show_tasks(self, page: dict) -> None:
        rows = [{"id": t["id"], "type": t["type"], "state": badge(t["state"]), "priority": t["priority"],
                 "node": t.get("node") or "", "submitted": clock(t["submitted_at"]), "waited ms": t.get("waited_ms"),
                 "ran ms": t.get("ran_ms"),
                 "progress": f"{t['progress'] * 100:.0f}% {t.get('progress_note', '')}" if t["state"] == "running"
                 else "", "input": t.get("input_excerpt", "")} for t in page.get("items", [])]
        selected = [self.table.value.iloc[i]["id"] for i in self.table.selection
                    if i < len(self.table.value)] if len(self.table.value) else []
        self.table.value = pd.DataFrame(rows)
        self.table.selection = [i for i, r in enumerate(rows) if r["id"] in selected]
        self.next_cursor = page.get("next_cursor")
        self.page_info.object = f"page {len(self.cursors)} · {page.get('total', 0)} tasks"

    def _show_docs(self, docs: dict) -> None:
        self.docs.value = pd.DataFrame([{"id": d["id"], "title": d["title"], "state": d["state"],
                                         "version": d["version"], "size": d["size"], "chunks": d["chunk_count"],
                                         "ingested by": d.get("ingested_by") or "", "error": d.get("error") or ""}
                                        for d in docs.get("items", [])])

    def _show_nodes(self, cluster: dict, nodes: dict) -> None:
        self.raft_view.object = (f"leader **{cluster.get('leader') or 'none'}** · term {cluster['term']} · commit "
                                 f"{cluster['commit_index']} · applied {cluster['applied_index']} (lag "
                                 f"{cluster['commit_index'] - cluster['applied_index']}) · quorum "
                                 f"{'yes' if cluster.get('quorum') else 'NO'}")
        self.nodes.value = pd.DataFrame([{
            "node": n["id"], "role": n.get("raft_role") or "", "gossip": badge_status(n["status"]),
            "cpu %": (n.get("metrics") or {}).get("cpu_percent"), "mem %": (n.get("metrics") or {}).get("mem_percent"),
            "gpu %": (n.get("metrics") or {}).get("gpu_util_percent"), "slots": n.get("slots"),
            "running": ", ".join(n.get("running", [])), "models": (n.get("metrics") or {}).get("models", "")}
            for n in nodes.get("items", [])])

    async def _show_detail(self, task_id: str) -> None:
        try:
            task = await self.api.call("GET", f"/api/v1/tasks/{quote(task_id)}")
        except ApiError as exc:
            self.detail.object = html.escape(str(exc))
            return
        self.detail.object = self.s_result.object = render_task(task)

    # ------------------------------------------------------------ actions
    async def _filters_changed(self, *_: Any) -> None:
        self.cursors = [None]
        await self.refresh()

    async def _prev(self, _: Any) -> None:
        if len(self.cursors) > 1:
            self.cursors.pop()
            await self.refresh()

    async def _next(self, _: Any) -> None:
        if self.next_cursor:
            self.cursors.append(self.next_cursor)
            await self.refresh()

    def _selected_ids(self) -> list[str]:
        return [self.table.value.iloc[i]["id"] for i in self.table.selection if i < len(self.table.value)]

    async def _act(self, method: str, suffix: str, verb: str) -> None:
        messages = []
        for task_id in self._selected_ids():
            try:
                task = await self.api.call(method, f"/api/v1/tasks/{task_id}{suffix}")
                messages.append(f"{task_id}: {task['state']}")
            except ApiError as exc:  # e.g. 409: the task started meanwhile
                messages.append(f"{task_id}: {verb} refused: {exc}")
        self.notice.object = html.escape("; ".join(messages)) or "select tasks first (checkboxes)"
        await self.refresh()

    async def _cancel(self, _: Any) -> None:
        await self._act("DELETE", "", "cancel")

    async def _abort(self, _: Any) -> None:
        await self._act("POST", "/abort", "abort")

    async def _retry(self, _: Any) -> None:
        await self._act("POST", "/retry", "retry")

    async def _row_clicked(self, event: Any) -> None:
        self.followed = self.table.value.iloc[event.row]["id"]
        await self._show_detail(self.followed)

    async def _submit(self, _: Any) -> None:
        kind = self.s_type.value
        params: dict = {"top_k": self.s_topk.value, "mode": self.s_mode.value}
        if kind != "retrieve":
            params.update(max_new_tokens=self.s_tokens.value, temperature=self.s_temp.value)
        body = {"type": kind, "priority": self.s_priority.value, "params": params,
                "input": {("prompt" if kind == "generate" else "query"): self.s_query.value}}
        try:
            task = await self.api.call("POST", "/api/v1/tasks", body)
        except ApiError as exc:
            self.s_result.object = f'<b style="color:#c53030">{html.escape(str(exc))}</b>'
            return
        self.followed = task["id"]  # the refresh loop follows it live to its answer
        await self._show_detail(task["id"])

    async def _upload(self, _: Any) -> None:
        names = self.files.filename or []
        contents = self.files.value or []
        if isinstance(names, str):
            names, contents = [names], [contents]
        lines = []
        for name, content in zip(names, contents):
            try:
                answer = await self.api.upload(name, content)
                lines.append(f"{html.escape(name)}: queued as {answer['documents'][0]['doc_id']}, "
                             f"ingest task {answer['tasks'][0]['id']}")
            except ApiError as exc:
                lines.append(f"{html.escape(name)}: refused: {html.escape(str(exc))}")
        self.ingests.object = "<br>".join(lines)
        await self.refresh()

    async def _delete_doc(self, _: Any) -> None:
        for i in self.docs.selection:
            doc_id = self.docs.value.iloc[i]["id"]
            try:
                await self.api.call("DELETE", f"/api/v1/kb/documents/{quote(doc_id)}")
            except ApiError as exc:
                self.status.object = html.escape(str(exc))
        await self.refresh()

    async def _search(self, _: Any) -> None:
        try:
            answer = await self.api.call("GET", "/api/v1/kb/search?" + urlencode(
                {"q": self.k_query.value, "k": 5, "mode": self.k_mode.value}))
        except ApiError as exc:
            self.k_results.object = html.escape(str(exc))
            return
        self.k_results.object = "".join(
            f"<p><b>[{p['n']}] {html.escape(p.get('title') or p['doc_id'])}</b> score {p['score']:.3f} "
            f"(vector {p.get('vector_score')}, keyword {p.get('keyword_score')})<br>{html.escape(p['text'][:400])}</p>"
            for p in answer["passages"]) or "no passages"


def badge_status(status: str) -> str:
    colour = {"alive": "#2f855a", "suspect": "#b7791f", "dead": "#c53030"}.get(status, "#555")
    return f'<span class="gossip-{status}" style="color:{colour};font-weight:bold">{status}</span>'


def render_task(task: dict) -> str:
    parts = [f"<h4>{task['id']} · {task['type']} · {badge(task['state'])}</h4>",
             f"<pre>{html.escape(json.dumps(task.get('input'), indent=1))}</pre>", "<b>timeline</b><ul>"]
    parts += [f"<li>{clock(h['at'])} {h['state']} · node {h.get('node') or '—'} · attempt {h['attempt']} "
              f"{html.escape(h.get('note') or '')}</li>" for h in task.get("history", [])]
    parts.append("</ul>")
    result = task.get("result") if isinstance(task.get("result"), dict) else {}
    passages = {p["n"]: p for p in result.get("passages", [])}
    if "answer" in result:
        parts.append(f'<b>answer</b><p class="answer">{html.escape(result["answer"])}</p>')
    for c in result.get("citations", []):
        p = passages.get(c["n"], {})
        parts.append(f'<details class="citation"><summary>[{c["n"]}] {html.escape(c.get("title") or c["doc_id"])} '
                     f'(chunk {c["chunk"]}) · score {p.get("score")}</summary>'
                     f'<p>{html.escape(p.get("text", ""))}</p><small>vector {p.get("vector_score")} · keyword '
                     f'{p.get("keyword_score")}</small></details>')
    if task.get("error"):
        parts.append(f'<b style="color:#c53030">error</b><p>{html.escape(task["error"])}</p>')
    return "".join(parts)


def page(api_url: str, node_id: str, peers: dict[str, str]) -> pn.viewable.Viewable:
    pn.extension("tabulator")
    dashboard = Dashboard(api_url, node_id, peers)
    return dashboard.root
