"""Bounded JSON input on every JSON route (node/http/body.py): a body too large, too
deep, not JSON or not an object, or holding an integer outside the signed 64-bit
range is a 4xx in the API's error format, and nothing is proposed.

The routes run in-process on the app's own middlewares (json_errors, the real
authentication) over a real Replica whose Raft driver applies at once
(tests/test_idempotency.py's InstantRaft); requests carry an API key of the admin.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.config import SecuritySettings
from node.http import body as bounded
from node.http.auth import AuthAPI, Authenticator, hash_password, new_api_key
from node.http.cluster import ClusterAPI
from node.http.errors import json_errors
from node.http.kb import KnowledgeAPI
from node.http.openai_compat import OpenAIRoutes
from node.http.openapi import document
from node.http.tasks import TaskAPI
from node.rag.knowledge import KnowledgeBase
from node.replica import commands as c
from node.replica.replica import Replica
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import (
    MAX_AUTH_BODY_BYTES,
    MAX_JSON_BODY_BYTES,
    MAX_JSON_DEPTH,
    TaskParams,
    TaskType,
    UserRole,
)
from tests.test_idempotency import InstantRaft

ALICE_PW = "alice-password"
MAX_UPLOAD = 1 << 20
NOOP: dict[str, Any] = {"type": "noop", "input": {"duration_ms": 5}}
CHAT: dict[str, Any] = {"model": "ragraft-qa", "messages": [{"role": "user", "content": "hi"}]}


class LeaderRaft(InstantRaft):
    """A one-node cluster's driver: this node leads, so membership changes are not
    forwarded (none gets that far here: every body below is refused first)."""

    is_leader = True

    def status(self) -> dict[str, Any]:
        return {"leader": "n1", "voters": ["n1"], "learners": [], "addresses": {"n1": "tcp://n1"}}


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_password(ALICE_PW)  # scrypt is slow: once


@pytest.fixture
def node(alice_hash: str) -> Iterator[SimpleNamespace]:
    state = NodeState(TaskQueue(), KnowledgeBase())
    alice = c.PutUser("alice", UserRole.USER, alice_hash, at=1, seed=True)
    state.accounts.apply(c.InitAccounts(alice_hash, at=1, users=(alice,)))
    raft = LeaderRaft(state)
    replica = Replica(raft, state)  # type: ignore[arg-type]
    key, digest = new_api_key()
    settings = SecuritySettings(
        token_secret="t" * 32,
        api_keys=(("admin", digest),),
    )
    auth = Authenticator(settings, replica, "c")
    # as node/http/app.py builds it: the same middlewares and client_max_size
    app = web.Application(
        client_max_size=MAX_UPLOAD + 1024 * 1024, middlewares=[json_errors, auth.middleware()]
    )
    TaskAPI(replica, "n1").routes(app)
    AuthAPI(auth, replica).routes(app)
    OpenAIRoutes(replica).routes(app)
    KnowledgeAPI(replica, state.kb, SimpleNamespace(engine=None), MAX_UPLOAD).routes(app)
    # the membership route reads neither the config nor gossip nor the models' status
    gossip, rag = SimpleNamespace(snapshot=dict), SimpleNamespace()
    config = SimpleNamespace(nodes=(), per_node_keys=False)
    cluster = ClusterAPI(config, replica, gossip, rag)  # type: ignore[arg-type]
    cluster.routes(app)
    yield SimpleNamespace(app=app, state=state, raft=raft, auth={"Authorization": f"Bearer {key}"})


def http(node: SimpleNamespace, steps: Any) -> Any:
    async def run() -> Any:
        async with TestClient(TestServer(node.app)) as client:
            return await asyncio.wait_for(steps(client), 60)

    return asyncio.run(run())


def unchanged(node: SimpleNamespace) -> bool:
    """Nothing was proposed: no task, no document, no key, no membership change."""
    return (
        node.raft.calls == []
        and node.state.tasks.tasks == {}
        and node.state.kb.list_documents() == []
        and node.state.accounts.keys == {}
    )


# Every route that reads a JSON body, with a body it would accept.
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v1/tasks", NOOP),
    ("POST", "/api/v1/auth/token", {"username": "alice", "password": ALICE_PW}),
    ("POST", "/api/v1/auth/keys", {"label": "ci"}),
    ("POST", "/api/v1/cluster/members", {"id": "n9", "raft_address": "tcp://127.0.0.1:1"}),
    ("POST", "/api/v1/kb/documents", {"title": "t", "text": "some text"}),
    ("PATCH", "/api/v1/kb/documents/d1", {"enabled": True}),
    ("POST", "/v1/chat/completions", CHAT),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]
CHAT_PATH = "/v1/chat/completions"


def reason(path: str, answer: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(message, code, field) of an error answer, in the REST API's format or, on the
    chat route, OpenAI's."""
    err = answer["error"]
    if path == CHAT_PATH:
        return err["message"], err["code"], err["param"]
    return err["message"], err["code"], err["details"].get("field")


