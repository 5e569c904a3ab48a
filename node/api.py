"""The REST API every node serves (aiohttp), base /api/v1.

Any node accepts writes: they go through the Raft log (a follower forwards to
the leader) and are applied on this node before the answer is sent.  Reads come
from the local replica.  Errors are JSON: {"error": {"code", "message", "details"}}.

A submission may carry an `Idempotency-Key` header (node/idempotency.py): a repeat
with the same key, by the same user, within 24 hours answers 201 with the task
the first one created and `Idempotent-Replayed: true`, on any node.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgpack
from aiohttp import web

from consensus.errors import NoQuorum, RaftError
from consensus.node import RaftNode
from node import idempotency, task_history, task_query
from node.ids import new_task_id, now_ms
from node.task_query import QueryError, TaskQuery
from node.tasks import TaskQueue, refused

log = logging.getLogger("ragraft.api")

TASK_TYPES = ("qa", "generate", "retrieve", "ingest", "noop")
MAX_TEXT_CHARS = 8000  # the engine's own limit on a query or prompt

_STATUS = {
    "not_found": 404,
    "conflict": 409,
    "invalid": 422,
    "bad_command": 400,
    "stale_attempt": 409,
    "idempotency_mismatch": 422,
}


def error(status: int, code: str, message: str, **details: Any) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (unknown route, wrong method, body over the size limit)
    answer in the API's JSON error format too, and a bug answers a JSON 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = {
            404: f"no route {request.path}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"the body is larger than this node accepts ({request.app._client_max_size} bytes)",
        }.get(exc.status, exc.reason)
        return error(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(
            500,
            "internal",
            "an internal error happened on this node; it is logged. Retry, or use another node",
        )


class InvalidField(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _validate_submission(body: Any) -> dict:
    if not isinstance(body, dict):
        raise InvalidField("body", "the body must be a JSON object")
    task_type = body.get("type")
    if task_type == "ingest":
        raise InvalidField("type", "ingest tasks are created by uploads: POST /api/v1/kb/documents")
    if task_type not in TASK_TYPES:
        raise InvalidField(
            "type", f"type must be one of {', '.join(t for t in TASK_TYPES if t != 'ingest')}"
        )
    task_input = body.get("input", {})
    if not isinstance(task_input, dict):
        raise InvalidField("input", "input must be an object")
    if task_type == "noop":
        duration = task_input.get("duration_ms", 0)
        if (
            not isinstance(duration, (int, float))
            or isinstance(duration, bool)
            or not 0 <= duration <= 3_600_000
        ):
            raise InvalidField(
                "input.duration_ms", "duration_ms must be a number from 0 to 3600000"
            )
    for key in ("query", "prompt"):
        if isinstance(task_input.get(key), str) and len(task_input[key]) > MAX_TEXT_CHARS:
            raise InvalidField(
                f"input.{key}", f"input.{key} is limited to {MAX_TEXT_CHARS} characters"
            )
    if task_type in ("qa", "retrieve"):
        if not isinstance(task_input.get("query"), str) or not task_input["query"].strip():
            raise InvalidField("input.query", f"a {task_type} task needs a non-empty input.query")
    elif task_type == "generate" and (
        not isinstance(task_input.get("prompt"), str) or not task_input["prompt"].strip()
    ):
        raise InvalidField("input.prompt", "a generate task needs a non-empty input.prompt")
    priority = body.get("priority", 5)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise InvalidField(
            "priority", "priority must be a whole number from 0 (lowest) to 9 (most urgent)"
        )
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InvalidField("params", "params must be an object")
    _validate_params(params)
    return {"type": task_type, "input": task_input, "priority": priority, "params": params}


# name -> (kind, low, high): bounds checked at submission, so a bad value is a 422
# now rather than a failed task later (the engine checks them again).
_PARAM_BOUNDS: dict[str, tuple[type, float, float]] = {
    "top_k": (int, 1, 100),
    "max_new_tokens": (int, 1, 2048),
    "temperature": (float, 0.0, 5.0),
    "top_p": (float, 1e-6, 1.0),
    "min_score": (float, -1e9, 1e9),
    "seed": (int, 0, 2**63 - 1),
}
_MODES = ("vector", "keyword", "hybrid")


def _validate_params(params: dict) -> None:
    for name, (kind, low, high) in _PARAM_BOUNDS.items():
        if name not in params:
            continue
        value = params[name]
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not low <= value <= high:
            what = "a whole number" if kind is int else "a number"
            raise InvalidField(
                f"params.{name}", f"params.{name} must be {what} from {low:g} to {high:g}"
            )
    if "mode" in params and params["mode"] not in _MODES:
        raise InvalidField("params.mode", f"params.mode must be one of {', '.join(_MODES)}")
    for name in ("doc_ids", "tags", "stop"):
        value = params.get(name)
        strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if value is not None and not strings and not (name == "stop" and isinstance(value, str)):
            raise InvalidField(f"params.{name}", f"params.{name} must be a list of strings")


class TaskAPI:
    def __init__(self, raft: RaftNode, queue: TaskQueue, node_id: str, extra_status=None) -> None:
        self.raft = raft
        self.queue = queue
        self.node_id = node_id
        self.extra_status = extra_status or dict
        self._stats_cache: tuple[int, dict] | None = None
        self._history_cache: dict[tuple[int, int], tuple[int, dict]] = {}

    def middleware(self):
        @web.middleware
        async def mark_stale(request: web.Request, handler):
            response = await handler(request)
            if self.raft.leader is None and not response.prepared:
                # no leader: this replica may be behind; say so on every answer
                response.headers["X-Ragraft-Stale"] = "true"
            return response

        return mark_stale

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/tasks", self.submit)
        app.router.add_get("/api/v1/tasks", self.list_tasks)
        app.router.add_get("/api/v1/tasks/{id}", self.get_task)
        app.router.add_delete("/api/v1/tasks/{id}", self.cancel)
        app.router.add_post("/api/v1/tasks/{id}/abort", self.abort)
        app.router.add_post("/api/v1/tasks/{id}/retry", self.retry)
        app.router.add_get("/api/v1/stats", self.stats)
        app.router.add_get("/api/v1/stats/history", self.stats_history)

    async def _propose(self, cmd: dict) -> Any:
        applied = await self.raft.propose(msgpack.packb(cmd, use_bin_type=True))
        return applied.result

    async def write(self, cmd: dict, ok_status: int = 200) -> web.Response:
        # A node cut off from the quorum refuses at once (the driver gives an
        # election among peers it hears its time, no more): clients and load
        # balancers move on to a node that can serve.
        try:
            result = await self._propose(cmd)
        except NoQuorum as exc:
            return error(
                503,
                "no_quorum",
                f"{exc}; reads still work from this node's replica (possibly stale)",
                written="maybe" if exc.handed_on else "no",
            )
        except RaftError as exc:
            return error(
                503,
                "no_quorum",
                f"the cluster cannot accept writes right now: {exc}",
                written="maybe",
            )
        if refused(result):
            err = result["error"]
            return error(
                _STATUS.get(err["code"], 400), err["code"], err["message"], **err.get("details", {})
            )
        return web.json_response(result, status=ok_status)

    async def submit(self, request: web.Request) -> web.Response:
        try:
            key = idempotency.from_request(request)
        except idempotency.BadKey as exc:
            return error(400, "bad_idempotency_key", str(exc), header=idempotency.HEADER)
        try:
            body = await request.json()
        except ValueError:
            return error(400, "bad_json", "the body is not valid JSON")
        try:
            fields = _validate_submission(body)
        except InvalidField as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        cmd = {
            "op": "submit",
            "id": new_task_id(),
            "owner": request.get("user", "anonymous"),
            "at": now_ms(),
            **fields,
        }
        if key is None:
            return await self.write(cmd, ok_status=201)
        cmd.update(idem_key=key, fingerprint=idempotency.task_fingerprint(fields))
        response = await self.write(cmd, ok_status=201)
        replayed = response.status == 201 and _json_body(response).get("replayed") is True
        return idempotency.mark_replayed(response, replayed)

    @staticmethod
    def _scope(request: web.Request) -> str | None:
        """The owner a request is limited to: None for admins (they see every task)."""
        return None if request.get("role", "admin") == "admin" else request["user"]

    def _visible(self, request: web.Request, task_id: str) -> Any:
        task = self.queue.get(task_id)
        owner = self._scope(request)
        return task if task is not None and (owner is None or task.owner == owner) else None

    async def get_task(self, request: web.Request) -> web.Response:
        task = self._visible(request, request.match_info["id"])
        if task is None:
            return error(404, "not_found", f"no task {request.match_info['id']}")
        return web.json_response(task.to_dict())

    async def list_tasks(self, request: web.Request) -> web.Response:
        try:
            query = TaskQuery.from_params(request.query, self._scope(request))
            page, next_cursor, total = task_query.run(self.queue.tasks, query)
        except QueryError as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        full = request.query.get("full") in ("1", "true")
        items = [t.to_dict() if full else task_query.summary(t) for t in page]
        return web.json_response({"items": items, "next_cursor": next_cursor, "total": total})

    async def cancel(self, request: web.Request) -> web.Response:
        return await self.write(
            {
                "op": "cancel",
                "id": request.match_info["id"],
                "by": request.get("user", "anonymous"),
                "owner": self._scope(request),
                "at": now_ms(),
            }
        )

    async def abort(self, request: web.Request) -> web.Response:
        return await self.write(
            {
                "op": "abort",
                "id": request.match_info["id"],
                "by": request.get("user", "anonymous"),
                "owner": self._scope(request),
                "at": now_ms(),
            }
        )

    async def retry(self, request: web.Request) -> web.Response:
        old = self._visible(request, request.match_info["id"])
        if old is None:
            return error(404, "not_found", f"no task {request.match_info['id']}")
        if old.type == "ingest":
            return error(
                409,
                "conflict",
                "an ingest task cannot be retried: its upload was dropped when it "
                "failed; upload the file again",
                state=old.state,
            )
        if old.state not in ("failed", "cancelled"):
            return error(
                409,
                "conflict",
                f"task {old.id} is {old.state}; only failed or cancelled tasks can be retried",
                state=old.state,
            )
        cmd = {
            "op": "submit",
            "id": new_task_id(),
            "type": old.type,
            "input": old.input,
            "params": old.params,
            "priority": old.priority,
            "owner": old.owner,
            "at": now_ms(),
        }
        return await self.write(cmd, ok_status=201)

    async def stats(self, request: web.Request) -> web.Response:
        # One scan of the replica; dashboards poll this, so reuse it for a second.
        now = now_ms()
        if self._stats_cache is None or now - self._stats_cache[0] > 1000:
            self._stats_cache = (
                now,
                task_query.statistics(self.queue.tasks, self.queue.counts(), now),
            )
        return web.json_response({**self._stats_cache[1], **self.extra_status()})

    async def stats_history(self, request: web.Request) -> web.Response:
        """Tasks per state over the last `minutes` at `points` instants, and wait/run
        histograms; rebuilt from the records, cached for a second per shape."""
        try:
            minutes = task_query.whole_number(request.query, "minutes", 1, 1440) or 10
            points = task_query.whole_number(request.query, "points", 2, 500) or 60
        except QueryError as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        now = now_ms()
        cached = self._history_cache.get((minutes, points))
        if cached is None or now - cached[0] > 1000:
            cached = (now, task_history.history(self.queue.tasks, now, minutes * 60_000, points))
            self._history_cache = {(minutes, points): cached}
        return web.json_response(cached[1])


def _json_body(response: web.Response) -> Any:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)
