"""A node joins with a join token: its own key pair, no bundle and no admin
credentials; the token is single use, and what the cluster answers opens only with it.
Real processes, the default (CURVE, sealed log) cluster."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from node.secrets import BUNDLE_NAME, node_key_path, open_as_joiner
from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e


def voters(cluster: NodeCluster, node: str) -> list[str]:
    return cluster.request(node, "GET", "/api/v1/cluster")[1]["members"]["voters"]


def join(cluster: NodeCluster, node: str, body: dict) -> tuple[int, dict]:
    return cluster.request(node, "POST", "/api/v1/cluster/join", body, token="")


def test_a_node_joins_with_a_single_use_token_and_nothing_else(tmp_path: Path) -> None:
    cluster = NodeCluster(tmp_path, joiners=1)
    cluster.start_all()
    try:
        cluster.wait_ready(["n1", "n2", "n3"])
        status, task = cluster.request("n1", "POST", "/api/v1/tasks", {"type": "noop"})
        assert status == 201, task
        # bad requests for a token: 4xx with the field, nothing made
        for body, field in (({"expires_in_s": 5}, "expires_in_s"), ({"node": "n 4"}, "node"),
                            ({"ttl": 60}, "ttl")):  # fmt: skip
            status, answer = cluster.request("n1", "POST", "/api/v1/cluster/join-tokens", body)
            assert status == 422 and answer["error"]["details"]["field"] == field, answer
        status, made = cluster.request(
            "n2", "POST", "/api/v1/cluster/join-tokens", {"expires_in_s": 600, "node": "n4"}
        )
        assert status == 201 and made["token"].startswith("rgj_"), made
        token = made["token"]
        listed = cluster.request("n1", "GET", "/api/v1/cluster/join-tokens")[1]["items"]
        assert any(t["id"] == made["id"] and "sha256" not in t for t in listed)
        # forged, malformed and incomplete joins: refused, nobody admitted
        key = "0" * 40
        forged = token.rsplit("_", 1)[0] + "_not-the-secret"
        good = {"id": "n4", "raft_address": "tcp://127.0.0.1:1", "curve_public_key": key}
        for body, expected in (({**good, "token": forged}, 403), ({**good, "token": "x"}, 403),
                               ({**good, "token": token, "id": "n9"}, 403),  # for n4 only
                               ({"token": token}, 422), ({**good, "token": token,
                                "curve_public_key": "short"}, 422)):  # fmt: skip
            status, answer = join(cluster, "n3", body)
            assert status == expected and "error" in answer, (body, answer)
        # n4: an empty secrets directory, no admin password, no token secret
        secrets = tmp_path / "n4-secrets"
        env = {
            k: v
            for k, v in cluster.env.items()
            if k not in ("RAGRAFT_ADMIN_PASSWORD", "RAGRAFT_TOKEN_SECRET", "RAGRAFT_API_KEY")
        }
        env["RAGRAFT_SECRETS_DIR"] = str(secrets)  # fmt: skip
        cluster.start("n4", "--join", cluster.api["n2"], "--join-token", token, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "n4" not in voters(cluster, "n1"):
            time.sleep(0.3)
        assert voters(cluster, "n1") == ["n1", "n2", "n3", "n4"]
        # it reads the sealed log: the task submitted before it joined
        deadline = time.monotonic() + 20
        while cluster.request("n4", "GET", f"/api/v1/tasks/{task['id']}")[0] != 200:
            assert time.monotonic() < deadline, "n4 never applied the task"
            time.sleep(0.3)
        # what it holds: the bundle (0600, no other node's secret key) and its own key
        bundle = secrets / BUNDLE_NAME
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
        assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o700
        document = json.loads(bundle.read_text())
        assert "secret_key" not in bundle.read_text() and "n4" in document["node_keys"]
        assert node_key_path(secrets, "n4").exists()
        assert not node_key_path(secrets, "n1").exists()
        # spent: a second use is refused, and the answer never opened without the token
        status, answer = join(cluster, "n1", {**good, "token": token})
        assert status == 403, answer
        assert "n4: admitted" in (tmp_path / "n4.log").read_text()
        # a restart needs no token: the bundle is there
        cluster.kill("n4")
        cluster.start("n4", "--join", cluster.api["n2"], "--join-token", token, env=env)
        cluster.wait_ready(["n4"])
        assert voters(cluster, "n4") == ["n1", "n2", "n3", "n4"]
    finally:
        cluster.stop_all()


def test_what_the_cluster_hands_a_joiner_opens_with_its_token_only() -> None:
    from node.secrets import ClusterSecrets, ConfigError, seal_for_joiner

    secrets = ClusterSecrets("c", "e" * 44, "t" * 32, {"n1": "k" * 40})
    sealed = seal_for_joiner("rgj_a_b", secrets)
    assert "e" * 44 not in sealed and "t" * 32 not in sealed
    assert open_as_joiner("rgj_a_b", sealed) == secrets
    with pytest.raises(ConfigError, match="does not open"):
        open_as_joiner("rgj_a_c", sealed)


def test_join_tokens_are_spent_once_expire_and_need_an_admin_at_apply() -> None:
    from node.http.auth import hash_password
    from node.rag.knowledge import KnowledgeBase
    from node.replica import codec
    from node.replica import commands as c
    from node.replica.refusal import Refusal, RefusalCode
    from node.replica.state import NodeState
    from node.replica.tasks import TaskQueue
    from node.replica.vocabulary import UserRole
    from node.secrets import join_token_digest

    state = NodeState(TaskQueue(), KnowledgeBase(dim=4))
    index = 0

    def apply(cmd: c.Command) -> object:
        nonlocal index
        index += 1
        return codec.outcome_from_wire(state.apply(index, codec.encode(cmd)))

    def refused(outcome: object, code: RefusalCode) -> bool:
        return isinstance(outcome, Refusal) and outcome.code is code

    ann = c.PutUser("ann", UserRole.USER, hash_password("ann-password"), 1)
    apply(c.InitAccounts("hash", 1, users=(ann,)))
    key4, key5 = "4" * 40, "5" * 40
    digest = join_token_digest("rgj_t1_secret")
    # only an admin makes tokens and admits nodes by name
    assert refused(apply(c.PutJoinToken("t1", digest, 10, 1000, "ann")), RefusalCode.FORBIDDEN)
    assert refused(apply(c.AdmitNode("n4", key4, 10, by="ann")), RefusalCode.FORBIDDEN)
    assert refused(apply(c.AdmitNode("n4", key4, 10)), RefusalCode.FORBIDDEN)  # neither
    apply(c.PutJoinToken("t1", digest, 10, 1000, "admin", node="n4"))
    apply(c.PutJoinToken("t2", join_token_digest("rgj_t2_s"), 10, 20, "admin"))
    # the wrong secret, the wrong node, an expired token: refused, nothing trusted
    wrong = c.AdmitNode("n4", key4, 11, token_id="t1", token_sha256="0" * 64)
    assert refused(apply(wrong), RefusalCode.FORBIDDEN)
    other = c.AdmitNode("n5", key5, 11, token_id="t1", token_sha256=digest)
    assert refused(apply(other), RefusalCode.FORBIDDEN)
    late = c.AdmitNode("n5", key5, 20, token_id="t2", token_sha256=join_token_digest("rgj_t2_s"))
    assert refused(apply(late), RefusalCode.FORBIDDEN)
    assert state.peers.keys == {}
    # the right one, once
    good = c.AdmitNode("n4", key4, 12, token_id="t1", token_sha256=digest)
    assert apply(good)["admitted"] is True and state.peers.keys == {"n4": key4}
    again = c.AdmitNode("n4", key4, 13, token_id="t1", token_sha256=digest)
    assert refused(apply(again), RefusalCode.FORBIDDEN)
    # another node cannot take n4's key; revoking and admitting again by an admin
    assert refused(apply(c.AdmitNode("n6", key4, 14, by="admin")), RefusalCode.CONFLICT)
    apply(c.RevokeNode("n4", 15))
    assert state.peers.trusted({"n1": "1" * 40}) == {"n1": "1" * 40}
    apply(c.AdmitNode("n4", key5, 16, by="admin"))
    assert state.peers.trusted({}) == {"n4": key5}
    copy = NodeState(TaskQueue(), KnowledgeBase(dim=4))
    copy.restore(state.snapshot())
    assert copy.peers.keys == state.peers.keys and copy.peers.tokens == state.peers.tokens
