"""The cluster routes: nodes, the Raft view, membership changes, health and the
OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession, web

from consensus.errors import RaftError
from consensus.node import RaftNode
from node import openapi
from node.config import ClusterConfig
from node.gossip.history import MetricsHistory


def cluster_view(raft: RaftNode) -> dict:
    status = raft.status()
    return {
        "node": raft.id,
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
    }


class ClusterAPI:
    def __init__(
        self,
        config: ClusterConfig,
        raft: RaftNode,
        state: Any,
        gossip: Any,
        rag: Any,
        error: Any,
        history: MetricsHistory | None = None,
    ) -> None:
        self.config = config
        self.history = history
        self.raft = raft
        self.state = state  # NodeState
        self.gossip = gossip
        self.rag = rag  # RagService: model status
        self.error = error
        self.extra_paths: dict = {}  # OpenAPI paths of routes defined elsewhere

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/nodes", self.nodes)
        app.router.add_get("/api/v1/nodes/history", self.nodes_history)
        app.router.add_get("/api/v1/cluster", self.cluster)
        app.router.add_post("/api/v1/cluster/members", self.change_membership)
        app.router.add_delete("/api/v1/cluster/members/{id}", self.change_membership)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/openapi.json", self.openapi)

    async def nodes(self, _: web.Request) -> web.Response:
        raft, state = self.raft, self.state
        status = raft.status()
        known = state.tasks.nodes
        table = self.gossip.snapshot()
        items = []
        for node_id in sorted(
            set(status["voters"]) | set(status["learners"]) | set(known) | set(table)
        ):
            info = known.get(node_id, {})
            member = table.get(node_id, {})
            items.append(
                {
                    "id": node_id,
                    "raft_address": status["addresses"].get(node_id),
                    "gossip_address": member.get("address"),
                    "status": member.get("status", "unknown"),
                    "status_since_unix_ms": member.get("status_since_unix_ms"),
                    "raft_role": "leader"
                    if status["leader"] == node_id
                    else (
                        "learner"
                        if node_id in status["learners"]
                        else ("follower" if node_id in status["voters"] else None)
                    ),
                    "slots": info.get("slots"),
                    "running": state.tasks.running_on(node_id),
                    "metrics": member.get("meta", {}),
                }
            )
        return web.json_response({"items": items})

    async def nodes_history(self, _: web.Request) -> web.Response:
        series = self.history.series() if self.history is not None else {}
        period = self.history.period_s if self.history is not None else None
        return web.json_response({"period_s": period, "nodes": series})

    async def cluster(self, _: web.Request) -> web.Response:
        return web.json_response(cluster_view(self.raft))

    async def change_membership(self, request: web.Request) -> web.Response:
        error, raft = self.error, self.raft
        if request["role"] != "admin":
            return error(403, "forbidden", "only an admin can change the cluster's membership")
        if not raft.is_leader:
            return await self._forward_to_leader(request)
        try:
            if request.method == "POST":
                try:
                    body = await request.json()
                except ValueError:
                    return error(400, "bad_json", "the body is not valid JSON")
                node = body.get("id") if isinstance(body, dict) else None
                address = body.get("raft_address") if isinstance(body, dict) else None
                if not isinstance(node, str) or not isinstance(address, str):
                    return error(
                        422, "invalid", "give the new node's id and raft_address", field="id"
                    )
                await raft.add_member(node, address)
            else:
                await raft.remove_member(request.match_info["id"])
        except (RaftError, ValueError) as exc:
            return error(409, "membership", str(exc))
        return web.json_response(cluster_view(raft))

    async def _forward_to_leader(self, request: web.Request) -> web.Response:
        # Only the leader may change the membership: pass the request on, credentials included.
        leader = self.raft.leader
        url = next((n.api_url for n in self.config.nodes if n.id == leader), None)
        if url is None:
            return self.error(503, "no_leader", "no leader is known; retry shortly")
        headers = {
            "Content-Type": "application/json",
            "Authorization": request.headers.get("Authorization", ""),
        }
        async with (
            ClientSession() as session,
            session.request(
                request.method, url + request.path_qs, data=await request.read(), headers=headers
            ) as r,
        ):
            return web.Response(
                body=await r.read(), status=r.status, content_type="application/json"
            )

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.raft.id})

    async def readyz(self, _: web.Request) -> web.Response:
        # Ready = a leader is known and the models are loaded (or loading is off).
        ready = self.raft.leader is not None and self.rag.ready
        return web.json_response(
            {"ready": ready, "leader": self.raft.leader, "models": self.rag.status.to_dict()},
            status=200 if ready else 503,
        )

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi.document(self.extra_paths))
