"""The dashboard's charts: Bokeh figures fed from the API's answers.

Each chart owns its figure and ColumnDataSources; `update(...)` replaces the
sources' data, which Panel sends to the browser over the session's websocket
(a small diff, never a page reload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bokeh.models import ColumnDataSource, HoverTool, Legend
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from node.replica.vocabulary import FINISHED, LATENCY_EDGES_MS, TaskState

STATE_COLOURS = {
    TaskState.QUEUED: "#b7791f",
    TaskState.RUNNING: "#2b6cb0",
    TaskState.COMPLETED: "#2f855a",
    TaskState.FAILED: "#c53030",
    TaskState.CANCELLED: "#805ad5",
}
# Plain strings: they become Bokeh column names, legend labels and widget options.
STATES = [s.value for s in TaskState]
QUEUED = TaskState.QUEUED.value


def in_document(model: Any, change: Callable[[], None]) -> None:
    """Bokeh models may only change under their document's lock; a session's async
    callbacks do not hold it, so the change is queued for the document's next tick."""
    doc = model.document
    if doc is None:
        change()
    else:
        doc.add_next_tick_callback(change)


def replace_data(source: ColumnDataSource, data: dict) -> None:
    in_document(source, lambda: setattr(source, "data", data))


def set_factors(axis_range: Any, factors: list[str]) -> None:
    if list(axis_range.factors) != factors:
        in_document(axis_range, lambda: setattr(axis_range, "factors", factors))


def _figure(title: str, *, height: int = 230, x_axis_type: str = "auto", **kw: Any) -> figure:
    fig = figure(
        title=title,
        height=height,
        sizing_mode="stretch_width",
        x_axis_type=x_axis_type,
        toolbar_location=None,
        **kw,
    )
    fig.title.text_font_size = "11pt"
    fig.yaxis.minor_tick_line_color = None
    return fig


class StatesOverTime:
    """Tasks in each state at evenly spaced instants (GET /stats/history)."""

    def __init__(self) -> None:
        self.source = ColumnDataSource(
            {"t": [], **{s: [] for s in STATES}}, name="states-over-time"
        )
        self.figure = _figure("tasks by state (last 10 min)", x_axis_type="datetime")
        legend = []
        for state in STATES:
            line = self.figure.line(
                "t", state, source=self.source, color=STATE_COLOURS[state], line_width=2
            )
            legend.append((state, [line]))
        self.figure.add_layout(
            Legend(items=legend, location="top_left", label_text_font_size="8pt"), "right"
        )
        self.figure.add_tools(
            HoverTool(
                tooltips=[("time", "@t{%H:%M:%S}"), *[(s, f"@{s}") for s in STATES]],
                formatters={"@t": "datetime"},
                mode="vline",
            )
        )

    def update(self, history: dict) -> None:
        replace_data(
            self.source, {"t": history["t"], **{s: history["states"].get(s, []) for s in STATES}}
        )


class QueueDepth:
    def __init__(self) -> None:
        self.source = ColumnDataSource({"t": [], QUEUED: []}, name="queue-depth")
        self.figure = _figure("queue depth (last 10 min)", x_axis_type="datetime")
        self.figure.varea(
            "t", 0, QUEUED, source=self.source, color=STATE_COLOURS[QUEUED], alpha=0.35
        )
        self.figure.line("t", QUEUED, source=self.source, color=STATE_COLOURS[QUEUED], line_width=2)

    def update(self, history: dict) -> None:
        replace_data(self.source, {"t": history["t"], QUEUED: history["states"].get(QUEUED, [])})


