"""/metrics: what the exporter counts of applied commands (in process), and on real
nodes Prometheus text that counts the cluster's task events, and a Grafana
dashboard whose every query uses a metric the nodes really expose."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.http.metrics import MetricsExporter
from node.replica import codec
from node.replica import commands as c
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskState, TaskType
from tests.nodecluster import NodeCluster, running_cluster

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "ragraft.json"
PROMQL_WORDS = {
    "max",
    "min",
    "sum",
    "avg",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "le",
    "without",
}


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:  # no token: public
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def parse(text: str) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


# ---------------------------------------------------------------------- in process
def exporter() -> tuple[NodeState, MetricsExporter]:
    state = NodeState(TaskQueue())
    replica = SimpleNamespace(
        state=state, status=lambda: {"leader": "n1", "term": 2, "commit": 9, "applied": 9}
    )
    metrics = MetricsExporter(
        "n1",
        replica,  # type: ignore[arg-type]
        SimpleNamespace(status=lambda: {"slots_total": 2, "slots_used": 0}),
        SimpleNamespace(snapshot=lambda: {"n1": {"status": "alive"}}),
        SimpleNamespace(status=SimpleNamespace(state="ready"), ready=True),
        lambda: {"cpu_percent": 1.0, "mem_used": 1, "mem_total": 2},
    )
    state.listen(metrics.on_apply)
    return state, metrics


def submit(task_id: str, kind: TaskType = TaskType.NOOP, key: str | None = None) -> c.Submit:
    return c.Submit(task_id, kind, {}, TaskParams(), "alice", at=1, idem_key=key)


def test_the_exporter_counts_applied_task_events_once() -> None:
    state, metrics = exporter()
    timings = {"new_tokens": 12, "tokens_per_s": 24.0}
    entries = [
        submit("t1", TaskType.GENERATE, key="k"),
        submit("t9", TaskType.GENERATE, key="k"),  # a replay: no new task
        c.Claim("n1", slots=2, at=2),
        c.Complete("t1", 1, "n1", at=1002, result={"timings": timings}),
        submit("t2"),
        c.Claim("n1", slots=2, at=3),
        c.Fail("t2", 1, "n1", at=4, error="bad", retryable=False),
        submit("t3"),
        c.Cancel("t3", at=5, by="alice"),
        c.Cancel("t3", at=6, by="alice"),  # refused: already cancelled
    ]
    for index, cmd in enumerate(entries, 1):
        state.apply(index, codec.encode(cmd))
    samples = parse(metrics.render().decode())
    events = "ragraft_task_events_total"
    assert value(samples, events, event="submitted", type="generate") == 1
    assert value(samples, events, event="submitted", type="noop") == 2
    assert value(samples, events, event="claimed") == 2
    assert value(samples, events, event="completed", type="generate") == 1
    assert value(samples, events, event="failed", type="noop") == 1
    assert value(samples, events, event="cancelled", type="noop") == 1
    assert value(samples, "ragraft_task_run_seconds_sum", type="generate") == 1.0
    assert value(samples, "ragraft_generated_tokens_total") == 12
    assert {s.labels["state"] for s in samples["ragraft_tasks"]} == {str(s) for s in TaskState}
    assert value(samples, "ragraft_tasks", state="cancelled") == 1
    assert value(samples, "ragraft_gossip_members", status="alive") == 1
    assert value(samples, "ragraft_models_state", state="ready") == 1


# ---------------------------------------------------------------------- real nodes
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """A cluster that has done a known amount of work: five noop tasks completed and
    one failed.  Each test scrapes it itself, so either runs alone or in any order."""
    with running_cluster(tmp_path_factory.mktemp("prom")) as cluster:
        ids = [
            cluster.request(
                n, "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 50}}
            )[1]["id"]
            for n in ("n1", "n2", "n3", "n1", "n2")
        ]
        failing = cluster.request(
            "n1",
            "POST",
            "/api/v1/tasks",
            {"type": "noop", "input": {"fail": "bad", "retryable": False}},
        )[1]["id"]
        expected = {**dict.fromkeys(ids, "completed"), failing: "failed"}
        deadline = time.monotonic() + 20
        while any(
            cluster.request("n1", "GET", f"/api/v1/tasks/{i}")[1].get("state") != state
            for i, state in expected.items()
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield cluster


def test_metrics_count_the_clusters_work(cluster: NodeCluster) -> None:
    cluster.read_barrier("n3")  # n3 has applied every completion n1 saw
    samples = scrape(cluster.api["n3"])
    assert value(samples, "ragraft_task_events_total", event="submitted", type="noop") == 6
    assert value(samples, "ragraft_task_events_total", event="completed", type="noop") == 5
    assert value(samples, "ragraft_task_events_total", event="failed", type="noop") == 1
    assert value(samples, "ragraft_task_run_seconds_count", type="noop") == 6
    assert value(samples, "ragraft_tasks", state="completed") == 5
    assert (
        value(samples, "ragraft_raft_term") >= 1 and value(samples, "ragraft_raft_has_leader") == 1
    )
    assert value(samples, "ragraft_gossip_members", status="alive") == 3
    assert (
        value(samples, "ragraft_slots_total") == 2
        and value(samples, "ragraft_memory_total_bytes") > 0
    )
    assert sum(value(scrape(cluster.api[n]), "ragraft_raft_is_leader") for n in cluster.ids) == 1


def test_every_dashboard_query_uses_an_exposed_metric(cluster: NodeCluster) -> None:
    cluster.read_barrier("n3")
    samples = scrape(cluster.api["n3"])
    exposed = set(samples) | {
        "ragraft_gpu_util_percent",
        "ragraft_gpu_memory_used_bytes",
    }  # only with a GPU
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    for expr in exprs:
        for name in re.findall(r"\bragraft_[a-z0-9_]+", expr):
            assert name in exposed, f"{name} (in {expr!r}) is not exposed by /metrics"
