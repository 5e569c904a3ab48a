"""GET /api/v1/events: what the hub makes of applied commands (in process), and on
real nodes a task's life, another user's task kept out, a killed node reported
dead, bad requests refused."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.http.events import EventHub, Subscriber
from node.replica import codec
from node.replica import commands as c
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import TaskParams, TaskType
from tests.nodecluster import NodeCluster, running_cluster, users_toml


# ---------------------------------------------------------------------- in process
def submit(task_id: str, owner: str = "alice", idem_key: str | None = None) -> c.Submit:
    return c.Submit(task_id, TaskType.NOOP, {}, TaskParams(), owner, at=1, idem_key=idem_key)


def hub_with(*owners: str | None) -> tuple[NodeState, EventHub, list[Subscriber]]:
    state = NodeState(TaskQueue())
    hub = EventHub("n1", state)
    state.listen(hub.on_apply)
    subs = [Subscriber(owner, frozenset({"task", "kb"})) for owner in owners]
    hub.subscribers.update(subs)
    return state, hub, subs


def drain(sub: Subscriber) -> list[dict]:
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    return events


def test_applied_commands_become_task_events_named_by_their_change() -> None:
    state, _, (admin,) = hub_with(None)
    entries = [
        submit("t1"),
        c.Claim("n1", slots=1, at=2),
        c.Progress("t1", 1, "n1", 0.5, "half"),
        c.Complete("t1", 1, "n1", at=3, result={"ok": True}),
        submit("t2"),
        c.Claim("n2", slots=1, at=4),
        c.NodeStatus("n2", at=5, alive=False),
        c.Expire(before=10),
    ]
    for index, cmd in enumerate(entries, 1):
        state.apply(index, codec.encode(cmd))
    events = drain(admin)
    assert [(e["change"], e.get("task", {}).get("id")) for e in events] == [
        ("submit", "t1"),
        ("claim", "t1"),
        ("progress", "t1"),
        ("complete", "t1"),
        ("submit", "t2"),
        ("claim", "t2"),
        ("requeue", "t2"),
        ("expire", None),
    ]
    assert events[3]["task"]["state"] == "completed" and events[-1]["expired"] == 1
    assert not any("op" in e for e in events)
    assert all(json.dumps(e) for e in events)  # enums travel as their strings


def test_refused_and_replayed_commands_publish_nothing_and_owners_see_only_theirs() -> None:
    state, _, (alice, bob) = hub_with("alice", "bob")
    state.apply(1, codec.encode(submit("t1", idem_key="k")))
    state.apply(2, codec.encode(submit("t9", idem_key="k")))  # a replay
    state.apply(3, codec.encode(c.Cancel("nope", at=3, by="alice")))  # refused: no such task
    state.apply(4, codec.encode(c.PutKey("key-1", "alice", "0" * 64, at=4)))  # not streamed
    assert [(e["change"], e["task"]["id"]) for e in drain(alice)] == [("submit", "t1")]
    assert drain(bob) == []


# ---------------------------------------------------------------------- real nodes
e2e = pytest.mark.e2e


class Stream:
    """Reads an SSE stream in a thread; events land in a queue as (event, data)."""

    def __init__(self, url: str, token: str | None = None, in_url: bool = False) -> None:
        headers = {}
        if token and not in_url:
            headers["Authorization"] = f"Bearer {token}"
        elif token:
            url += ("&" if "?" in url else "?") + f"access_token={token}"
        self.response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=60
        )
        self.events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.received: list[tuple[str, dict]] = []  # every event, in order, wait_for or not
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    event = (kind, json.loads(line[6:]))
                    self.received.append(event)
                    self.events.put(event)
        except Exception:  # noqa: BLE001, S110 - closing the response mid-read ends the thread
            pass

    def wait_for(self, predicate, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kind, data = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if predicate(kind, data):
                return data
        raise AssertionError("event not seen in time")

    def close(self) -> None:
        self.response.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    extra = users_toml(alice="alice-pw", bob="bob-pw")
    with running_cluster(Path(tmp_path_factory.mktemp("events")), extra_toml=extra) as cluster:
        yield cluster


@e2e
def test_a_tasks_life_is_streamed_by_every_node(cluster: NodeCluster) -> None:
    stream = Stream(cluster.api["n3"] + "/api/v1/events?types=task", cluster.admin_token())
    try:
        stream.wait_for(lambda k, d: k == "hello")
        status, task = cluster.request(
            "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 300}}
        )
        assert status == 201
        changes = []
        for change in ("submit", "claim", "complete"):
            data = stream.wait_for(
                lambda k, d, change=change: (
                    k == "task" and d.get("change") == change and d["task"]["id"] == task["id"]
                )
            )
            changes.append((data["change"], data["task"]["state"]))
        assert changes == [("submit", "queued"), ("claim", "running"), ("complete", "completed")]
    finally:
        stream.close()


@e2e
def test_users_stream_only_their_own_tasks(cluster: NodeCluster) -> None:
    alice, bob = cluster.login("n1", "alice", "alice-pw"), cluster.login("n1", "bob", "bob-pw")
    # the token in the URL, as EventSource does
    stream = Stream(cluster.api["n2"] + "/api/v1/events?types=task", alice, in_url=True)
    try:
        stream.wait_for(lambda k, d: k == "hello")
        _, theirs = cluster.request(
            "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {}}, token=bob
        )
        _, mine = cluster.request(
            "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {}}, token=alice
        )
        seen = stream.wait_for(
            lambda k, d: k == "task" and d.get("task", {}).get("id") == mine["id"]
        )
        assert seen["task"]["owner"] == "alice"
        # bob's task runs to its end: all its events are in the log
        deadline = time.monotonic() + 20
        while (
            cluster.request("n1", "GET", f"/api/v1/tasks/{theirs['id']}")[1].get("state")
            != "completed"
        ):
            assert time.monotonic() < deadline, "bob's task never completed"
            time.sleep(0.1)
        # Read barrier on the stream itself: alice's next task comes after every entry
        # of bob's in the log, and n2 streams what it applies in log order, so once its
        # submission arrives n2 has applied (and streamed or withheld) all of bob's.
        _, marker = cluster.request(
            "n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {}}, token=alice
        )
        stream.wait_for(
            lambda k, d: (
                k == "task"
                and d.get("change") == "submit"
                and d.get("task", {}).get("id") == marker["id"]
            )
        )
        tasks = [d for k, d in list(stream.received) if k == "task" and "task" in d]
        assert not [d for d in tasks if d["task"]["id"] == theirs["id"]], (
            "bob's task on alice's stream"
        )
        assert {d["task"]["owner"] for d in tasks} == {"alice"}
    finally:
        stream.close()


@e2e
def test_bad_requests(cluster: NodeCluster) -> None:
    status, body = cluster.request("n1", "GET", "/api/v1/events?types=weather")
    assert status == 422 and body["error"]["details"]["field"] == "types"
    for bad in ("0", "-1", "nan", "inf", "soon", "90000"):
        status, body = cluster.request("n1", "GET", f"/api/v1/events?max_s={bad}")
        assert status == 422 and body["error"]["details"]["field"] == "max_s", (bad, body)
    # a bounded follow ends by itself, after its hello
    started = time.monotonic()
    request = urllib.request.Request(
        cluster.api["n1"] + "/api/v1/events?max_s=0.5",
        headers={"Authorization": f"Bearer {cluster.admin_token()}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    assert text.startswith("event: hello") and time.monotonic() - started < 5
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(cluster.api["n1"] + "/api/v1/events", timeout=5)
    assert err.value.code == 401


@e2e
def test_a_killed_node_is_reported_dead_on_the_others_streams(cluster: NodeCluster) -> None:
    stream = Stream(cluster.api["n1"] + "/api/v1/events?types=node,cluster", cluster.admin_token())
    try:
        stream.wait_for(lambda k, d: k == "hello")
        cluster.kill("n3")
        started = time.monotonic()
        stream.wait_for(
            lambda k, d: k == "node" and d["id"] == "n3" and d["status"] == "dead", timeout=15
        )
        assert time.monotonic() - started < 8
    finally:
        stream.close()
