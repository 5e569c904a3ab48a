"""Overview: state cards, rates, the four charts and the cluster strip."""

from __future__ import annotations

import html

import panel as pn

from ui.charts import (
    STATE_COLOURS,
    STATES,
    LatencyHistogram,
    QueueDepth,
    StatesOverTime,
    TasksPerNode,
)
from ui.render import GOSSIP_COLOURS


class OverviewView:
    def __init__(self, nodes: list[str]) -> None:
        self.cards = [
            pn.indicators.Number(
                name=s, value=0, font_size="28pt", title_size="11pt", default_color=STATE_COLOURS[s]
            )
            for s in STATES
        ]
        self.rates = {
            key: pn.indicators.Number(
                name=label, value=0, format=fmt, font_size="20pt", title_size="10pt"
            )
            for key, label, fmt in (
                ("tp1", "completed/s (1 min)", "{value:.2f}"),
                ("tp5", "completed/s (5 min)", "{value:.2f}"),
                ("wait50", "wait p50", "{value:,.0f} ms"),
                ("wait95", "wait p95", "{value:,.0f} ms"),
                ("run50", "run p50", "{value:,.0f} ms"),
                ("run95", "run p95", "{value:,.0f} ms"),
            )
        }
        self.states_chart = StatesOverTime()
        self.depth_chart = QueueDepth()
        self.node_chart = TasksPerNode(nodes)
        self.latency_chart = LatencyHistogram()
        self.strip = pn.pane.HTML("", sizing_mode="stretch_width")
        charts = pn.GridBox(
            *(
                pn.pane.Bokeh(c.figure, sizing_mode="stretch_width")
                for c in (self.states_chart, self.depth_chart, self.node_chart, self.latency_chart)
            ),
            ncols=2,
            sizing_mode="stretch_width",
        )
        self.panel = pn.Column(
            pn.Row(*self.cards),
            pn.Row(*self.rates.values()),
            self.strip,
            charts,
            name="Overview",
            sizing_mode="stretch_width",
        )

    def show_stats(self, stats: dict) -> None:
        for card in self.cards:
            card.value = stats.get(card.name, 0)
        rate, wait, run = (
            stats.get("throughput", {}),
            stats.get("wait_ms", {}),
            stats.get("run_ms", {}),
        )
        for key, value in (
            ("tp1", rate.get("completed_per_s_1m")),
            ("tp5", rate.get("completed_per_s_5m")),
            ("wait50", wait.get("p50")),
            ("wait95", wait.get("p95")),
            ("run50", run.get("p50")),
            ("run95", run.get("p95")),
        ):
            self.rates[key].value = value or 0
        self.node_chart.update(stats.get("by_node", {}))

    def show_history(self, history: dict) -> None:
        self.states_chart.update(history)
        self.depth_chart.update(history)
        self.latency_chart.update(history["latency"])

    def show_nodes(self, nodes: list[dict]) -> None:
        cells = []
        for n in nodes:
            m = n.get("metrics") or {}
            colour = GOSSIP_COLOURS.get(n["status"], "#555")
            gpu = (
                f" · gpu {m['gpu_util_percent']}%" if m.get("gpu_util_percent") is not None else ""
            )
            cells.append(
                f'<div class="node-card" data-node="{html.escape(n["id"])}" '
                f'style="border-left:6px solid {colour};'
                'padding:4px 10px;margin:4px;display:inline-block">'
                f"<b>{html.escape(n['id'])}</b> {n.get('raft_role') or ''} · "
                f'<span class="gossip">{html.escape(n["status"])}</span>'
                f" · cpu {m.get('cpu_percent', '—')}% · mem {m.get('mem_percent', '—')}%{gpu}"
                f" · slots {m.get('slots_used', '—')}/{m.get('slots_total', '—')}</div>"
            )
        self.strip.object = "".join(cells)
