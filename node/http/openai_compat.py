"""OpenAI-compatible routes, so existing clients (the `openai` package, LangChain's
ChatOpenAI) can use the cluster: `POST /v1/chat/completions` and `GET /v1/models`.

A chat request becomes a task in the replicated queue — `qa` for the model
"ragraft-qa" (retrieval over the knowledge base, answer with citations), `generate`
for "ragraft-generate" — submitted like any other (a `Submit` proposed through
node/http/errors.py) and answered when that task finishes, in OpenAI's format.
The last user message is the query; earlier turns are not used (the engine
answers single questions).  The engine does not stream tokens, so a streamed
answer sends its role at once, keep-alive comments while the task waits and
runs, then the answer.  A client that disconnects cancels its task, unless the
request carried an `Idempotency-Key`: then the task goes on, and a retry with
the same key (on any node, within 24 hours) waits for that same task instead of
submitting another; such an answer carries `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.http import errors, idempotency
from node.http.body import BadBody, read_json
from node.ids import new_task_id, now_ms
from node.replica import commands as c
from node.replica.refusal import RefusalCode
from node.replica.replica import Replica
from node.replica.tasks import Task
from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    MAX_JSON_BODY_BYTES,
    MAX_TEXT_CHARS,
    PARAMS,
    InvalidField,
    ParamSpec,
    TaskParams,
    TaskState,
    TaskType,
)

MODELS: dict[str, TaskType] = {"ragraft-qa": TaskType.QA, "ragraft-generate": TaskType.GENERATE}
WAIT_LIMIT_S = 600.0
POLL_S = 0.05
_SPECS = {spec.name: spec for spec in PARAMS}
# OpenAI's own bounds where they are narrower than the engine's: its API takes a
# temperature up to 2 and at most 4 stop strings, and a client written for it
# gets the same errors here.
OPENAI_MAX_TEMPERATURE = 2.0
OPENAI_MAX_STOP = 4

Tick = Callable[[TaskState], Awaitable[None]]


class ChatError(Exception):
    """A request the chat route refuses before proposing anything."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def response(self) -> web.Response:
        return _error(self.status, str(self), param=self.param, code=self.code)


class ClientGone(Exception):
    """The client hung up while its task was waiting or running."""


@dataclass(frozen=True, slots=True)
class Chat:
    """A parsed chat request: the task it asks for and how to answer it."""

    model: str
    type: TaskType
    text: str  # the last user message: the task's query or prompt
    params: TaskParams
    stream: bool
    include_usage: bool

    @property
    def input(self) -> dict[str, Any]:
        field = self.type.text_field
        assert field is not None
        return {field: self.text}


def _error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status
    )


def _openai_failure(failure: web.Response) -> web.Response:
    """The shared write path answers in the REST API's error format; an OpenAI client
    reads OpenAI's.  The status, the code and the message stay those errors.py chose."""
    assert isinstance(failure.body, bytes)
    raised = json.loads(failure.body)["error"]
    mismatch = raised["code"] == RefusalCode.IDEMPOTENCY_MISMATCH
    return _error(
        failure.status,
        raised["message"],
        kind="server_error" if failure.status >= 500 else "invalid_request_error",
        param=idempotency.HEADER if mismatch else None,
        code=raised["code"],
    )


