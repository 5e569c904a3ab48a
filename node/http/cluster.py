"""The cluster routes: nodes, the Raft view, membership changes and health.

Membership changes go through the Replica (add_member, remove_member); only the
leader can make them, so a node that is not the leader passes the request on to
the one it knows.  What the replica raises is answered with node/http/errors.py's
mapping: a refused change (another one in progress, an invalid one) is a 409, a
change that could not be committed a 503.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from aiohttp import ClientSession, TCPConnector, web

from node.client.rest import ssl_context
from node.config import ClusterConfig
from node.gossip.history import MetricsHistory
from node.http import errors
from node.http.body import BadBody, read_bounded, read_json_object
from node.http.errors import error
from node.ids import now_ms
from node.replica import commands as c
from node.replica.refusal import Refused
from node.replica.replica import NoQuorum, NotLeader, Replica
from node.replica.tasks import TaskQueue
from node.replica.vocabulary import MAX_JSON_BODY_BYTES, UserRole
from node.secrets import insecurity


class Membership(Protocol):
    """What the routes read of gossip (node/gossip/driver.py's Gossip)."""

    def snapshot(self) -> Mapping[str, dict[str, Any]]: ...


class ModelStatus(Protocol):
    """What /readyz reads of the RAG service (node/execution/rag_service.py)."""

    @property
    def ready(self) -> bool: ...

    @property
    def status(self) -> Any: ...  # ModelStatus: .to_dict()


def cluster_view(replica: Replica) -> dict[str, Any]:
    status = replica.status()
    return {
        "node": replica.node_id,
        "leader": status["leader"],
        "role": status["role"],
        "term": status["term"],
        "commit_index": status["commit"],
        "applied_index": status["applied"],
        "members": {
            "voters": status["voters"],
            "learners": status["learners"],
            "addresses": status["addresses"],
        },
        "quorum": status["leader"] is not None,
        "format": replica.formats().to_json(),
    }


def _raft_role(status: dict[str, Any], node_id: str) -> str | None:
    if status["leader"] == node_id:
        return "leader"
    if node_id in status["learners"]:
        return "learner"
    return "follower" if node_id in status["voters"] else None


class ClusterAPI:
    def __init__(
        self,
        config: ClusterConfig,
        replica: Replica,
        gossip: Membership,
        rag: ModelStatus,
        history: MetricsHistory | None = None,
    ) -> None:
        self.config = config
        self.replica = replica
        self.gossip = gossip
        self.rag = rag
        self.history = history

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/nodes", self.nodes)
        app.router.add_get("/api/v1/nodes/history", self.nodes_history)
        app.router.add_get("/api/v1/cluster", self.cluster)
        app.router.add_post("/api/v1/cluster/members", self.add_member)
        app.router.add_delete("/api/v1/cluster/members/{id}", self.remove_member)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    # ------------------------------------------------------------ reads
    async def nodes(self, request: web.Request) -> web.Response:
        status = self.replica.status()
        tasks = self.replica.state.tasks
        # A user sees only their own tasks anywhere, here too: the ids of others' running
        # tasks say who is asking what, and when.
        owner = None if request.get("role", UserRole.ADMIN) == UserRole.ADMIN else request["user"]
        known = tasks.nodes
        table = self.gossip.snapshot()
        configured = {n.id: n for n in self.config.nodes}
        items = []
        for node_id in sorted(
            set(status["voters"]) | set(status["learners"]) | set(known) | set(table)
        ):
            info = known.get(node_id, {})
            member = table.get(node_id, {})
            meta = member.get("meta", {})
            spec = configured.get(node_id)
            items.append(
                {
                    "id": node_id,
                    # Where clients reach it: what it publishes, else what the file says.
                    "api_url": meta.get("api_url") or (spec.public_api_url if spec else None),
                    "dashboard_url": meta.get("dashboard_url")
                    or (spec.public_dashboard_url if spec else None),
                    "raft_address": status["addresses"].get(node_id),
                    "gossip_address": member.get("address"),
                    "status": member.get("status", "unknown"),
                    "status_since_unix_ms": member.get("status_since_unix_ms"),
                    "raft_role": _raft_role(status, node_id),
                    "slots": info.get("slots"),
                    "draining": "draining" in info,
                    "format": meta.get("format") if isinstance(meta.get("format"), int) else None,
                    "running": [
                        task_id
                        for task_id in tasks.running_on(node_id)
                        if owner is None or _owner_of(tasks, task_id) == owner
                    ],
                    "metrics": meta,
                }
            )
        return web.json_response({"items": items})

    async def nodes_history(self, _: web.Request) -> web.Response:
        series = self.history.series() if self.history is not None else {}
        period = self.history.period_s if self.history is not None else None
        return web.json_response({"period_s": period, "nodes": series})

    async def cluster(self, _: web.Request) -> web.Response:
        return web.json_response(cluster_view(self.replica))

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.replica.node_id})

    async def readyz(self, _: web.Request) -> web.Response:
        # Ready = this node serves logins, reads and writes: it knows a leader and has
        # applied the accounts (before, a login answers 503 "initialising").  The models
        # are reported apart: a node still loading them serves the API all the same
        # (its RAG tasks run on the others), so a load balancer may send it clients.
        leader = self.replica.leader
        accounts = self.replica.state.accounts.initialized
        ready = leader is not None and accounts
        body: dict[str, Any] = {
            "ready": ready,
            "leader": leader,
            "accounts": accounts,
            "models": self.rag.status.to_dict(),
        }
        if self.config.insecure:  # a load balancer's check shows it, every time
            body["insecure"] = insecurity(self.config)
        return web.json_response(body, status=200 if ready else 503)

    # ------------------------------------------------------------ membership
    async def add_member(self, request: web.Request) -> web.Response:
        refused = _admins_only(request)
        if refused is not None:
            return refused
        if not self.replica.is_leader:
            return await self._forward_to_leader(request, self.replica.leader)
        try:
            body = await read_json_object(request, MAX_JSON_BODY_BYTES)
        except BadBody as exc:
            return exc.response()
        node, address = body.get("id"), body.get("raft_address")
        if not isinstance(node, str) or not isinstance(address, str):
            return error(422, "invalid", "give the new node's id and raft_address", field="id")
        if not node.strip() or len(node.encode()) > 64 or not node.isprintable():
            return error(
                422, "invalid", "id must be 1 to 64 bytes of printable text, e.g. n4", field="id"
            )
        if not raft_address_ok(address):
            return error(
                422,
                "invalid",
                "raft_address must be tcp://HOST:PORT (the new node's [[nodes]] host and "
                "raft_port), e.g. tcp://10.0.0.4:7104",
                field="raft_address",
            )
        key = body.get("curve_public_key")
        if self.config.per_node_keys:
            if key is None and node not in self.replica.state.peers.trusted(self.config.node_keys):
                return error(
                    422,
                    "invalid",
                    "give the new node's curve_public_key (its node-<id>.key's public_key; a "
                    "node asking to join sends it itself)",
                    field="curve_public_key",
                )
            if key is not None:
                if not isinstance(key, str) or not Z85_KEY.match(key):
                    return error(
                        422,
                        "invalid",
                        "curve_public_key must be 40 z85 characters",
                        field="curve_public_key",
                    )
                # Trusted first, so the leader's first messages to it find a key.
                admit = c.AdmitNode(node, key, now_ms(), by=request["user"])
                outcome = await errors.propose(self.replica, admit)
                if outcome.failure is not None:
                    return outcome.failure
        return await self._change(request, self.replica.add_member(node, address))

    async def remove_member(self, request: web.Request) -> web.Response:
        refused = _admins_only(request)
        if refused is not None:
            return refused
        if not self.replica.is_leader:
            return await self._forward_to_leader(request, self.replica.leader)
        # Its key is revoked by the leader once the removal has committed (the leader
        # may be the node removed: node/runtime/peers.py RingKeeper.revoke_removed).
        return await self._change(request, self.replica.remove_member(request.match_info["id"]))

    async def _change(self, request: web.Request, change: Awaitable[None]) -> web.Response:
        """Wait for a membership change; answer the cluster as it is after it."""
        # (Not errors.propose: a membership change is not a command of the log's
        # state machines, but its refusals answer through the same mapping.)
        try:
            await change
        except NotLeader as exc:  # leadership moved while the change was being made
            return await self._forward_to_leader(request, exc.leader)
        except Refused as exc:
            return errors.refusal_response(exc.refusal)
        except NoQuorum as exc:
            return errors.no_quorum_response(exc)
        return web.json_response(cluster_view(self.replica))

    async def _forward_to_leader(self, request: web.Request, leader: str | None) -> web.Response:
        return await forward_to_leader(self.config, request, leader, self.gossip.snapshot())