class TasksPerNode:
    """Stacked bars: each node's tasks by state (GET /stats by_node)."""

    SHOWN = tuple(s.value for s in (TaskState.RUNNING, *FINISHED))  # not the queue

    def __init__(self, nodes: list[str]) -> None:
        self.source = ColumnDataSource(
            {"node": [], **{s: [] for s in self.SHOWN}}, name="tasks-per-node"
        )
        self.figure = _figure("tasks per node", y_range=list(nodes))
        self.figure.hbar_stack(
            list(self.SHOWN),
            y="node",
            height=0.6,
            source=self.source,
            color=[STATE_COLOURS[s] for s in self.SHOWN],
            legend_label=list(self.SHOWN),
        )
        self.figure.legend.label_text_font_size = "8pt"
        self.figure.add_layout(self.figure.legend[0], "right")  # beside the bars, not over them
        self.figure.add_tools(
            HoverTool(tooltips=[("node", "@node"), *[(s, f"@{s}") for s in self.SHOWN]])
        )

    def update(self, by_node: dict[str, dict[str, int]]) -> None:
        nodes = sorted(set(by_node) | set(self.figure.y_range.factors))
        by_node = {n: by_node.get(n, {}) for n in nodes}
        set_factors(self.figure.y_range, nodes)
        replace_data(
            self.source,
            {"node": nodes, **{s: [by_node[n].get(s, 0) for n in nodes] for s in self.SHOWN}},
        )


class LatencyHistogram:
    """Wait and run times of the tasks finished in the window, on log-spaced buckets."""

    def __init__(self) -> None:
        self.source = ColumnDataSource({"bucket": [], "wait": [], "run": []}, name="latency")
        self.figure = _figure(
            "latency (tasks finished in the last 10 min)", x_range=_bucket_labels(LATENCY_EDGES_MS)
        )
        self.figure.vbar(
            x="bucket",
            top="run",
            source=self.source,
            width=0.8,
            color="#2b6cb0",
            alpha=0.7,
            legend_label="run",
        )
        self.figure.vbar(
            x="bucket",
            top="wait",
            source=self.source,
            width=0.4,
            color="#b7791f",
            alpha=0.9,
            legend_label="wait",
        )
        self.figure.xaxis.major_label_orientation = 0.8
        self.figure.legend.label_text_font_size = "8pt"
        self.figure.add_tools(
            HoverTool(tooltips=[("bucket", "@bucket"), ("run", "@run"), ("wait", "@wait")])
        )

    def update(self, latency: dict) -> None:
        labels = _bucket_labels(latency["edges_ms"])
        set_factors(self.figure.x_range, labels)
        replace_data(
            self.source, {"bucket": labels, "wait": latency["wait"], "run": latency["run"]}
        )


class NodeHistory:
    """One line per node for one metric (GET /nodes/history)."""

    def __init__(self, title: str, field: str) -> None:
        self.field = field
        self.figure = _figure(title, height=200, x_axis_type="datetime", y_range=(0, 100))
        self.sources: dict[str, ColumnDataSource] = {}

    def update(self, nodes: dict[str, dict[str, list]]) -> None:
        data = {}
        for node, series in nodes.items():
            points = [(t, v) for t, v in zip(series["t"], series[self.field]) if v is not None]
            data[node] = {"t": [t for t, _ in points], "v": [v for _, v in points]}
        in_document(self.figure, lambda: self._draw(data))

    def _draw(self, data: dict[str, dict[str, list]]) -> None:
        for node in sorted(data):
            source = self.sources.get(node)
            if source is None:  # a node seen for the first time gets its line
                source = self.sources[node] = ColumnDataSource(
                    {"t": [], "v": []}, name=f"{self.field}-{node}"
                )
                colour = Category10_10[(len(self.sources) - 1) % 10]
                self.figure.line(
                    "t", "v", source=source, color=colour, line_width=2, legend_label=node
                )
                self.figure.legend.label_text_font_size = "8pt"
                self.figure.legend.location = "top_left"
            source.data = data[node]

    def has_data(self, nodes: dict[str, dict[str, list]]) -> bool:
        return any(v is not None for series in nodes.values() for v in series.get(self.field, []))


def _bucket_labels(edges: list[int] | tuple[int, ...]) -> list[str]:
    return [f"≥{_duration(edges[i])}" for i in range(len(edges) - 1)]


def _duration(ms: int) -> str:
    if ms >= 60_000:
        return f"{ms // 60_000}min"
    if ms >= 1_000:
        return f"{ms / 1000:g}s"
    return f"{ms}ms"
