"""The words and limits every layer shares, defined once.

Task states and types, search modes, user roles, and the task parameters with
their bounds.  The HTTP API validates submissions with `TaskParams.parse`, the
OpenAPI document is generated from `PARAMS` and the enums, the chat route and
the engine use the same limits, and the dashboard, the TUI and the CLI name
states and types through these enums (StrEnum: they compare equal to the
strings that travel in JSON).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


# What a retry may start again (a new task of the same owner).
RETRYABLE_STATES = frozenset({TaskState.FAILED, TaskState.CANCELLED})


FINISHED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)  # in this order


class TaskType(enum.StrEnum):
    QA = "qa"
    GENERATE = "generate"
    RETRIEVE = "retrieve"
    INGEST = "ingest"  # made by uploads, never submitted directly
    NOOP = "noop"  # waits input.duration_ms: for tests, demos and benchmarks

    @property
    def submittable(self) -> bool:
        return self is not TaskType.INGEST

    @property
    def text_field(self) -> str | None:
        """The input field that holds the task's text (query or prompt)."""
        return _TEXT_FIELD.get(self)


_TEXT_FIELD = {TaskType.QA: "query", TaskType.RETRIEVE: "query", TaskType.GENERATE: "prompt"}
SUBMITTABLE_TYPES = tuple(t for t in TaskType if t.submittable)
# Types that need the models loaded; a node still loading them claims only the others.
MODEL_TYPES = (TaskType.QA, TaskType.GENERATE, TaskType.RETRIEVE, TaskType.INGEST)


class SearchMode(enum.StrEnum):
    VECTOR = "vector"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


class GroundingMode(enum.StrEnum):
    """What a `qa` answer does with sentences no retrieved passage supports."""

    ANNOTATE = "annotate"  # keep them, marked unsupported
    STRICT = "strict"  # drop them; nothing left: an extractive answer from the passages


class UserRole(enum.StrEnum):
    ADMIN = "admin"  # everything: users, keys of anyone, every task, the cluster
    EDITOR = "editor"  # tasks, and changing the knowledge base every answer retrieves from
    USER = "user"  # tasks only (their own); reads the knowledge base through answers


# Roles that may add, replace, enable, disable and delete documents.
KB_WRITERS = frozenset({UserRole.ADMIN, UserRole.EDITOR})

# A user name: what logs, metrics and URLs can carry without escaping.
USER_NAME_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"
MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS = 8, 1024
# A user's quotas; 0..these for max_queued and max_running, None for no limit.
MAX_QUOTA_TASKS = 1_000_000


class KeyScope(enum.StrEnum):
    """What an API key may do, within what its user may do."""

    READ = "read"  # GET and HEAD only
    SUBMIT = "submit"  # reads, and submitting, cancelling and retrying tasks (chat too)
    ADMIN = "admin"  # everything its user may do (keys made before scopes existed)


MAX_KEY_TTL_S = 10 * 365 * 24 * 3600  # an API key's expires_in_s: at most ten years
MIN_KEY_TTL_S = 60
# A join token's expires_in_s: it admits one node, soon (default an hour, at most a week).
MIN_JOIN_TOKEN_TTL_S, MAX_JOIN_TOKEN_TTL_S, DEFAULT_JOIN_TOKEN_TTL_S = 60, 7 * 24 * 3600, 3600


# A running task reports through these (the executor gives them to its runner,
# the runner to the engine): progress(fraction 0..1, note) and cancelled() -> True
# once an abort was committed or the task was taken away from this node.
ProgressFn = Callable[[float, str], None]
CancelledFn = Callable[[], bool]


# ---------------------------------------------------------------------- limits
MAX_TEXT_CHARS = 8000  # a query or a prompt
# A task's whole input as JSON (UTF-8): room for the longest text in any script, not for
# megabytes that every node would replicate, store and keep in memory.
MAX_INPUT_BYTES = 64 * 1024
MAX_NEW_TOKENS = 2048
MAX_TOP_K = 100
MAX_STOP_STRINGS = 8
MAX_NOOP_MS = 3_600_000
PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = 0, 9, 5
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000  # a submission's key is remembered this long
# JSON request bodies, as node/http/body.py reads them.  The login route is public, so
# what a stranger can make a node buffer stays small (the key route shares the bound).
MAX_AUTH_BODY_BYTES = 64 * 1024
# Failed logins allowed per window on each node, before 429 (node/http/throttle.py).
LOGIN_WINDOW_S = 60
LOGIN_FAILURES_PER_USER = 10
LOGIN_FAILURES_PER_ADDRESS = 30
MAX_JSON_BODY_BYTES = 1024 * 1024  # any other JSON body (a task's text is a few KiB)
MAX_JSON_DEPTH = 64  # nested arrays and objects; json.loads recurses once per level
# What msgpack (the log's codec) and JSON clients keep exactly: a signed 64-bit integer.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Latency buckets of /api/v1/stats/history, in milliseconds: each count is of values
# >= edge[i] and < edge[i + 1] (the dashboard draws its axis before the first answer).
LATENCY_EDGES_MS = (
    0,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
)


