"""The task routes: /api/v1/tasks and /api/v1/stats.

Any node accepts writes: a route builds its command (node/replica/commands.py)
and proposes it through node/http/errors.py, which waits until it is applied on
this node and answers the result or the error.  Reads come from the local
replica (`replica.state.tasks`).  Errors are JSON: {"error": {"code", "message",
"details"}}.

A submission may carry an `Idempotency-Key` header (node/http/idempotency.py): a
repeat with the same key, by the same user, within 24 hours answers 201 with the
task the first one created and `Idempotent-Replayed: true`, on any node.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.http import errors, idempotency
from node.http.body import BadBody, read_json_object
from node.http.errors import error
from node.ids import new_task_id, now_ms
from node.replica import commands as c
from node.replica import history as task_history
from node.replica import query as task_query
from node.replica.query import QueryError, TaskQuery
from node.replica.refusal import RefusalCode, refuse
from node.replica.replica import Replica
from node.replica.tasks import Task
from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    MAX_INPUT_BYTES,
    MAX_JSON_BODY_BYTES,
    MAX_NOOP_MS,
    MAX_TEXT_CHARS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRYABLE_STATES,
    SUBMITTABLE_TYPES,
    InvalidField,
    TaskParams,
    TaskType,
)

# GET /api/v1/stats/history: the window in minutes and the number of instants.
HISTORY_MINUTES = (1, 1440, 10)  # (low, high, default)
HISTORY_POINTS = (2, 500, 60)
# The input fields that hold a task's text, each limited to MAX_TEXT_CHARS.
_TEXT_FIELDS = tuple(dict.fromkeys(t.text_field for t in TaskType if t.text_field))
# Only these can be submitted again.


@dataclass(frozen=True, slots=True)
class Submission:
    """A client's task, validated: what a Submit carries besides ids and times."""

    type: TaskType
    input: dict[str, Any]
    params: TaskParams
    priority: int

    @classmethod
    def parse(cls, body: Any) -> Submission:
        """From the JSON body of POST /api/v1/tasks; InvalidField names what is wrong."""
        if not isinstance(body, dict):
            raise InvalidField("body", "the body must be a JSON object")
        task_type = _task_type(body.get("type"))
        task_input = body.get("input", {})
        if not isinstance(task_input, dict):
            raise InvalidField("input", "input must be an object")
        _check_input(task_type, task_input)
        priority = body.get("priority", DEFAULT_PRIORITY)
        if (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or not PRIORITY_MIN <= priority <= PRIORITY_MAX
        ):
            raise InvalidField(
                "priority",
                f"priority must be a whole number from {PRIORITY_MIN} (lowest) "
                f"to {PRIORITY_MAX} (most urgent)",
            )
        raw_params = body.get("params", {})
        if raw_params is None:  # TaskParams.parse takes None for "none given"; a body may not
            raise InvalidField("params", "params must be an object")
        return cls(task_type, task_input, TaskParams.parse(raw_params), priority)

    def fingerprint(self) -> str:
        # The same print openai_compat.py takes of the same task (parameters in
        # their wire form), so a key means the same on both routes.
        return idempotency.task_fingerprint(
            {
                "type": self.type,
                "input": self.input,
                "params": self.params.to_wire(),
                "priority": self.priority,
            }
        )


def _task_type(raw: Any) -> TaskType:
    if raw == TaskType.INGEST:
        raise InvalidField("type", "ingest tasks are created by uploads: POST /api/v1/kb/documents")
    if raw not in SUBMITTABLE_TYPES:
        raise InvalidField("type", f"type must be one of {', '.join(SUBMITTABLE_TYPES)}")
    return TaskType(raw)


