"""The OpenAPI 3.1 document every node serves at GET /openapi.json.

Written out by hand next to the routes rather than generated from them: the
handlers validate by hand too, and a test (tests/test_openapi.py) checks that
every route the app registers is documented here and that a schemathesis run
against a live node finds no 5xx and no response outside these schemas.
"""

from __future__ import annotations

from typing import Any

from node.events import EVENT_TYPES
from node.task_query import MAX_LIMIT, SORTS
from node.tasks import STATES

JSON = "application/json"
_NULL_STR = {"type": ["string", "null"]}
_NULL_INT = {"type": ["integer", "null"]}
_NULL_NUM = {"type": ["number", "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


def _obj(required: list[str], **properties: Any) -> dict:
    return {"type": "object", "required": required, "properties": properties}


def _query(name: str, schema: dict, description: str) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


# The client's name for one logical submission, the same on every retry.
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
    },
    "description": "1-255 printable ASCII characters (e.g. a uuid4 hex), chosen by the client for one logical "
    "submission and sent again on every retry, to any node: a repeat by the same user within 24 "
    "hours answers with what the first request created (same task id, same status) instead of "
    "creating it again. The same key with a different request is refused (422 "
    "idempotency_mismatch); a malformed key is a 400 (bad_idempotency_key).",
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": '"true" when this answer replays an earlier request with the same Idempotency-Key',
        "schema": {"const": "true"},
    }
}


def _replayable(response: dict) -> dict:
    return {**response, "headers": _REPLAYED}