async def send(
    client: TestClient, node: SimpleNamespace, method: str, path: str, data: Any, **kw: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **node.auth, **kw.pop("headers", {})}
    response = await client.request(method, path, data=data, headers=headers, **kw)
    assert response.content_type == "application/json", await response.text()
    return response.status, await response.json()


# ------------------------------------------------------------------ nesting
def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep counting itself: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(("method", "path", "good"), ROUTES, ids=ROUTE_IDS)
def test_a_deeply_nested_body_is_a_400_not_a_recursion_error(
    node: SimpleNamespace, method: str, path: str, good: dict[str, Any]
) -> None:
    """json.loads recurses once per level: 30000 levels were a RecursionError, a 500."""

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        return [
            await send(client, node, method, path, "[" * 30_000 + "]" * 30_000),
            await send(client, node, method, path, json.dumps(nested(MAX_JSON_DEPTH + 1))),
        ]

    for status, answer in http(node, steps):
        message, code, _ = reason(path, answer)
        assert status == 400 and f"at most {MAX_JSON_DEPTH}" in message, answer
        if path != CHAT_PATH:
            assert code == "bad_json", answer
    assert unchanged(node)


def test_brackets_in_strings_are_not_nesting(node: SimpleNamespace) -> None:
    task = {**NOOP, "input": {"duration_ms": 5, "text": '\\"[{' * 1000 + "\\"}}

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        return await send(client, node, "POST", "/api/v1/tasks", json.dumps(task))

    status, answer = http(node, steps)
    assert status == 201 and answer["input"] == task["input"], answer


def test_depth_is_counted_outside_strings_and_the_limit_itself_is_accepted() -> None:
    assert bounded.nesting_depth(json.dumps(nested(MAX_JSON_DEPTH))) == MAX_JSON_DEPTH
    assert bounded.nesting_depth('{"a": "[[[[{{{{", "b": ["\\"[["]}') == 2
    assert bounded.nesting_depth('"\\\\"[[]]') == 2  # an escaped backslash ends no string
    assert bounded.nesting_depth("[" * 10**6) == 10**6  # iterative: no RecursionError
    assert bounded.nesting_depth('"never closed [[[[') == 0  # not JSON: json.loads says so
    assert bounded.nesting_depth("") == 0 and bounded.nesting_depth("3") == 0


def test_a_body_at_the_depth_limit_is_submitted(node: SimpleNamespace) -> None:
    task = {**NOOP, "input": {"duration_ms": 5, "deep": nested(MAX_JSON_DEPTH - 2)}}

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        return await send(client, node, "POST", "/api/v1/tasks", json.dumps(task))

    status, answer = http(node, steps)
    assert status == 201, answer
    assert len(node.state.tasks.tasks) == 1


