"""/metrics on a real node: Prometheus text that counts the cluster's task events,
and a Grafana dashboard whose every query uses a metric the nodes really expose."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
        text = response.read().decode()
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
