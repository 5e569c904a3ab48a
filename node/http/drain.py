"""Draining a node for maintenance, from any node:

    POST /api/v1/nodes/{id}/drain   {"wait_s": 300}
    POST /api/v1/nodes/{id}/resume

Drain marks the node draining in the log (a DrainNode command, so every node and
every restart agrees: no task is granted to it any more), waits up to `wait_s`
for the tasks it is running to end, and, once they have, moves the leadership
away if the node holds it.  The answer says what is left: the tasks still running
(`drained: false` when the wait ran out) and who leads now.  The node keeps
serving the API, the dashboard and its Raft vote; `resume` lets it take tasks
again.  Draining is remembered until resumed, as a cordon is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from node.config import ClusterConfig
from node.http import errors
from node.http.auth import is_admin
from node.http.body import BadBody, read_json_object
from node.http.cluster import Membership, forward_to_leader
from node.http.errors import error
from node.ids import now_ms
from node.replica import commands as c
from node.replica.replica import NoQuorum, NotLeader, Replica
from node.replica.vocabulary import MAX_JSON_BODY_BYTES

DRAIN_WAIT_DEFAULT_S = 300
DRAIN_WAIT_MAX_S = 3600
_POLL_S = 0.2


class DrainAPI:
    def __init__(self, config: ClusterConfig, replica: Replica, gossip: Membership) -> None:
        self.config = config
        self.replica = replica
        self.gossip = gossip

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/nodes/{id}/drain", self.drain)
        app.router.add_post("/api/v1/nodes/{id}/resume", self.resume)

    async def drain(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        node = request.match_info["id"]
        try:
            body = (
                await read_json_object(request, MAX_JSON_BODY_BYTES)
                if request.can_read_body
                else {}
            )
        except BadBody as exc:
            return exc.response()
        wait_s = body.get("wait_s", DRAIN_WAIT_DEFAULT_S)
        unknown = sorted(set(body) - {"wait_s"})
        if unknown:
            return error(422, "invalid", f"unknown field {unknown[0]!r}", field=unknown[0])
        if (
            not isinstance(wait_s, int | float)
            or isinstance(wait_s, bool)
            or not 0 <= wait_s <= DRAIN_WAIT_MAX_S
        ):
            return error(
                422,
                "invalid",
                f"wait_s must be a number of seconds from 0 to {DRAIN_WAIT_MAX_S}",
                field="wait_s",
            )
        outcome = await errors.propose(
            self.replica, c.DrainNode(node, now_ms(), by=request["user"], draining=True)
        )
        if outcome.failure is not None:
            return outcome.failure
        running = await self._wait_idle(node, float(wait_s))
        if not running and self.replica.leader == node:
            moved = await self._move_leadership(request, node)
            if moved is not None:
                return moved
        return web.json_response(self._view(node, running))

    async def resume(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        node = request.match_info["id"]
        outcome = await errors.propose(
            self.replica, c.DrainNode(node, now_ms(), by=request["user"], draining=False)
        )
        if outcome.failure is not None:
            return outcome.failure
        return web.json_response(self._view(node, self.replica.state.tasks.running_on(node)))

    # ------------------------------------------------------------ steps
    def _check(self, request: web.Request) -> web.Response | None:
        if not is_admin(request):
            return error(403, "forbidden", "only an admin can drain or resume a node")
        node = request.match_info["id"]
        status = self.replica.status()
        known = {*status["voters"], *status["learners"], *self.replica.state.tasks.nodes}
        if node not in known:
            return error(404, "not_found", f"no node {node!r} in this cluster")
        return None

    async def _wait_idle(self, node: str, wait_s: float) -> list[str]:
        """The tasks still running on `node` after at most `wait_s` (read through a
        barrier, so a task that just finished elsewhere in the log counts as ended)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                await self.replica.read_barrier()
            except NoQuorum:
                pass  # the local view, then; the next round may have a quorum again
            running = sorted(self.replica.state.tasks.running_on(node))
            if not running or loop.time() >= deadline:
                return running
            await asyncio.sleep(_POLL_S)

    async def _move_leadership(self, request: web.Request, node: str) -> web.Response | None:
        """On the leader (the drained node itself), hand the leadership to the most
        caught-up voter; elsewhere, ask the leader to (the same request, forwarded)."""
        if not self.replica.is_leader:
            return await forward_to_leader(
                self.config, request, self.replica.leader, self.gossip.snapshot()
            )
        others = [v for v in self.replica.status()["voters"] if v != node]
        if not others:
            return None  # a single voter: nowhere to go
        target = max(others, key=lambda v: (self.replica.match_index(v), v))
        try:
            await self.replica.transfer_leadership(target)
        except (NotLeader, NoQuorum) as exc:
            return error(
                503,
                "no_quorum",
                f"drained, but the leadership did not move to {target}: {exc}; ask again",
            )
        return None

    def _view(self, node: str, running: list[str] | set[str]) -> dict[str, Any]:
        return {
            "node": node,
            "draining": self.replica.state.tasks.draining(node),
            "running": sorted(running),
            "drained": not running,
            "leader": self.replica.leader,
        }
