"""The OpenAPI 3.1 document every node serves at GET /openapi.json.

What the handlers check is generated from where it is defined, so the document
cannot drift from it: task states and types, search modes and user roles from
the enums of node/replica/vocabulary.py, the task parameters and their bounds
from `PARAMS`, the text, priority and duration limits from its constants, the
error codes from `RefusalCode` and the codes the routes answer before proposing.
The routes themselves (paths, summaries, response shapes) are written here, one
builder per group of routes, because the handlers validate by hand rather than
from a schema.  tests/test_openapi.py checks that every route the app registers
is documented here, that the enums equal the vocabulary's, and that a
schemathesis run against a live node finds no 5xx and no response outside these
schemas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

from node.http import errors, idempotency
from node.http.drain import DRAIN_WAIT_DEFAULT_S, DRAIN_WAIT_MAX_S
from node.http.events import EVENT_TYPES, MAX_FOLLOW_S
from node.http.openai_compat import MODELS, OPENAI_MAX_STOP, OPENAI_MAX_TEMPERATURE
from node.rag.documents import MEDIA_HTML, MEDIA_MARKDOWN, MEDIA_TEXT
from node.rag.knowledge import MAX_TAGS, DocState
from node.replica.query import MAX_LIMIT, SORTS
from node.replica.refusal import RefusalCode
from node.replica.vocabulary import (
    DEFAULT_JOIN_TOKEN_TTL_S,
    DEFAULT_PRIORITY,
    IDEMPOTENCY_TTL_MS,
    LOGIN_FAILURES_PER_ADDRESS,
    LOGIN_FAILURES_PER_USER,
    MAX_JOIN_TOKEN_TTL_S,
    MAX_KEY_TTL_S,
    MAX_NOOP_MS,
    MAX_PASSWORD_CHARS,
    MAX_QUOTA_TASKS,
    MAX_STOP_STRINGS,
    MAX_TEXT_CHARS,
    MIN_JOIN_TOKEN_TTL_S,
    MIN_KEY_TTL_S,
    MIN_PASSWORD_CHARS,
    PARAMS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SUBMITTABLE_TYPES,
    USER_NAME_PATTERN,
    GroundingMode,
    KeyScope,
    ParamSpec,
    SearchMode,
    TaskState,
    TaskType,
    UserRole,
)

Schema = dict[str, Any]

JSON = "application/json"
_NULL_STR: Schema = {"type": ["string", "null"]}
_NULL_INT: Schema = {"type": ["integer", "null"]}
_NULL_NUM: Schema = {"type": ["number", "null"]}
_SPECS = {spec.name: spec for spec in PARAMS}
_KEY_HOURS = IDEMPOTENCY_TTL_MS // 3_600_000

# The codes an error answer carries besides the refusals of the state machines:
# those the routes answer before proposing anything (a body that is not JSON, no
# login, a node still setting up, a membership change the driver refused) and
# those of aiohttp's own refusals (node/http/errors.py).  tests/test_openapi.py
# scans node/http/ for the codes the routes write, so a new one cannot be missed.
ROUTE_ERROR_CODES = (
    "bad_json",
    "bad_multipart",
    "bad_idempotency_key",
    "bad_cursor",
    "too_many_attempts",
    "bad_credentials",
    "unauthorized",
    "initialising",
    "models_not_ready",
    "no_leader",
    "no_quorum",
    "membership",
    "too_many_files",
    "empty_file",
    *errors._HTTP_CODES.values(),
    "http_error",  # aiohttp refused with a status _HTTP_CODES does not name
)
ERROR_CODES: tuple[str, ...] = tuple(dict.fromkeys([*map(str, RefusalCode), *ROUTE_ERROR_CODES]))


# ---------------------------------------------------------------------- generic builders
def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: Iterable[str]) -> Schema:
    """An enum of StrEnum members (or strings), as the JSON strings they travel as."""
    return {"enum": [str(v) for v in values]}


def _strings(max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": {"type": "string"}}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _obj(required: list[str], **properties: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


def _body(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _query(name: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _path_id(description: str) -> Schema:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _op(
    summary: str,
    responses: dict[str, Schema],
    *,
    tag: str,
    public: bool = False,
    body: Schema | None = None,
    parameters: list[Schema] | None = None,
) -> Schema:
    op: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if not public:
        op["responses"].setdefault("401", _error("no or an invalid bearer token"))
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


# ---------------------------------------------------------------------- from the vocabulary
def param_value(spec: ParamSpec) -> Schema:
    """The JSON schema of one task parameter's value, with its bounds."""
    if spec.kind in ("integer", "number"):
        assert spec.low is not None and spec.high is not None
        if spec.kind == "integer":
            return {"type": "integer", "minimum": int(spec.low), "maximum": int(spec.high)}
        return {"type": "number", "minimum": spec.low, "maximum": spec.high}
    if spec.kind == "mode":
        return _enum(SearchMode)
    if spec.kind == "grounding":
        return _enum(GroundingMode)
    if spec.kind == "strings":
        return _strings()
    if spec.kind == "stop":
        return _stop(MAX_STOP_STRINGS)
    # a kind added to the vocabulary must be documented, not silently left open
    raise ValueError(f"no schema for the parameter kind {spec.kind!r} of {spec.name}")


