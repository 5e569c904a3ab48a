"""Users, roles and quotas in the replicated state: the accounts' commands, the
authorization made where commands are applied (node/replica/policy.py), and the
/api/v1/users routes with the real authentication in front of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.config import SecuritySettings
from node.http.auth import AuthAPI, Authenticator, hash_password
from node.http.errors import json_errors
from node.http.kb import KnowledgeAPI
from node.http.tasks import TaskAPI
from node.http.users import UsersAPI
from node.rag.knowledge import KnowledgeBase
from node.replica import codec
from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode
from node.replica.replica import Replica
from node.replica.state import NodeState
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import Quota, TaskParams, TaskState, TaskType, UserRole
from tests.test_idempotency import InstantRaft

PW = "correct-horse-battery"
HASH = hash_password(PW)  # scrypt is slow: once for the module


def cluster_state(**users: str) -> NodeState:
    """A node's state after the first leader set the accounts up with these users
    (name=role)."""
    state = NodeState(TaskQueue(), KnowledgeBase(dim=4))
    seeds = tuple(c.PutUser(n, UserRole(r), HASH, at=1, seed=True) for n, r in users.items())
    apply(state, c.InitAccounts(HASH, at=1, users=seeds))
    return state


def apply(state: NodeState, cmd: c.Command) -> Any:
    """Through the log's codec, as every replica applies it."""
    state.applied_index += 1
    return codec.outcome_from_wire(state.apply(state.applied_index, codec.encode(cmd)))


def submit(state: NodeState, task_id: str, owner: str, priority: int = 5, **kw: Any) -> Any:
    cmd = c.Submit(task_id, TaskType.NOOP, {}, TaskParams(), owner, 10, priority=priority, **kw)
    return apply(state, cmd)


def upload(state: NodeState, doc_id: str, owner: str, task_id: str) -> Any:
    doc = c.DocumentUpload(doc_id, doc_id, f"{doc_id}.txt", "text/plain", (), b"hello")
    return apply(state, c.Upload(doc, task_id, owner, 10))


def refused(outcome: Any, code: RefusalCode) -> bool:
    return isinstance(outcome, Refusal) and outcome.code is code


# ---------------------------------------------------------------------- accounts
def test_users_are_created_changed_and_deleted_by_commands_and_keep_no_secret_in_views() -> None:
    state = cluster_state(ann="user")
    accounts = state.accounts
    assert accounts.role_of("ann") is UserRole.USER and accounts.role_of("admin") is UserRole.ADMIN
    assert refused(apply(state, c.PutUser("ann", UserRole.ADMIN, HASH, 2)), RefusalCode.CONFLICT)
    assert refused(apply(state, c.PutUser("admin", UserRole.USER, HASH, 2)), RefusalCode.CONFLICT)
    made = apply(state, c.PutUser("bob", UserRole.EDITOR, HASH, 2, quota=Quota(max_queued=3)))
    assert made["role"] == "editor" and made["quota"]["max_queued"] == 3
    assert "password_hash" not in made and "password_hash" not in accounts.user_view("bob")
    apply(state, c.PutKey("key-b", "bob", "sha-b", 3))
    apply(state, c.UpdateUser("bob", 4, disabled=True))
    assert accounts.role_of("bob") is None and accounts.password_hash("bob") is None
    apply(state, c.UpdateUser("bob", 5, disabled=False, role=UserRole.ADMIN))
    assert accounts.role_of("bob") is UserRole.ADMIN
    # the built-in admin: only a password reset
    for change in (
        c.UpdateUser("admin", 6, disabled=True),
        c.UpdateUser("admin", 6, role=UserRole.USER),
        c.DeleteUser("admin", 6),
    ):
        assert refused(apply(state, change), RefusalCode.INVALID)
    assert accounts.role_of("admin") is UserRole.ADMIN
    gone = apply(state, c.DeleteUser("bob", 7))
    assert gone["keys_revoked"] == 1 and "key-b" not in accounts.keys
    # a seed from cluster.toml does not bring a deleted user back; a PutUser does
    assert apply(state, c.PutUser("bob", UserRole.USER, HASH, 8, seed=True))["seeded"] is False
    assert "bob" not in accounts.users
    assert refused(apply(state, c.PutKey("key-x", "bob", "sha-x", 8)), RefusalCode.INVALID)
    apply(state, c.PutUser("bob", UserRole.USER, HASH, 9))
    assert accounts.role_of("bob") is UserRole.USER


