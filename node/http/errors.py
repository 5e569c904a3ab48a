"""The API's JSON error format, the one table from refusal codes to HTTP statuses,
and the one write path every route proposes through.

Every error answer is `{"error": {"code", "message", "details"}}`.  A route builds
its command as a dataclass and hands it to `propose`; whatever the outcome (the
result, a refusal of the state machine, no quorum) is mapped to an answer here,
so two routes never answer the same refusal differently.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from node.replica import commands as c
from node.replica.refusal import Refusal, RefusalCode, Refused
from node.replica.replica import NoQuorum, Replica

log = logging.getLogger("ragraft.http")

# The one table: what each refusal of the state machines answers over HTTP.
STATUS: dict[RefusalCode, int] = {
    RefusalCode.NOT_FOUND: 404,
    RefusalCode.CONFLICT: 409,
    RefusalCode.INVALID: 422,
    RefusalCode.BAD_COMMAND: 400,
    RefusalCode.STALE_ATTEMPT: 409,
    RefusalCode.IDEMPOTENCY_MISMATCH: 422,
    RefusalCode.FORBIDDEN: 403,
    RefusalCode.QUOTA_EXCEEDED: 429,
    RefusalCode.INTERNAL: 500,
}

# aiohttp's own refusals, named in the same format
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, **details: Any) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


def refusal_response(refusal: Refusal) -> web.Response:
    return error(STATUS[refusal.code], str(refusal.code), refusal.message, **refusal.details)


def no_quorum_response(exc: NoQuorum) -> web.Response:
    # A node cut off from the quorum refuses at once: clients and load balancers
    # move on to a node that can serve.  `written` tells a client whether a retry
    # needs its Idempotency-Key to be safe.
    return error(
        503,
        "no_quorum",
        f"{exc}; reads still work from this node's replica (possibly stale)",
        written=exc.written,
    )


class Outcome:
    """What `propose` got: the result, or the answer that reports why not."""

    __slots__ = ("failure", "result")

    def __init__(self, result: Any = None, failure: web.Response | None = None) -> None:
        self.result = result
        self.failure = failure

    @property
    def ok(self) -> bool:
        return self.failure is None


async def propose(replica: Replica, cmd: c.Command) -> Outcome:
    """Propose `cmd` and wait until it applied here; refusals and a missing quorum
    come back as the error answer to send."""
    try:
        return Outcome(await replica.propose(cmd))
    except Refused as exc:
        return Outcome(failure=refusal_response(exc.refusal))
    except NoQuorum as exc:
        return Outcome(failure=no_quorum_response(exc))


async def write(
    replica: Replica, cmd: c.Command, ok_status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Propose and answer: the result as JSON, or the error."""
    outcome = await propose(replica, cmd)
    if outcome.failure is not None:
        return outcome.failure
    return web.json_response(outcome.result, status=ok_status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
            413: (
                f"the body is larger than this node accepts ({request.app._client_max_size} bytes)"
            ),
        }.get(exc.status, exc.reason)
        return error(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(
            500,
            "internal",
            "an internal error happened on this node; it is logged. Retry, or use another node",
        )