def param_schema(spec: ParamSpec) -> Schema:
    return {**param_value(spec), "description": spec.doc}


def params_schema() -> Schema:
    """`params` of a submission: TaskParams.parse refuses a name it does not know."""
    return {
        "type": "object",
        "properties": {spec.name: param_schema(spec) for spec in PARAMS},
        "additionalProperties": False,
    }


def _stop(max_items: int) -> Schema:
    # a single string is taken as a list of one
    return {"anyOf": [{"type": "string"}, _strings(max_items)]}


def _priority() -> Schema:
    return {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX}


def _task_input() -> Schema:
    fields = {t: f"{{{t.text_field}}}" for t in SUBMITTABLE_TYPES if t.text_field}
    fields[TaskType.NOOP] = "{duration_ms}"
    by_type = "; ".join(f"{t}: {f}" for t, f in fields.items())
    text = {"type": "string", "maxLength": MAX_TEXT_CHARS}
    return {
        "type": "object",
        "description": by_type,
        "properties": {
            **{t.text_field: text for t in SUBMITTABLE_TYPES if t.text_field},
            "duration_ms": {"type": "number", "minimum": 0, "maximum": MAX_NOOP_MS},
        },
    }


def _submission() -> Schema:
    return _obj(
        ["type", "input"],
        type=_enum(SUBMITTABLE_TYPES),
        input=_task_input(),
        priority={**_priority(), "default": DEFAULT_PRIORITY},
        params=_ref("TaskParams"),
    )


def _error_schema() -> Schema:
    return _obj(
        ["error"],
        error=_obj(
            ["code", "message"],
            code=_enum(ERROR_CODES),
            message={"type": "string"},
            details={"type": "object"},
        ),
    )


# ---------------------------------------------------------------------- component schemas
def _task_schemas() -> dict[str, Schema]:
    state = _enum(TaskState)
    return {
        "TaskParams": params_schema(),
        "HistoryEntry": _obj(
            ["state", "attempt", "at"],
            state=state,
            node=_NULL_STR,
            attempt={"type": "integer"},
            at={"type": "integer"},
            note={"type": "string"},
        ),
        "Task": _obj(
            ["id", "type", "state", "priority", "owner", "submitted_at", "attempt", "history"],
            id={"type": "string"},
            type=_enum(TaskType),
            input={"type": "object"},
            params=_ref("TaskParams"),
            priority=_priority(),
            owner={"type": "string"},
            submitted_at={"type": "integer", "description": "ms since the epoch"},
            state=state,
            node=_NULL_STR,
            attempt={"type": "integer"},
            max_attempts={"type": "integer"},
            started_at=_NULL_INT,
            finished_at=_NULL_INT,
            not_before={"type": "integer"},
            progress={"type": "number"},
            progress_note={"type": "string"},
            result={
                "description": "qa: answer, citations (Citation), grounding (Grounding), "
                "passages, timings, models"
            },
            error=_NULL_STR,
            abort_requested={"type": "boolean"},
            history=_array(_ref("HistoryEntry")),
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
                f"({_KEY_HOURS} hours)",
            },
        ),
        "TaskSummary": _obj(
            ["id", "type", "state", "priority", "owner", "submitted_at"],
            id={"type": "string"},
            type=_enum(TaskType),
            state=state,
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
            items=_array({"anyOf": [_ref("TaskSummary"), _ref("Task")]}),
            next_cursor=_NULL_STR,
            total={"type": "integer"},
        ),
        "Submission": _submission(),
    }


def _stats_schemas() -> dict[str, Schema]:
    states = [str(s) for s in TaskState]
    histogram = _array({"type": "integer"})
    return {
        "Percentiles": _obj(
            ["count"], p50=_NULL_INT, p95=_NULL_INT, p99=_NULL_INT, count={"type": "integer"}
        ),
        "Stats": _obj(
            [*states, "by_node", "throughput", "wait_ms", "run_ms"],
            **{s: {"type": "integer"} for s in states},
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
            t=histogram,
            step_ms={"type": "integer"},
            states={"type": "object", "additionalProperties": histogram},
            latency=_obj(
                ["edges_ms", "wait", "run"],
                edges_ms=histogram,
                wait=histogram,
                run=histogram,
                window={"type": "string"},
            ),
        ),
    }