def _path_id(description: str) -> dict:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _op(
    summary: str,
    responses: dict,
    *,
    tag: str,
    public: bool = False,
    body: dict | None = None,
    parameters: list | None = None,
) -> dict:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if not public:
        op["responses"].setdefault("401", _error("no or an invalid bearer token"))
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        ["error"],
        error=_obj(
            ["code", "message"],
            code={"type": "string"},
            message={"type": "string"},
            details={"type": "object"},
        ),
    ),
    "HistoryEntry": _obj(
        ["state", "attempt", "at"],
        state={"enum": list(STATES)},
        node=_NULL_STR,
        attempt={"type": "integer"},
        at={"type": "integer"},
        note={"type": "string"},
    ),
    "Task": _obj(
        ["id", "type", "state", "priority", "owner", "submitted_at", "attempt", "history"],
        id={"type": "string"},
        type={"type": "string"},
        input={"type": "object"},
        params={"type": "object"},
        priority={"type": "integer", "minimum": 0, "maximum": 9},
        owner={"type": "string"},
        submitted_at={"type": "integer", "description": "ms since the epoch"},
        state={"enum": list(STATES)},
        node=_NULL_STR,
        attempt={"type": "integer"},
        max_attempts={"type": "integer"},
        started_at=_NULL_INT,
        finished_at=_NULL_INT,
        not_before={"type": "integer"},
        progress={"type": "number"},
        progress_note={"type": "string"},
        result={"description": "qa: answer, citations, passages, timings, models"},
        error=_NULL_STR,
        abort_requested={"type": "boolean"},
        history={"type": "array", "items": _ref("HistoryEntry")},
        replayed={
            "type": "boolean",
            "description": "present (true) when a submission with a known "
            "Idempotency-Key answers with the task it created before",
        },
    ),
    "ExpiredReplay": _obj(
        ["id", "replayed", "expired"],
        id={"type": "string", "description": "the task the key created"},
        owner={"type": "string"},
        submitted_at={"type": "integer"},
        replayed={"const": True},
        expired={
            "const": True,
            "description": "the task record was removed by retention; the key outlives it "
            "(24 hours)",
        },
    ),
    "TaskSummary": _obj(
        ["id", "type", "state", "priority", "owner", "submitted_at"],
        id={"type": "string"},
        type={"type": "string"},
        state={"enum": list(STATES)},
        priority={"type": "integer"},
        owner={"type": "string"},
        node=_NULL_STR,
        attempt={"type": "integer"},
        submitted_at={"type": "integer"},
        started_at=_NULL_INT,
        finished_at=_NULL_INT,
        waited_ms=_NULL_INT,
        ran_ms=_NULL_INT,
        progress={"type": "number"},
        progress_note={"type": "string"},
        error=_NULL_STR,
        input_excerpt={"type": "string"},
    ),
    "TaskList": _obj(
        ["items", "next_cursor", "total"],
        items={"type": "array", "items": {"anyOf": [_ref("TaskSummary"), _ref("Task")]}},
        next_cursor=_NULL_STR,
        total={"type": "integer"},
    ),
    "Submission": _obj(
        ["type", "input"],
        type={"enum": ["qa", "generate", "retrieve", "noop"]},
        input={
            "type": "object",
            "description": "qa/retrieve: {query}; generate: {prompt}; noop: {duration_ms}",
            "properties": {
                "query": {"type": "string"},
                "prompt": {"type": "string"},
                "duration_ms": {"type": "number", "minimum": 0, "maximum": 3_600_000},
            },
        },
        priority={"type": "integer", "minimum": 0, "maximum": 9, "default": 5},
        params={
            "type": "object",
            "properties": {
                "top_k": {"type": "integer", "minimum": 1, "maximum": 100},
                "mode": {"enum": ["vector", "keyword", "hybrid"]},
                "min_score": {"type": "number"},
                "doc_ids": {"type": "array", "items": {"type": "string"}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 2048},
                "temperature": {"type": "number", "minimum": 0, "maximum": 5},
                "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "stop": {"type": "array", "items": {"type": "string"}},
                "seed": {"type": "integer", "minimum": 0},
            },
        },
    ),
    "Percentiles": _obj(
        ["count"], p50=_NULL_INT, p95=_NULL_INT, p99=_NULL_INT, count={"type": "integer"}
    ),
    "Stats": _obj(
        [*STATES, "by_node", "throughput", "wait_ms", "run_ms"],
        **{s: {"type": "integer"} for s in STATES},
        total={"type": "integer"},
        by_node={"type": "object", "additionalProperties": {"type": "object"}},
        throughput=_obj(
            ["completed_per_s_1m", "completed_per_s_5m"],
            completed_per_s_1m={"type": "number"},
            completed_per_s_5m={"type": "number"},
        ),
        wait_ms=_ref("Percentiles"),
        run_ms=_ref("Percentiles"),
        window={"type": "string"},
    ),
    "StatsHistory": _obj(
        ["t", "step_ms", "states", "latency"],
        t={"type": "array", "items": {"type": "integer"}},
        step_ms={"type": "integer"},
        states={
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "integer"}},
        },
        latency=_obj(
            ["edges_ms", "wait", "run"],
            edges_ms={"type": "array", "items": {"type": "integer"}},
            wait={"type": "array", "items": {"type": "integer"}},
            run={"type": "array", "items": {"type": "integer"}},
            window={"type": "string"},
        ),
    ),
    "Node": _obj(
        ["id", "status", "running"],
        id={"type": "string"},
        raft_address=_NULL_STR,
        gossip_address=_NULL_STR,
        status={"type": "string", "description": "alive | suspect | dead"},
        status_since_unix_ms=_NULL_INT,
        raft_role=_NULL_STR,
        slots=_NULL_INT,
        running={"type": "array", "items": {"type": "string"}},
        metrics={"type": "object"},
    ),
    "Cluster": _obj(
        ["node", "leader", "term", "commit_index", "applied_index", "members", "quorum"],
        node={"type": "string"},
        leader=_NULL_STR,
        role={"type": "string"},
        term={"type": "integer"},
        commit_index={"type": "integer"},
        applied_index={"type": "integer"},
        members=_obj(
            ["voters", "learners"],
            voters={"type": "array", "items": {"type": "string"}},
            learners={"type": "array", "items": {"type": "string"}},
            addresses={"type": "object"},
        ),
        quorum={"type": "boolean"},
    ),
    "Document": _obj(
        ["id", "title", "version", "state", "size", "tags", "enabled", "chunk_count"],
        id={"type": "string"},
        title={"type": "string"},
        source={"type": "string"},
        media_type={"type": "string"},
        version={"type": "integer"},
        size={"type": "integer"},
        tags={"type": "array", "items": {"type": "string"}},
        enabled={"type": "boolean"},
        state={"enum": ["uploaded", "ingesting", "ready", "failed"]},
        error=_NULL_STR,
        chunk_count={"type": "integer"},
        ingested_by=_NULL_STR,
        created_at={"type": "number"},
        updated_at={"type": "number"},
        serving={"type": ["object", "null"]},
    ),
    "Passage": _obj(
        ["n", "doc_id", "chunk", "text", "score"],
        n={"type": "integer"},
        doc_id={"type": "string"},
        title={"type": "string"},
        chunk={"type": "integer"},
        page=_NULL_INT,
        text={"type": "string"},
        score={"type": "number"},
        vector_score=_NULL_NUM,
        keyword_score=_NULL_NUM,
    ),
    "Token": _obj(
        ["access_token", "token_type", "expires_in"],
        access_token={"type": "string"},
        token_type={"const": "bearer"},
        expires_in={"type": "integer"},
    ),
    "ApiKey": _obj(
        ["id", "user"],
        id={"type": "string"},
        user={"type": "string"},
        created_at={"type": "integer"},
        label={"type": "string"},
        key={"type": "string", "description": "shown once, at creation"},
    ),
    "Ready": _obj(
        ["ready", "leader"], ready={"type": "boolean"}, leader=_NULL_STR, models={"type": "object"}
    ),
}


