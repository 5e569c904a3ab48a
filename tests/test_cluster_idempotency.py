"""Exactly-once submissions and executor reconciliation on a real 3-process cluster.

Idempotency: the same Idempotency-Key sent to two different nodes (one after the
other, and at the same time) gives one task; uploads and chat completions too.
Reconciliation: with the failpoint `executor.lose_claim`, each node's executor
drops the answer of its first claim that grants a task, exactly as when a claim
commits after its proposer timed out; the task must be handed back within seconds
and then run once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e

NOOP = {"type": "noop", "input": {"duration_ms": 100}}


def post(
    cluster: NodeCluster, node: str, path: str, body: Any, key: str | None
) -> tuple[int, Any, dict]:
    """POST JSON as the admin with an Idempotency-Key (NodeCluster.request sends no extra headers)."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {cluster.admin_token()}",
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(
        cluster.api[node] + path, data=json.dumps(body).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def first_chunk_id(cluster: NodeCluster, node: str, key: str) -> tuple[str, dict]:
    """Start a streamed chat, read its first chunk's id, hang up."""
    request = urllib.request.Request(
        cluster.api[node] + "/v1/chat/completions",
        method="POST",
        data=json.dumps(
            {
                "model": "ragraft-qa",
                "stream": True,
                "messages": [{"role": "user", "content": "What is the lens made of?"}],
            }
        ).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {cluster.admin_token()}",
            "Idempotency-Key": key,
        },
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        line = response.readline().decode()
        return json.loads(line.removeprefix("data: "))["id"], dict(response.headers)


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    c = NodeCluster(tmp_path_factory.mktemp("idempotency"))
    c.start_all()
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop_all()


def all_tasks(cluster: NodeCluster, node: str, **query: str) -> list[dict]:
    suffix = "".join(f"&{k}={v}" for k, v in query.items())
    status, page = cluster.request(node, "GET", f"/api/v1/tasks?limit=500{suffix}")
    assert status == 200, page
    return page["items"]


def test_the_same_key_on_two_nodes_is_one_task(cluster: NodeCluster) -> None:
    before = len(all_tasks(cluster, "n1"))
    key = uuid.uuid4().hex
    status, first, headers = post(cluster, "n1", "/api/v1/tasks", NOOP, key)
    assert status == 201 and "Idempotent-Replayed" not in headers, first
    status, again, headers = post(cluster, "n2", "/api/v1/tasks", NOOP, key)
    assert status == 201 and headers.get("Idempotent-Replayed") == "true", again
    assert again["id"] == first["id"] and again["replayed"] is True
    status, refused, _ = post(cluster, "n3", "/api/v1/tasks", {**NOOP, "priority": 9}, key)
    assert status == 422 and refused["error"]["code"] == "idempotency_mismatch", refused
    assert refused["error"]["details"]["task_id"] == first["id"]
    for bad in ("x" * 256, "ключ"):
        status, body, _ = post(cluster, "n3", "/api/v1/tasks", NOOP, bad.encode().decode("latin-1"))
        assert status == 400 and body["error"]["code"] == "bad_idempotency_key", body
    cluster.wait_applied("n3", "n1")
    tasks = all_tasks(cluster, "n3")
    assert len(tasks) == before + 1 and sum(t["id"] == first["id"] for t in tasks) == 1


def test_the_same_key_sent_to_two_nodes_at_once_is_one_task(cluster: NodeCluster) -> None:
    before = len(all_tasks(cluster, "n1"))
    for _ in range(5):
        key = uuid.uuid4().hex
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda node, k=key: post(cluster, node, "/api/v1/tasks", NOOP, k), ("n1", "n3")
                )
            )
        assert [status for status, _, _ in answers] == [201, 201], answers
        assert answers[0][1]["id"] == answers[1][1]["id"]
        # both entries reached the log; the one applied second is the replay
        assert sorted(h.get("Idempotent-Replayed", "") for _, _, h in answers) == ["", "true"]
    cluster.wait_applied("n2", "n1")
    cluster.wait_applied("n2", "n3")
    assert len(all_tasks(cluster, "n2")) == before + 5


def test_a_retried_upload_on_another_node_is_one_document_and_one_ingest(
    cluster: NodeCluster,
) -> None:
    key = uuid.uuid4().hex
    document = {"title": "Lighthouses", "text": "The keeper polishes the great lens every Tuesday."}
    status, first, _ = post(cluster, "n1", "/api/v1/kb/documents", document, key)
    assert status == 202, first
    status, again, headers = post(cluster, "n3", "/api/v1/kb/documents", document, key)
    assert status == 202 and headers.get("Idempotent-Replayed") == "true", again
    assert again["tasks"][0]["id"] == first["tasks"][0]["id"]
    assert again["documents"][0]["doc_id"] == first["documents"][0]["doc_id"]
    cluster.wait_applied("n2", "n3")
    docs = cluster.request("n2", "GET", "/api/v1/kb/documents")[1]["items"]
    assert [d["title"] for d in docs].count("Lighthouses") == 1
    assert docs[[d["title"] for d in docs].index("Lighthouses")]["version"] == 1
    assert len(all_tasks(cluster, "n2", type="ingest")) == 1


def test_a_chat_retried_on_another_node_follows_the_same_task(cluster: NodeCluster) -> None:
    key = uuid.uuid4().hex
    first, headers = first_chunk_id(cluster, "n1", key)
    assert "Idempotent-Replayed" not in headers
    again, headers = first_chunk_id(cluster, "n2", key)
    assert again == first and headers.get("Idempotent-Replayed") == "true"
    task_id = first.removeprefix("chatcmpl-")
    time.sleep(0.5)  # both clients hung up: with a key, the task is not cancelled
    cluster.wait_applied("n3", "n1")
    qa = all_tasks(cluster, "n3", type="qa")
    assert [t["id"] for t in qa] == [task_id] and qa[0][
        "state"
    ] == "queued"  # these nodes load no models


@pytest.fixture
def lossy(tmp_path: Any) -> Iterator[NodeCluster]:
    c = NodeCluster(tmp_path, env={"RAGRAFT_FAILPOINTS": "executor.lose_claim=1"})
    c.start_all()
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop_all()


def test_a_task_granted_by_a_claim_whose_answer_was_lost_is_handed_back_within_seconds(
    lossy: NodeCluster,
) -> None:
    status, task, _ = post(lossy, "n1", "/api/v1/tasks", NOOP, None)
    assert status == 201, task

    def finished() -> dict | None:
        current = lossy.request("n2", "GET", f"/api/v1/tasks/{task['id']}")[1]
        return current if current.get("state") in ("completed", "failed", "cancelled") else None

    done = wait_for(finished, timeout=30)
    assert done["state"] == "completed", done
    history = done["history"]
    releases = [
        i
        for i, h in enumerate(history)
        if h["state"] == "queued" and h["note"].startswith("released")
    ]
    # every node drops its first grant, so the task is released once per node it lands on first
    assert 1 <= len(releases) <= 3, history
    assert done["attempt"] == len(releases) + 1
    for i in releases:
        granted = history[i - 1]
        assert granted["state"] == "running" and granted["note"] == "claimed", history
        assert history[i]["note"].startswith(f"released by {granted['node']}:")
        assert history[i]["at"] - granted["at"] < 5_000, history  # handed back within seconds
        log = (lossy.root / f"{granted['node']}.log").read_text()
        assert task["id"] in log and "handed back" in log
    assert [h["state"] for h in history[-2:]] == ["running", "completed"]