class OpenAIRoutes:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica  # proposes the tasks; its state.tasks tells when they end

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "ragraft"}
                    for name in MODELS
                ],
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            key = idempotency.from_request(request)
        except idempotency.BadKey as exc:
            return _error(400, str(exc), param=idempotency.HEADER, code="bad_idempotency_key")
        try:
            # any JSON value: _parse answers one that is not an object, as OpenAI does
            body = await read_json(request, MAX_JSON_BODY_BYTES)
        except BadBody as exc:
            return _error(exc.status, str(exc), param=exc.field, code=exc.code)
        try:
            chat = _parse(body)
        except ChatError as exc:
            return exc.response()
        outcome = await errors.propose(self.replica, _submit(chat, request, key))
        if outcome.failure is not None:
            return _openai_failure(outcome.failure)
        task = outcome.result
        replayed = task.get("replayed") is True
        if replayed and task.get("expired"):
            return _error(
                409,
                f"the task this {idempotency.HEADER} submitted ({task['id']}) has expired: its "
                "answer is no longer kept; send the request with a new key",
                param=idempotency.HEADER,
                code="idempotency_key_expired",
            )
        # A replay follows the task the first request created, whoever proposed it.
        task_id = task["id"]
        keep = key is not None  # a retry with the key may come back for this task
        if chat.stream:
            return await self._stream(request, task_id, chat, replayed, keep)
        try:
            done = await self._wait(task_id, request)
        except ClientGone:  # the client went away: so does its task, unless it may retry
            if not keep:
                await self._cancel(task_id, request)
            return web.Response(status=499)
        if done is None:
            if not keep:
                await self._cancel(task_id, request)
            return _error(
                504,
                f"task {task_id} did not finish within {WAIT_LIMIT_S:.0f} s",
                kind="server_error",
            )
        if done.state != TaskState.COMPLETED:
            answer = _error(502, f"task {task_id} {done.state}: {done.error}", kind="server_error")
        else:
            answer = web.json_response(_completion(done, chat.model))
        idempotency.mark_replayed(answer, replayed)
        return answer

    async def _wait(
        self, task_id: str, request: web.Request, on_tick: Tick | None = None
    ) -> Task | None:
        """The finished task, or None after WAIT_LIMIT_S; raises ClientGone when the
        client hung up (aiohttp does not cancel handlers on disconnect, so it is
        checked here).  Reads this node's replica, where the task's end applies."""
        deadline = time.monotonic() + WAIT_LIMIT_S
        last: TaskState | None = None
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                raise ClientGone()
            task = self.replica.state.tasks.get(task_id)
            if task is not None and task.state.finished:
                return task
            if on_tick is not None and task is not None and task.state != last:
                last = task.state
                await on_tick(task.state)
            await asyncio.sleep(POLL_S)
        return None

    async def _cancel(self, task_id: str, request: web.Request) -> None:
        """Best effort: if the abort is refused or cannot commit, the task finishes
        and its answer is simply not read."""
        task = self.replica.state.tasks.get(task_id)
        if task is None or task.state.finished:
            return
        user = request.get("user", "anonymous")
        cmd = c.Abort(task_id, at=now_ms(), by=user, owner=user)  # the task is this user's
        # shielded: the handler may be cancelled while the abort is under way
        await asyncio.shield(errors.propose(self.replica, cmd))

    async def _stream(
        self, request: web.Request, task_id: str, chat: Chat, replayed: bool, keep: bool
    ) -> web.StreamResponse:
        """`keep`: a client that hangs up does not cancel the task (it sent an idempotency key)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        idempotency.mark_replayed(response, replayed)
        await response.prepare(request)
        created = int(time.time())

        async def event(data: Any) -> None:
            await response.write(f"data: {json.dumps(data)}\n\n".encode())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{task_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model,
                "choices": choices,
                **extra,
            }

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            await event(chunk([{"index": 0, "delta": delta, "finish_reason": finish}], **extra))

        async def tick(state: TaskState) -> None:
            await response.write(f": {state}\n\n".encode())

        try:
            await send({"role": "assistant", "content": ""})
            try:
                task = await self._wait(task_id, request, tick)
            except ClientGone:
                if not keep:
                    await self._cancel(task_id, request)
                return response
            if task is None or task.state != TaskState.COMPLETED:
                message = "timed out" if task is None else f"{task.state}: {task.error}"
                await event(
                    {"error": {"message": f"task {task_id} {message}", "type": "server_error"}}
                )
            else:
                answer = task.result.get("answer", "")
                for start in range(0, len(answer), 64):
                    await send({"content": answer[start : start + 64]})
                done = _completion(task, chat.model)
                await send({}, done["choices"][0]["finish_reason"], ragraft=done["ragraft"])
                if chat.include_usage:
                    await event(chunk([], usage=done["usage"]))
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            if not keep:
                await self._cancel(task_id, request)
            raise
        return response


def _submit(chat: Chat, request: web.Request, key: str | None) -> c.Submit:
    fingerprint = None
    if key is not None:
        # the same print as POST /api/v1/tasks takes of the same task
        fingerprint = idempotency.task_fingerprint(
            {
                "type": chat.type,
                "priority": DEFAULT_PRIORITY,
                "params": chat.params.to_wire(),
                "input": chat.input,
            }
        )
    return c.Submit(
        task_id=new_task_id(),
        type=chat.type,
        input=chat.input,
        params=chat.params,
        owner=request.get("user", "anonymous"),
        at=now_ms(),
        priority=DEFAULT_PRIORITY,
        idem_key=key,
        fingerprint=fingerprint,
    )


def _parse(body: Any) -> Chat:
    if not isinstance(body, dict):
        raise ChatError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or model not in MODELS:  # (a dict is not even hashable)
        raise ChatError(
            f"the model {model!r} does not exist; use one of {', '.join(MODELS)}",
            param="model",
            status=404,
            code="model_not_found",
        )
    options = body.get("stream_options")
    return Chat(
        model=model,
        type=MODELS[model],
        text=_last_user_text(body.get("messages")),
        params=_params(body),
        stream=bool(body.get("stream")),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
    )


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list", "messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    if not isinstance(content, str) or not content.strip():
        raise ChatError("the last user message must have text content", "messages")
    if len(content) > MAX_TEXT_CHARS:
        raise ChatError(
            f"the last user message is limited to {MAX_TEXT_CHARS} characters", "messages"
        )
    return content


def _params(body: dict[str, Any]) -> TaskParams:
    """OpenAI's sampling fields as task parameters, checked under OpenAI's names."""
    raw: dict[str, Any] = {}
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        raw["max_new_tokens"] = _number("max_tokens", tokens, _SPECS["max_new_tokens"])
    if body.get("temperature") is not None:
        raw["temperature"] = _number(
            "temperature", body["temperature"], _SPECS["temperature"], OPENAI_MAX_TEMPERATURE
        )
    if body.get("top_p") is not None:
        raw["top_p"] = _number("top_p", body["top_p"], _SPECS["top_p"])
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stop, list)
            or len(stop) > OPENAI_MAX_STOP
            or not all(isinstance(s, str) for s in stop)
        ):
            raise ChatError(
                f"stop must be a string or a list of up to {OPENAI_MAX_STOP} strings", "stop"
            )
        raw["stop"] = stop
    # OpenAI's seed is best effort: one this engine cannot use is ignored, not refused.
    seed, spec = body.get("seed"), _SPECS["seed"]
    if isinstance(seed, int) and not isinstance(seed, bool) and _within(seed, spec):
        raw["seed"] = seed
    try:
        return TaskParams.parse(raw)
    except InvalidField as exc:  # checked above; the one definition has the last word
        raise ChatError(str(exc), exc.field.removeprefix("params.")) from None


def _number(name: str, value: Any, spec: ParamSpec, high: float | None = None) -> int | float:
    """`value` checked against the parameter's bounds (narrowed to `high`), reported
    under OpenAI's `name`."""
    whole = spec.kind == "integer"
    assert spec.low is not None and spec.high is not None
    low, top = spec.low, min(spec.high, high) if high is not None else spec.high
    kinds: tuple[type[int | float], ...] = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= top:
        what = "a whole number" if whole else "a number"
        raise ChatError(f"{name} must be {what} from {low:g} to {top:g}", name)
    return int(value) if whole else float(value)


def _within(value: int, spec: ParamSpec) -> bool:
    assert spec.low is not None and spec.high is not None
    return spec.low <= value <= spec.high


def _completion(task: Task, model: str) -> dict[str, Any]:
    result = task.result if isinstance(task.result, dict) else {}
    timings = result.get("timings") or {}
    prompt, new = int(timings.get("prompt_tokens") or 0), int(timings.get("new_tokens") or 0)
    return {
        "id": f"chatcmpl-{task.id}",
        "object": "chat.completion",
        "created": int(task.submitted_at / 1000),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.get("answer", "")},
                "finish_reason": "length" if result.get("finish_reason") == "length" else "stop",
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new},
        "ragraft": {
            "task_id": task.id,
            "node": task.node,
            "citations": result.get("citations", []),
            "grounding": result.get("grounding"),
            "passages": result.get("passages", []),
        },
    }
