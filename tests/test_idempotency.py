"""Exactly-once submissions and executor reconciliation, without processes.

The state machine (node/replica/tasks.py, node/replica/state.py): idempotency
keys, their expiry in command time, snapshots, Upload replays and the fenced
Release.  The HTTP layer (node/http/tasks.py, node/http/kb.py,
node/http/openai_compat.py) over an in-process aiohttp server, through a real
Replica whose Raft driver is a fake that applies at once.  The executor's
reconciliation (node/execution/executor.py) with the same fake Raft.  Our clients
(node/client/rest.py, node/client/aio.py) against stub nodes: one key on every try.
"""

from __future__ import annotations

import asyncio
import http.server as http_server
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consensus.errors import RaftError
from node.client.aio import ApiClient
from node.client.rest import Client
from node.execution.executor import Executor, NoopRunner, _failpoint
from node.http.idempotency import fingerprint, task_fingerprint
from node.http.kb import KnowledgeAPI
from node.http.openai_compat import OpenAIRoutes
from node.http.tasks import TaskAPI
from node.rag.knowledge import KnowledgeBase
from node.replica import codec
from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode
from node.replica.replica import Replica
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import IDEMPOTENCY_TTL_MS, TaskParams, TaskState, TaskType

DAY = IDEMPOTENCY_TTL_MS
assert DAY == 24 * 3600 * 1000


class Q:
    """Feeds commands the way the log would: encoded with the codec, applied by a
    NodeState; the outcome out (a refusal as its Refusal)."""

    def __init__(self, sm: TaskQueue | None = None) -> None:
        self.sm = sm if sm is not None else TaskQueue()
        self.state = NodeState(self.sm)
        self.index = 0

    def __call__(self, cmd: c.Command) -> Any:
        self.index += 1
        return codec.outcome_from_wire(self.state.apply(self.index, codec.encode(cmd)))

    def submit(
        self,
        task_id: str,
        key: str | None = "k1",
        fp: str = "f1",
        at: int = 0,
        owner: str = "ann",
        **kw: Any,
    ) -> Any:
        return self(
            c.Submit(
                task_id=task_id,
                type=TaskType.NOOP,
                input={},
                params=TaskParams(),
                owner=owner,
                at=at,
                idem_key=key,
                fingerprint=fp if key is not None else None,
                **kw,
            )
        )


def code_of(outcome: Any) -> RefusalCode | None:
    return outcome.code if isinstance(outcome, Refusal) else None


# ------------------------------------------------------------------ the state machine
def test_a_repeated_key_answers_the_first_task_and_creates_nothing() -> None:
    q = Q()
    first = q.submit("t1", at=1_000)
    again = q.submit("t2", at=2_000)
    assert first["id"] == "t1" and "replayed" not in first
    assert again["id"] == "t1" and again["replayed"] is True and again["submitted_at"] == 1_000
    assert list(q.sm.tasks) == ["t1"] and q.sm.counts()[TaskState.QUEUED] == 1
    # the replay is the task as it is now, not as it was
    q(c.Claim("n1", slots=1, at=3_000))
    assert q.submit("t3", at=4_000)["state"] == TaskState.RUNNING
    # keys belong to their owner: another user's same key is another task
    assert q.submit("t4", owner="bob", at=5_000)["id"] == "t4"
    # no key, no dedup
    assert q.submit("t5", key=None)["id"] == "t5" and q.submit("t6", key=None)["id"] == "t6"
    assert sorted(q.sm.tasks) == ["t1", "t4", "t5", "t6"]


def test_the_same_key_for_another_request_is_refused() -> None:
    q = Q()
    q.submit("t1", fp="print-a")
    refused = q.submit("t2", fp="print-b", at=10)
    assert code_of(refused) == RefusalCode.IDEMPOTENCY_MISMATCH
    assert refused.details["task_id"] == "t1"
    assert list(q.sm.tasks) == ["t1"]