def _check_input(task_type: TaskType, task_input: dict[str, Any]) -> None:
    if task_type is TaskType.NOOP:
        duration = task_input.get("duration_ms", 0)
        if (
            not isinstance(duration, (int, float))
            or isinstance(duration, bool)
            or not 0 <= duration <= MAX_NOOP_MS
        ):
            raise InvalidField(
                "input.duration_ms", f"duration_ms must be a number from 0 to {MAX_NOOP_MS}"
            )
    size = len(json.dumps(task_input, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_INPUT_BYTES:
        raise InvalidField(
            "input", f"input is {size} bytes as JSON; at most {MAX_INPUT_BYTES} are accepted"
        )
    for name in _TEXT_FIELDS:
        if isinstance(task_input.get(name), str) and len(task_input[name]) > MAX_TEXT_CHARS:
            raise InvalidField(
                f"input.{name}", f"input.{name} is limited to {MAX_TEXT_CHARS} characters"
            )
    needed = task_type.text_field
    if needed is not None:
        text = task_input.get(needed)
        if not isinstance(text, str) or not text.strip():
            raise InvalidField(
                f"input.{needed}", f"a {task_type} task needs a non-empty input.{needed}"
            )


class TaskAPI:
    def __init__(
        self,
        replica: Replica,
        node_id: str,
        extra_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.replica = replica
        self.node_id = node_id
        self.extra_status = extra_status or dict  # more fields for GET /api/v1/stats
        self._stats_cache: tuple[int, dict[str, Any]] | None = None
        self._history_cache: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/tasks", self.submit)
        app.router.add_get("/api/v1/tasks", self.list_tasks)
        app.router.add_get("/api/v1/tasks/{id}", self.get_task)
        app.router.add_delete("/api/v1/tasks/{id}", self.cancel)
        app.router.add_post("/api/v1/tasks/{id}/abort", self.abort)
        app.router.add_post("/api/v1/tasks/{id}/retry", self.retry)
        app.router.add_get("/api/v1/stats", self.stats)
        app.router.add_get("/api/v1/stats/history", self.stats_history)

    @property
    def _tasks(self) -> dict[str, Task]:
        return self.replica.state.tasks.tasks

    # ------------------------------------------------------------ writes
    async def submit(self, request: web.Request) -> web.Response:
        try:
            key = idempotency.from_request(request)
        except idempotency.BadKey as exc:
            return error(400, "bad_idempotency_key", str(exc), header=idempotency.HEADER)
        try:
            body = await read_json_object(request, MAX_JSON_BODY_BYTES)
        except BadBody as exc:
            return exc.response()
        try:
            submission = Submission.parse(body)
        except InvalidField as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        cmd = c.Submit(
            task_id=new_task_id(),
            type=submission.type,
            input=submission.input,
            params=submission.params,
            owner=request.get("user", "anonymous"),
            at=now_ms(),
            priority=submission.priority,
            idem_key=key,
            fingerprint=submission.fingerprint() if key is not None else None,
        )
        outcome = await errors.propose(self.replica, cmd)
        if outcome.failure is not None:
            return outcome.failure
        # A replay answers 201 too: the client's retry gets what its first try would have.
        answer = web.json_response(outcome.result, status=201)
        idempotency.mark_replayed(answer, outcome.result.get("replayed") is True)
        return answer

    async def cancel(self, request: web.Request) -> web.Response:
        return await errors.write(
            self.replica,
            c.Cancel(
                task_id=request.match_info["id"],
                at=now_ms(),
                by=request.get("user", "anonymous"),  # whose tasks: decided at apply
            ),
        )

    async def abort(self, request: web.Request) -> web.Response:
        return await errors.write(
            self.replica,
            c.Abort(
                task_id=request.match_info["id"],
                at=now_ms(),
                by=request.get("user", "anonymous"),  # whose tasks: decided at apply
            ),
        )

    async def retry(self, request: web.Request) -> web.Response:
        """Submit a failed or cancelled task again, as a new task of the same owner.
        Checked here on the local replica, to answer fast, and again where the Submit
        (naming the task it retries and who asked) is applied."""
        old = self._visible(request, request.match_info["id"])
        if old is None:
            return errors.refusal_response(
                refuse(RefusalCode.NOT_FOUND, f"no task {request.match_info['id']}")
            )
        if old.type is TaskType.INGEST:
            return errors.refusal_response(
                refuse(
                    RefusalCode.CONFLICT,
                    "an ingest task cannot be retried: its upload was dropped when it "
                    "failed; upload the file again",
                    state=old.state,
                )
            )
        if old.state not in RETRYABLE_STATES:
            return errors.refusal_response(
                refuse(
                    RefusalCode.CONFLICT,
                    f"task {old.id} is {old.state}; only failed or cancelled tasks can be retried",
                    state=old.state,
                )
            )
        cmd = c.Submit(
            task_id=new_task_id(),
            type=old.type,
            input=old.input,
            params=old.params,
            owner=old.owner,
            at=now_ms(),
            priority=old.priority,
            retry_of=old.id,
            by=request.get("user", "anonymous"),
        )
        return await errors.write(self.replica, cmd, ok_status=201)

    # ------------------------------------------------------------ reads
    @staticmethod
    def _scope(request: web.Request) -> str | None:
        """The owner a request is limited to: None for admins (they see every task)."""
        return None if request.get("role", "admin") == "admin" else request["user"]

    def _visible(self, request: web.Request, task_id: str) -> Task | None:
        task = self.replica.state.tasks.get(task_id)
        owner = self._scope(request)
        return task if task is not None and (owner is None or task.owner == owner) else None

    async def get_task(self, request: web.Request) -> web.Response:
        task = self._visible(request, request.match_info["id"])
        if task is None:
            return errors.refusal_response(
                refuse(RefusalCode.NOT_FOUND, f"no task {request.match_info['id']}")
            )
        return web.json_response(task.to_dict())

    async def list_tasks(self, request: web.Request) -> web.Response:
        try:
            query = TaskQuery.from_params(request.query, self._scope(request))
            page, next_cursor, total = task_query.run(self._tasks, query)
        except QueryError as exc:
            if exc.field == "cursor":  # not a value out of range: a token we never made
                return error(400, "bad_cursor", str(exc), field=exc.field)
            return error(422, "invalid", str(exc), field=exc.field)
        full = request.query.get("full") in ("1", "true")
        items = [t.to_dict() if full else task_query.summary(t) for t in page]
        return web.json_response({"items": items, "next_cursor": next_cursor, "total": total})

    async def stats(self, _: web.Request) -> web.Response:
        # One scan of the replica; dashboards poll this, so reuse it for a second.
        now = now_ms()
        if self._stats_cache is None or now - self._stats_cache[0] > 1000:
            queue = self.replica.state.tasks
            self._stats_cache = (now, task_query.statistics(queue.tasks, queue.counts(), now))
        return web.json_response({**self._stats_cache[1], **self.extra_status()})

    async def stats_history(self, request: web.Request) -> web.Response:
        """Tasks per state over the last `minutes` at `points` instants, and wait/run
        histograms; rebuilt from the records, cached for a second per shape."""
        try:
            minutes = _bounded(request, "minutes", HISTORY_MINUTES)
            points = _bounded(request, "points", HISTORY_POINTS)
        except QueryError as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        now = now_ms()
        cached = self._history_cache.get((minutes, points))
        if cached is None or now - cached[0] > 1000:
            cached = (now, task_history.history(self._tasks, now, minutes * 60_000, points))
            self._history_cache = {(minutes, points): cached}
        return web.json_response(cached[1])


def _bounded(request: web.Request, name: str, bounds: tuple[int, int, int]) -> int:
    low, high, default = bounds
    return task_query.whole_number(request.query, name, low, high) or default
