"""Generation backends and prompts, with the real bundled SmolLM2-135M-Instruct.

The model is converted from its GGUF once per module into a fresh cache directory
(the cold path), then loaded again from that cache.  A missing model is a failure,
not a skip: node.models raises with the install hint.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from node.models import generator_gguf
from node.rag.generation import (
    GenerationError,
    GenRequest,
    OpenAIBackend,
    TransformersBackend,
    load_backend,
    resolve_device,
)
from node.rag.prompts import (
    ContextTooSmallError,
    build_generate_prompt,
    build_qa_prompt,
    map_citations,
    parse_citations,
)

BUNDLED = "bundled:SmolLM2-135M-Instruct"


def ask(question: str, **kwargs: Any) -> GenRequest:
    return GenRequest(messages=({"role": "user", "content": question},), **kwargs)


@dataclass(frozen=True)
class Loaded:
    backend: TransformersBackend
    seconds: float
    progress: list[str]
    cache_dir: Path


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    cache_dir = tmp_path_factory.mktemp("model-cache")
    steps: list[str] = []
    started = time.perf_counter()
    backend = TransformersBackend.load(BUNDLED, cache_dir=cache_dir, progress=steps.append)
    return Loaded(backend, time.perf_counter() - started, steps, cache_dir)


@pytest.fixture(scope="module")
def backend(cold: Loaded) -> TransformersBackend:
    return cold.backend


# --------------------------------------------------------------------------- local model


def test_loads_and_answers(backend: TransformersBackend) -> None:
    assert backend.model_id == "SmolLM2-135M-Instruct"
    assert backend.context_tokens == 8192
    request = ask("What is the capital of France?", max_new_tokens=24)
    [result] = backend.generate([request])
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert 0 < result.new_tokens < 24
    assert result.prompt_tokens == backend.count_request_tokens(request)
    assert result.seconds > 0


def test_batch_of_four_equals_one_by_one(backend: TransformersBackend) -> None:
    # Different prompt lengths, so the batch is really left-padded.
    requests = [
        ask("What is 2 + 2?", max_new_tokens=8),
        ask("Name three primary colors.", max_new_tokens=8),
        ask(
            "In one sentence, why is the sky blue during the day and red at sunset?",
            max_new_tokens=10,
        ),
        ask("Say hello.", max_new_tokens=8, stop=("!",)),
    ]
    alone = [backend.generate([r])[0] for r in requests]
    together = backend.generate(requests)
    for a, b in zip(alone, together, strict=True):
        assert (a.text, a.new_tokens, a.prompt_tokens, a.finish_reason) == (
            b.text,
            b.new_tokens,
            b.prompt_tokens,
            b.finish_reason,
        )
    assert len({r.prompt_tokens for r in together}) > 1
    assert together[0].seconds == together[3].seconds  # one generate call


def test_stop_strings_are_trimmed(backend: TransformersBackend) -> None:
    request = ask("Name three primary colors.", max_new_tokens=14)
    [free] = backend.generate([request])
    words = free.text.split()
    assert len(words) >= 4, free.text
    stop = words[3]  # a word a few tokens in
    [stopped] = backend.generate(
        [ask("Name three primary colors.", max_new_tokens=14, stop=(stop,))]
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stop not in stopped.text
    assert 0 < stopped.new_tokens < free.new_tokens


def test_length_limit_and_token_counts(backend: TransformersBackend) -> None:
    assert backend.count_tokens("") == 0
    hello = backend.count_tokens("hello world")
    assert hello == len(backend.tokenizer("hello world", add_special_tokens=False)["input_ids"])
    assert backend.count_tokens("hello world " * 10) > hello
    [r] = backend.generate([ask("Write a long story about a dragon.", max_new_tokens=5)])
    assert r.finish_reason == "length"
    assert r.new_tokens == 5
    assert backend.count_tokens(r.text) <= 6


def test_cancellation_ends_the_batch_quickly(backend: TransformersBackend) -> None:
    started = time.perf_counter()
    answers: list[bool] = []

    def cancelled() -> bool:
        answers.append(time.perf_counter() - started > 0.2)
        return answers[-1]

    requests = [ask("Write a very long story about a dragon.", max_new_tokens=400)] * 2
    results = backend.generate(requests, cancelled)
    elapsed = time.perf_counter() - started
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
    # Generation ended at the first checkpoint after the flip (one every 4 tokens),
    # and the partial answer comes back.
    assert answers.count(True) == 1 and answers[-1]
    assert all(0 < r.new_tokens <= 4 * len(answers) for r in results)
    assert results[0].text
    assert elapsed < 10.0, elapsed  # ~1 s on 2 cores; other test runs share them
    # A cancel before generation starts costs nothing.
    [r] = backend.generate([requests[0]], lambda: True)
    assert (r.finish_reason, r.new_tokens, r.text) == ("cancelled", 0, "")


def test_one_request_cancelled_alone(backend: TransformersBackend) -> None:
    keep = ask("What is the capital of France?", max_new_tokens=12)
    drop = ask(
        "Write a very long story about a dragon.", max_new_tokens=400, cancelled=lambda: True
    )
    kept, dropped = backend.generate([keep, drop])
    assert "Paris" in kept.text and kept.finish_reason == "stop"
    assert dropped.finish_reason == "cancelled"
    assert dropped.new_tokens <= 4


def test_cache_load_is_faster_and_identical(cold: Loaded) -> None:
    assert "de-quantizing GGUF" in cold.progress
    assert any(s.startswith("saving cache") for s in cold.progress)
    assert cold.progress[-1].startswith("ready in")
    [cached_dir] = [p for p in cold.cache_dir.iterdir() if not p.name.startswith(".")]
    assert any(cached_dir.glob("*.safetensors"))

    steps: list[str] = []
    started = time.perf_counter()
    warm = TransformersBackend.load(BUNDLED, cache_dir=cold.cache_dir, progress=steps.append)
    warm_seconds = time.perf_counter() - started
    assert any(s.startswith("loading cached weights") for s in steps)
    assert "de-quantizing GGUF" not in steps
    assert warm_seconds < cold.seconds / 2, (warm_seconds, cold.seconds)
    print(f"\nload: cold {cold.seconds:.1f} s, from cache {warm_seconds:.1f} s")

    request = ask("Name three primary colors.", max_new_tokens=8)
    warm_text = warm.generate([request])[0].text
    assert warm_text == cold.backend.generate([request])[0].text
    assert warm.count_tokens("The quick brown fox") == cold.backend.count_tokens(
        "The quick brown fox"
    )
    assert warm.render(request) == cold.backend.render(request)

    # The same file named by path hits the same cache; the cache itself is a plain
    # Hugging Face model directory, the other kind of local spec.
    steps.clear()
    by_path = load_backend(
        str(generator_gguf().path), cache_dir=cold.cache_dir, progress=steps.append
    )
    assert any(s.startswith("loading cached weights") for s in steps)
    assert by_path.model_id == generator_gguf().name
    hf_dir = load_backend(str(cached_dir))
    assert isinstance(hf_dir, TransformersBackend) and hf_dir.model_id == cached_dir.name
    assert hf_dir.generate([request])[0].text == warm_text


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(GenerationError, match="no CUDA device"):
            resolve_device("cuda")


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class P:
    title: str | None
    text: str


def test_qa_prompt_is_truncated_to_the_budget(backend: TransformersBackend) -> None:
    sentence = "The lighthouse keeper counted the ships that passed the rocky northern cape. "
    passages = [P(f"Log {i}", f"Entry {i}. " + sentence * 12) for i in range(10)]
    messages, used = build_qa_prompt(
        "How many ships passed?", passages, backend, max_context_tokens=500, reserve_new_tokens=64
    )
    prompt_tokens = backend.count_request_tokens(GenRequest(messages=tuple(messages)))
    assert prompt_tokens + 64 <= 500
    assert prompt_tokens + 64 > 500 - 60  # the budget is used, not wasted
    assert 1 <= len(used) < len(passages)
    assert used == passages[: len(used)]  # lowest-ranked dropped first
    user = messages[1]["content"]
    assert f"[{len(used)}] Log {len(used) - 1}" in user and f"[{len(used) + 1}]" not in user
    assert user.rstrip().endswith("Question: How many ships passed?")
    assert "…" in user  # the last passage kept was cut
    assert "numbered passages" in messages[0]["content"] and "[1]" in messages[0]["content"]

    # With room for everything, nothing is dropped or cut.
    messages, used = build_qa_prompt("How many ships passed?", passages, backend)
    assert used == passages and "…" not in messages[1]["content"]

    with pytest.raises(ContextTooSmallError):
        build_qa_prompt(
            "How many ships passed?",
            passages,
            backend,
            max_context_tokens=100,
            reserve_new_tokens=90,
        )


def test_qa_answer_is_grounded_and_citations_map(backend: TransformersBackend) -> None:
    passages = [
        P("Zorblat", "The capital city of the island of Zorblat is Quenville."),
        P("Weather", "It rains often in autumn."),
    ]
    messages, used = build_qa_prompt(
        "What is the capital of Zorblat?", passages, backend, reserve_new_tokens=16
    )
    [r] = backend.generate([GenRequest(messages=tuple(messages), max_new_tokens=16)])
    assert "Quenville" in r.text
    for c in map_citations(r.text + " [1]", used):
        assert c.passage is used[c.n - 1]


def test_generate_prompt() -> None:
    messages, used = build_generate_prompt("Write a haiku about {braces}.")
    assert messages == [{"role": "user", "content": "Write a haiku about {braces}."}] and used == []
    passages = [P(None, "Cherry trees bloom in April.")]
    messages, used = build_generate_prompt("Write a haiku about {braces}.", passages)
    assert used == passages
    assert "[1] Cherry trees bloom in April." in messages[1]["content"]
    assert messages[1]["content"].endswith("Write a haiku about {braces}.")


def test_parse_citations() -> None:
    assert parse_citations("Paris [1].", 3) == [1]
    assert parse_citations("A [2, 1] and B [1][3]", 3) == [2, 1, 3]
    assert parse_citations("see [1;2] and [2-3]", 3) == [1, 2, 3]
    assert parse_citations("made up [7], year [2024], [0], [ 2 ]", 3) == [2]
    assert parse_citations("no citations here [a] []", 3) == []
    used = [P("a", "x"), P("b", "y")]
    cites = map_citations("y is true [2], x too [1] [5]", used)
    assert [(c.n, c.passage) for c in cites] == [(2, used[1]), (1, used[0])]


def test_request_validation() -> None:
    with pytest.raises(ValueError):
        GenRequest()
    with pytest.raises(ValueError):
        GenRequest(prompt="x", messages=({"role": "user", "content": "x"},))
    with pytest.raises(ValueError):
        GenRequest(prompt="x", max_new_tokens=0)
    with pytest.raises(ValueError):
        GenRequest(prompt="x", top_p=0.0)
    assert GenRequest(prompt="x", stop=("", "END")).stop == ("END",)


# --------------------------------------------------------------------------- OpenAI-compatible


class FakeChatServer(ThreadingHTTPServer):
    """Mimics /v1/chat/completions on 127.0.0.1: echoes the last message back."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeChatHandler)
        self.seen: list[tuple[dict[str, Any], str | None]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class FakeChatHandler(BaseHTTPRequestHandler):
    server: FakeChatServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up on a slow answer, as tested
            pass

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((payload, self.headers.get("Authorization")))
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        model = payload["model"]
        if model == "missing":
            self._send(
                404,
                {
                    "error": {
                        "message": "model 'missing' not found",
                        "type": "invalid_request_error",
                    }
                },
            )
            return
        if model == "crash":
            self._send(500, {"error": "out of memory"})
            return
        if model == "slow":
            time.sleep(1.5)
        content = "echo: " + payload["messages"][-1]["content"] + " STOP and more"
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "length" if payload["max_tokens"] < 5 else "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            },
        )


