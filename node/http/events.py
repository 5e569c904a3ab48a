"""GET /api/v1/events: a server-sent-events stream of task, knowledge-base, node and
cluster events, so UIs update live without polling.

Every node derives task and knowledge-base events from the entries it applies
(a NodeState listener, node/replica/state.py), so any node streams the same
history; node events come from this node's gossip view, cluster events (leader,
term, commit) from its Raft status every couple of seconds.  A user's stream
carries only their own tasks.  A subscriber that cannot keep up is sent `resync`
and dropped: it reconnects and reloads, which is cheaper than buffering without
bound.

A task or kb event names its `change`: the tag of the command that made it
(submit, claim, progress, complete, fail, cancel, abort, release, expire,
kb.upload, kb.put_chunks, ...; node/replica/codec.py, never renamed), or
`requeue` for the tasks a dead or restarted node gave back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from node.gossip.core import Event as MemberEvent
from node.http.errors import error
from node.replica import codec
from node.replica import commands as c
from node.replica.query import summary
from node.replica.refusal import Refusal
from node.replica.state import NodeState
from node.replica.vocabulary import UserRole

log = logging.getLogger("ragraft.events")

QUEUE_LIMIT = 2000
KEEPALIVE_S = 15.0
MAX_FOLLOW_S = 24 * 3600  # ?max_s=: a bounded follow ends within a day
EVENT_TYPES = ("task", "kb", "node", "cluster")
# Commands that change the one task they name (cmd.task_id).
_TASK_CHANGES = (c.Submit, c.Progress, c.Complete, c.Fail, c.Cancel, c.Abort, c.Release)
_KB_CHANGES = (c.PutChunks, c.FinishIngest, c.FailIngest, c.DeleteDocument, c.SetEnabled)


@dataclass(eq=False)  # identity: each connection is its own subscriber
class Subscriber:
    owner: str | None  # None: an admin, sees every task
    types: frozenset[str]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    dropped: bool = False


class EventHub:
    def __init__(self, node_id: str, state: NodeState) -> None:
        self.node_id = node_id
        self.state = state
        self.subscribers: set[Subscriber] = set()
        self.published = 0

    # ------------------------------------------------------------ sources
    def on_apply(self, cmd: c.Command, outcome: Any) -> None:
        """NodeState listener: runs on the apply path, so it only looks things up.
        A refused command changed nothing, and neither did a replayed submission
        (its idempotency key named a task that exists)."""
        if not self.subscribers or isinstance(outcome, Refusal) or replayed(cmd, outcome):
            return
        change = codec.tag_of(cmd)
        if isinstance(cmd, _TASK_CHANGES):
            self._task(change, cmd.task_id)
        elif isinstance(cmd, c.Claim):
            for granted in outcome["tasks"]:
                self._task(change, granted["id"])
        elif isinstance(cmd, (c.NodeStatus, c.RequeueNode)):
            for task_id in outcome["requeued"]:
                self._task("requeue", task_id)
        elif isinstance(cmd, c.Expire):
            if outcome["expired"]:
                self.publish({"type": "task", "change": change, "expired": outcome["expired"]})
        elif isinstance(cmd, c.Upload):
            self._task(codec.TAGS[c.Submit], cmd.task_id)  # its ingest task
            self._document(change, cmd.doc.doc_id)
        elif isinstance(cmd, _KB_CHANGES):
            self._document(change, cmd.doc_id)
        # account commands: nothing a stream shows

    def on_gossip(self, event: MemberEvent) -> None:
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

    async def publish_cluster(
        self, status: Callable[[], dict[str, Any]], interval: float = 2.0
    ) -> None:
        last: tuple[Any, ...] | None = None
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

    def _task(self, change: str, task_id: str) -> None:
        task = self.state.tasks.get(task_id)
        if task is not None:  # (always, for a command that was not refused)
            self.publish(
                {"type": "task", "change": change, "task": summary(task)}, owner=task.owner
            )

    def _document(self, change: str, doc_id: str) -> None:
        kb = self.state.kb
        doc = kb.get(doc_id) if kb is not None else None
        self.publish({"type": "kb", "change": change, "doc_id": doc_id, "document": doc})

    # ------------------------------------------------------------ fan-out
    def publish(self, event: dict[str, Any], owner: str | None = None) -> None:
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
            return error(
                422, "invalid", f"types must be among {', '.join(EVENT_TYPES)}", field="types"
            )
        until = None
        if "max_s" in request.query:  # a bounded follow (scripts, probes): ends after it
            limit = _follow_seconds(request.query["max_s"])
            if limit is None:
                return error(
                    422,
                    "invalid",
                    f"max_s must be a number of seconds above 0 and at most {MAX_FOLLOW_S}",
                    field="max_s",
                )
            until = asyncio.get_running_loop().time() + limit
        # Without authentication (a test app) the caller sees everything, as an admin.
        owner = None if request.get("role", UserRole.ADMIN) == UserRole.ADMIN else request["user"]
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
            loop = asyncio.get_running_loop()
            while until is None or loop.time() < until:
                wait = KEEPALIVE_S if until is None else min(KEEPALIVE_S, until - loop.time())
                try:
                    event = await asyncio.wait_for(sub.queue.get(), max(wait, 0))
                except TimeoutError:
                    if until is None or loop.time() < until:
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


def replayed(cmd: c.Command, outcome: dict[str, Any]) -> bool:
    """A submission or upload whose idempotency key named an existing task: it
    changed nothing, and its answer is that task (node/replica/tasks.py replay)."""
    if isinstance(cmd, c.Submit):
        return outcome.get("replayed") is True
    if isinstance(cmd, c.Upload):
        return outcome["task"].get("replayed") is True
    return False


def _follow_seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 < value <= MAX_FOLLOW_S else None


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
