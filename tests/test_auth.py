"""Authentication and ownership: scrypt hashes, JWT bearer tokens, API keys, the
built-in admin, and users who see only their own tasks — on real node processes."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest

from node.config import SecuritySettings
from node.http.auth import Authenticator, hash_password, new_api_key, verify_password
from node.replica import commands as c
from node.replica.accounts import Accounts
from node.replica.vocabulary import UserRole
from tests.nodecluster import NodeCluster, mint_token, running_cluster, users_toml

ALICE_PW, BOB_PW = "alice-password", "bob-password"


def test_password_hashes_are_salted_and_verified() -> None:
    one, two = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert one != two and one.startswith("scrypt$")
    assert verify_password("s3cret-pass", one) and verify_password("s3cret-pass", two)
    assert not verify_password("s3cret-pasS", one)
    assert not verify_password("x", "not-a-hash") and not verify_password("x", "scrypt$1$2$3$!!$??")


def accounts_with(**users: str) -> Accounts:
    """Replicated accounts set up as a cluster's first leader does: an admin, and the
    given users (name=role) with ALICE_PW as their password."""
    accounts = Accounts()
    hashed = hash_password(ALICE_PW)
    seeds = tuple(c.PutUser(n, UserRole(r), hashed, at=1, seed=True) for n, r in users.items())
    accounts.apply(c.InitAccounts(hash_password("admin-pw"), at=1, users=seeds))
    return accounts


def test_tokens_and_api_keys_identify_their_user() -> None:
    accounts = accounts_with(alice="user")
    key, digest = new_api_key()
    settings = SecuritySettings(
        token_secret="t" * 32,
        token_ttl_seconds=60,
        api_keys=(("alice", digest),),
    )
    auth = Authenticator(settings, replica_of(accounts), "c")
    assert auth.check_password("alice", ALICE_PW) == "user"
    assert (
        auth.check_password("alice", BOB_PW) is None and auth.check_password("mallory", "x") is None
    )
    assert auth.check_password("admin", "anything") is None
    token = auth.issue("alice", "user")["access_token"]
    assert auth.identify(token) == ("alice", "user")
    assert auth.identify(key) == ("alice", "user")
    assert auth.identify(key + "x") is None
    expired = jwt.encode(
        {"sub": "alice", "iss": "ragraft:c", "exp": int(time.time()) - 5}, "t" * 32, "HS256"
    )
    assert auth.identify(expired) is None
    forged = jwt.encode(
        {"sub": "admin", "iss": "ragraft:c", "exp": int(time.time()) + 60}, "wrong" * 8, "HS256"
    )
    assert auth.identify(forged) is None
    other_cluster = jwt.encode(
        {"sub": "alice", "iss": "ragraft:d", "exp": int(time.time()) + 60}, "t" * 32, "HS256"
    )
    assert auth.identify(other_cluster) is None


def test_an_unknown_user_costs_one_hash_like_a_known_one(monkeypatch) -> None:
    """Constant work for unknown users: the first unknown name used to cost two scrypt
    runs (the dummy hash was made then), telling a prober the name does not exist."""
    import hashlib

    from node.http import auth as auth_module

    auth_module._dummy_hash.cache_clear()
    auth = Authenticator(SecuritySettings(), replica_of(accounts_with(alice="user")), "c")
    runs = []
    real = hashlib.scrypt

    def counted(*args, **kwargs):
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(auth_module.hashlib, "scrypt", counted)
    for user in ("mallory", "alice", "eve", "alice"):
        before = len(runs)
        assert auth.check_password(user, "wrong") is None
        assert len(runs) - before == 1, user


def replica_of(accounts: Accounts) -> SimpleNamespace:
    """The Authenticator reads only `replica.state.accounts`."""
    return SimpleNamespace(state=SimpleNamespace(accounts=accounts))


def test_the_admin_and_stored_keys_come_from_the_replicated_accounts() -> None:
    accounts = Accounts()
    auth = Authenticator(SecuritySettings(token_ttl_seconds=60), replica_of(accounts), "c")
    with pytest.raises(LookupError):  # no token secret before the accounts are set up
        auth.issue("admin", UserRole.ADMIN)
    accounts.apply(c.InitAccounts(hash_password("admin-pw"), at=1, token_secret="s" * 32))
    assert auth.check_password("admin", "admin-pw") is UserRole.ADMIN
    assert auth.check_password("admin", "other") is None
    token = auth.issue("admin", UserRole.ADMIN)["access_token"]
    assert auth.identify(token) == ("admin", UserRole.ADMIN)
    key, digest = new_api_key()
    assert auth.identify(key) is None
    accounts.apply(c.PutKey("key-1", "admin", digest, at=2))
    assert auth.identify(key) == ("admin", UserRole.ADMIN)
    accounts.apply(c.DeleteKey("key-1", at=3))
    assert auth.identify(key) is None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("auth"), extra_toml=users_toml(alice=ALICE_PW, bob=BOB_PW)
    ) as cluster:
        yield cluster


def login(cluster: NodeCluster, node: str, user: str, password: str) -> str:
    deadline = time.monotonic() + 15
    while True:  # the admin account appears a moment after the first election
        status, body = cluster.request(
            node, "POST", "/api/v1/auth/token", {"username": user, "password": password}, token=""
        )
        if status != 503 or time.monotonic() > deadline:
            assert status == 200, body
            return body["access_token"]
        time.sleep(0.2)


def test_every_route_but_health_and_login_needs_a_token(cluster: NodeCluster) -> None:
    for path in (
        "/api/v1/tasks",
        "/api/v1/cluster",
        "/api/v1/nodes",
        "/api/v1/kb/documents",
        "/api/v1/stats",
    ):
        status, body, headers = cluster.request_with_headers("n1", "GET", path, token="")
        assert status == 401, path
        assert "POST /api/v1/auth/token" in body["error"]["message"] and headers[
            "WWW-Authenticate"
        ].startswith("Bearer")
    status, body = cluster.request("n2", "GET", "/api/v1/tasks", token="garbage")
    assert status == 401 and "invalid or expired" in body["error"]["message"]
    assert cluster.request("n1", "GET", "/healthz", token="")[0] == 200
    status, body = cluster.request(
        "n1", "POST", "/api/v1/auth/token", {"username": "alice", "password": "nope"}, token=""
    )
    assert status == 401 and body["error"]["code"] == "bad_credentials"
    status, body = cluster.request(
        "n1", "POST", "/api/v1/auth/token", {"username": "alice"}, token=""
    )
    assert status == 422


def test_a_token_from_one_node_works_on_every_node(cluster: NodeCluster) -> None:
    token = login(cluster, "n3", "admin", cluster.env["RAGRAFT_ADMIN_PASSWORD"])
    for node in cluster.ids:
        status, me = cluster.request(node, "GET", "/api/v1/auth/me", token=token)
        assert status == 200 and me == {"user": "admin", "role": "admin"}


def test_users_see_and_manage_only_their_own_tasks(cluster: NodeCluster) -> None:
    alice, bob = login(cluster, "n1", "alice", ALICE_PW), login(cluster, "n2", "bob", BOB_PW)
    status, task = cluster.request(
        "n1",
        "POST",
        "/api/v1/tasks",
        {"type": "noop", "input": {"duration_ms": 60_000}, "priority": 0},
        token=alice,
    )
    assert status == 201 and task["owner"] == "alice"
    tid = task["id"]
    # A follower that has not applied the submission yet would answer bob 404 too:
    # read barrier first, then the admin sees the task on that very node, so bob's
    # 404 and empty list are the ownership check.
    for node in ("n2", "n3"):
        cluster.read_barrier(node)
        assert cluster.request(node, "GET", f"/api/v1/tasks/{tid}")[0] == 200, node
    assert cluster.request("n2", "GET", f"/api/v1/tasks/{tid}", token=bob)[0] == 404
    assert tid not in [
        t["id"] for t in cluster.request("n2", "GET", "/api/v1/tasks", token=bob)[1]["items"]
    ]
    status, body = cluster.request("n3", "DELETE", f"/api/v1/tasks/{tid}", token=bob)
    assert status == 404, body
    status, body = cluster.request("n3", "POST", f"/api/v1/tasks/{tid}/abort", token=bob)
    assert status == 404, body
    cluster.read_barrier("n1")  # bob's refused cancel and abort changed nothing
    status, mine = cluster.request("n1", "GET", f"/api/v1/tasks/{tid}", token=alice)
    assert status == 200 and mine["state"] in ("queued", "running"), mine
    admin_items = cluster.request("n1", "GET", "/api/v1/tasks?limit=500")[1]["items"]
    assert tid in [t["id"] for t in admin_items]  # admins see all
    status, body = cluster.request("n2", "POST", f"/api/v1/tasks/{tid}/abort", token=alice)
    assert status == 200, body
    # admin-only operations
    status, body = cluster.request("n1", "DELETE", "/api/v1/cluster/members/n3", token=bob)
    assert status == 403, body
    status, body = cluster.request("n1", "DELETE", "/api/v1/kb/documents/whatever", token=bob)
    assert status == 403, body


def test_api_keys_are_shown_once_work_everywhere_and_can_be_revoked(cluster: NodeCluster) -> None:
    alice = login(cluster, "n1", "alice", ALICE_PW)
    status, created = cluster.request(
        "n1", "POST", "/api/v1/auth/keys", {"label": "nightly"}, token=alice
    )
    assert status == 201 and created["key"].startswith("rgk_") and created["user"] == "alice"
    key = created["key"]
    for node in cluster.ids:
        cluster.read_barrier(node)
        assert cluster.request(node, "GET", "/api/v1/auth/me", token=key)[1]["user"] == "alice"
    listed = cluster.request("n2", "GET", "/api/v1/auth/keys", token=alice)[1]["items"]
    assert [k["id"] for k in listed] == [created["id"]] and "sha256" not in listed[0]
    bob = login(cluster, "n1", "bob", BOB_PW)
    assert (
        cluster.request("n1", "DELETE", f"/api/v1/auth/keys/{created['id']}", token=bob)[0] == 404
    )
    assert (
        cluster.request("n1", "DELETE", f"/api/v1/auth/keys/{created['id']}", token=alice)[0] == 200
    )
    cluster.read_barrier("n3")  # n3 has applied the revocation: the 401 is not luck of timing
    assert cluster.request("n3", "GET", "/api/v1/auth/me", token=key)[0] == 401


def test_without_a_configured_password_the_admin_password_is_generated_once_into_a_private_file(
    tmp_path: Path,
) -> None:
    cluster = NodeCluster(tmp_path, env={"RAGRAFT_ADMIN_PASSWORD": "", "RAGRAFT_TOKEN_SECRET": ""})
    cluster.start_all()
    try:
        cluster.wait_ready()
        deadline = time.monotonic() + 15
        named: list[str] = []
        while time.monotonic() < deadline and not named:
            logs = "".join((tmp_path / f"{n}.log").read_text() for n in cluster.ids)
            named = re.findall(r"the generated admin password is in (\S+) \(", logs)
            time.sleep(0.2)
        assert len(named) == 1, named
        password_file = Path(named[0])
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o700
        printed = [password_file.read_text().strip()]
        assert len(printed[0]) >= 12
        for node in cluster.ids:  # the node logs say where, never what
            assert printed[0] not in (tmp_path / f"{node}.log").read_text()
        token = login(
            cluster, "n2", "admin", printed[0]
        )  # generated token secret, shared via the log
        assert cluster.request("n3", "GET", "/api/v1/auth/me", token=token)[1]["role"] == "admin"
        assert cluster.request("n1", "GET", "/api/v1/auth/me", token=mint_token("test"))[0] == 401
        cluster.stop_all()
        cluster.start_all()
        cluster.wait_ready()
        # Every node still takes the first password and has replayed the log up to
        # the highest commit index (read barrier); a node that would set up, and
        # print, a second admin account has done so by now, but for the last poll of
        # initialise_accounts (every 0.5 s), which the short wait covers.
        for node in cluster.ids:
            token = login(cluster, node, "admin", printed[0])
            cluster.read_barrier(node, token=token)
        time.sleep(1.0)
        logs = "".join((tmp_path / f"{n}.log").read_text() for n in cluster.ids)
        assert len(re.findall(r"the generated admin password is in", logs)) == 1  # never again
        assert printed[0] not in logs
        assert login(cluster, "n1", "admin", printed[0])  # and the first one still holds
    finally:
        cluster.stop_all()


def test_api_keys_carry_an_expiry_and_a_scope_in_the_replicated_accounts() -> None:
    from node.replica.refusal import Refusal
    from node.replica.vocabulary import KeyScope

    accounts = accounts_with(alice="user")
    key, digest = new_api_key()
    old, old_digest = new_api_key()
    now = int(time.time() * 1000)
    with pytest.raises(Refusal, match="expire after"):
        accounts.apply(c.PutKey("k0", "alice", digest, at=now, expires_at=now))
    accounts.apply(c.PutKey("k1", "alice", digest, at=now, expires_at=now + 60_000, scope="read"))
    accounts.apply(c.PutKey("k2", "alice", old_digest, at=1, expires_at=2))  # long expired
    auth = Authenticator(SecuritySettings(), replica_of(accounts), "c")
    assert auth.identify_scoped(key) == ("alice", "user", KeyScope.READ)
    assert auth.identify(old) is None  # expired: refused like an unknown key
    # A key stored before expiry and scopes (a snapshot of the previous release): its
    # user's rights, for ever.
    accounts.keys["k1"].pop("expires_at")
    accounts.keys["k1"].pop("scope")
    assert auth.identify_scoped(key) == ("alice", "user", KeyScope.ADMIN)


def test_what_each_scope_may_do() -> None:
    from node.http.auth import scope_allows
    from node.replica.vocabulary import KeyScope

    read, submit, admin = KeyScope.READ, KeyScope.SUBMIT, KeyScope.ADMIN
    for scope in (read, submit, admin):
        assert scope_allows(scope, "GET", "/api/v1/tasks")
    assert not scope_allows(read, "POST", "/api/v1/tasks")
    assert scope_allows(submit, "POST", "/api/v1/tasks")
    assert scope_allows(submit, "DELETE", "/api/v1/tasks/T1")
    assert scope_allows(submit, "POST", "/api/v1/tasks/T1/retry")
    assert scope_allows(submit, "POST", "/v1/chat/completions")
    for method, path in (
        ("POST", "/api/v1/auth/keys"),
        ("DELETE", "/api/v1/auth/keys/k1"),
        ("POST", "/api/v1/kb/documents"),
        ("POST", "/api/v1/cluster/members"),
        ("PATCH", "/api/v1/kb/documents/d1"),
        ("GET", "/api/v1/cluster/backup"),  # a read that hands over every password hash
    ):
        assert not scope_allows(submit, method, path) and not scope_allows(read, method, path)
        assert scope_allows(admin, method, path)