@pytest.fixture()
def chat_server() -> Iterator[FakeChatServer]:
    server = FakeChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_openai_backend_roundtrip(
    chat_server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGRAFT_TEST_KEY", "sk-local")
    backend = load_backend(f"openai:{chat_server.base_url}#tiny", api_key_env="RAGRAFT_TEST_KEY")
    assert isinstance(backend, OpenAIBackend) and backend.model_id == "tiny"
    requests = [
        ask("hi", max_new_tokens=16, temperature=0.5, top_p=0.9, stop=("STOP",), seed=3),
        GenRequest(prompt="raw", max_new_tokens=2),
    ]
    first, second = backend.generate(requests)
    assert first.text == "echo: hi " and first.finish_reason == "stop"
    assert (first.prompt_tokens, first.new_tokens) == (11, 7)
    assert second.finish_reason == "length"
    payloads = sorted((p for p, _ in chat_server.seen), key=lambda p: p["max_tokens"], reverse=True)
    assert payloads[0]["model"] == "tiny"
    assert payloads[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert (payloads[0]["max_tokens"], payloads[0]["temperature"], payloads[0]["top_p"]) == (
        16,
        0.5,
        0.9,
    )
    assert payloads[0]["stop"] == ["STOP"] and payloads[0]["seed"] == 3
    assert payloads[1]["messages"] == [{"role": "user", "content": "raw"}]
    assert {auth for _, auth in chat_server.seen} == {"Bearer sk-local"}
    assert backend.count_tokens("x" * 30) >= 8  # a conservative estimate


def test_openai_backend_errors(chat_server: FakeChatServer) -> None:
    with pytest.raises(GenerationError, match="HTTP 404: model 'missing' not found"):
        OpenAIBackend(chat_server.base_url, "missing").generate([ask("hi")])
    with pytest.raises(GenerationError, match="HTTP 500: out of memory"):
        OpenAIBackend(chat_server.base_url, "crash").generate([ask("hi")])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        GenerationError,
        match=f"cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}",
    ):
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", "tiny", timeout=5).generate([ask("hi")])
    with pytest.raises(GenerationError, match="within"):
        OpenAIBackend(chat_server.base_url, "slow", timeout=0.3).generate([ask("hi")])


def test_openai_backend_cancellation(chat_server: FakeChatServer) -> None:
    backend = OpenAIBackend(chat_server.base_url, "slow")
    started = time.perf_counter()
    [r] = backend.generate([ask("hi")], lambda: time.perf_counter() - started > 0.2)
    assert r.finish_reason == "cancelled"
    assert time.perf_counter() - started < 1.0  # did not wait for the 1.5 s answer


def test_backend_specs() -> None:
    with pytest.raises(GenerationError, match="openai:<base_url>#<model>"):
        load_backend("openai:http://127.0.0.1:1/v1")
    with pytest.raises(GenerationError, match="unknown bundled generator"):
        load_backend("bundled:GPT-5")
    with pytest.raises(GenerationError, match="no such file or directory"):
        load_backend("/nonexistent/model-dir")