def peer_api_url(
    config: ClusterConfig, members: Mapping[str, Mapping[str, Any]], node_id: str | None
) -> str | None:
    """A node's API as another node reaches it: the configured host and port, else
    what it published in gossip (a node that joined after this one was configured)."""
    if node_id is None:
        return None
    spec = next((n for n in config.nodes if n.id == node_id), None)
    if spec is not None:
        return spec.api_url
    meta = members.get(node_id, {}).get("meta") or {}
    url = meta.get("peer_api_url") or meta.get("api_url")
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


async def forward_to_leader(
    config: ClusterConfig,
    request: web.Request,
    leader: str | None,
    members: Mapping[str, Mapping[str, Any]] | None = None,
) -> web.Response:
    """Only the leader may change the membership: pass the request on as it came
    (credentials included) and answer what the leader answers."""
    url = peer_api_url(config, members or {}, leader)
    if url is None:
        return error(503, "no_leader", "no leader is known; retry shortly")
    headers = {
        "Content-Type": "application/json",
        "Authorization": request.headers.get("Authorization", ""),
    }
    try:  # the leader refuses a larger body: do not buffer one here to pass it on
        data = await read_bounded(request, MAX_JSON_BODY_BYTES)
    except BadBody as exc:
        return exc.response()
    # The leader's certificate: what the system trusts, RAGRAFT_CA_FILE, and this
    # node's own certificate (a cluster's self-signed one, or its CA).
    tls = ssl_context(config.tls.cert_file) if url.startswith("https://") else None
    async with (
        ClientSession(connector=TCPConnector(ssl=tls if tls is not None else True)) as session,
        session.request(request.method, url + request.path_qs, data=data, headers=headers) as r,
    ):
        return web.Response(body=await r.read(), status=r.status, content_type="application/json")


Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_RAFT_ADDRESS = re.compile(r"^tcp://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def raft_address_ok(address: str) -> bool:
    found = _RAFT_ADDRESS.match(address)
    return found is not None and 0 < int(found.group(1)) < 65536


def _admins_only(request: web.Request) -> web.Response | None:
    if request["role"] != "admin":
        return error(403, "forbidden", "only an admin can change the cluster's membership")
    return None


def _owner_of(tasks: TaskQueue, task_id: str) -> str | None:
    task = tasks.tasks.get(task_id)
    return task.owner if task is not None else None
