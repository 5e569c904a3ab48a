"""/openapi.json documents every route, and schemathesis, driving a live node with
the models loaded, finds no server error and no response outside the schemas."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from node import openapi
from node.config import load
from node.events import EventHub
from node.prom import MetricsExporter
from node.rag.knowledge import KnowledgeBase
from node.runtime import build_http
from node.state import NodeState
from node.tasks import TaskQueue
from tests.nodecluster import NodeCluster, running_cluster

ROOT = Path(__file__).parent.parent


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route a node registers (the handlers are not called)."""
    config = load(ROOT / "cluster.toml", env={})
    state = NodeState(TaskQueue(), KnowledgeBase())
    raft = SimpleNamespace(id="n1")  # only its id is read while routes are registered
    metrics = MetricsExporter("n1", raft, state, None, None, None, dict)
    app = build_http(config, raft, state, None, None, None, EventHub("n1", state), metrics)  # type: ignore[arg-type]
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    spec = openapi.document()
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    registered = registered_routes()
    assert registered - documented == set(), "routes missing from node/openapi.py"
    assert documented - registered == set(), "documented routes no node serves"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for parameter in re.findall(r"{(\w+)}", path):
                assert any(
                    p["name"] == parameter and p["in"] == "path" for p in op.get("parameters", [])
                ), (method, path, parameter)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(tmp_path_factory.mktemp("openapi"), models=True) as cluster:
        yield cluster


@pytest.mark.e2e
def test_schemathesis_finds_no_server_error_and_no_response_outside_the_schema(
    cluster: NodeCluster,
) -> None:
    status, spec = cluster.request("n2", "GET", "/openapi.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            cluster.api["n2"] + "/openapi.json",
            "-H",
            f"Authorization: Bearer {cluster.admin_token()}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            # membership changes would take the cluster apart; the event stream never ends; every valid
            # chat request runs a generation (tests/test_openai_api.py drives that route with the openai client)
            "--exclude-path-regex",
            "/cluster/members|/events|/v1/chat",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "7",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cluster.root,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "API Operations" in run.stdout