def _cluster_schemas() -> dict[str, Schema]:
    return {
        "Node": _obj(
            ["id", "status", "running"],
            id={"type": "string"},
            api_url={
                **_NULL_STR,
                "description": "where clients reach this node's API: the URL it publishes "
                "(RAGRAFT_API_URL / nodes.api_url), else its host and api_port",
            },
            dashboard_url={**_NULL_STR, "description": "its dashboard, likewise"},
            raft_address=_NULL_STR,
            gossip_address=_NULL_STR,
            status={"type": "string", "description": "alive | suspect | dead"},
            status_since_unix_ms=_NULL_INT,
            raft_role=_NULL_STR,
            slots=_NULL_INT,
            running=_strings(),
            draining={
                "type": "boolean",
                "description": "no new tasks are granted to it (`ragraft node drain`)",
            },
            format={
                **_NULL_INT,
                "description": "the newest log format it reads, as it announces in gossip",
            },
            metrics={"type": "object"},
        ),
        "Drain": _obj(
            ["node", "draining", "running", "drained", "leader"],
            node={"type": "string"},
            draining={"type": "boolean"},
            running={**_strings(), "description": "its tasks still running"},
            drained={"type": "boolean", "description": "nothing runs on it any more"},
            leader=_NULL_STR,
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
                voters=_strings(),
                learners=_strings(),
                addresses={"type": "object"},
            ),
            quorum={"type": "boolean"},
            format=_obj(
                ["in_use", "newest", "voters"],
                in_use={
                    "type": "integer",
                    "description": "the newest log format every voter reads: what is written",
                },
                newest={"type": "integer", "description": "the newest this node reads"},
                voters={
                    "type": "object",
                    "additionalProperties": _NULL_INT,
                    "description": "what each voter announced (null: not heard from yet)",
                },
            ),
        ),
        "Ready": _obj(
            ["ready", "leader"],
            ready={"type": "boolean"},
            leader=_NULL_STR,
            accounts={"type": "boolean", "description": "the accounts are set up: logins work"},
            models={
                "type": "object",
                "description": "this node's models (state, step): reported, not required",
            },
            insecure={
                "type": "array",
                "items": {"type": "string"},
                "description": "only on a cluster with insecure = true: what is unprotected",
            },
        ),
    }


def _kb_schemas() -> dict[str, Schema]:
    return {
        "Document": _obj(
            ["id", "title", "version", "state", "size", "tags", "enabled", "chunk_count"],
            id={"type": "string"},
            title={"type": "string"},
            source={"type": "string"},
            media_type={"type": "string"},
            version={"type": "integer"},
            size={"type": "integer"},
            tags=_strings(),
            enabled={"type": "boolean"},
            state=_enum(get_args(DocState)),
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
    }


def _auth_schemas() -> dict[str, Schema]:
    return {
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
            expires_at={**_NULL_INT, "description": "ms since the epoch; null: never"},
            scope=_enum(KeyScope),
            key={"type": "string", "description": "shown once, at creation"},
        ),
        "Quota": _quota(),
        "User": _obj(
            ["name", "role", "disabled", "quota"],
            name={"type": "string", "pattern": USER_NAME_PATTERN},
            role=_enum(UserRole),
            disabled={"type": "boolean"},
            builtin={"type": "boolean", "description": "the built-in admin"},
            created_at={"type": "integer"},
            updated_at={"type": "integer"},
            quota=_ref("Quota"),
        ),
    }


def _quota() -> Schema:
    def limit(high: int, what: str) -> Schema:
        return {"type": ["integer", "null"], "minimum": 0, "maximum": high, "description": what}

    return {
        "type": "object",
        "additionalProperties": False,
        "description": "enforced where commands are applied; null: no limit",
        "properties": {
            "max_queued": limit(MAX_QUOTA_TASKS, "tasks waiting at once (429 quota_exceeded)"),
            "max_running": limit(MAX_QUOTA_TASKS, "tasks running at once (others wait)"),
            "max_priority": limit(PRIORITY_MAX, "the highest priority allowed (403 above)"),
        },
    }


def _answer_schemas() -> dict[str, Schema]:
    """What a qa result says of where its answer comes from (node/rag/grounding.py)."""
    return {
        "Citation": _obj(
            ["n", "doc_id", "chunk", "source", "sentence", "supported"],
            n={"type": "integer", "description": "the passage's number in `passages`"},
            doc_id={"type": "string"},
            chunk={"type": "integer"},
            title=_NULL_STR,
            source=_enum(["model", "attributed"]),
            sentence={"type": "integer", "description": "index in grounding.sentences"},
            span={
                "type": ["array", "null"],
                "items": {"type": "integer"},
                "description": "[start, end): the supporting text, offsets in the passage",
            },
            quote=_NULL_STR,
            score={"type": ["number", "null"], "description": "support, 0 to 1"},
            supported={
                "type": "boolean",
                "description": "false: the model cited a passage that does not support it",
            },
        ),
        "Grounding": _obj(
            ["mode", "score", "supported", "unsupported", "extractive", "sentences"],
            mode=_enum(GroundingMode),
            score={
                "type": ["number", "null"],
                "description": "share of the checked sentences some passage supports",
            },
            supported={"type": "integer"},
            unsupported={"type": "integer"},
            extractive={
                "type": "boolean",
                "description": "strict, nothing supported: the answer is the passages' sentences",
            },
            sentences=_array(
                _obj(
                    ["start", "end", "checked", "supported", "citations"],
                    start={"type": "integer", "description": "offsets in the answer"},
                    end={"type": "integer"},
                    checked={
                        "type": "boolean",
                        "description": "false: too few content words to need support",
                    },
                    supported={"type": ["boolean", "null"]},
                    citations={**_array({"type": "integer"}), "description": "indexes"},
                )
            ),
            attribution_ms={"type": "number"},
        ),
    }