def _paths() -> dict:
    task_id = _path_id("task id")
    doc_id = _path_id("document id")
    task = _json(_ref("Task"), "the task")
    list_params = [
        _query("state", {"type": "string"}, f"comma-separated states among {', '.join(STATES)}"),
        _query("type", {"type": "string"}, "comma-separated task types"),
        _query("node", {"type": "string"}, "node that runs or ran the task"),
        _query("owner", {"type": "string"}, "owner (admins only; users always see their own)"),
        _query("priority", {"type": "integer", "minimum": 0, "maximum": 9}, "exact priority"),
        _query(
            "q", {"type": "string", "maxLength": 200}, "text in id, query, owner, node or error"
        ),
        _query("since", {"type": "integer", "minimum": 0}, "submitted at or after (ms)"),
        _query("until", {"type": "integer", "minimum": 0}, "submitted before (ms)"),
        _query("sort", {"enum": [*SORTS, *(f"-{k}" for k in SORTS)]}, "sort key; - for descending"),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            "page size (default 50)",
        ),
        _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
        _query("full", {"enum": ["0", "1", "true", "false"]}, "whole tasks instead of summaries"),
    ]
    return {
        "/healthz": {
            "get": _op(
                "liveness",
                {
                    "200": _json(
                        _obj(["status"], status={"const": "ok"}, node={"type": "string"}),
                        "the process runs",
                    )
                },
                tag="health",
                public=True,
            )
        },
        "/readyz": {
            "get": _op(
                "readiness: a leader is known and the models are loaded",
                {
                    "200": _json(_ref("Ready"), "ready"),
                    "503": _json(_ref("Ready"), "not ready yet; models says why"),
                },
                tag="health",
                public=True,
            )
        },
        "/openapi.json": {
            "get": _op(
                "this document",
                {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                tag="health",
                public=True,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tag="health",
                public=True,
            )
        },
        "/api/v1/auth/token": {
            "post": _op(
                "log in",
                {
                    "200": _json(_ref("Token"), "a bearer token"),
                    "400": _error("not JSON"),
                    "401": _error("wrong username or password"),
                    "422": _error("missing field"),
                    "503": _error("the cluster is still setting up its admin account"),
                },
                tag="auth",
                public=True,
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": _obj(
                                ["username", "password"],
                                username={"type": "string"},
                                password={"type": "string"},
                            )
                        }
                    },
                },
            )
        },
        "/api/v1/auth/me": {
            "get": _op(
                "who the token belongs to",
                {
                    "200": _json(
                        _obj(
                            ["user", "role"],
                            user={"type": "string"},
                            role={"enum": ["admin", "user"]},
                        ),
                        "the caller",
                    )
                },
                tag="auth",
            )
        },
        "/api/v1/auth/keys": {
            "post": _op(
                "create an API key (shown once)",
                {
                    "201": _json(_ref("ApiKey"), "the new key"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "422": _error("unknown user"),
                    "503": _error("no quorum"),
                },
                tag="auth",
                body={
                    "required": False,
                    "content": {
                        JSON: {
                            "schema": _obj([], label={"type": "string"}, user={"type": "string"})
                        }
                    },
                },
            ),
            "get": _op(
                "the caller's API keys (all, for an admin)",
                {
                    "200": _json(
                        _obj(["items"], items={"type": "array", "items": _ref("ApiKey")}),
                        "keys without secrets",
                    )
                },
                tag="auth",
            ),
        },
        "/api/v1/auth/keys/{id}": {
            "delete": _op(
                "revoke an API key",
                {
                    "200": _json({"type": "object"}, "revoked"),
                    "404": _error("no such key of yours"),
                    "503": _error("no quorum"),
                },
                tag="auth",
                parameters=[_path_id("key id")],
            )
        },
        "/api/v1/tasks": {
            "post": _op(
                "submit a task",
                {
                    "201": _replayable(
                        _json(
                            {"anyOf": [_ref("Task"), _ref("ExpiredReplay")]},
                            "the task (with Idempotent-Replayed: true, the one an earlier request "
                            "with the same Idempotency-Key created; ExpiredReplay once that "
                            "task's record has expired)",
                        )
                    ),
                    "400": _error("not JSON, or a malformed Idempotency-Key (bad_idempotency_key)"),
                    "413": _error("body too large"),
                    "422": _error(
                        "invalid field (details.field names it), or idempotency_mismatch: the "
                        "Idempotency-Key was used for a different request (details.task_id)"
                    ),
                    "503": _error("no quorum"),
                },
                tag="tasks",
                body={"required": True, "content": {JSON: {"schema": _ref("Submission")}}},
                parameters=[_IDEMPOTENCY_KEY],
            ),
            "get": _op(
                "list tasks",
                {"200": _json(_ref("TaskList"), "a page"), "422": _error("bad parameter")},
                tag="tasks",
                parameters=list_params,
            ),
        },
        "/api/v1/tasks/{id}": {
            "get": _op(
                "a task with its result and history",
                {"200": task, "404": _error("unknown")},
                tag="tasks",
                parameters=[task_id],
            ),
            "delete": _op(
                "cancel a queued task",
                {
                    "200": task,
                    "404": _error("unknown"),
                    "409": _error("not queued (details.state)"),
                    "503": _error("no quorum"),
                },
                tag="tasks",
                parameters=[task_id],
            ),
        },
        "/api/v1/tasks/{id}/abort": {
            "post": _op(
                "stop a running task (or cancel a queued one)",
                {
                    "200": task,
                    "404": _error("unknown"),
                    "409": _error("already finished"),
                    "503": _error("no quorum"),
                },
                tag="tasks",
                parameters=[task_id],
            )
        },
        "/api/v1/tasks/{id}/retry": {
            "post": _op(
                "resubmit a failed or cancelled task as a new task",
                {
                    "201": task,
                    "404": _error("unknown"),
                    "409": _error("not failed or cancelled"),
                    "503": _error("no quorum"),
                },
                tag="tasks",
                parameters=[task_id],
            )
        },
        "/api/v1/stats": {
            "get": _op(
                "counts, throughput and latency percentiles",
                {"200": _json(_ref("Stats"), "statistics")},
                tag="cluster",
            )
        },
        "/api/v1/stats/history": {
            "get": _op(
                "tasks per state at evenly spaced instants over the last minutes, and wait/run time histograms "
                "of the tasks that finished then (rebuilt from the task records)",
                {
                    "200": _json(_ref("StatsHistory"), "history"),
                    "422": _error("minutes or points out of range"),
                },
                tag="cluster",
                parameters=[
                    _query(
                        "minutes",
                        {"type": "integer", "minimum": 1, "maximum": 1440},
                        "window (default 10)",
                    ),
                    _query(
                        "points",
                        {"type": "integer", "minimum": 2, "maximum": 500},
                        "instants (default 60)",
                    ),
                ],
            )
        },
        "/api/v1/nodes/history": {
            "get": _op(
                "every node's recent CPU, memory and GPU use and slots used, as this node's gossip saw them",
                {
                    "200": _json(
                        _obj(
                            ["period_s", "nodes"],
                            period_s={"type": ["number", "null"]},
                            nodes={"type": "object", "additionalProperties": {"type": "object"}},
                        ),
                        "history",
                    )
                },
                tag="cluster",
            )
        },
        "/api/v1/nodes": {
            "get": _op(
                "every node: gossip status, Raft role, metrics, slots, running tasks",
                {
                    "200": _json(
                        _obj(["items"], items={"type": "array", "items": _ref("Node")}), "nodes"
                    )
                },
                tag="cluster",
            )
        },
        "/api/v1/cluster": {
            "get": _op(
                "leader, term, commit and applied index, members, quorum",
                {"200": _json(_ref("Cluster"), "this node's view")},
                tag="cluster",
            )
        },
        "/api/v1/cluster/members": {
            "post": _op(
                "add a node (learner, then voter); admins only",
                {
                    "200": _json(_ref("Cluster"), "added"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "409": _error("refused"),
                    "422": _error("missing id or raft_address"),
                    "503": _error("no leader"),
                },
                tag="cluster",
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": _obj(
                                ["id", "raft_address"],
                                id={"type": "string"},
                                raft_address={"type": "string"},
                            )
                        }
                    },
                },
            )
        },
        "/api/v1/cluster/members/{id}": {
            "delete": _op(
                "remove a node; admins only",
                {
                    "200": _json(_ref("Cluster"), "removed"),
                    "403": _error("not an admin"),
                    "409": _error("refused"),
                    "503": _error("no leader"),
                },
                tag="cluster",
                parameters=[_path_id("node id")],
            )
        },
        "/api/v1/kb/documents": {
            "post": _op(
                "upload documents (multipart files, or JSON {title, text})",
                {
                    "202": _replayable(
                        _json(
                            _obj(
                                ["documents", "tasks"],
                                documents={"type": "array", "items": {"type": ["object", "null"]}},
                                tasks={
                                    "type": "array",
                                    "items": {"anyOf": [_ref("Task"), _ref("ExpiredReplay")]},
                                },
                            ),
                            "accepted; ingest tasks queued (with an Idempotency-Key, file i is keyed by the key, i = "
                            '0, or "<key>#<i>"; a replayed file\'s entries say "replayed", and '
                            "Idempotent-Replayed: true when every file was a replay)",
                        )
                    ),
                    "400": _error("not JSON, or a malformed Idempotency-Key"),
                    "403": _error("replacing needs an admin"),
                    "413": _error("file too large"),
                    "422": _error(
                        "invalid or empty, or idempotency_mismatch (the key was used for another request)"
                    ),
                    "503": _error("no quorum"),
                },
                tag="knowledge base",
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": _obj(
                                ["text"],
                                text={"type": "string", "minLength": 1},
                                title={"type": "string"},
                                id={"type": "string"},
                                media_type={"enum": ["text/plain", "text/markdown", "text/html"]},
                                tags={"type": "array", "items": {"type": "string"}},
                            )
                        },
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "file": {
                                        "type": "array",
                                        "items": {"type": "string", "format": "binary"},
                                    },
                                    "tags": {"type": "string"},
                                    "title": {"type": "string"},
                                    "id": {"type": "string"},
                                },
                            }
                        },
                    },
                },
                parameters=[_IDEMPOTENCY_KEY],
            ),
            "get": _op(
                "documents",
                {
                    "200": _json(
                        _obj(
                            ["items", "total"],
                            items={"type": "array", "items": _ref("Document")},
                            total={"type": "integer"},
                        ),
                        "documents",
                    )
                },
                tag="knowledge base",
                parameters=[
                    _query("state", {"type": "string"}, "document state"),
                    _query("tag", {"type": "string"}, "tag"),
                ],
            ),
        },
        "/api/v1/kb/documents/{id}": {
            "get": _op(
                "a document",
                {"200": _json(_ref("Document"), "the document"), "404": _error("unknown")},
                tag="knowledge base",
                parameters=[doc_id],
            ),
            "delete": _op(
                "delete a document; admins only",
                {
                    "200": _json({"type": "object"}, "deleted"),
                    "403": _error("not an admin"),
                    "404": _error("unknown"),
                    "503": _error("no quorum"),
                },
                tag="knowledge base",
                parameters=[doc_id],
            ),
            "patch": _op(
                "enable or disable a document; admins only",
                {
                    "200": _json({"type": "object"}, "changed"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "404": _error("unknown"),
                    "422": _error("enabled missing"),
                    "503": _error("no quorum"),
                },
                tag="knowledge base",
                parameters=[doc_id],
                body={
                    "required": True,
                    "content": {JSON: {"schema": _obj(["enabled"], enabled={"type": "boolean"})}},
                },
            ),
        },
        "/api/v1/kb/search": {
            "get": _op(
                "ranked passages now, from this node's index",
                {
                    "200": _json(
                        _obj(
                            ["query", "passages"],
                            query={"type": "string"},
                            passages={"type": "array", "items": _ref("Passage")},
                            timings={"type": "object"},
                            models={"type": "object"},
                        ),
                        "passages",
                    ),
                    "422": _error("bad parameter"),
                    "503": _error("models still loading"),
                },
                tag="knowledge base",
                parameters=[
                    {
                        **_query("q", {"type": "string", "minLength": 1}, "the query"),
                        "required": True,
                    },
                    _query("k", {"type": "integer", "minimum": 1, "maximum": 100}, "how many"),
                    _query("mode", {"enum": ["vector", "keyword", "hybrid"]}, "retrieval mode"),
                    _query("min_score", {"type": "number"}, "score threshold"),
                    _query("tags", {"type": "string"}, "comma-separated tags"),
                    _query("doc_ids", {"type": "string"}, "comma-separated document ids"),
                ],
            )
        },
        "/api/v1/kb/stats": {
            "get": _op(
                "knowledge-base counts, index digest, model status",
                {
                    "200": _json(
                        _obj(
                            ["documents", "chunks", "digest"],
                            documents={"type": "integer"},
                            chunks={"type": "integer"},
                            digest={"type": "string"},
                        ),
                        "statistics",
                    )
                },
                tag="knowledge base",
            )
        },
        "/v1/models": {
            "get": _op(
                "OpenAI-compatible: the models (ragraft-qa, ragraft-generate)",
                {
                    "200": _json(
                        _obj(
                            ["object", "data"],
                            object={"const": "list"},
                            data={"type": "array", "items": _obj(["id"], id={"type": "string"})},
                        ),
                        "models",
                    )
                },
                tag="openai",
            )
        },
        "/v1/chat/completions": {
            "post": _op(
                "OpenAI-compatible chat: the last user message becomes a qa (or generate) task; with an "
                "Idempotency-Key, a retry follows the task the first request submitted, and a client that hangs "
                "up does not cancel it",
                {
                    "200": _replayable(
                        {
                            "description": "a chat.completion, or a text/event-stream of chunks with stream: true",
                            "content": {
                                JSON: {
                                    "schema": _obj(
                                        ["id", "object", "choices"],
                                        id={"type": "string"},
                                        object={"type": "string"},
                                        choices={"type": "array"},
                                        usage={"type": "object"},
                                    )
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        }
                    ),
                    "400": {
                        "description": "bad request, or a malformed Idempotency-Key (OpenAI error format)",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "404": {
                        "description": "unknown model",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "409": {
                        "description": "the task this Idempotency-Key submitted has expired "
                        "(code idempotency_key_expired)",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "422": {
                        "description": "the Idempotency-Key was used for a different request "
                        "(code idempotency_mismatch)",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "502": {
                        "description": "the task failed",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "no quorum",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "504": {
                        "description": "timed out",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                },
                tag="openai",
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": _obj(
                                ["model", "messages"],
                                model={"enum": ["ragraft-qa", "ragraft-generate"]},
                                messages={
                                    "type": "array",
                                    "minItems": 1,
                                    "items": _obj(
                                        ["role", "content"],
                                        role={"enum": ["system", "user", "assistant"]},
                                        content={"type": "string"},
                                    ),
                                },
                                max_tokens={"type": "integer", "minimum": 1, "maximum": 2048},
                                temperature={"type": "number", "minimum": 0, "maximum": 2},
                                top_p={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                stream={"type": "boolean"},
                                stop={"type": "array", "items": {"type": "string"}, "maxItems": 4},
                                seed={"type": "integer", "minimum": 0},
                            )
                        }
                    },
                },
                parameters=[_IDEMPOTENCY_KEY],
            )
        },
        "/api/v1/events": {
            "get": _op(
                "server-sent events: task, kb, node and cluster changes",
                {
                    "200": {
                        "description": "an endless event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "422": _error("unknown event type"),
                },
                tag="events",
                parameters=[
                    _query(
                        "types",
                        {"type": "string"},
                        f"comma-separated, among {', '.join(EVENT_TYPES)}",
                    ),
                    _query(
                        "access_token", {"type": "string"}, "the token, for EventSource clients"
                    ),
                ],
            )
        },
    }


def document(extra_paths: dict | None = None) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ragraft",
            "version": "1",
            "description": "Every node serves this API and accepts writes. Errors are "
            '{"error": {"code", "message", "details"}}; send '
            "Authorization: Bearer <token from POST /api/v1/auth/token, or an API key>.",
        },
        "paths": {**_paths(), **(extra_paths or {})},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
