"""OpenAI-compatible routes, so existing clients (the `openai` package, LangChain's
ChatOpenAI) can use the cluster: `POST /v1/chat/completions` and `GET /v1/models`.

A chat request becomes a task in the replicated queue — `qa` for the model
"ragraft-qa" (retrieval over the knowledge base, answer with citations), `generate`
for "ragraft-generate" — and is answered when that task finishes, in OpenAI's
format.  The last user message is the query; earlier turns are not used (the
engine answers single questions).  The engine does not stream tokens, so a
streamed answer sends its role at once, keep-alive comments while the task waits
and runs, then the answer.  A client that disconnects cancels its task, unless
the request carried an `Idempotency-Key`: then the task goes on, and a retry
with the same key (on any node, within 24 hours) waits for that same task
instead of submitting another; such an answer carries `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgpack
from aiohttp import web

from consensus.errors import RaftError
from node import idempotency
from node.ids import new_task_id, now_ms

MODELS = {"ragraft-qa": "qa", "ragraft-generate": "generate"}
WAIT_LIMIT_S = 600.0
_GONE = object()
POLL_S = 0.05


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


class OpenAIRoutes:
    def __init__(self, raft: Any, queue: Any) -> None:
        self.raft = raft
        self.queue = queue  # the local replica's TaskQueue

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
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON")
        try:
            task_type, query, params = _parse(body)
        except ValueError as exc:
            param = exc.args[1] if len(exc.args) > 1 else None
            status = 404 if param == "model" else 400
            return _error(
                status,
                str(exc.args[0]),
                param=param,
                code="model_not_found" if status == 404 else None,
            )
        fields = {
            "type": task_type,
            "priority": 5,
            "params": params,
            "input": {"query" if task_type == "qa" else "prompt": query},
        }
        cmd = {
            "op": "submit",
            "id": new_task_id(),
            "owner": request.get("user", "anonymous"),
            "at": now_ms(),
            **fields,
        }
        if key is not None:
            cmd.update(idem_key=key, fingerprint=idempotency.task_fingerprint(fields))
        try:
            applied = await self.raft.propose(msgpack.packb(cmd, use_bin_type=True))
        except RaftError as exc:
            return _error(
                503, f"the cluster cannot accept tasks right now: {exc}", kind="server_error"
            )
        result = applied.result
        if isinstance(result, dict) and isinstance(result.get("error"), dict):
            code = result["error"].get("code")
            status = 422 if code == "idempotency_mismatch" else 400
            return _error(
                status,
                result["error"]["message"],
                param=idempotency.HEADER if status == 422 else None,
                code=code if status == 422 else None,
            )
        replayed = isinstance(result, dict) and result.get("replayed") is True
        if replayed and result.get("expired"):
            return _error(
                409,
                f"the task this {idempotency.HEADER} submitted ({result['id']}) has expired: its "
                "answer is no longer kept; send the request with a new key",
                param=idempotency.HEADER,
                code="idempotency_key_expired",
            )
        # A replay follows the task the first request created, whoever proposed it.
        task_id, model = result["id"] if replayed else cmd["id"], body["model"]
        keep = key is not None  # a retry with the key may come back for this task
        if body.get("stream"):
            return await self._stream(
                request,
                task_id,
                model,
                bool((body.get("stream_options") or {}).get("include_usage")),
                replayed,
                keep,
            )
        task = await self._wait(task_id, request)
        if task is _GONE:  # the client went away: so does its task, unless it may retry
            if not keep:
                await self._cancel(task_id, request)
            return web.Response(status=499)
        if task is None:
            if not keep:
                await self._cancel(task_id, request)
            return _error(
                504,
                f"task {task_id} did not finish within {WAIT_LIMIT_S:.0f} s",
                kind="server_error",
            )
        if task.state != "completed":
            return idempotency.mark_replayed(
                _error(502, f"task {task_id} {task.state}: {task.error}", kind="server_error"),
                replayed,
            )
        return idempotency.mark_replayed(web.json_response(_completion(task, model)), replayed)

    async def _wait(self, task_id: str, request: web.Request, on_tick: Any = None) -> Any:
        """The finished task, None after WAIT_LIMIT_S, or _GONE when the client hung up
        (aiohttp does not cancel handlers on disconnect, so it is checked here)."""
        deadline = time.monotonic() + WAIT_LIMIT_S
        last = None
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                return _GONE
            task = self.queue.get(task_id)
            if task is not None and task.state in ("completed", "failed", "cancelled"):
                return task
            if on_tick is not None and task is not None and task.state != last:
                last = task.state
                await on_tick(task.state)
            await asyncio.sleep(POLL_S)
        return None

    async def _cancel(self, task_id: str, request: web.Request) -> None:
        task = self.queue.get(task_id)
        if task is None or task.state not in ("queued", "running"):
            return
        cmd = {"op": "abort", "id": task_id, "by": request.get("user", "anonymous"), "at": now_ms()}
        try:
            await asyncio.shield(self.raft.propose(msgpack.packb(cmd, use_bin_type=True)))
        except RaftError:
            pass  # best effort: the task finishes and its answer is simply not read

    async def _stream(
        self,
        request: web.Request,
        task_id: str,
        model: str,
        usage: bool,
        replayed: bool = False,
        keep: bool = False,
    ) -> web.StreamResponse:
        """`keep`: a client that hangs up does not cancel the task (it sent an idempotency key)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        idempotency.mark_replayed(response, replayed)
        await response.prepare(request)
        created = int(time.time())

        async def send(delta: dict, finish: str | None = None, extra: dict | None = None) -> None:
            chunk = {
                "id": f"chatcmpl-{task_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            chunk.update(extra or {})
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        async def tick(state: str) -> None:
            await response.write(f": {state}\n\n".encode())

        try:
            await send({"role": "assistant", "content": ""})
            task = await self._wait(task_id, request, tick)
            if task is _GONE:
                if not keep:
                    await self._cancel(task_id, request)
                return response
            if task is None or task.state != "completed":
                message = "timed out" if task is None else f"{task.state}: {task.error}"
                await response.write(
                    f"data: {json.dumps({'error': {'message': f'task {task_id} {message}', 'type': 'server_error'}})}\n\n".encode()
                )
            else:
                answer = task.result.get("answer", "")
                for start in range(0, len(answer), 64):
                    await send({"content": answer[start : start + 64]})
                done = _completion(task, model)
                await send({}, done["choices"][0]["finish_reason"], {"ragraft": done["ragraft"]})
                if usage:
                    chunk = {
                        "id": f"chatcmpl-{task_id}",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": done["usage"],
                    }
                    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            if not keep:
                await self._cancel(task_id, request)
            raise
        return response


def _parse(body: Any) -> tuple[str, str, dict]:
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object", None)  # noqa: TRY004 - chat() maps ValueError to a 400
    model = body.get("model")
    if model not in MODELS:
        raise ValueError(
            f"the model {model!r} does not exist; use one of {', '.join(MODELS)}", "model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list", "messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    if not isinstance(content, str) or not content.strip():
        raise ValueError("the last user message must have text content", "messages")
    params: dict[str, Any] = {}
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 2048:
            raise ValueError("max_tokens must be a whole number from 1 to 2048", "max_tokens")
        params["max_new_tokens"] = tokens
    for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 1e-6, 1.0)):
        if body.get(name) is not None:
            value = body[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not low <= value <= high
            ):
                raise ValueError(f"{name} must be a number from {low:g} to {high:g}", name)
            params[name] = float(value)
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise ValueError("stop must be a string or a list of up to 4 strings", "stop")
        params["stop"] = stop
    if (
        isinstance(body.get("seed"), int)
        and not isinstance(body.get("seed"), bool)
        and body["seed"] >= 0
    ):
        params["seed"] = body["seed"]
    return MODELS[model], content, params


def _completion(task: Any, model: str) -> dict:
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
            "passages": result.get("passages", []),
        },
    }
