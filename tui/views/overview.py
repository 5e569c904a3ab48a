"""Overview: counters by state, a throughput sparkline and the node table."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Sparkline, Static

from node.replica.vocabulary import TaskState
from tui import format as fmt

STATES = tuple(TaskState)  # one card each, in the lifecycle's order


class Overview(Vertical):
    DEFAULT_CSS = """
    Overview .cards { height: 5; }
    Overview .card {
        width: 1fr; border: round $primary; content-align: center middle; text-align: center;
        height: 5;
    }
    Overview #throughput { height: 2; margin: 0 1; }
    Overview #cluster-line { height: auto; margin: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(classes="cards"):
            for name in STATES:
                yield Static(f"{name}\n—", classes="card", id=f"card-{name}")
        yield Label("completed per second, last minutes", id="throughput-label")
        yield Sparkline([0], id="throughput")
        yield Static("", id="cluster-line")
        yield DataTable(id="nodes", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#nodes", DataTable)
        table.add_columns(
            "node", "role", "gossip", "cpu", "memory", "gpu", "slots", "running", "models"
        )
        self.history: list[float] = []

    def show(self, stats: dict, nodes: dict, cluster: dict) -> None:
        for name in STATES:
            self.query_one(f"#card-{name}", Static).update(
                f"{fmt.state(name)}\n[b]{stats.get(name, 0)}[/b]"
            )
        rate = stats.get("throughput", {}).get("completed_per_s_1m", 0.0)
        self.history = (self.history + [rate])[-60:]
        self.query_one("#throughput", Sparkline).data = self.history
        wait, run = stats.get("wait_ms", {}), stats.get("run_ms", {})
        self.query_one("#cluster-line", Static).update(
            f"leader [b]{cluster.get('leader') or 'none'}[/b]  term {cluster.get('term')}  "
            f"commit {cluster.get('commit_index')}  applied {cluster.get('applied_index')}  "
            f"quorum {'yes' if cluster.get('quorum') else '[red]NO[/]'}\n{rate:.2f} tasks/s  ·  "
            f"wait p50 {fmt.ms(wait.get('p50'))} p95 {fmt.ms(wait.get('p95'))}  ·  "
            f"run p50 {fmt.ms(run.get('p50'))} p95 {fmt.ms(run.get('p95'))}"
        )
        table = self.query_one("#nodes", DataTable)
        table.clear()
        for node in nodes.get("items", []):
            m = node.get("metrics") or {}
            status = node.get("status", "?")
            colour = {"alive": "green", "suspect": "yellow", "dead": "red"}.get(status, "white")
            gpu = fmt.percent(m.get("gpu_util_percent")) if "gpu_util_percent" in m else "—"
            mem = (
                f"{fmt.size(m.get('mem_used'))}/{fmt.size(m.get('mem_total'))}"
                if m.get("mem_total")
                else "—"
            )
            table.add_row(
                fmt.text(node["id"]),
                fmt.text(node.get("raft_role") or "—"),
                f"[{colour}]{status}[/]",
                fmt.percent(m.get("cpu_percent")),
                mem,
                gpu,
                f"{m.get('slots_used', '—')}/{m.get('slots_total', node.get('slots') or '—')}",
                str(len(node.get("running", []))),
                fmt.text(m.get("models", "—")),
                key=node["id"],
            )