def schemas() -> dict[str, Schema]:
    """components.schemas of the document."""
    return {
        "Error": _error_schema(),
        **_answer_schemas(),
        **_task_schemas(),
        **_stats_schemas(),
        **_cluster_schemas(),
        **_kb_schemas(),
        **_auth_schemas(),
    }


SCHEMAS: dict[str, Schema] = schemas()


# ---------------------------------------------------------------------- idempotency
def _idempotency_key() -> Schema:
    """The header: the client's name for one logical submission, the same on every retry."""
    return {
        "name": idempotency.HEADER,
        "in": "header",
        "required": False,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": idempotency.MAX_KEY_CHARS,
            "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
        },
        "description": f"1-{idempotency.MAX_KEY_CHARS} printable ASCII characters (e.g. a "
        "uuid4 hex), chosen by the client for one logical submission and sent again on every "
        f"retry, to any node: a repeat by the same user within {_KEY_HOURS} hours answers with "
        "what the first request created (same task id, same status) instead of creating it "
        "again. The same key with a different request is refused (422 idempotency_mismatch); "
        "a malformed key is a 400 (bad_idempotency_key).",
    }


def _replayable(response: Schema) -> Schema:
    replayed = {
        "description": f'"true" when this answer replays an earlier request with the same '
        f"{idempotency.HEADER}",
        "schema": {"const": "true"},
    }
    return {**response, "headers": {idempotency.REPLAYED_HEADER: replayed}}