def test_the_users_survive_a_snapshot() -> None:
    state = cluster_state(ann="editor")
    apply(state, c.PutUser("cy", UserRole.USER, HASH, 2, quota=Quota(max_running=1)))
    apply(state, c.DeleteUser("ann", 3))
    copy = NodeState(TaskQueue(), KnowledgeBase(dim=4))
    copy.restore(state.snapshot())
    assert copy.accounts.users == state.accounts.users
    assert copy.accounts.retired == {"ann"}
    assert copy.tasks.running_limit("cy") == 1  # the queue still asks the restored accounts


# ---------------------------------------------------------------------- decided at apply
def test_only_editors_and_admins_change_the_knowledge_base_whatever_the_proposer_believed() -> None:
    state = cluster_state(ann="user", ed="editor")
    # a proposer with a stale replica still thought ann was an admin: the log decides
    assert refused(upload(state, "d1", "ann", "T1"), RefusalCode.FORBIDDEN)
    assert state.kb.get("d1") is None and "T1" not in state.tasks.tasks
    assert upload(state, "d1", "ed", "T2")["document"]["version"] == 1
    assert upload(state, "d1", "ed", "T3")["document"]["version"] == 2  # editors replace
    for cmd in (c.SetEnabled("d1", False, 11, by="ann"), c.DeleteDocument("d1", 11, by="ann")):
        assert refused(apply(state, cmd), RefusalCode.FORBIDDEN)
    assert state.kb.get("d1")["enabled"] is True
    apply(state, c.UpdateUser("ed", 12, role=UserRole.USER))  # demoted: refused from now on
    assert refused(apply(state, c.DeleteDocument("d1", 13, by="ed")), RefusalCode.FORBIDDEN)
    apply(state, c.DeleteDocument("d1", 14, by="admin"))
    assert state.kb.get("d1") is None


def test_cancel_and_abort_of_another_users_task_are_decided_by_the_replicated_role() -> None:
    state = cluster_state(ann="user", bob="admin")
    submit(state, "t1", "ann")
    submit(state, "t2", "ann")
    # the API no longer says whose tasks: `by`'s role at apply does
    assert refused(apply(state, c.Cancel("t1", 20, by="cy")), RefusalCode.NOT_FOUND)
    apply(state, c.UpdateUser("bob", 21, role=UserRole.USER))
    assert refused(apply(state, c.Abort("t1", 22, by="bob")), RefusalCode.NOT_FOUND)
    assert state.tasks.get("t1").state is TaskState.QUEUED
    apply(state, c.UpdateUser("bob", 23, role=UserRole.ADMIN))
    assert apply(state, c.Cancel("t1", 24, by="bob"))["state"] == "cancelled"
    assert apply(state, c.Abort("t2", 25, by="ann"))["state"] == "cancelled"  # their own


def test_a_retry_is_checked_where_it_is_applied() -> None:
    state = cluster_state(ann="user", bob="user")
    submit(state, "t1", "ann")
    apply(state, c.Cancel("t1", 20, by="ann"))
    submit(state, "t2", "ann")
    # bob may not retry ann's task; nobody a task that is not failed or cancelled
    assert refused(submit(state, "r1", "ann", retry_of="t1", by="bob"), RefusalCode.NOT_FOUND)
    assert refused(submit(state, "r2", "ann", retry_of="t2", by="ann"), RefusalCode.CONFLICT)
    assert refused(submit(state, "r3", "bob", retry_of="t1", by="bob"), RefusalCode.NOT_FOUND)
    assert submit(state, "r4", "ann", retry_of="t1", by="admin")["owner"] == "ann"
    assert submit(state, "r5", "ann", retry_of="t1", by="ann")["state"] == "queued"
    assert sorted(state.tasks.tasks) == ["r4", "r5", "t1", "t2"]


