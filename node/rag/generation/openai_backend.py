"""`OpenAIBackend`: an OpenAI-compatible ``/chat/completions`` server.

vLLM, Ollama or llama.cpp, with the API key taken from the environment.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import time
import urllib.error
import urllib.request
from typing import Any

from node.rag.generation.types import (
    FinishReason,
    GenerationError,
    GenRequest,
    GenResult,
    trim_at_stop,
)
from node.replica.vocabulary import CancelledFn


class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` server (vLLM, Ollama, llama.cpp).

    Requests of a batch are sent concurrently (such servers batch them
    themselves).  Cancellation is checked while waiting: a cancelled call returns
    at once and its in-flight HTTP requests are abandoned (they end on the
    server's side or at ``timeout``).  Token counts come from the server's
    ``usage``; ``count_tokens`` is only an estimate, as the tokenizer is remote.
    """

    # Conservative characters-per-token for the estimate (English BPE is ~4).
    CHARS_PER_TOKEN = 3.0
    POLL_SECONDS = 0.1

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        context_tokens: int = 4096,
        max_concurrency: int = 4,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self._context_tokens = context_tokens
        self.max_concurrency = max_concurrency

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.CHARS_PER_TOKEN)

    def _payload(self, request: GenRequest) -> dict[str, Any]:
        messages = (
            [dict(m) for m in request.messages]
            if request.messages is not None
            else [{"role": "user", "content": request.prompt}]
        )
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": False,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        return payload

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:  # local servers usually need none
            headers["Authorization"] = f"Bearer {api_key}"
        req = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            raise GenerationError(
                f"the OpenAI-compatible server at {url} answered HTTP {e.code}: "
                f"{_server_message(e.read())}"
            ) from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise GenerationError(f"no answer from {url} within {self.timeout:g} s") from e
            raise GenerationError(
                f"cannot reach the OpenAI-compatible server at {url}: {e.reason}"
            ) from e
        except TimeoutError as e:
            raise GenerationError(f"no answer from {url} within {self.timeout:g} s") from e
        try:
            answer = json.loads(body)
        except ValueError as e:
            raise GenerationError(
                f"{url} answered with something that is not JSON: {body[:200]!r}"
            ) from e
        if not isinstance(answer, dict):
            raise GenerationError(f"{url} answered with unexpected JSON: {str(answer)[:200]}")
        return answer

    def _one(self, request: GenRequest) -> tuple[str, int | None, int | None, str | None]:
        answer = self._post(self._payload(request))
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise GenerationError(
                f"{self.base_url}/chat/completions answered without choices[0].message.content: "
                f"{json.dumps(answer)[:200]}"
            ) from e
        usage = answer.get("usage") or {}
        return (
            text,
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            choice.get("finish_reason"),
        )

    def _result(
        self,
        request: GenRequest,
        outcome: tuple[str, int | None, int | None, str | None],
        seconds: float,
    ) -> GenResult:
        text, prompt_tokens, new_tokens, server_reason = outcome
        # Servers trim stop strings themselves; trimming again covers those that do not.
        text, stopped = trim_at_stop(text, request.stop)
        reason: FinishReason = "length" if server_reason == "length" and not stopped else "stop"
        if prompt_tokens is None:
            prompt_tokens = sum(
                self.count_tokens(m["content"]) for m in self._payload(request)["messages"]
            )
        if new_tokens is None:
            new_tokens = self.count_tokens(text)
        return GenResult(text, int(prompt_tokens), int(new_tokens), seconds, reason)

    def generate(
        self, requests: list[GenRequest], cancelled: CancelledFn | None = None
    ) -> list[GenResult]:
        started = time.perf_counter()
        results: list[GenResult | None] = [None] * len(requests)

        def is_cancelled(i: int) -> bool:
            own = requests[i].cancelled
            return (cancelled is not None and cancelled()) or (own is not None and own())

        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(self.max_concurrency, len(requests))),
            thread_name_prefix="openai-generate",
        )
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(
                    pending,
                    timeout=self.POLL_SECONDS,
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                for future in done:
                    i = futures[future]
                    results[i] = self._result(
                        requests[i], future.result(), time.perf_counter() - started
                    )
                for future in list(pending):
                    i = futures[future]
                    if is_cancelled(i):
                        future.cancel()
                        pending.discard(future)
                        results[i] = GenResult("", 0, 0, time.perf_counter() - started, "cancelled")
        finally:
            # Do not wait for abandoned requests; they end at the server or at the timeout.
            pool.shutdown(wait=False, cancel_futures=True)
        return [r for r in results if r is not None]


def _server_message(body: bytes) -> str:
    """The error text of an OpenAI-style (``{"error": {"message"}}``) or Ollama-style body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail", parsed.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error:
            return str(error)[:500]
    return text[:500]