# ------------------------------------------------------------------ integers
WIDE = [
    ('{"type": "noop", "input": {"duration_ms": 5, "n": 18446744073709551616}}', "input.n"),
    ('{"type": "noop", "input": {"duration_ms": 5, "n": 9223372036854775808}}', "input.n"),
    ('{"type": "noop", "input": {"duration_ms": 5, "n": -9223372036854775809}}', "input.n"),
    ('{"type": "noop", "input": {"list": [1, [2, 1' + "0" * 5000 + "]]}}", "input.list[1][1]"),
    ('{"type": "noop", "priority": 18446744073709551616}', "priority"),
    (
        '{"type": "qa", "input": {"query": "q"}, "params": {"seed": 1' + "0" * 30 + "}}",
        "params.seed",
    ),
]


@pytest.mark.parametrize(("raw", "field"), WIDE)
def test_an_integer_outside_64_bits_is_a_422_naming_its_field(
    node: SimpleNamespace, raw: str, field: str
) -> None:
    """msgpack cannot encode 2**64 or below -2**63 (a 500), and 2**63 was stored."""

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        return await send(client, node, "POST", "/api/v1/tasks", raw)

    status, answer = http(node, steps)
    assert status == 422 and answer["error"]["code"] == "invalid", answer
    assert answer["error"]["details"]["field"] == field, answer
    assert "64-bit" in answer["error"]["message"] and field in answer["error"]["message"]
    assert unchanged(node)


@pytest.mark.parametrize(("method", "path", "good"), ROUTES, ids=ROUTE_IDS)
def test_every_json_route_refuses_a_wide_integer(
    node: SimpleNamespace, method: str, path: str, good: dict[str, Any]
) -> None:
    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        return await send(client, node, method, path, json.dumps({**good, "extra": 2**64}))

    status, answer = http(node, steps)
    _message, code, field = reason(path, answer)
    assert status == 422 and code == "invalid" and field == "extra", answer
    assert unchanged(node)


def test_the_64_bit_limits_themselves_are_accepted(node: SimpleNamespace) -> None:
    task = {**NOOP, "input": {"duration_ms": 5, "hi": 2**63 - 1, "lo": -(2**63)}}

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        return await send(client, node, "POST", "/api/v1/tasks", json.dumps(task))

    status, answer = http(node, steps)
    assert status == 201, answer
    assert answer["input"]["hi"] == 2**63 - 1 and answer["input"]["lo"] == -(2**63)


# ------------------------------------------------------------------ size
def limit_of(path: str) -> int:
    return MAX_AUTH_BODY_BYTES if path.startswith("/api/v1/auth/") else MAX_JSON_BODY_BYTES


def padded(good: dict[str, Any], size: int) -> bytes:
    """`good` with a pad field, `size` bytes in all."""
    base = len(json.dumps({**good, "pad": ""}).encode())
    return json.dumps({**good, "pad": "x" * (size - base)}).encode()


# The KB's JSON document route is an upload: it keeps the upload limit (below).
SIZED = [r for r in ROUTES if r[1] != "/api/v1/kb/documents"]


@pytest.mark.parametrize(("method", "path", "good"), SIZED, ids=[f"{m} {p}" for m, p, _ in SIZED])
def test_a_body_over_its_route_limit_is_a_413(
    node: SimpleNamespace, method: str, path: str, good: dict[str, Any]
) -> None:
    limit = limit_of(path)

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 16 * 1024):
            yield data[start : start + 16 * 1024]

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        over = padded(good, limit + 1)
        return [
            await send(client, node, method, path, over),  # with a Content-Length
            await send(client, node, method, path, chunked(over)),  # without one
        ]

    for status, answer in http(node, steps):
        message, code, _ = reason(path, answer)
        assert status == 413 and code == "too_large", answer
        assert str(limit) in message, answer
    assert unchanged(node)


def test_a_body_at_its_limit_is_read(node: SimpleNamespace) -> None:
    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        login = {"username": "alice", "password": ALICE_PW}
        return [
            await send(
                client, node, "POST", "/api/v1/auth/token", padded(login, MAX_AUTH_BODY_BYTES)
            ),
            await send(client, node, "POST", "/api/v1/tasks", padded(NOOP, MAX_JSON_BODY_BYTES)),
        ]

    (login, token), (submit, task) = http(node, steps)
    assert login == 200 and token["token_type"] == "bearer", token
    assert submit == 201 and len(node.state.tasks.tasks) == 1, task


