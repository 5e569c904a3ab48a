"""Reading a JSON request body within bounds: its size, its nesting, its integers.

Every route that takes a JSON body reads it here rather than with
`request.json()`, which buffers the whole body up to the app's client_max_size
(sized for uploads), lets json.loads recurse once per nesting level (a deep body
is a RecursionError, a 500), reads NaN and Infinity (not JSON), and hands on
integers that msgpack, the log's codec, cannot encode (a 500 when the command is
proposed) or that no JSON client reads exactly.  A refused body raises BadBody
before anything is proposed; it answers in the API's error format
(node/http/errors.py), with the codes the routes used already: 413 too_large,
400 bad_json, 422 invalid.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from aiohttp import web

from node.http.errors import error
from node.replica.vocabulary import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH


class BadBody(Exception):
    """A request body refused before it was parsed into a command."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, details

    @property
    def field(self) -> str | None:
        field = self.details.get("field")
        return field if isinstance(field, str) else None

    def response(self) -> web.Response:
        return error(self.status, self.code, str(self), **self.details)


async def read_json_object(request: web.Request, limit: int, hint: str = "") -> dict[str, Any]:
    """The body as a JSON object of at most `limit` bytes.  `hint` (what to send)
    ends the message of a body that is not JSON or not an object."""
    value = await read_json(request, limit, hint)
    if not isinstance(value, dict):
        raise BadBody(422, "invalid", _hinted("the body must be a JSON object", hint), field="body")
    return value


async def read_json(request: web.Request, limit: int, hint: str = "") -> Any:
    """The body as any JSON value, within the bounds (for a route that answers a
    body that is not an object in its own way)."""
    raw = await read_bounded(request, limit)
    try:
        text = raw.decode(request.charset or "utf-8")
    except (LookupError, UnicodeDecodeError):  # an unknown charset, or bytes not in it
        raise BadBody(400, "bad_json", _hinted("the body is not valid JSON text", hint)) from None
    # Counted before json.loads, which would recurse into the nesting this refuses.
    depth = nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise BadBody(
            400,
            "bad_json",
            f"the body nests arrays and objects {depth} deep; at most {MAX_JSON_DEPTH}",
            max_depth=MAX_JSON_DEPTH,
        )
    wide: list[str] = []

    def parse_int(digits: str) -> int | _Wide:
        number = _parse_int(digits)
        if number is _WIDE:
            wide.append(digits)
        return number

    try:
        value = json.loads(text, parse_int=parse_int, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise BadBody(
            400, "bad_json", _hinted(f"the body is not valid JSON ({exc})", hint)
        ) from None
    if wide:  # found while parsing; only now is the body walked, to name the field
        field = _wide_path(value)
        raise BadBody(
            422,
            "invalid",
            f"{field} is an integer outside the signed 64-bit range "
            f"({INT64_MIN} to {INT64_MAX}), which this API cannot store",
            field=field,
        )
    return value


def _refuse_constant(name: str) -> float:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such values,
    and a NaN compares unequal to itself (a parameter check it passes means nothing)."""
    raise ValueError(f"{name} is not a JSON value")


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The raw body, of at most `limit` bytes; never more than limit + 1 is buffered."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)  # refused before a byte of it is read
    # A chunked body declares no length: read up to one byte past the limit, no further.
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def _too_large(limit: int) -> BadBody:
    return BadBody(
        413,
        "too_large",
        f"the body is larger than this route accepts ({limit} bytes)",
        limit_bytes=limit,
    )


def _hinted(message: str, hint: str) -> str:
    return f"{message}; {hint}" if hint else message


# ---------------------------------------------------------------------- nesting
# A JSON string, its escapes included.  One that never closes runs to the end of the
# text (then the body is not JSON, and json.loads says so).  It cannot fail once it
# starts, and its quantifiers are possessive: one pass, no backtracking, whatever the
# body holds.
_STRING = re.compile(r'"[^"\\]*+(?:\\.?[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text`, counting brackets outside strings;
    a scan, not a recursion.  Exact for valid JSON; for text that is not, at least
    as deep as json.loads could recurse before it finds the error."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets)), default=0))


# ---------------------------------------------------------------------- integers
class _Wide:
    """Stands in for an integer outside 64 bits while the body is parsed.  One of
    thousands of digits is never converted: int() would refuse it (past 4300
    digits), and the client would be told its body is not JSON."""

    __slots__ = ()


_WIDE = _Wide()


def _parse_int(digits: str) -> int | _Wide:
    length = len(digits.lstrip("-"))
    if length <= 18:  # fits in 64 bits: the common case, converted at once
        return int(digits)
    if length > 19:  # at least 10**19 > 2**63 (JSON has no leading zeros)
        return _WIDE
    number = int(digits)
    return number if INT64_MIN <= number <= INT64_MAX else _WIDE


def _wide_path(value: Any) -> str:
    """The path (input.n, messages[0].seed) of the first integer outside 64 bits, in
    the order of the document."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if item is _WIDE:
            return path or "body"
        if isinstance(item, dict):
            children = [(f"{path}.{k}" if path else k, v) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))
    return "body"  # not reached: the parse found one