class InvalidField(ValueError):
    """Bad input from a client: `field` names it (params.top_k, input.query, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------- quotas
QUOTA_FIELDS = ("max_queued", "max_running", "max_priority")


@dataclass(frozen=True, slots=True)
class Quota:
    """A user's limits, enforced where their commands are applied (so every replica
    decides alike): tasks waiting, tasks running at once, the highest priority they may
    give.  None: no limit."""

    max_queued: int | None = None
    max_running: int | None = None
    max_priority: int | None = None

    @classmethod
    def parse(cls, raw: Any, base: Quota | None = None) -> Quota:
        """From a JSON object (a field set to null lifts that limit; one left out keeps
        `base`'s); raises InvalidField naming the bad field."""
        if not isinstance(raw, dict):
            raise InvalidField("quota", "quota must be an object of " + ", ".join(QUOTA_FIELDS))
        unknown = sorted(set(raw) - set(QUOTA_FIELDS))
        if unknown:
            raise InvalidField(
                f"quota.{unknown[0]}",
                f"unknown quota {unknown[0]!r}: use {', '.join(QUOTA_FIELDS)}",
            )
        values = {name: getattr(base, name) if base else None for name in QUOTA_FIELDS}
        for name, value in raw.items():
            high = PRIORITY_MAX if name == "max_priority" else MAX_QUOTA_TASKS
            if value is not None and (type(value) is not int or not 0 <= value <= high):
                raise InvalidField(
                    f"quota.{name}", f"quota.{name} must be a whole number 0-{high}, or null"
                )
            values[name] = value
        return cls(**values)

    def to_json(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in QUOTA_FIELDS}


NO_QUOTA = Quota()


def quota_text(quota: dict[str, int | None]) -> str:
    """A quota (its JSON form) in words for people: "queued ≤ 5, priority ≤ 6"."""
    parts = [f"{name.removeprefix('max_')} ≤ {v}" for name, v in quota.items() if v is not None]
    return ", ".join(parts) or "none"


# ---------------------------------------------------------------------- task parameters
@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One task parameter: its JSON type, bounds and meaning (the OpenAPI document
    is generated from these)."""

    name: str
    kind: str  # "integer", "number", "mode", "strings", "stop"
    doc: str
    low: float | None = None
    high: float | None = None


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("top_k", "integer", "passages to retrieve", 1, MAX_TOP_K),
    ParamSpec("mode", "mode", "retrieval mode (default: the cluster's [rag] mode)"),
    ParamSpec("min_score", "number", "drop passages scoring below this", -1e9, 1e9),
    ParamSpec("doc_ids", "strings", "retrieve only from these documents"),
    ParamSpec("tags", "strings", "retrieve only from documents with one of these tags"),
    ParamSpec("max_new_tokens", "integer", "most new tokens to generate", 1, MAX_NEW_TOKENS),
    ParamSpec("temperature", "number", "sampling temperature (0: greedy)", 0.0, 5.0),
    ParamSpec("top_p", "number", "nucleus sampling", 1e-6, 1.0),
    ParamSpec("stop", "stop", f"a string, or at most {MAX_STOP_STRINGS}, that end generation"),
    ParamSpec("seed", "integer", "sampling seed", 0, 2**63 - 1),
    ParamSpec(
        "grounding",
        "grounding",
        "qa: annotate (default) marks the sentences no passage supports; strict drops them "
        "and, if nothing is left, answers with the passages' own sentences",
    ),
)
_SPECS = {spec.name: spec for spec in PARAMS}


@dataclass(frozen=True, slots=True)
class TaskParams:
    """What a task may be told besides its input; None: the cluster's default."""

    top_k: int | None = None
    mode: SearchMode | None = None
    min_score: float | None = None
    doc_ids: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    grounding: GroundingMode | None = None  # (log format 3)

    @classmethod
    def parse(cls, raw: Any) -> TaskParams:
        """Validate a client's `params` object; InvalidField names what is wrong
        (an unknown parameter too)."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidField("params", "params must be an object")
        unknown = sorted(set(raw) - set(_SPECS))
        if unknown:
            raise InvalidField(
                f"params.{unknown[0]}",
                f"unknown parameter params.{unknown[0]}; known: {', '.join(_SPECS)}",
            )
        values = {name: _parse_param(_SPECS[name], value) for name, value in raw.items()}
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_wire(self) -> dict[str, Any]:
        """The parameters that are set, as JSON/msgpack values."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> TaskParams:
        """From a logged command (checked again: the log is input too)."""
        return cls.parse(raw)

    @classmethod
    def lenient(cls, raw: Any) -> TaskParams:
        """From a record the previous release stored whole, unchecked: what does not
        validate (an unknown name, a value out of range) is dropped."""
        if not isinstance(raw, dict):
            return cls()
        kept = {}
        for name, value in raw.items():
            try:
                cls.parse({name: value})
            except InvalidField:
                continue
            kept[name] = value
        return cls.parse(kept)


def _parse_param(spec: ParamSpec, value: Any) -> Any:
    field = f"params.{spec.name}"
    if value is None:
        return None
    if spec.kind in ("integer", "number"):
        whole = spec.kind == "integer"
        ok = isinstance(value, int) if whole else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (not whole and not math.isfinite(value)):
            ok = False
        assert spec.low is not None and spec.high is not None
        if not ok or not spec.low <= value <= spec.high:
            what = "a whole number" if whole else "a number"
            raise InvalidField(field, f"{field} must be {what} from {spec.low:g} to {spec.high:g}")
        return int(value) if whole else float(value)
    if spec.kind in ("mode", "grounding"):
        kind = SearchMode if spec.kind == "mode" else GroundingMode
        try:
            return kind(value)
        except ValueError:
            raise InvalidField(
                field, f"{field} must be one of {', '.join(m.value for m in kind)}"
            ) from None
    if spec.kind == "stop" and isinstance(value, str):
        value = [value]
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise InvalidField(field, f"{field} must be a list of strings")
    if spec.kind == "stop" and len(value) > MAX_STOP_STRINGS:
        raise InvalidField(field, f"{field} may hold at most {MAX_STOP_STRINGS} strings")
    return tuple(value)
