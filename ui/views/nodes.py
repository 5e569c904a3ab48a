"""Nodes: every node's Raft position (role, term, commit/applied and lag), gossip
status, resources with their recent history, running tasks and models."""

from __future__ import annotations

import html

import pandas as pd
import panel as pn

from ui.charts import NodeHistory
from ui.render import gossip_badge
from ui.tables import LiveTable


class NodesView:
    def __init__(self) -> None:
        self.raft = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(),
            disabled=True,
            show_index=False,
            sortable=False,
            formatters={"gossip": {"type": "html"}, "running tasks": {"type": "html"}},
            sizing_mode="stretch_width",
            height=200,
            css_classes=["nodes-table"],
        )
        self.live = LiveTable(self.table, key="node")
        self.cpu = NodeHistory("CPU % (host)", "cpu_percent")
        self.mem = NodeHistory("memory % (host)", "mem_percent")
        self.gpu = NodeHistory("GPU %", "gpu_util_percent")
        self.gpu_pane = pn.pane.Bokeh(self.gpu.figure, sizing_mode="stretch_width", visible=False)
        self.no_gpu = pn.pane.Markdown("*no node reports a GPU*")
        self.panel = pn.Column(
            self.raft,
            self.table,
            pn.GridBox(
                pn.pane.Bokeh(self.cpu.figure, sizing_mode="stretch_width"),
                pn.pane.Bokeh(self.mem.figure, sizing_mode="stretch_width"),
                pn.Column(self.gpu_pane, self.no_gpu, sizing_mode="stretch_width"),
                ncols=3,
                sizing_mode="stretch_width",
            ),
            name="Nodes",
            sizing_mode="stretch_width",
        )

    def show(self, cluster: dict, nodes: list[dict]) -> None:
        self.raft.object = (
            f"this node: **{html.escape(cluster['node'])}** · "
            f"leader **{cluster.get('leader') or 'none'}** · term {cluster['term']} · "
            f"quorum {'yes' if cluster.get('quorum') else '**NO**'}"
        )
        leader_commit = (
            max(((n.get("metrics") or {}).get("raft") or {}).get("commit", 0) for n in nodes)
            if nodes
            else 0
        )
        rows = []
        for n in nodes:
            m = n.get("metrics") or {}
            raft = m.get("raft") or {}
            dead = n["status"] == "dead"
            running = m.get("running") or []
            rows.append(
                {
                    "node": n["id"],
                    # a drained node is still a voter: say both
                    "role": (n.get("raft_role") or raft.get("role", ""))
                    + (" · draining" if n.get("draining") else ""),
                    "gossip": gossip_badge(n["status"]),
                    "term": raft.get("term"),
                    "commit": raft.get("commit"),
                    "applied": raft.get("applied"),
                    "lag": None
                    if dead or "applied" not in raft
                    else leader_commit - raft["applied"],
                    "cpu %": m.get("cpu_percent"),
                    "mem %": m.get("mem_percent"),
                    "gpu %": m.get("gpu_util_percent"),
                    "slots": (
                        f"{m.get('slots_used', '—')}/{m.get('slots_total', n.get('slots') or '—')}"
                    ),
                    "running tasks": ", ".join(
                        f"{html.escape(r['id'])} ({r.get('type', '')} "
                        f"{round(r.get('progress', 0) * 100)}%)"
                        for r in running
                    ),
                    "models": m.get("models", ""),
                }
            )
        self.live.show(rows)

    def show_history(self, history: dict) -> None:
        nodes = history.get("nodes", {})
        self.cpu.update(nodes)
        self.mem.update(nodes)
        has_gpu = self.gpu.has_data(nodes)
        self.gpu_pane.visible, self.no_gpu.visible = has_gpu, not has_gpu
        if has_gpu:
            self.gpu.update(nodes)
