"""GET /api/v1/events: a server-sent-events stream of task, knowledge-base, node and
cluster events, so UIs update live without polling.

Every node derives task and knowledge-base events from the entries it applies
(node/state.py listeners), so any node streams the same history; node events
come from this node's gossip view, cluster events (leader, term, commit) from
its Raft status every couple of seconds.  A user's stream carries only their own
tasks.  A subscriber that cannot keep up is sent `resync` and dropped: it
reconnects and reloads, which is cheaper than buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from node import task_query
from node.tasks import refused

log = logging.getLogger("ragraft.events")

QUEUE_LIMIT = 2000
KEEPALIVE_S = 15.0
EVENT_TYPES = ("task", "kb", "node", "cluster")
# Ops whose entries change the task named by cmd["id"].
_TASK_OPS = ("submit", "progress", "complete", "fail", "cancel", "abort", "release")


@dataclass(eq=False)  # identity: each connection is its own subscriber
class Subscriber:
    owner: str | None  # None: an admin, sees every task
    types: frozenset[str]
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    dropped: bool = False


class EventHub:
    def __init__(self, node_id: str, state: Any) -> None:
        self.node_id = node_id
        self.state = state  # NodeState: .tasks, .kb
        self.subscribers: set[Subscriber] = set()
        self.published = 0

    # ------------------------------------------------------------ sources
    def on_apply(self, cmd: dict, result: Any) -> None:
        """NodeState listener: runs on the apply path, so it only looks things up."""
        if not self.subscribers or refused(result):
            return
        op = cmd.get("op")
        if op in _TASK_OPS:
            self._task(op, cmd.get("id"))
        elif op == "claim" and isinstance(result, dict):
            for granted in result.get("tasks") or ():
                self._task(op, granted.get("id"))
        elif op in ("node", "requeue_node") and isinstance(result, dict):
            for task_id in result.get("requeued") or ():
                self._task("requeue", task_id)
        elif op == "expire" and isinstance(result, dict) and result.get("expired"):
            self.publish({"type": "task", "op": "expire", "expired": result["expired"]})
        elif op == "kb.upload" and isinstance(result, dict):
            self._task("submit", result.get("task", {}).get("id"))
            self._document(op, result.get("document", {}).get("doc_id"))
        elif isinstance(op, str) and op.startswith("kb."):
            self._document(op, cmd.get("doc_id"))

    def on_gossip(self, event: Any) -> None:
        """Gossip on_change: a member's status changed in this node's view."""
        self.publish(
            {
                "type": "node",
                "id": event.member.id,
                "status": event.new_status.value,
                "previous": event.old_status.value if event.old_status else None,
                "incarnation": event.member.incarnation,
                "seen_by": self.node_id,
            }
        )

    async def publish_cluster(self, status: Callable[[], dict], interval: float = 2.0) -> None:
        last: tuple | None = None
        while True:
            await asyncio.sleep(interval)
            if not self.subscribers:
                continue
            view = status()
            key = (view.get("leader"), view.get("term"), view.get("commit"), view.get("applied"))
            if key != last:
                last = key
                self.publish(
                    {
                        "type": "cluster",
                        "leader": view.get("leader"),
                        "term": view.get("term"),
                        "commit_index": view.get("commit"),
                        "applied_index": view.get("applied"),
                        "seen_by": self.node_id,
                    }
                )

    def _task(self, op: str, task_id: Any) -> None:
        task = self.state.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is not None:
            self.publish(
                {"type": "task", "op": op, "task": task_query.summary(task)}, owner=task.owner
            )

    def _document(self, op: str, doc_id: Any) -> None:
        kb = self.state.kb
        doc = kb.get(doc_id) if kb is not None and isinstance(doc_id, str) else None
        self.publish({"type": "kb", "op": op, "doc_id": doc_id, "document": doc})

    # ------------------------------------------------------------ fan-out
    def publish(self, event: dict, owner: str | None = None) -> None:
        self.published += 1
        for sub in list(self.subscribers):
            if event["type"] not in sub.types:
                continue
            if (
                event["type"] == "task"
                and sub.owner is not None
                and owner is not None
                and owner != sub.owner
            ):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped = True
                self.subscribers.discard(sub)
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()  # make room for the last word
                sub.queue.put_nowait(
                    {"type": "resync", "reason": "the stream fell behind; reload and reconnect"}
                )

    # ------------------------------------------------------------ HTTP
    async def handle(self, request: web.Request) -> web.StreamResponse:
        wanted = frozenset(
            t for t in request.query.get("types", ",".join(EVENT_TYPES)).split(",") if t
        )
        if not wanted or not wanted <= set(EVENT_TYPES):
            return web.json_response(
                {
                    "error": {
                        "code": "invalid",
                        "message": f"types must be among {', '.join(EVENT_TYPES)}",
                        "details": {"field": "types"},
                    }
                },
                status=422,
            )
        owner = None if request.get("role", "admin") == "admin" else request["user"]
        sub = Subscriber(owner, wanted)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self.subscribers.add(sub)
        try:
            await response.write(_frame("hello", {"node": self.node_id, "types": sorted(wanted)}))
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(_frame(event["type"], event))
                if event["type"] == "resync":
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.discard(sub)
        return response


def _frame(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