def test_keys_are_remembered_for_24_hours_of_command_time_then_forgotten() -> None:
    q = Q()
    q.submit("t1", at=1_000)
    assert q.submit("t2", at=1_000 + DAY)["id"] == "t1"  # exactly 24 h later: still known
    assert q.sm.known_key("ann", "k1") == "t1"
    late = q.submit("t3", at=1_001 + DAY)  # past it: a new submission
    assert late["id"] == "t3" and "replayed" not in late
    assert q.sm.known_key("ann", "k1") == "t3"


def test_expire_prunes_old_keys_with_the_latest_command_time_not_a_clock() -> None:
    q = Q()
    q.submit("t1", key="old", at=0)
    q.submit("t2", key="young", at=DAY)
    # no command is past 24 h yet
    assert q(c.Expire(before=-1)) == {"expired": 0, "forgotten_keys": 0}
    q(c.Claim("n1", slots=1, at=DAY + 5))  # any command's time moves the log's clock on
    assert q(c.Expire(before=-1)) == {"expired": 0, "forgotten_keys": 1}
    assert q.sm.known_key("ann", "old") is None and q.sm.known_key("ann", "young") == "t2"


def test_a_key_outlives_its_expired_task_and_says_so() -> None:
    q = Q()
    q.submit("t1", at=1_000)
    q(c.Claim("n1", slots=1, at=1_001))
    q(c.Complete("t1", attempt=1, node="n1", at=1_002, result={}))
    assert q(c.Expire(before=2_000))["expired"] == 1 and "t1" not in q.sm.tasks
    answer = q.submit("t2", at=3_000)
    assert answer == {
        "id": "t1",
        "owner": "ann",
        "submitted_at": 1_000,
        "replayed": True,
        "expired": True,
    }
    assert q.sm.tasks == {}


