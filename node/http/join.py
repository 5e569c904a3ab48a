"""Joining with a token: an admin makes a join token (single use, expiring; only its
SHA-256 enters the log), a new node presents it with its own CURVE public key.

POST /api/v1/cluster/join is public: the token is the credential.  The leader admits
the key (AdmitNode, which spends the token at apply, the same on every replica),
starts adding the node as a learner (promoted once it has caught up), and answers
with the shared secrets the node needs, the data key among them, sealed with a key
made from the token: only its holder can open them, whoever sees the answer.  A node
joining with a token never needs the cluster's admin credentials nor its bundle.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web

from node.config import ClusterConfig
from node.http import errors
from node.http.auth import is_admin
from node.http.body import BadBody, read_json_object
from node.http.cluster import Z85_KEY, Membership, forward_to_leader, raft_address_ok
from node.http.errors import error
from node.ids import new_task_id, now_ms
from node.replica import commands as c
from node.replica.replica import Replica
from node.replica.vocabulary import (
    DEFAULT_JOIN_TOKEN_TTL_S,
    MAX_AUTH_BODY_BYTES,
    MAX_JOIN_TOKEN_TTL_S,
    MIN_JOIN_TOKEN_TTL_S,
)
from node.secrets import (
    ClusterSecrets,
    join_token_digest,
    join_token_id,
    new_join_token,
    seal_for_joiner,
)

log = logging.getLogger("ragraft.node")
JOIN_PATH = "/api/v1/cluster/join"
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class JoinAPI:
    def __init__(
        self, config: ClusterConfig, replica: Replica, gossip: Membership | None = None
    ) -> None:
        self.config = config
        self.replica = replica
        self.gossip = gossip  # where a leader that joined later publishes its API
        self._adding: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        # With one key pair for the whole cluster there is no key to admit: a node
        # joins with the bundle and an admin's credentials.
        return self.config.per_node_keys

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/cluster/join-tokens", self.create_token)
        app.router.add_get("/api/v1/cluster/join-tokens", self.list_tokens)
        app.router.add_post(JOIN_PATH, self.join)

    async def create_token(self, request: web.Request) -> web.Response:
        if not is_admin(request):
            return error(403, "forbidden", "only an admin can make join tokens")
        if not self.enabled:
            return _no_node_keys()
        try:
            body = (
                await read_json_object(request, MAX_AUTH_BODY_BYTES)
                if request.can_read_body
                else {}
            )
        except BadBody as exc:
            return exc.response()
        unknown = sorted(set(body) - {"expires_in_s", "node"})
        if unknown:
            return error(422, "invalid", f"unknown field {unknown[0]!r}", field=unknown[0])
        ttl = body.get("expires_in_s", DEFAULT_JOIN_TOKEN_TTL_S)
        if type(ttl) is not int or not MIN_JOIN_TOKEN_TTL_S <= ttl <= MAX_JOIN_TOKEN_TTL_S:
            return error(
                422,
                "invalid",
                f"expires_in_s must be {MIN_JOIN_TOKEN_TTL_S}-{MAX_JOIN_TOKEN_TTL_S} seconds",
                field="expires_in_s",
            )
        node = body.get("node")
        if node is not None and (not isinstance(node, str) or not _NODE_ID.match(node)):
            return error(422, "invalid", "node must be a node id, e.g. n4", field="node")
        token_id = "jt-" + new_task_id().lower()
        token, digest = new_join_token(token_id)
        at = now_ms()
        cmd = c.PutJoinToken(token_id, digest, at, at + ttl * 1000, request["user"], node)
        outcome = await errors.propose(self.replica, cmd)
        if outcome.failure is not None:
            return outcome.failure
        answer = {**outcome.result, "token": token, "note": "shown once: only its SHA-256 is kept"}
        return web.json_response(answer, status=201)

    async def list_tokens(self, request: web.Request) -> web.Response:
        if not is_admin(request):
            return error(403, "forbidden", "only an admin can see join tokens")
        tokens = self.replica.state.peers.tokens.values()
        items = [{k: v for k, v in t.items() if k != "sha256"} for t in tokens]
        return web.json_response({"items": items})

    async def join(self, request: web.Request) -> web.Response:
        if not self.enabled:
            return _no_node_keys()
        if not self.replica.is_leader:
            members = self.gossip.snapshot() if self.gossip is not None else {}
            return await forward_to_leader(self.config, request, self.replica.leader, members)
        try:
            body = await read_json_object(request, MAX_AUTH_BODY_BYTES)
            token, node, address, key = _join_request(body)
        except BadBody as exc:
            return exc.response()
        except _BadJoin as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        token_id = join_token_id(token)
        if token_id is None:
            return error(403, "forbidden", "the join token is unknown, expired or used")
        admit = c.AdmitNode(
            node, key, now_ms(), token_id=token_id, token_sha256=join_token_digest(token)
        )
        outcome = await errors.propose(self.replica, admit)
        if outcome.failure is not None:
            return outcome.failure
        # The node starts once it has the secrets: add it meanwhile, without waiting.
        task = asyncio.create_task(self._add(node, address), name=f"join-{node}")
        self._adding.add(task)
        task.add_done_callback(self._adding.discard)
        return web.json_response(
            {"node": node, "sealed": seal_for_joiner(token, self._secrets())}, status=202
        )

    def _secrets(self) -> ClusterSecrets:
        config = self.config
        assert config.encryption_key is not None and config.security.token_secret is not None
        trusted = self.replica.state.peers.trusted(config.node_keys)
        return ClusterSecrets(
            config.name, config.encryption_key, config.security.token_secret, trusted
        )

    async def _add(self, node: str, address: str) -> None:
        try:
            await self.replica.add_member(node, address, timeout=120.0)
        except Exception as exc:  # noqa: BLE001 - reported, and the node can be added again
            log.error(
                "node %s was admitted with a join token but not added to the membership (%s); "
                "add it with POST /api/v1/cluster/members",
                node,
                exc,
            )
            return
        log.info("node %s joined with a join token", node)


class _BadJoin(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _join_request(body: dict[str, Any]) -> tuple[str, str, str, str]:
    token, node = body.get("token"), body.get("id")
    address, key = body.get("raft_address"), body.get("curve_public_key")
    if not isinstance(token, str) or not token:
        raise _BadJoin("token", "give the join token (from `ragraft node token`)")
    if not isinstance(node, str) or not _NODE_ID.match(node):
        raise _BadJoin("id", "id must be a node id of letters, digits, . _ -, e.g. n4")
    if not isinstance(address, str) or not raft_address_ok(address):
        raise _BadJoin("raft_address", "raft_address must be tcp://HOST:PORT")
    if not isinstance(key, str) or not Z85_KEY.match(key):
        raise _BadJoin("curve_public_key", "curve_public_key must be 40 z85 characters")
    return token, node, address, key


def _no_node_keys() -> web.Response:
    return error(
        409,
        "conflict",
        "this cluster shares one CURVE key pair (cluster.toml or a first-release bundle): "
        "a node joins with the bundle and an admin's credentials",
    )