def test_quotas_are_enforced_at_apply_and_a_replay_still_answers_its_first_copy() -> None:
    state = cluster_state(ann="user", bob="user")
    apply(state, c.UpdateUser("ann", 2, quota=Quota(max_queued=2, max_priority=6)))
    assert submit(state, "t1", "ann", idem_key="k1", fingerprint="f")["id"] == "t1"
    submit(state, "t2", "ann")
    full = submit(state, "t3", "ann")
    assert refused(full, RefusalCode.QUOTA_EXCEEDED) and full.details["max_queued"] == 2
    assert submit(state, "t1-again", "ann", idem_key="k1", fingerprint="f")["id"] == "t1"
    high = submit(state, "t4", "bob", priority=9)  # bob has no quota
    assert high["priority"] == 9
    over = apply(state, c.UpdateUser("ann", 3, quota=Quota(max_queued=None, max_priority=6)))
    assert over["quota"] == {"max_queued": None, "max_running": None, "max_priority": 6}
    too_high = submit(state, "t5", "ann", priority=7)
    assert refused(too_high, RefusalCode.FORBIDDEN) and too_high.details["field"] == "priority"
    # a quota counts uploads' ingest tasks too; a disabled or unknown owner submits nothing
    apply(state, c.UpdateUser("bob", 4, disabled=True))
    assert refused(submit(state, "t6", "bob"), RefusalCode.FORBIDDEN)
    assert refused(submit(state, "t7", "nobody"), RefusalCode.FORBIDDEN)
    assert sorted(state.tasks.tasks) == ["t1", "t2", "t4"]


def test_max_running_holds_back_an_owners_tasks_and_lets_others_through() -> None:
    state = cluster_state(ann="user", bob="user")
    apply(state, c.UpdateUser("ann", 2, quota=Quota(max_running=1)))
    for i in range(3):
        submit(state, f"a{i}", "ann", priority=9)  # ann's first: highest priority
    submit(state, "b0", "bob", priority=1)
    granted = apply(state, c.Claim("n1", slots=4, at=30, max=4))
    assert sorted(t["id"] for t in granted["tasks"]) == ["a0", "b0"]
    assert state.tasks.live("ann") == (2, 1)
    apply(state, c.Complete("a0", 1, "n1", 31, {}))
    assert [t["id"] for t in apply(state, c.Claim("n1", 4, 32, max=4))["tasks"]] == ["a1"]


# ---------------------------------------------------------------------- the routes
@pytest.fixture
def node() -> Iterator[SimpleNamespace]:
    state = cluster_state(ann="user")
    raft = InstantRaft(state)
    replica = Replica(raft, state)  # type: ignore[arg-type]
    auth = Authenticator(SecuritySettings(token_secret="t" * 32), replica, "c")
    app = web.Application(middlewares=[json_errors, auth.middleware()])
    AuthAPI(auth, replica).routes(app)
    UsersAPI(auth, replica).routes(app)
    TaskAPI(replica, "n1").routes(app)
    KnowledgeAPI(replica, state.kb, SimpleNamespace(engine=None), 1 << 20).routes(app)
    admin = auth.issue("admin", UserRole.ADMIN)["access_token"]
    ann = auth.issue("ann", UserRole.USER)["access_token"]
    yield SimpleNamespace(app=app, state=state, raft=raft, admin=admin, ann=ann)


def http(node: SimpleNamespace, steps: Any) -> Any:
    async def run() -> Any:
        async with TestClient(TestServer(node.app)) as client:
            return await asyncio.wait_for(steps(client), 60)

    return asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