def test_the_key_index_survives_snapshot_and_restore_identically_on_replicas() -> None:
    a, b = Q(), Q()
    for q in (a, b):
        for i in range(20):
            q.submit(f"t{i}", key=f"k{i % 7}", fp=f"f{i % 7}", at=i * DAY // 10)
        q(c.Expire(before=0))
    assert a.sm.snapshot() == b.sm.snapshot()
    restored = TaskQueue()
    restored.restore(a.sm.snapshot())
    assert restored.snapshot() == a.sm.snapshot()
    copy = Q(restored)
    # The restored replica answers every key as the original does: at 2.55 days, k2-k5
    # (last recorded at 1.6-1.9 days) are replays, k0, k1 (1.4, 1.5) and k6 (0.6) are new.
    answers = {}
    for j in range(7):
        answers[j] = a.submit(f"r{j}", key=f"k{j}", fp=f"f{j}", at=255 * DAY // 100)
        assert copy.submit(f"r{j}", key=f"k{j}", fp=f"f{j}", at=255 * DAY // 100) == answers[j]
    assert [j for j, answer in answers.items() if answer.get("replayed")] == [2, 3, 4, 5]
    assert a.sm.snapshot() == copy.sm.snapshot()
    # a snapshot written before idempotency keys existed restores with an empty index
    legacy = msgpack.unpackb(a.sm.snapshot(), raw=False)
    del legacy["keys"], legacy["clock"]
    old = TaskQueue()
    old.restore(msgpack.packb(legacy, use_bin_type=True))
    assert old.known_key("ann", "k6") is None and len(old.tasks) == len(a.sm.tasks)


def test_a_malformed_key_is_a_bad_command() -> None:
    q = Q()
    version, tag, fields = msgpack.unpackb(
        codec.encode(c.Submit("t1", TaskType.NOOP, {}, TaskParams(), "ann", 0, idem_key="k")),
        raw=False,
    )
    for bad in (7, b"k", ["k"]):
        entry = msgpack.packb([version, tag, {**fields, "idem_key": bad}], use_bin_type=True)
        q.index += 1
        outcome = codec.outcome_from_wire(q.state.apply(q.index, entry))
        assert code_of(outcome) == RefusalCode.BAD_COMMAND, bad
    assert q.sm.tasks == {} and q.state.refused_entries == 3


def upload_cmd(
    doc_id: str,
    task_id: str,
    data: bytes = b"hello world",
    key: str | None = "up-1",
    fp: str = "fp-1",
    at: int = 1_000,
) -> c.Upload:
    return c.Upload(
        doc=c.DocumentUpload(
            doc_id=doc_id,
            title="t",
            source="t.txt",
            media_type="text/plain",
            tags=(),
            data=data,
        ),
        task_id=task_id,
        owner="ann",
        at=at,
        priority=5,
        idem_key=key,
        fingerprint=fp if key is not None else None,
    )


def apply(state: NodeState, cmd: c.Command) -> Any:
    state.applied_index += 1
    return codec.outcome_from_wire(state.apply(state.applied_index, codec.encode(cmd)))


def test_only_an_admins_upload_replaces_a_document_decided_at_apply() -> None:
    """The API checked "only admins replace documents" on its own replica, which may lag
    the log: a user's upload naming a document the replica had not seen yet replaced
    it.  The upload now carries whether its sender may replace, and apply decides."""
    import dataclasses

    state = NodeState(TaskQueue(), KnowledgeBase())
    first = apply(state, upload_cmd("doc-a", "t1", key=None))
    assert first["document"]["version"] == 1
    users = dataclasses.replace(upload_cmd("doc-a", "t2", key=None), may_replace=False)
    refused = apply(state, users)
    assert code_of(refused) == RefusalCode.FORBIDDEN
    assert state.kb.get("doc-a")["version"] == 1 and list(state.tasks.tasks) == ["t1"]
    new = dataclasses.replace(upload_cmd("doc-b", "t3", key=None), may_replace=False)
    assert apply(state, new)["document"]["version"] == 1  # a new document: anyone
    # a user's retry of their own first upload of a named document is a replay
    mine = dataclasses.replace(upload_cmd("doc-c", "t4", key="k-c"), may_replace=False)
    assert apply(state, mine)["document"]["version"] == 1
    again = apply(state, dataclasses.replace(mine, task_id="t5", at=2_000))
    assert again["task"]["id"] == "t4" and again["task"]["replayed"] is True
    admins = upload_cmd("doc-a", "t6", key=None)  # may_replace defaults to True
    assert apply(state, admins)["document"]["version"] == 2


def test_a_retried_upload_makes_no_second_version_and_no_second_task() -> None:
    state = NodeState(TaskQueue(), KnowledgeBase())
    first = apply(state, upload_cmd("doc-a", "t1"))
    assert first["document"]["version"] == 1 and first["task"]["id"] == "t1"
    # the retry drew another document id and task id on its node: neither is used
    again = apply(state, upload_cmd("doc-b", "t2", at=2_000))
    assert again["task"]["id"] == "t1" and again["task"]["replayed"] is True
    assert again["document"] == {
        "doc_id": "doc-a",
        "version": 1,
        "state": "uploaded",
        "size": 11,
        "superseded_version": None,
        "replayed": True,
    }
    assert [d["id"] for d in state.kb.list_documents()] == ["doc-a"]
    assert state.kb.get("doc-a")["version"] == 1
    assert list(state.tasks.tasks) == ["t1"]
    mismatch = apply(state, upload_cmd("doc-a", "t3", data=b"other bytes", fp="fp-2"))
    assert code_of(mismatch) == RefusalCode.IDEMPOTENCY_MISMATCH
    assert state.kb.get("doc-a")["version"] == 1 and list(state.tasks.tasks) == ["t1"]
    # the same key on a task submission: the fingerprints differ, so it is refused
    submit = c.Submit(
        "t4", TaskType.NOOP, {}, TaskParams(), "ann", 3_000, idem_key="up-1", fingerprint="task"
    )
    assert code_of(apply(state, submit)) == RefusalCode.IDEMPOTENCY_MISMATCH
    # a replay after a newer version of the document says so
    apply(state, upload_cmd("doc-a", "t5", key="up-2", fp="fp-3"))
    assert apply(state, upload_cmd("doc-x", "t6", at=4_000))["document"]["state"] == "replaced"
    snapshot = state.snapshot()
    copy = NodeState(TaskQueue(), KnowledgeBase())
    copy.restore(snapshot)
    assert apply(copy, upload_cmd("doc-y", "t7", key="up-2", fp="fp-3"))["task"]["id"] == "t5"


def test_release_is_fenced_to_the_exact_attempt_and_node() -> None:
    q = Q()
    q.submit("t1", key=None, at=0)
    granted = q(c.Claim("n1", slots=1, at=10))["task"]
    assert granted["attempt"] == 1
    for attempt, node in ((2, "n1"), (1, "n2")):
        stale = q(c.Release("t1", attempt=attempt, node=node, at=20, reason="x"))
        assert code_of(stale) == RefusalCode.STALE_ATTEMPT
    released = q(c.Release("t1", attempt=1, node="n1", at=30, reason="not running here"))
    assert (
        released["state"] == "queued" and released["node"] is None and released["not_before"] == 30
    )
    assert released["history"][-1]["note"] == "released by n1: not running here; requeued"
    assert released["max_attempts"] == 4  # the attempt never ran: it costs no retry
    assert q.sm.running_on("n1") == []
    again = q(c.Release("t1", attempt=1, node="n1", at=31, reason=""))
    assert code_of(again) == RefusalCode.STALE_ATTEMPT
    regranted = q(c.Claim("n2", slots=1, at=40))["task"]
    assert regranted["id"] == "t1" and regranted["attempt"] == 2
    # a late report of the released attempt is refused too
    late = q(c.Complete("t1", attempt=1, node="n1", at=41, result={}))
    assert code_of(late) == RefusalCode.STALE_ATTEMPT
    # a released attempt whose abort was requested ends cancelled
    q(c.Abort("t1", at=50, by="ann"))
    aborted = q(c.Release("t1", attempt=2, node="n2", at=60, reason=""))
    assert aborted["state"] == "cancelled" and "released by n2" in aborted["history"][-1]["note"]


# ------------------------------------------------------------------ HTTP
class InstantRaft:
    """Applies each proposal at once to the state, like a one-node cluster; a
    stand-in for the Raft driver behind a real Replica.  `calls` records each
    proposal as its decoded command, with the driver call's keyword arguments."""

    def __init__(self, state: Any, fail_after_apply: int = 0) -> None:
        self.state = state
        self.leader = "n1"
        self.id = "n1"
        self.index = 0
        self.calls: list[tuple[c.Command, dict]] = []
        self.fail_after_apply = (
            fail_after_apply  # this many proposals apply, then raise (answer lost)
        )

    async def wait_for_leader(self, timeout: float = 10.0) -> str:
        return self.leader

    async def read_barrier(self, timeout: float | None = None) -> int:
        return self.index

    async def propose(self, command: bytes, **kwargs: Any) -> Any:
        self.calls.append((codec.decode(command), kwargs))
        self.index += 1
        result = self.state.apply(self.index, command)
        if self.fail_after_apply > 0:
            self.fail_after_apply -= 1
            raise RaftError("proposal timed out (it was applied all the same)")
        return SimpleNamespace(result=result, index=self.index)


@pytest.fixture
def node() -> Iterator[SimpleNamespace]:
    state = NodeState(TaskQueue(), KnowledgeBase())
    raft = InstantRaft(state)
    replica = Replica(raft, state)  # type: ignore[arg-type]
    api = TaskAPI(replica, "n1")

    @web.middleware
    async def as_ann(request: web.Request, handler: Any) -> web.StreamResponse:
        # an editor: uploads are for editors and admins
        request["user"], request["role"] = "ann", "editor"
        return await handler(request)

    app = web.Application(middlewares=[as_ann])
    api.routes(app)
    KnowledgeAPI(replica, state.kb, SimpleNamespace(engine=None), 1 << 20).routes(app)
    OpenAIRoutes(replica).routes(app)
    yield SimpleNamespace(app=app, state=state, raft=raft)


def http(node: SimpleNamespace, steps: Any) -> Any:
    async def run() -> Any:
        async with TestClient(TestServer(node.app)) as client:
            return await steps(client)

    return asyncio.run(run())


NOOP = {"type": "noop", "input": {"duration_ms": 5}}


def test_http_replay_answers_201_with_the_same_task_and_the_replayed_header(
    node: SimpleNamespace,
) -> None:
    async def steps(client: TestClient) -> None:
        first = await client.post("/api/v1/tasks", json=NOOP, headers={"Idempotency-Key": "abc-1"})
        assert first.status == 201 and "Idempotent-Replayed" not in first.headers
        task = await first.json()
        again = await client.post("/api/v1/tasks", json=NOOP, headers={"Idempotency-Key": "abc-1"})
        assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert (await again.json())["id"] == task["id"]
        other = await client.post(
            "/api/v1/tasks", json={**NOOP, "priority": 9}, headers={"Idempotency-Key": "abc-1"}
        )
        assert (
            other.status == 422 and (await other.json())["error"]["code"] == "idempotency_mismatch"
        )
        plain = await client.post("/api/v1/tasks", json=NOOP)
        assert plain.status == 201 and (await plain.json())["id"] != task["id"]

    http(node, steps)
    assert len(node.state.tasks.tasks) == 2
    submits = [cmd for cmd, _ in node.raft.calls if isinstance(cmd, c.Submit)]
    assert submits[0].fingerprint == task_fingerprint({"priority": 5, "params": {}, **NOOP})
    assert submits[-1].idem_key is None and submits[-1].fingerprint is None


@pytest.mark.parametrize(
    "value, reason",
    [
        ("", "empty"),
        ("x" * 256, "at most 255"),
        ("clé", "printable ASCII"),
        ("a\tb", "printable ASCII"),
    ],
)
def test_a_bad_key_is_a_400_that_says_why_and_changes_nothing(
    node: SimpleNamespace, value: str, reason: str
) -> None:
    async def steps(client: TestClient) -> list[tuple[int, dict]]:
        answers = []
        for path, body in (
            ("/api/v1/tasks", NOOP),
            ("/api/v1/kb/documents", {"text": "some text"}),
            (
                "/v1/chat/completions",
                {"model": "ragraft-qa", "messages": [{"role": "user", "content": "hi"}]},
            ),
        ):
            # raw header bytes: aiohttp's client would refuse to send some of these
            response = await client.post(
                path,
                data=json.dumps(body).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": value.encode("utf-8").decode("latin-1"),
                },
            )
            answers.append((response.status, await response.json()))
        return answers

    for status, body in http(node, steps):
        assert status == 400, body
        assert reason in (body["error"]["message"]), body
    assert (
        node.state.tasks.tasks == {}
        and node.state.kb.list_documents() == []
        and node.raft.calls == []
    )


def test_two_key_headers_are_refused(node: SimpleNamespace) -> None:
    async def steps(client: TestClient) -> tuple[int, dict]:
        response = await client.post(
            "/api/v1/tasks", json=NOOP, headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
        )
        return response.status, await response.json()

    status, body = http(node, steps)
    assert (
        status == 400
        and body["error"]["code"] == "bad_idempotency_key"
        and node.state.tasks.tasks == {}
    )


def test_an_upload_retried_with_its_key_is_one_version_and_one_task(node: SimpleNamespace) -> None:
    def form(first: bytes, second: bytes) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("file", first, filename="a.txt")
        data.add_field("file", second, filename="b.txt")
        return data

    async def steps(client: TestClient) -> None:
        key = {"Idempotency-Key": "upload-1"}
        first = await client.post("/api/v1/kb/documents", data=form(b"alpha", b"beta"), headers=key)
        assert first.status == 202 and "Idempotent-Replayed" not in first.headers
        body = await first.json()
        again = await client.post("/api/v1/kb/documents", data=form(b"alpha", b"beta"), headers=key)
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        replay = await again.json()
        assert [t["id"] for t in replay["tasks"]] == [t["id"] for t in body["tasks"]]
        assert [d["doc_id"] for d in replay["documents"]] == [
            d["doc_id"] for d in body["documents"]
        ]
        changed = await client.post(
            "/api/v1/kb/documents", data=form(b"alpha", b"gamma"), headers=key
        )
        assert (
            changed.status == 422
            and (await changed.json())["error"]["code"] == "idempotency_mismatch"
        )
        json_upload = await client.post(
            "/api/v1/kb/documents",
            json={"title": "n", "text": "x"},
            headers={"Idempotency-Key": "json-1"},
        )
        json_again = await client.post(
            "/api/v1/kb/documents",
            json={"title": "n", "text": "x"},
            headers={"Idempotency-Key": "json-1"},
        )
        assert (await json_upload.json())["tasks"][0]["id"] == (await json_again.json())["tasks"][
            0
        ]["id"]

    http(node, steps)
    # a.txt, b.txt from the first request (the mismatch refused b.txt's retry after a.txt
    # replayed), one JSON
    assert len(node.state.kb.list_documents()) == 3 and len(node.state.tasks.tasks) == 3
    assert all(d["version"] == 1 for d in node.state.kb.list_documents())


def test_an_editor_retrying_the_upload_of_a_document_they_named_is_not_replacing_it(
    node: SimpleNamespace,
) -> None:
    async def steps(client: TestClient) -> list[int]:
        statuses = []
        for headers in ({"Idempotency-Key": "named-1"}, {"Idempotency-Key": "named-1"}, {}):
            response = await client.post(
                "/api/v1/kb/documents", json={"id": "mine", "text": "x"}, headers=headers
            )
            statuses.append(response.status)
        return statuses

    # the retry is a replay; without a key, a second upload of "mine" is a replacement
    assert http(node, steps) == [202, 202, 202]
    assert node.state.kb.get("mine")["version"] == 2


def test_a_chat_with_a_key_survives_its_client_and_a_retry_follows_the_same_task(
    node: SimpleNamespace,
) -> None:
    chat = {
        "model": "ragraft-qa",
        "stream": True,
        "messages": [{"role": "user", "content": "Why?"}],
    }
    key = {"Idempotency-Key": "chat-1"}

    async def steps(client: TestClient) -> None:
        first = await client.post("/v1/chat/completions", json=chat, headers=key)
        line = await first.content.readline()
        task_id = re.search(rb"chatcmpl-(\w+)", line).group(1).decode()
        first.close()  # the client hangs up while the task waits
        await asyncio.sleep(0.3)
        task = node.state.tasks.get(task_id)
        assert task is not None and task.state == "queued"  # not cancelled: a retry may come back
        # the task runs to its end; the retry (not streamed, this time) gets its answer
        node.state.tasks.apply(c.Claim("n1", slots=1, at=1, types=(TaskType.QA,)))
        node.state.tasks.apply(c.Complete(task_id, 1, "n1", 2, {"answer": "Because."}))
        again = await client.post(
            "/v1/chat/completions", json={**chat, "stream": False}, headers=key
        )
        assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
        body = await again.json()
        assert (
            body["ragraft"]["task_id"] == task_id
            and body["choices"][0]["message"]["content"] == "Because."
        )
        other = await client.post(
            "/v1/chat/completions", json={**chat, "model": "ragraft-generate"}, headers=key
        )
        assert (
            other.status == 422 and (await other.json())["error"]["code"] == "idempotency_mismatch"
        )
        # without a key a hang-up still cancels
        plain = await client.post("/v1/chat/completions", json=chat)
        plain_id = re.search(rb"chatcmpl-(\w+)", await plain.content.readline()).group(1).decode()
        plain.close()
        deadline = time.monotonic() + 5
        while node.state.tasks.get(plain_id).state != "cancelled":
            assert time.monotonic() < deadline, "a hang-up without a key should cancel the task"
            await asyncio.sleep(0.05)

    http(node, steps)
    assert len(node.state.tasks.tasks) == 2


# ------------------------------------------------------------------ the executor
class Aside:
    """A runner for a type no test submits: the executor claims nothing by itself."""

    def run(self, task: Any, progress: Any, cancelled: Any) -> Any:
        raise AssertionError("never granted")


def noop(task_id: str, duration_ms: int = 0) -> c.Submit:
    return c.Submit(
        task_id=task_id,
        type=TaskType.NOOP,
        input={"duration_ms": duration_ms},
        params=TaskParams(),
        owner="ann",
        at=0,
    )


def executor_on(
    state: NodeState, runners: dict, slots: int, fail_after_apply: int = 0, **kw: Any
) -> tuple[Executor, InstantRaft]:
    raft = InstantRaft(state, fail_after_apply=fail_after_apply)
    replica = Replica(raft, state)  # type: ignore[arg-type]
    executor = Executor(replica, "n1", slots, runners, **kw)
    state.listen(executor.on_apply)
    return executor, raft


async def started(executor: Executor) -> None:
    await executor.start()
    await asyncio.sleep(0.1)  # past the start-up hand-back of the previous process's claims


def history(queue: TaskQueue, task_id: str) -> list[tuple[str, str]]:
    return [(h["state"], h["note"]) for h in queue.get(task_id).to_dict()["history"]]


def test_an_attempt_granted_to_this_node_that_it_does_not_run_is_handed_back_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        queue = TaskQueue()
        executor, raft = executor_on(
            NodeState(queue), {"aside": Aside()}, 2, orphan_grace=0.5, reconcile_interval=0.1
        )
        await started(executor)
        # a claim for n1 commits, but its answer never reaches n1's executor
        queue.apply(noop("t1"))
        assert queue.apply(c.Claim("n1", slots=1, at=1))["task"]["id"] == "t1"
        await asyncio.sleep(0.3)
        assert queue.get("t1").state == TaskState.RUNNING  # within the grace: left alone
        deadline = time.monotonic() + 2
        while queue.get("t1").state != TaskState.QUEUED:
            assert time.monotonic() < deadline, "not handed back"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await executor.stop()
        assert executor.released == 1
        releases = [cmd for cmd, _ in raft.calls if isinstance(cmd, c.Release)]
        assert [(r.task_id, r.attempt, r.node) for r in releases] == [("t1", 1, "n1")]  # once

    with caplog.at_level(logging.INFO, logger="ragraft.executor"):
        asyncio.run(run())
    assert any("t1" in r.getMessage() and "handed back" in r.getMessage() for r in caplog.records)


def test_a_lost_claim_answer_is_repaired_and_the_task_runs_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAGRAFT_FAILPOINTS", "other=3, executor.lose_claim=1")
    assert (
        _failpoint("executor.lose_claim") == 1
        and _failpoint("other") == 3
        and _failpoint("none") == 0
    )

    async def run() -> TaskQueue:
        queue = TaskQueue()
        executor, raft = executor_on(
            NodeState(queue),
            {TaskType.NOOP: NoopRunner()},
            1,
            orphan_grace=0.3,
            reconcile_interval=0.1,
        )
        await started(executor)
        await raft.propose(codec.encode(noop("t1", 50)))
        deadline = time.monotonic() + 5
        while queue.get("t1").state != TaskState.COMPLETED:
            assert time.monotonic() < deadline, history(queue, "t1")
            await asyncio.sleep(0.05)
        await executor.stop()
        return queue

    queue = asyncio.run(run())
    task = queue.get("t1")
    assert task.attempt == 2 and task.result["slept_ms"] >= 50
    assert [state for state, _ in history(queue, "t1")] == [
        "queued",
        "running",
        "queued",
        "running",
        "completed",
    ]
    assert history(queue, "t1")[2][1].startswith("released by n1")


def test_a_task_this_executor_runs_is_never_handed_back() -> None:
    async def run() -> TaskQueue:
        queue = TaskQueue()
        executor, raft = executor_on(
            NodeState(queue),
            {TaskType.NOOP: NoopRunner()},
            2,
            orphan_grace=0.05,
            reconcile_interval=0.05,
        )
        await started(executor)
        for i in range(2):
            await raft.propose(codec.encode(noop(f"t{i}", 800)))
        deadline = time.monotonic() + 5
        while queue.counts()[TaskState.COMPLETED] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await executor.stop()
        assert executor.released == 0
        return queue

    queue = asyncio.run(run())
    for i in range(2):
        assert queue.get(f"t{i}").attempt == 1
        assert [s for s, _ in history(queue, f"t{i}")] == ["queued", "running", "completed"]


def test_a_report_whose_first_copy_applied_is_done_when_its_retry_is_refused_as_stale() -> None:
    from node.execution.executor import Report

    async def run() -> InstantRaft:
        queue = TaskQueue()
        queue.apply(noop("t1"))
        queue.apply(c.Claim("n1", slots=1, at=1))
        # applied, then "timed out": the executor retries, and the copy is refused as stale
        executor, raft = executor_on(NodeState(queue), {}, 1, fail_after_apply=1)
        report = Report(c.Complete, {"result": {"ok": True}})
        await asyncio.wait_for(executor._report("t1", 1, report), 3)
        assert queue.get("t1").state == TaskState.COMPLETED
        assert queue.get("t1").result == {"ok": True}
        return raft

    raft = asyncio.run(run())
    assert [type(cmd) for cmd, _ in raft.calls] == [c.Complete, c.Complete]
    # no request id: fencing makes the retry harmless
    assert all(kwargs in ({}, {"timeout": None}) for _, kwargs in raft.calls)


# ------------------------------------------------------------------ our clients
class StubNode(http_server.ThreadingHTTPServer):
    """Answers every POST with `status` and `body`, recording the Idempotency-Key it saw."""

    def __init__(self, status: int, body: dict) -> None:
        self.status, self.body, self.keys = status, body, []
        stub = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.keys.append(self.headers.get("Idempotency-Key"))
                raw = json.dumps(stub.body).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def stubs() -> Iterator[tuple[StubNode, StubNode]]:
    cut_off = StubNode(503, {"error": {"code": "no_quorum", "message": "no leader for 2.1 s"}})
    healthy = StubNode(201, {"id": "T1", "state": "queued"})
    yield cut_off, healthy
    for stub in (cut_off, healthy):
        stub.shutdown()
        stub.server_close()


def test_the_cli_submits_with_one_key_and_fails_over_on_no_quorum_with_it(
    stubs: tuple[StubNode, StubNode],
) -> None:
    from node.cli.commands.output import Output
    from node.cli.commands.tasks import submit

    cut_off, healthy = stubs
    client = Client([cut_off.url, healthy.url], "token", log=io.StringIO())
    args = SimpleNamespace(
        type="noop",
        text="5",
        priority=5,
        top_k=None,
        mode=None,
        max_tokens=None,
        temperature=None,
        grounding=None,
        wait=False,
    )
    assert submit(client, args, Output(json_mode=True)) == 0
    assert submit(client, args, Output(json_mode=True)) == 0
    first, second = cut_off.keys[0], healthy.keys[0]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first == second  # one key, both nodes
    # the next `ragraft submit` is another logical submission: another key
    assert len(set(healthy.keys)) == 2


def test_the_shared_asyncio_client_fails_over_on_no_quorum_with_the_same_key(
    stubs: tuple[StubNode, StubNode],
) -> None:
    cut_off, healthy = stubs

    async def run() -> tuple[Any, Any, list[str]]:
        api = ApiClient([cut_off.url, healthy.url], "token")
        switches: list[str] = []
        api.on_switch = switches.append
        try:
            task = await api.submit(NOOP)
            api.index = 0
            upload = await api.upload("a.txt", b"alpha")
        finally:
            await api.close()
        return task, upload, switches

    task, _, switches = asyncio.run(run())
    assert task["id"] == "T1" and len(switches) == 2 and "no quorum" in switches[0]
    assert (
        cut_off.keys[0] == healthy.keys[0] and cut_off.keys[1] == healthy.keys[1]
    )  # submit, then upload
    assert cut_off.keys[0] != cut_off.keys[1]


def test_fingerprints_are_canonical() -> None:
    assert task_fingerprint(
        {"type": "qa", "input": {"query": "q", "x": 1}, "params": {}, "priority": 5}
    ) == task_fingerprint(
        {"priority": 5, "params": {}, "input": {"x": 1, "query": "q"}, "type": "qa"}
    )
    assert fingerprint("upload", b"abc") != fingerprint("upload", b"abd")
    assert len(fingerprint("task")) == 16
