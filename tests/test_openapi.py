"""/openapi.json documents every route, says what the vocabulary says (states, types,
modes, roles, parameter bounds, error codes), and schemathesis, driving a live node
with the models loaded, finds no server error and no response outside the schemas."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema_rs
import pytest

from node.config import load
from node.http import openapi
from node.http.app import build_http
from node.http.events import EventHub
from node.http.metrics import MetricsExporter
from node.rag.knowledge import KnowledgeBase
from node.replica.refusal import RefusalCode
from node.replica.replica import Replica
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    MAX_NOOP_MS,
    MAX_TEXT_CHARS,
    MAX_TOP_K,
    PARAMS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SUBMITTABLE_TYPES,
    InvalidField,
    SearchMode,
    TaskParams,
    TaskState,
    TaskType,
    UserRole,
)
from tests.nodecluster import NodeCluster, running_cluster

ROOT = Path(__file__).parent.parent
SPEC = openapi.document()
SCHEMAS = SPEC["components"]["schemas"]


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route a node registers (the handlers are not called)."""
    config = load(ROOT / "cluster.toml", env={})
    state = NodeState(TaskQueue(), KnowledgeBase())
    # Replica reads only its driver's id when it is made, and nothing is proposed
    # while routes are registered: a stand-in driver is enough.
    replica = Replica(SimpleNamespace(id="n1"), state)  # type: ignore[arg-type]
    metrics = MetricsExporter("n1", replica, None, None, None, dict)  # type: ignore[arg-type]
    events = EventHub("n1", state)
    app = build_http(config, replica, None, None, None, events, metrics, None)  # type: ignore[arg-type]
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    documented = {(method, path) for path, ops in SPEC["paths"].items() for method in ops}
    registered = registered_routes()
    assert registered - documented == set(), "routes missing from node/http/openapi.py"
    assert documented - registered == set(), "documented routes no node serves"
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for parameter in re.findall(r"{(\w+)}", path):
                assert any(
                    p["name"] == parameter and p["in"] == "path" for p in op.get("parameters", [])
                ), (method, path, parameter)


# ---------------------------------------------------------------------- the vocabulary
def _values(enum: Any) -> list[str]:
    return [member.value for member in enum]


def _parameter(path: str, method: str, name: str) -> dict:
    (found,) = [p for p in SPEC["paths"][path][method]["parameters"] if p["name"] == name]
    return found


def test_the_enums_are_the_vocabularys() -> None:
    task, summary = SCHEMAS["Task"]["properties"], SCHEMAS["TaskSummary"]["properties"]
    assert task["state"]["enum"] == _values(TaskState)
    assert summary["state"]["enum"] == _values(TaskState)
    assert SCHEMAS["HistoryEntry"]["properties"]["state"]["enum"] == _values(TaskState)
    assert task["type"]["enum"] == summary["type"]["enum"] == _values(TaskType)
    submission = SCHEMAS["Submission"]["properties"]
    assert submission["type"]["enum"] == _values(SUBMITTABLE_TYPES)
    assert TaskType.INGEST.value not in submission["type"]["enum"]
    assert SCHEMAS["TaskParams"]["properties"]["mode"]["enum"] == _values(SearchMode)
    assert _parameter("/api/v1/kb/search", "get", "mode")["schema"]["enum"] == _values(SearchMode)
    me = SPEC["paths"]["/api/v1/auth/me"]["get"]["responses"]["200"]
    assert me["content"]["application/json"]["schema"]["properties"]["role"]["enum"] == _values(
        UserRole
    )
    stats = SCHEMAS["Stats"]
    assert set(_values(TaskState)) <= set(stats["required"]) & set(stats["properties"])


