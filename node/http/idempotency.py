"""Idempotency keys over HTTP: the `Idempotency-Key` request header and the
fingerprint of what it was sent with.

A client that may send a write twice (a timeout, a fail-over to another node)
names the logical submission with a key of its own, the same on every retry.
The proposing node checks the header, computes a short digest of the request
(its fingerprint) and puts both in the command (Submit, Upload); the task queue
(node/replica/tasks.py) remembers (owner, key) -> task for at least
IDEMPOTENCY_TTL_MS (24 hours) of command time and answers a repeat with the task
it already created.  The fingerprint is computed here, before the log, so that
applying stays cheap and deterministic; a repeat whose fingerprint differs is a
client bug (the same key for another request) and is refused as
`idempotency_mismatch`.

The CLI and the clients import this module for the header's name and new_key():
it imports no aiohttp at run time.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module and must not pay for aiohttp
    from aiohttp import web

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_CHARS}}}")


class BadKey(ValueError):
    """The header is present but not a usable key; str() says why."""


def new_key() -> str:
    """A key for one logical submission (our clients send it on every retry)."""
    return uuid.uuid4().hex


def from_request(request: web.Request) -> str | None:
    """The request's idempotency key, None without the header; BadKey if it is
    empty, too long, repeated or not printable ASCII."""
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise BadKey(f"send one {HEADER} header, not {len(values)}")
    return check(values[0])


def check(key: str) -> str:
    if not key:
        raise BadKey(
            f"the {HEADER} header is empty; send 1-{MAX_KEY_CHARS} printable ASCII characters"
        )
    if len(key) > MAX_KEY_CHARS:
        raise BadKey(
            f"the {HEADER} header has {len(key)} characters; at most {MAX_KEY_CHARS} are allowed"
        )
    if not _KEY.fullmatch(key):
        raise BadKey(
            f"the {HEADER} header may hold only printable ASCII characters "
            "(a uuid4 hex is a good key)"
        )
    return key


def fingerprint(kind: str, *parts: Any) -> str:
    """A short, stable digest of a request: canonical JSON (sorted keys), bytes as
    their SHA-256, so equal requests give equal prints on every node."""
    text = json.dumps(
        [kind, *parts], sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_bytes
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bytes(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def task_fingerprint(fields: Mapping[str, Any]) -> str:
    """The print of a task submission: what decides what the task does.  `fields`:
    type, input, params (in their wire form, TaskParams.to_wire()) and priority;
    POST /api/v1/tasks and the chat route give the same fields for the same task."""
    return fingerprint(
        "task",
        fields.get("type"),
        fields.get("input"),
        fields.get("params"),
        fields.get("priority"),
    )


def mark_replayed(response: web.StreamResponse, replayed: bool) -> web.StreamResponse:
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response