def test_a_large_body_is_refused_before_it_is_sent_or_read_whole(node: SimpleNamespace) -> None:
    """A declared Content-Length over the limit is refused before the body is read; a
    chunked body is read no further than the limit: neither client below ever
    finishes sending, and both are answered."""
    never = asyncio.Event()

    async def stalls(first: bytes) -> AsyncIterator[bytes]:
        yield first
        await never.wait()  # the rest never comes
        yield b"}"

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        declared = await send(
            client,
            node,
            "POST",
            "/api/v1/auth/token",
            stalls(b"{"),
            headers={"Content-Length": str(64 * 1024 * 1024)},
        )
        endless = await send(
            client, node, "POST", "/api/v1/tasks", stalls(b'{"pad": "' + b"x" * (2 << 20))
        )
        return [declared, endless]

    (declared, first), (endless, second) = http(node, steps)
    assert declared == 413 and str(MAX_AUTH_BODY_BYTES) in first["error"]["message"], first
    assert endless == 413 and str(MAX_JSON_BODY_BYTES) in second["error"]["message"], second
    assert unchanged(node)


def test_the_kb_json_document_route_keeps_the_upload_limit(node: SimpleNamespace) -> None:
    """A JSON document is an upload: its text may be up to [rag] max_upload_mb; the
    body around it gets the JSON limit on top (as the app's client_max_size did)."""

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        text = {"title": "t", "text": "word " * ((MAX_UPLOAD + 4096) // 5)}
        return [
            await send(client, node, "POST", "/api/v1/kb/documents", json.dumps(text)),
            await send(
                client,
                node,
                "POST",
                "/api/v1/kb/documents",
                padded({"title": "t", "text": "x"}, MAX_UPLOAD + MAX_JSON_BODY_BYTES + 1),
            ),
        ]

    (text_status, text_answer), (body_status, body_answer) = http(node, steps)
    assert text_status == 413 and "max_upload_mb" in text_answer["error"]["message"]
    assert body_status == 413 and body_answer["error"]["code"] == "too_large", body_answer
    assert unchanged(node)


# ------------------------------------------------------------------ not JSON, not an object
NOT_JSON = [b"not json", b"", b'{"type": "noop"', b"\xff\xfe{}", b"{'single': 1}"]


@pytest.mark.parametrize(("method", "path", "good"), ROUTES, ids=ROUTE_IDS)
def test_a_body_that_is_not_json_is_a_400(
    node: SimpleNamespace, method: str, path: str, good: dict[str, Any]
) -> None:
    # (the key route reads no body as no options: test_a_key_request_without_a_body...)
    raws = [raw for raw in NOT_JSON if raw or path != "/api/v1/auth/keys"]

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        return [await send(client, node, method, path, raw) for raw in raws]

    for status, answer in http(node, steps):
        message, code, _ = reason(path, answer)
        assert status == 400 and "not valid JSON" in message, answer
        if path != CHAT_PATH:
            assert code == "bad_json", answer
    assert unchanged(node)


@pytest.mark.parametrize(("method", "path", "good"), ROUTES, ids=ROUTE_IDS)
def test_nan_and_infinity_are_not_json(
    node: SimpleNamespace, method: str, path: str, good: dict[str, Any]
) -> None:
    """Python's json module reads NaN, Infinity and -Infinity; JSON has no such values,
    and a NaN passes every range check (it compares false with everything)."""
    raws = [json.dumps({**good, "extra": value}) for value in ("NaN", "Infinity")]
    raws = [raw.replace('"NaN"', "NaN").replace('"Infinity"', "-Infinity") for raw in raws]

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        return [await send(client, node, method, path, raw) for raw in raws]

    for status, answer in http(node, steps):
        message, code, _ = reason(path, answer)
        assert status == 400 and "not valid JSON" in message and "not a JSON value" in message
        if path != CHAT_PATH:
            assert code == "bad_json", answer
    assert unchanged(node)


@pytest.mark.parametrize(("method", "path", "good"), ROUTES, ids=ROUTE_IDS)
def test_a_body_that_is_not_an_object_is_refused_as_before(
    node: SimpleNamespace, method: str, path: str, good: dict[str, Any]
) -> None:
    """JSON that is not an object: 422 invalid (details.field "body") on the REST
    routes, as the task and document routes answered already; the chat route keeps
    its OpenAI-style 400."""

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        return [await send(client, node, method, path, raw) for raw in ("[1, 2]", '"x"', "3")]

    for status, answer in http(node, steps):
        message, _code, field = reason(path, answer)
        assert "must be a JSON object" in message, answer
        if path == CHAT_PATH:
            assert status == 400, answer
        else:
            assert status == 422 and field == "body", answer
    assert unchanged(node)


def test_a_key_request_without_a_body_still_creates_a_key(node: SimpleNamespace) -> None:
    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        response = await client.post("/api/v1/auth/keys", headers=node.auth)
        return response.status, await response.json()

    status, answer = http(node, steps)
    assert status == 201 and answer["key"].startswith("rgk_"), answer
    assert len(node.state.accounts.keys) == 1


# ------------------------------------------------------------------ the document
def test_the_document_lists_413_on_every_json_route() -> None:
    paths = document()["paths"]
    for method, path, _ in ROUTES:
        template = path.replace("/d1", "/{id}")
        responses = paths[template][method.lower()]["responses"]
        assert "413" in responses and "400" in responses and "422" in responses, path


def test_a_hand_made_cursor_is_a_400_with_its_reason(node: SimpleNamespace) -> None:
    import base64

    made = base64.urlsafe_b64encode(b'{"seq": "x"}').decode()

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        answers = []
        for cursor in (made, "!!!", base64.urlsafe_b64encode(b'{"offset": -1}').decode()):
            response = await client.get(
                "/api/v1/tasks", params={"cursor": cursor}, headers=node.auth
            )
            answers.append((response.status, await response.json()))
        return answers

    for status, answer in http(node, steps):
        assert status == 400 and answer["error"]["code"] == "bad_cursor", answer
        assert answer["error"]["details"]["field"] == "cursor"
        assert "start again without it" in answer["error"]["message"]
    assert unchanged(node)


def test_a_task_input_over_its_limit_is_a_422_and_the_limit_itself_is_accepted(
    node: SimpleNamespace,
) -> None:
    """Extra input fields were stored whole and replicated to every node (up to the 1 MiB
    body); an input is now at most MAX_INPUT_BYTES as JSON."""
    from node.replica.vocabulary import MAX_INPUT_BYTES

    base = {"duration_ms": 5, "note": ""}
    room = MAX_INPUT_BYTES - len(json.dumps(base, separators=(",", ":")))
    fits = {**NOOP, "input": {**base, "note": "é" * (room // 2)}}  # 2 bytes each in UTF-8
    over = {**NOOP, "input": {**base, "note": "é" * (room // 2 + 1)}}

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        refused = await send(client, node, "POST", "/api/v1/tasks", json.dumps(over))
        nothing = unchanged(node)
        return [
            refused,
            (nothing, {}),
            await send(client, node, "POST", "/api/v1/tasks", json.dumps(fits)),
        ]

    (status, answer), (nothing, _), (fit_status, fit_answer) = http(node, steps)
    assert status == 422 and answer["error"]["details"]["field"] == "input", answer
    assert str(MAX_INPUT_BYTES) in answer["error"]["message"]
    assert nothing
    assert fit_status == 201, fit_answer


def test_a_user_sees_only_their_own_running_task_ids_in_the_node_list(
    node: SimpleNamespace,
) -> None:
    """GET /api/v1/nodes listed every running task id to every user (who asks what, when);
    a user now sees their own there, an admin all."""
    queue = node.state.tasks
    for task_id, owner in (("T-admin", "admin"), ("T-alice", "alice")):
        queue.apply(c.Submit(task_id, TaskType.NOOP, {"duration_ms": 5}, TaskParams(), owner, 1))
    queue.apply(c.Claim(node="n1", slots=4, at=2, max=4))

    async def steps(client: TestClient) -> list[dict[str, Any]]:
        login = await client.post(
            "/api/v1/auth/token", json={"username": "alice", "password": ALICE_PW}
        )
        alice = {"Authorization": f"Bearer {(await login.json())['access_token']}"}
        seen = []
        for headers in (node.auth, alice):
            response = await client.get("/api/v1/nodes", headers=headers)
            assert response.status == 200, await response.text()
            seen.append({i["id"]: i["running"] for i in (await response.json())["items"]})
        return seen

    as_admin, as_alice = http(node, steps)
    assert as_admin["n1"] == ["T-admin", "T-alice"]
    assert as_alice["n1"] == ["T-alice"]


# ------------------------------------------------------------------ multipart uploads
def _form(fields: dict[str, str], files: list[tuple[str, bytes]]) -> Any:
    import aiohttp

    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for filename, data in files:
        form.add_field("file", data, filename=filename, content_type="text/plain")
    return form


@pytest.mark.parametrize(
    ("fields", "files", "says"),
    [
        ({"title": "t" * 10_001}, [("a.txt", b"some text")], "'title' is longer than"),
        ({f"f{i}": "x" for i in range(17)}, [("a.txt", b"some text")], "form fields"),
        ({}, [(f"{i}.txt", b"x" * (MAX_UPLOAD - 10)) for i in range(5)], "together"),
    ],
    ids=["long field", "many fields", "files together"],
)
def test_a_multipart_upload_over_a_limit_is_a_413_before_it_is_buffered_whole(
    node: SimpleNamespace, fields: dict[str, str], files: list[tuple[str, bytes]], says: str
) -> None:
    """Form fields were read whole whatever their size, and 64 files of the per-file
    limit each were held in memory at once."""

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        response = await client.post(
            "/api/v1/kb/documents", data=_form(fields, files), headers=node.auth
        )
        return response.status, await response.json()

    status, answer = http(node, steps)
    assert status == 413 and answer["error"]["code"] == "too_large", answer
    assert says in answer["error"]["message"], answer
    assert unchanged(node)


def test_a_multipart_upload_within_the_limits_is_read(node: SimpleNamespace) -> None:
    fields = {"title": "notes", "tags": "a,b", "note": "n" * 10_000}
    files = [(f"{i}.txt", b"x" * (MAX_UPLOAD - 10)) for i in range(4)]

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        response = await client.post(
            "/api/v1/kb/documents", data=_form(fields, files), headers=node.auth
        )
        return response.status, await response.json()

    status, answer = http(node, steps)
    assert status == 202, answer


def test_failed_logins_are_throttled_with_429_and_retry_after(node: SimpleNamespace) -> None:
    from node.replica.vocabulary import LOGIN_FAILURES_PER_USER

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any], str | None]]:
        answers = []
        for password in ["wrong"] * LOGIN_FAILURES_PER_USER + [ALICE_PW]:
            response = await client.post(
                "/api/v1/auth/token", json={"username": "alice", "password": password}
            )
            answers.append(
                (response.status, await response.json(), response.headers.get("Retry-After"))
            )
        return answers

    answers = http(node, steps)
    assert [status for status, _, _ in answers[:-1]] == [401] * LOGIN_FAILURES_PER_USER
    status, answer, retry_after = answers[-1]  # even the right password, for a while
    assert status == 429 and answer["error"]["code"] == "too_many_attempts", answer
    assert retry_after is not None and 0 < int(retry_after) <= 60


def test_a_scoped_key_is_refused_outside_its_scope_with_a_403_that_says_why(
    node: SimpleNamespace,
) -> None:
    async def steps(client: TestClient) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scope in ("read", "submit"):
            r = await client.post(
                "/api/v1/auth/keys",
                json={"label": scope, "scope": scope, "expires_in_s": 3600},
                headers=node.auth,
            )
            assert r.status == 201, await r.text()
            out[scope] = await r.json()
        keys = {s: {"Authorization": f"Bearer {out[s]['key']}"} for s in ("read", "submit")}
        out["listed"] = (await (await client.get("/api/v1/auth/keys", headers=node.auth)).json())[
            "items"
        ]
        r = await client.get("/api/v1/tasks", headers=keys["read"])
        out["read GET"] = r.status
        r = await client.post("/api/v1/tasks", json=NOOP, headers=keys["read"])
        out["read POST"] = (r.status, await r.json())
        r = await client.post("/api/v1/tasks", json=NOOP, headers=keys["submit"])
        out["submit POST"] = r.status
        r = await client.post("/api/v1/auth/keys", json={}, headers=keys["submit"])
        out["submit key"] = (r.status, await r.json())
        for bad in ({"scope": "root"}, {"expires_in_s": 5}, {"expires_in_s": True}):
            r = await client.post("/api/v1/auth/keys", json=bad, headers=node.auth)
            out.setdefault("bad", []).append((r.status, await r.json()))
        return out

    out = http(node, steps)
    listed = {k["label"]: k for k in out["listed"]}
    assert listed["read"]["scope"] == "read" and listed["submit"]["scope"] == "submit"
    assert listed["read"]["expires_at"] - listed["read"]["created_at"] == 3_600_000
    assert out["read GET"] == 200
    status, answer = out["read POST"]
    assert status == 403 and "scope is read" in answer["error"]["message"], answer
    assert out["submit POST"] == 201
    status, answer = out["submit key"]
    assert status == 403 and "scope is submit" in answer["error"]["message"], answer
    fields = [answer["error"]["details"].get("field") for _, answer in out["bad"]]
    assert [s for s, _ in out["bad"]] == [422, 422, 422]
    assert fields == ["scope", "expires_in_s", "expires_in_s"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "admin", "raft_address": ""}, "raft_address"),
        ({"id": "n9", "raft_address": "127.0.0.1:7109"}, "raft_address"),
        ({"id": "n9", "raft_address": "tcp://h:0"}, "raft_address"),
        ({"id": "n9", "raft_address": "tcp://h:70000"}, "raft_address"),
        ({"id": "", "raft_address": "tcp://h:7109"}, "id"),
        ({"id": "n\n9", "raft_address": "tcp://h:7109"}, "id"),
        ({"id": "x" * 65, "raft_address": "tcp://h:7109"}, "id"),
    ],
)
def test_a_member_with_a_malformed_id_or_address_is_a_422(
    node: SimpleNamespace, body: dict[str, str], field: str
) -> None:
    """Found by schemathesis on a throw-away cluster: {"id": "admin", "raft_address": ""}
    was added as a learner no one could reach, and the request waited for it to catch up
    (60 s)."""

    async def steps(client: TestClient) -> tuple[int, dict[str, Any]]:
        return await send(client, node, "POST", "/api/v1/cluster/members", json.dumps(body))

    status, answer = http(node, steps)
    assert status == 422 and answer["error"]["details"]["field"] == field, answer
    assert unchanged(node)


def test_a_chat_model_that_is_not_a_string_is_refused_not_a_500(node: SimpleNamespace) -> None:
    """Found by schemathesis: {"model": {}} raised TypeError (unhashable) in the chat route."""

    async def steps(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        return [
            await send(client, node, "POST", CHAT_PATH, json.dumps({**CHAT, "model": model}))
            for model in ({}, [], 3, None)
        ]

    for status, answer in http(node, steps):
        assert status == 404 and answer["error"]["param"] == "model", answer
    assert unchanged(node)
