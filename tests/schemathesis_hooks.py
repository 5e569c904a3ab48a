"""schemathesis hooks for the throw-away cluster run (tests/test_openapi_every_route.py),
loaded through SCHEMATHESIS_HOOKS.

- `unavailable_is_not_a_server_error`: a 5xx fails, except a 503 whose JSON error is
  one of the documented "try another node or later" codes, which a cluster being taken
  apart by the run itself (members removed, no models on these nodes) answers honestly;
- the event stream is asked for a bounded follow (max_s), so that its answer ends;
- a chat asks for one new token: the route is what is under test, not the model.
"""

from __future__ import annotations

from typing import Any

import schemathesis

UNAVAILABLE = frozenset({"no_quorum", "no_leader", "models_not_ready", "initialising"})


@schemathesis.check
def unavailable_is_not_a_server_error(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 500:
        return
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if response.status_code == 503 and code in UNAVAILABLE:
        return
    raise AssertionError(
        f"{case.operation.label} answered {response.status_code} {code}: a server error"
    )


@schemathesis.hook
def map_query(ctx: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if ctx.operation.path == "/api/v1/events":
        return {**(query or {}), "max_s": 0.5}
    return query


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if ctx.operation.path == "/v1/chat/completions" and isinstance(body, dict):
        return {**body, "max_tokens": 1}
    return body