# ---------------------------------------------------------------------- paths
def _health_paths() -> dict[str, Schema]:
    liveness = _obj(["status"], status={"const": "ok"}, node={"type": "string"})
    text = {
        "description": "text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "/healthz": {
            "get": _op(
                "liveness",
                {"200": _json(liveness, "the process runs")},
                tag="health",
                public=True,
            )
        },
        "/readyz": {
            "get": _op(
                "readiness: this node serves logins, reads and writes (a leader is known, the "
                "accounts are set up); the models are reported in the body",
                {
                    "200": _json(_ref("Ready"), "ready"),
                    "503": _json(_ref("Ready"), "not ready yet: no leader, or no accounts yet"),
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
        "/metrics": {"get": _op("Prometheus metrics", {"200": text}, tag="health", public=True)},
    }


def _auth_paths() -> dict[str, Schema]:
    login = _obj(["username", "password"], username={"type": "string"}, password={"type": "string"})
    caller = _obj(["user", "role"], user={"type": "string"}, role=_enum(UserRole))
    new_key = _obj(
        [],
        label={"type": "string"},
        user={"type": "string"},
        scope={
            **_enum(KeyScope),
            "description": "read: GET only; submit: reads and task submission, cancel, "
            "retry and chat; admin (the default): all its user may do",
        },
        expires_in_s={
            "type": "integer",
            "minimum": MIN_KEY_TTL_S,
            "maximum": MAX_KEY_TTL_S,
            "description": "left out: the key never expires",
        },
    )
    return {
        "/api/v1/auth/token": {
            "post": _op(
                "log in",
                {
                    "200": _json(_ref("Token"), "a bearer token"),
                    "400": _error("not JSON"),
                    "401": _error("wrong username or password"),
                    "413": _error("body too large"),
                    "422": _error("missing field"),
                    "429": _error(
                        "too many failed logins for the user or from the address within a "
                        f"minute (too_many_attempts; {LOGIN_FAILURES_PER_USER} per user, "
                        f"{LOGIN_FAILURES_PER_ADDRESS} per address, on each node): "
                        "see Retry-After"
                    ),
                    "503": _error("the cluster is still setting up its admin account"),
                },
                tag="auth",
                public=True,
                body=_body(login),
            )
        },
        "/api/v1/auth/me": {
            "get": _op("who the token belongs to", {"200": _json(caller, "the caller")}, tag="auth")
        },
        "/api/v1/auth/keys": {
            "post": _op(
                "create an API key (shown once)",
                {
                    "201": _json(_ref("ApiKey"), "the new key"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin, or a key whose scope is not admin"),
                    "413": _error("body too large"),
                    "422": _error("unknown user, scope or expires_in_s out of range"),
                    "503": _error("no quorum"),
                },
                tag="auth",
                body=_body(new_key, required=False),
            ),
            "get": _op(
                "the caller's API keys (all, for an admin)",
                {
                    "200": _json(
                        _obj(["items"], items=_array(_ref("ApiKey"))), "keys without secrets"
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
    }


def _user_paths() -> dict[str, Schema]:
    password: Schema = {
        "type": "string",
        "minLength": MIN_PASSWORD_CHARS,
        "maxLength": MAX_PASSWORD_CHARS,
    }
    new_user = {
        **_obj(
            ["name", "password"],
            name={"type": "string", "pattern": USER_NAME_PATTERN},
            password=password,
            role={**_enum(UserRole), "description": "user (the default), editor or admin"},
            quota=_ref("Quota"),
        ),
        "additionalProperties": False,
    }
    change = {
        **_obj(
            [],
            password=password,
            current_password={
                "type": "string",
                "description": "required when users change their own password",
            },
            role=_enum(UserRole),
            disabled={"type": "boolean"},
            quota=_ref("Quota"),
        ),
        "additionalProperties": False,
        "minProperties": 1,
    }
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "user name",
    }
    return {
        "/api/v1/users": {
            "get": _op(
                "every user (admins only)",
                {
                    "200": _json(_obj(["items"], items=_array(_ref("User"))), "users"),
                    "403": _error("not an admin"),
                },
                tag="users",
            ),
            "post": _op(
                "create a user (admins only)",
                {
                    "201": _json(_ref("User"), "the new user"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "409": _error("the name is taken"),
                    "413": _error("body too large"),
                    "422": _error("a bad name, password, role or quota, or an unknown field"),
                    "503": _error("no quorum"),
                },
                tag="users",
                body=_body(new_user),
            ),
        },
        "/api/v1/users/{name}": {
            "get": _op(
                "a user (yourself, or anyone for an admin)",
                {"200": _json(_ref("User"), "the user"), "404": _error("no such user")},
                tag="users",
                parameters=[name],
            ),
            "patch": _op(
                "change a role, quota, password or disable a user (yourself: only the "
                "password, with current_password)",
                {
                    "200": _json(_ref("User"), "the user as changed"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin, or a wrong current_password"),
                    "404": _error("no such user"),
                    "413": _error("body too large"),
                    "422": _error("a bad value or an unknown field"),
                    "503": _error("no quorum"),
                },
                tag="users",
                body=_body(change),
                parameters=[name],
            ),
            "delete": _op(
                "delete a user and their API keys (admins only)",
                {
                    "200": _json({"type": "object"}, "deleted"),
                    "403": _error("not an admin"),
                    "404": _error("no such user"),
                    "422": _error("the built-in admin, or yourself"),
                    "503": _error("no quorum"),
                },
                tag="users",
                parameters=[name],
            ),
        },
    }


def _task_list_parameters() -> list[Schema]:
    states = ", ".join(TaskState)
    types = ", ".join(TaskType)
    sorts = [*SORTS, *(f"-{k}" for k in SORTS)]
    page = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
    return [
        _query("state", {"type": "string"}, f"comma-separated states among {states}"),
        _query("type", {"type": "string"}, f"comma-separated task types among {types}"),
        _query("node", {"type": "string"}, "node that runs or ran the task"),
        _query("owner", {"type": "string"}, "owner (admins only; users always see their own)"),
        _query("priority", _priority(), "exact priority"),
        _query(
            "q", {"type": "string", "maxLength": 200}, "text in id, query, owner, node or error"
        ),
        _query("since", {"type": "integer", "minimum": 0}, "submitted at or after (ms)"),
        _query("until", {"type": "integer", "minimum": 0}, "submitted before (ms)"),
        _query("sort", _enum(sorts), "sort key; - for descending"),
        _query("limit", page, "page size (default 50)"),
        _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
        _query("full", _enum(["0", "1", "true", "false"]), "whole tasks instead of summaries"),
    ]


def _task_paths() -> dict[str, Schema]:
    task_id = [_path_id("task id")]
    task = _json(_ref("Task"), "the task")
    submitted = _json(
        {"anyOf": [_ref("Task"), _ref("ExpiredReplay")]},
        "the task (with Idempotent-Replayed: true, the one an earlier request with the same "
        "Idempotency-Key created; ExpiredReplay once that task's record has expired)",
    )
    return {
        "/api/v1/tasks": {
            "post": _op(
                "submit a task",
                {
                    "201": _replayable(submitted),
                    "400": _error("not JSON, or a malformed Idempotency-Key (bad_idempotency_key)"),
                    "413": _error("body too large"),
                    "422": _error(
                        "invalid field (details.field names it), or idempotency_mismatch: the "
                        "Idempotency-Key was used for a different request (details.task_id)"
                    ),
                    "503": _error("no quorum"),
                },
                tag="tasks",
                body=_body(_ref("Submission")),
                parameters=[_idempotency_key()],
            ),
            "get": _op(
                "list tasks",
                {
                    "200": _json(_ref("TaskList"), "a page"),
                    "400": _error("a cursor this API did not return (bad_cursor)"),
                    "422": _error("bad parameter"),
                },
                tag="tasks",
                parameters=_task_list_parameters(),
            ),
        },
        "/api/v1/tasks/{id}": {
            "get": _op(
                "a task with its result and history",
                {"200": task, "404": _error("unknown")},
                tag="tasks",
                parameters=task_id,
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
                parameters=task_id,
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
                parameters=task_id,
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
                parameters=task_id,
            )
        },
    }


def _cluster_paths() -> dict[str, Schema]:
    # (the bounds node/http/tasks.py checks on GET /api/v1/stats/history)
    minutes = {"type": "integer", "minimum": 1, "maximum": 1440}
    points = {"type": "integer", "minimum": 2, "maximum": 500}
    node_history = _obj(
        ["period_s", "nodes"],
        period_s={"type": ["number", "null"]},
        nodes={"type": "object", "additionalProperties": {"type": "object"}},
    )
    member = _obj(
        ["id", "raft_address"],
        id={"type": "string", "minLength": 1, "maxLength": 64},
        raft_address={
            "type": "string",
            "pattern": "^tcp://(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9._-]+):[0-9]{1,5}$",
            "description": "tcp://HOST:PORT, the new node's host and raft_port",
        },
        curve_public_key={
            "type": "string",
            "minLength": 40,
            "maxLength": 40,
            "description": "the new node's CURVE public key (z85; its node-<id>.key): "
            "required for a node the bundle does not name, when each node has its own key",
        },
    )
    join = _obj(
        ["token", "id", "raft_address", "curve_public_key"],
        token={"type": "string", "description": "from POST /api/v1/cluster/join-tokens"},
        id=member["properties"]["id"],
        raft_address=member["properties"]["raft_address"],
        curve_public_key=member["properties"]["curve_public_key"],
    )
    new_token = {
        **_obj(
            [],
            expires_in_s={
                "type": "integer",
                "minimum": MIN_JOIN_TOKEN_TTL_S,
                "maximum": MAX_JOIN_TOKEN_TTL_S,
                "default": DEFAULT_JOIN_TOKEN_TTL_S,
            },
            node={"type": "string", "description": "only a node of this id may use it"},
        ),
        "additionalProperties": False,
    }
    token = _obj(
        ["id", "expires_at"],
        id={"type": "string"},
        token={"type": "string", "description": "shown once, at creation"},
        created_at={"type": "integer"},
        expires_at={"type": "integer"},
        by={"type": "string"},
        node=_NULL_STR,
        used_by=_NULL_STR,
        used_at=_NULL_INT,
    )
    return {
        "/api/v1/stats": {
            "get": _op(
                "counts, throughput and latency percentiles",
                {"200": _json(_ref("Stats"), "statistics")},
                tag="cluster",
            )
        },
        "/api/v1/stats/history": {
            "get": _op(
                "tasks per state at evenly spaced instants over the last minutes, and wait/run "
                "time histograms of the tasks that finished then (rebuilt from the task records)",
                {
                    "200": _json(_ref("StatsHistory"), "history"),
                    "422": _error("minutes or points out of range"),
                },
                tag="cluster",
                parameters=[
                    _query("minutes", minutes, "window (default 10)"),
                    _query("points", points, "instants (default 60)"),
                ],
            )
        },
        "/api/v1/nodes/history": {
            "get": _op(
                "every node's recent CPU, memory and GPU use and slots used, as this node's "
                "gossip saw them",
                {"200": _json(node_history, "history")},
                tag="cluster",
            )
        },
        "/api/v1/nodes": {
            "get": _op(
                "every node: gossip status, Raft role, metrics, slots, running tasks",
                {"200": _json(_obj(["items"], items=_array(_ref("Node"))), "nodes")},
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
                    "413": _error("body too large"),
                    "422": _error("a missing or malformed id or raft_address"),
                    "503": _error("no leader"),
                },
                tag="cluster",
                body=_body(member),
            )
        },
        "/api/v1/cluster/join-tokens": {
            "post": _op(
                "make a join token (single use, expiring; shown once); admins only",
                {
                    "201": _json(token, "the token"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "409": _error("the cluster shares one key pair: no tokens"),
                    "413": _error("body too large"),
                    "422": _error("expires_in_s out of range, a bad node id or unknown field"),
                    "503": _error("no quorum"),
                },
                tag="cluster",
                body=_body(new_token, required=False),
            ),
            "get": _op(
                "join tokens, without secrets; admins only",
                {
                    "200": _json(_obj(["items"], items=_array(token)), "tokens"),
                    "403": _error("not an admin"),
                },
                tag="cluster",
            ),
        },
        "/api/v1/cluster/join": {
            "post": _op(
                "join with a token: the node's key is admitted, the node added as a learner "
                "(a voter once caught up), and the cluster's shared secrets returned sealed "
                "with a key made from the token",
                {
                    "202": _json(
                        _obj(
                            ["node", "sealed"], node={"type": "string"}, sealed={"type": "string"}
                        ),
                        "admitted",
                    ),
                    "400": _error("not JSON"),
                    "403": _error("the token is unknown, expired, used or for another node"),
                    "409": _error("the key is another node's, or the cluster shares one pair"),
                    "413": _error("body too large"),
                    "422": _error("a missing or malformed field"),
                    "503": _error("no leader"),
                },
                tag="cluster",
                public=True,
                body=_body(join),
            )
        },
        "/api/v1/nodes/{id}/drain": {
            "post": _op(
                "drain a node for maintenance: no new tasks for it, wait up to wait_s for its "
                "running ones, then move the leadership away if it leads; admins only",
                {
                    "200": _json(_ref("Drain"), "draining (drained: nothing runs on it)"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "404": _error("no such node"),
                    "409": _error("not every voter reads the log format of the command yet"),
                    "413": _error("body too large"),
                    "422": _error("wait_s out of range, or an unknown field"),
                    "503": _error("no quorum, or the leadership did not move"),
                },
                tag="cluster",
                parameters=[_path_id("node id")],
                body=_body(
                    {
                        "type": "object",
                        "properties": {
                            "wait_s": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": DRAIN_WAIT_MAX_S,
                                "default": DRAIN_WAIT_DEFAULT_S,
                            }
                        },
                        "additionalProperties": False,
                    },
                    required=False,
                ),
            )
        },
        "/api/v1/nodes/{id}/resume": {
            "post": _op(
                "let a drained node take tasks again; admins only",
                {
                    "200": _json(_ref("Drain"), "taking tasks"),
                    "403": _error("not an admin"),
                    "404": _error("no such node"),
                    "409": _error("not every voter reads the log format of the command yet"),
                    "503": _error("no quorum"),
                },
                tag="cluster",
                parameters=[_path_id("node id")],
            )
        },
        "/api/v1/cluster/backup": {
            "get": _op(
                "the whole replicated state (tasks, knowledge base with its indexes, users, "
                "API keys) as a backup file for `ragraft restore`: a consistent cut at one log "
                "index, taken after a read barrier; sealed with the cluster's encryption key; "
                "admins only (an API key needs the admin scope)",
                {
                    "200": {
                        "description": "the backup file: RAGRAFT-BACKUP, a JSON header (cluster, "
                        "index, term, summary), the sealed state",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "403": _error("not an admin, or an API key without the admin scope"),
                    "503": _error("no quorum: the cut could not be made consistent"),
                },
                tag="cluster",
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
    }


def _upload_body() -> Schema:
    text = _obj(
        ["text"],
        text={"type": "string", "minLength": 1},
        title={"type": "string"},
        id={"type": "string"},
        media_type=_enum([MEDIA_TEXT, MEDIA_MARKDOWN, MEDIA_HTML]),
        tags=_strings(MAX_TAGS),
    )
    files = {
        "type": "object",
        "properties": {
            "file": _array({"type": "string", "format": "binary"}),
            "tags": {"type": "string"},
            "title": {"type": "string"},
            "id": {"type": "string"},
        },
    }
    return {
        "required": True,
        "content": {JSON: {"schema": text}, "multipart/form-data": {"schema": files}},
    }


def _upload_responses() -> dict[str, Schema]:
    accepted = _obj(
        ["documents", "tasks"],
        documents=_array({"type": ["object", "null"]}),
        tasks=_array({"anyOf": [_ref("Task"), _ref("ExpiredReplay")]}),
    )
    return {
        "202": _replayable(
            _json(
                accepted,
                "accepted; ingest tasks queued (with an Idempotency-Key, file i is keyed by the "
                'key, i = 0, or "<key>#<i>"; a replayed file\'s entries say "replayed", and '
                "Idempotent-Replayed: true when every file was a replay)",
            )
        ),
        "400": _error("not JSON, or a malformed Idempotency-Key"),
        "403": _error("replacing needs an admin"),
        "413": _error("file or body too large"),
        "422": _error(
            "invalid or empty, or idempotency_mismatch (the key was used for another request)"
        ),
        "503": _error("no quorum"),
    }


def _search_parameters() -> list[Schema]:
    """A search takes a retrieve task's retrieval parameters in its URL (top_k as k;
    lists comma-separated), checked against the same bounds."""
    spec = _SPECS
    return [
        _query("q", {"type": "string", "minLength": 1}, "the query", required=True),
        _query("k", param_value(spec["top_k"]), "how many"),
        _query("mode", param_value(spec["mode"]), "retrieval mode"),
        _query("min_score", param_value(spec["min_score"]), "score threshold"),
        _query("tags", {"type": "string"}, "comma-separated tags"),
        _query("doc_ids", {"type": "string"}, "comma-separated document ids"),
    ]


def _kb_paths() -> dict[str, Schema]:
    doc_id = [_path_id("document id")]
    documents = _obj(["items", "total"], items=_array(_ref("Document")), total={"type": "integer"})
    passages = _obj(
        ["query", "passages"],
        query={"type": "string"},
        passages=_array(_ref("Passage")),
        timings={"type": "object"},
        models={"type": "object"},
    )
    kb_stats = _obj(
        ["documents", "chunks", "digest"],
        documents={"type": "integer"},
        chunks={"type": "integer"},
        digest={"type": "string"},
    )
    return {
        "/api/v1/kb/documents": {
            "post": _op(
                "upload documents (multipart files, or JSON {title, text})",
                _upload_responses(),
                tag="knowledge base",
                body=_upload_body(),
                parameters=[_idempotency_key()],
            ),
            "get": _op(
                "documents",
                {"200": _json(documents, "documents")},
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
                parameters=doc_id,
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
                parameters=doc_id,
            ),
            "patch": _op(
                "enable or disable a document; admins only",
                {
                    "200": _json({"type": "object"}, "changed"),
                    "400": _error("not JSON"),
                    "403": _error("not an admin"),
                    "404": _error("unknown"),
                    "413": _error("body too large"),
                    "422": _error("enabled missing"),
                    "503": _error("no quorum"),
                },
                tag="knowledge base",
                parameters=doc_id,
                body=_body(_obj(["enabled"], enabled={"type": "boolean"})),
            ),
        },
        "/api/v1/kb/search": {
            "get": _op(
                "ranked passages now, from this node's index",
                {
                    "200": _json(passages, "passages"),
                    "422": _error("bad parameter"),
                    "503": _error("models still loading"),
                },
                tag="knowledge base",
                parameters=_search_parameters(),
            )
        },
        "/api/v1/kb/stats": {
            "get": _op(
                "knowledge-base counts, index digest, model status",
                {"200": _json(kb_stats, "statistics")},
                tag="knowledge base",
            )
        },
    }


def _sse_event(names: list[str] | None = None) -> Schema:
    """One server-sent event: its name and its data line (JSON text, or [DONE])."""
    event: Schema = {"type": "string"}
    if names is not None:
        event = {"enum": [*names, "resync"]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": event, "data": {"type": "string"}, "id": {"type": "string"}},
    }


def _openai_error(description: str) -> Schema:
    """An error in OpenAI's format ({"error": {message, type, param, code}})."""
    return _json({"type": "object"}, description)


def _chat_body() -> Schema:
    spec = _SPECS
    message = _obj(
        ["role", "content"],
        role=_enum(["system", "user", "assistant"]),
        content={"type": "string"},
    )
    # the task parameters under OpenAI's names, narrowed to OpenAI's own bounds
    chat = _obj(
        ["model", "messages"],
        model=_enum(MODELS),
        messages={**_array(message), "minItems": 1},
        max_tokens=param_value(spec["max_new_tokens"]),
        temperature={**param_value(spec["temperature"]), "maximum": OPENAI_MAX_TEMPERATURE},
        top_p=param_value(spec["top_p"]),
        stream={"type": "boolean"},
        stop=_stop(OPENAI_MAX_STOP),
        seed=param_value(spec["seed"]),
    )
    return _body(chat)


def _chat_responses() -> dict[str, Schema]:
    completion = _obj(
        ["id", "object", "choices"],
        id={"type": "string"},
        object={"type": "string"},
        choices={"type": "array"},
        usage={"type": "object"},
        ragraft=_obj(
            ["task_id"],
            task_id={"type": "string"},
            node=_NULL_STR,
            citations={
                **_array(_ref("Citation")),
                "description": "where the answer comes from (an extra field: OpenAI clients "
                "ignore it)",
            },
            grounding={"anyOf": [_ref("Grounding"), {"type": "null"}]},
            passages={"type": "array"},
        ),
    )
    answered = {
        "description": "a chat.completion, or a text/event-stream of chunks with stream: true",
        "content": {
            JSON: {"schema": completion},
            "text/event-stream": {"schema": _sse_event()},
        },
    }
    return {
        "200": _replayable(answered),
        "400": _openai_error("bad request, or a malformed Idempotency-Key (OpenAI error format)"),
        "404": _openai_error("unknown model"),
        "409": _openai_error(
            "the task this Idempotency-Key submitted has expired (code idempotency_key_expired)"
        ),
        "413": _openai_error("body too large (code too_large)"),
        "422": _openai_error(
            "the Idempotency-Key was used for a different request (code idempotency_mismatch), "
            "or an integer outside 64 bits (code invalid)"
        ),
        "502": _openai_error("the task failed"),
        "503": _openai_error("no quorum"),
        "504": _openai_error("timed out"),
    }


def _openai_paths() -> dict[str, Schema]:
    models = _obj(
        ["object", "data"],
        object={"const": "list"},
        data=_array(_obj(["id"], id={"type": "string"})),
    )
    return {
        "/v1/models": {
            "get": _op(
                f"OpenAI-compatible: the models ({', '.join(MODELS)})",
                {"200": _json(models, "models")},
                tag="openai",
            )
        },
        "/v1/chat/completions": {
            "post": _op(
                "OpenAI-compatible chat: the last user message becomes a qa (or generate) task; "
                "with an Idempotency-Key, a retry follows the task the first request submitted, "
                "and a client that hangs up does not cancel it",
                _chat_responses(),
                tag="openai",
                body=_chat_body(),
                parameters=[_idempotency_key()],
            )
        },
    }


def _event_paths() -> dict[str, Schema]:
    stream = {
        "description": "an event stream (endless unless max_s is given)",
        "content": {"text/event-stream": {"schema": _sse_event(["hello", *EVENT_TYPES])}},
    }
    types = f"comma-separated, among {', '.join(EVENT_TYPES)}"
    return {
        "/api/v1/events": {
            "get": _op(
                "server-sent events: task, kb, node and cluster changes",
                {"200": stream, "422": _error("unknown event type, or max_s out of range")},
                tag="events",
                parameters=[
                    _query("types", {"type": "string"}, types),
                    _query(
                        "access_token", {"type": "string"}, "the token, for EventSource clients"
                    ),
                    _query(
                        "max_s",
                        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_FOLLOW_S},
                        "end the stream after this many seconds (default: follow for ever)",
                    ),
                ],
            )
        },
    }


def _paths() -> dict[str, Schema]:
    return {
        **_health_paths(),
        **_auth_paths(),
        **_user_paths(),
        **_task_paths(),
        **_cluster_paths(),
        **_kb_paths(),
        **_openai_paths(),
        **_event_paths(),
    }


def document(extra_paths: dict[str, Schema] | None = None) -> Schema:
    """The whole document; `extra_paths`: routes registered outside this module's
    knowledge (node/http/cluster.py passes its `extra_paths`)."""
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