def test_the_params_schema_is_made_of_the_param_specs() -> None:
    properties = SCHEMAS["TaskParams"]["properties"]
    assert list(properties) == [spec.name for spec in PARAMS]
    for spec in PARAMS:
        assert properties[spec.name]["description"] == spec.doc
        if spec.kind in ("integer", "number"):
            assert properties[spec.name]["type"] == spec.kind
            assert properties[spec.name]["minimum"] == spec.low, spec.name
            assert properties[spec.name]["maximum"] == spec.high, spec.name
    assert properties["top_k"]["maximum"] == MAX_TOP_K
    assert _parameter("/api/v1/kb/search", "get", "k")["schema"]["maximum"] == MAX_TOP_K
    submission = SCHEMAS["Submission"]["properties"]
    assert submission["params"] == {"$ref": "#/components/schemas/TaskParams"}
    assert submission["input"]["properties"]["query"]["maxLength"] == MAX_TEXT_CHARS
    assert submission["input"]["properties"]["prompt"]["maxLength"] == MAX_TEXT_CHARS
    assert submission["input"]["properties"]["duration_ms"]["maximum"] == MAX_NOOP_MS
    priority = submission["priority"]
    assert (priority["minimum"], priority["maximum"]) == (PRIORITY_MIN, PRIORITY_MAX)
    assert priority["default"] == DEFAULT_PRIORITY


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"top_k": MAX_TOP_K, "mode": "hybrid", "tags": ["a"], "stop": "\n", "seed": 0},
        {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 1, "stop": ["a", "b"]},
        {"top_k": MAX_TOP_K + 1},
        {"top_k": 0},
        {"mode": "fuzzy"},
        {"temperature": 5.5},
        {"stop": ["s"] * 9},
        {"doc_ids": "not a list"},
        {"unknown": 1},
    ],
)
def test_the_params_schema_accepts_what_task_params_accepts(params: dict) -> None:
    """The document and TaskParams.parse draw the same line (so schemathesis's valid
    examples are valid submissions)."""
    try:
        TaskParams.parse(params)
        parsed = True
    except InvalidField:
        parsed = False
    assert jsonschema_rs.is_valid(SCHEMAS["TaskParams"], params) == parsed


def _codes_written_by_routes() -> set[str]:
    """The error codes node/http/ writes as literals: `error(422, "invalid", ...)`,
    `UploadError(413, "too_many_files", ...)` and {"code": "..."} bodies.  (The chat
    route answers in OpenAI's format, not the document's Error.)"""
    codes: set[str] = set()
    for path in (ROOT / "node" / "http").glob("*.py"):
        if path.name in ("openapi.py", "openai_compat.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and len(node.args) >= 2:
                status, code = node.args[0], node.args[1]
                if (
                    isinstance(status, ast.Constant)
                    and isinstance(status.value, int)
                    and 400 <= status.value < 600
                    and isinstance(code, ast.Constant)
                    and isinstance(code.value, str)
                ):
                    codes.add(code.value)
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        codes.add(value.value)
    return codes


def test_the_error_codes_are_the_refusals_and_the_routes_own() -> None:
    documented = SCHEMAS["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert len(documented) == len(set(documented))
    assert set(_values(RefusalCode)) <= set(documented)
    written = _codes_written_by_routes()
    assert "invalid" in written  # the scan finds what the routes write
    assert written - set(documented) == set(), "codes missing from openapi.ROUTE_ERROR_CODES"


# ---------------------------------------------------------------------- a live node
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
            (
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance"
            ),
            # membership changes would take the cluster apart, and a drain of a node the
            # stateful phase found in /api/v1/nodes waits for its tasks (tests/
            # test_cluster_tasks.py drives it); the event stream never ends; every valid
            # chat request runs a generation (tests/test_openai_api.py drives that route
            # with the openai client)
            "--exclude-path-regex",
            "/cluster/members|/drain|/events|/v1/chat",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "7",
            "--request-timeout",
            "30",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cluster.root,
    )
    report = ROOT / "artifacts" / "schemathesis" / "main.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(run.stdout)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "API Operations" in run.stdout