BAD_CREATES = [
    ({"name": "Bad Name", "password": PW}, 422, "name"),
    ({"name": "admin", "password": PW}, 422, "name"),
    ({"name": "cy", "password": "short"}, 422, "password"),
    ({"name": "cy", "password": PW, "role": "root"}, 422, "role"),
    ({"name": "cy", "password": PW, "quota": {"max_queued": -1}}, 422, "quota.max_queued"),
    ({"name": "cy", "password": PW, "quota": {"max_priority": 10}}, 422, "quota.max_priority"),
    ({"name": "cy", "password": PW, "quota": {"max_cpu": 1}}, 422, "quota.max_cpu"),
    ({"name": "cy", "password": PW, "quota": [1]}, 422, "quota"),
    ({"name": "cy", "password": PW, "is_admin": True}, 422, "is_admin"),
    ({"name": "ann", "password": PW}, 409, "name"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_CREATES)
def test_bad_user_requests_are_4xx_with_a_reason_and_change_nothing(
    node: SimpleNamespace, body: dict[str, Any], status: int, field: str
) -> None:
    before = dict(node.state.accounts.users)

    async def steps(client: TestClient) -> tuple[int, Any]:
        response = await client.post("/api/v1/users", json=body, headers=bearer(node.admin))
        return response.status, await response.json()

    got, answer = http(node, steps)
    assert got == status, answer
    assert answer["error"]["details"].get("field") == field
    assert node.state.accounts.users == before


def test_an_admin_manages_users_and_a_user_only_their_own_password(node: SimpleNamespace) -> None:
    async def steps(client: TestClient) -> None:
        admin, ann = bearer(node.admin), bearer(node.ann)
        body = {"name": "cy", "password": PW, "role": "editor", "quota": {"max_queued": 5}}
        made = await client.post("/api/v1/users", json=body, headers=admin)
        assert made.status == 201 and (await made.json())["role"] == "editor"
        # a user may neither list, create, promote themself nor read another user
        assert (await client.get("/api/v1/users", headers=ann)).status == 403
        assert (await client.post("/api/v1/users", json=body, headers=ann)).status == 403
        promote = await client.patch("/api/v1/users/ann", json={"role": "admin"}, headers=ann)
        assert promote.status == 403
        assert (await client.get("/api/v1/users/cy", headers=ann)).status == 404
        assert (await client.get("/api/v1/users/ann", headers=ann)).status == 200
        # their own password: with the current one
        new = {"password": "a-new-password"}
        assert (await client.patch("/api/v1/users/ann", json=new, headers=ann)).status == 422
        wrong = {**new, "current_password": "not-it-at-all"}
        assert (await client.patch("/api/v1/users/ann", json=wrong, headers=ann)).status == 403
        right = {**new, "current_password": PW}
        assert (await client.patch("/api/v1/users/ann", json=right, headers=ann)).status == 200
        login = {"username": "ann", "password": "a-new-password"}
        assert (await client.post("/api/v1/auth/token", json=login)).status == 200
        # disabled: the token stops working at once; deleted: gone
        off = await client.patch("/api/v1/users/ann", json={"disabled": True}, headers=admin)
        assert off.status == 200 and (await off.json())["disabled"] is True
        assert (await client.get("/api/v1/auth/me", headers=ann)).status == 401
        assert (await client.post("/api/v1/auth/token", json=login)).status == 401
        listed = await (await client.get("/api/v1/users", headers=admin)).json()
        assert [u["name"] for u in listed["items"]] == ["admin", "ann", "cy"]
        assert all("password_hash" not in u for u in listed["items"])
        assert (await client.delete("/api/v1/users/cy", headers=admin)).status == 200
        assert (await client.get("/api/v1/users/cy", headers=admin)).status == 404
        assert (await client.delete("/api/v1/users/admin", headers=admin)).status == 422

    http(node, steps)


def test_a_user_may_not_upload_and_an_over_quota_submission_is_429(node: SimpleNamespace) -> None:
    node.state.accounts.apply(c.UpdateUser("ann", 2, quota=Quota(max_queued=1, max_priority=5)))

    async def steps(client: TestClient) -> None:
        ann = bearer(node.ann)
        doc = {"id": "d1", "text": "hello"}
        refused = await client.post("/api/v1/kb/documents", json=doc, headers=ann)
        assert refused.status == 403 and "editors" in (await refused.json())["error"]["message"]
        task = {"type": "noop", "input": {"duration_ms": 5}}
        assert (await client.post("/api/v1/tasks", json=task, headers=ann)).status == 201
        full = await client.post("/api/v1/tasks", json=task, headers=ann)
        answer = await full.json()
        assert full.status == 429 and answer["error"]["code"] == "quota_exceeded", answer
        high = await client.post("/api/v1/tasks", json={**task, "priority": 8}, headers=ann)
        assert high.status == 403 and (await high.json())["error"]["details"]["field"] == "priority"

    http(node, steps)
    assert len(node.state.tasks.tasks) == 1 and node.state.kb.list_documents() == []
