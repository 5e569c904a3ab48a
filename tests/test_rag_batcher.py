"""node/rag/batcher.py: concurrent tasks' generations share one backend call."""

from __future__ import annotations

import threading
import time

from node.rag.batcher import GenerationBatcher
from node.rag.generation import GenRequest, GenResult


class RecordingBackend:
    """Isolates the batcher from the model: records each batch it is given."""

    model_id = "recording"
    context_tokens = 2048

    def __init__(self, delay: float = 0.05) -> None:
        self.batches: list[int] = []
        self.delay = delay

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, requests, cancelled=None):
        self.batches.append(len(requests))
        time.sleep(self.delay)
        return [GenResult(f"answer to {r.prompt}", 1, 1, self.delay, "stop") for r in requests]


def test_concurrent_requests_become_one_batch_and_keep_their_answers():
    backend = RecordingBackend()
    batcher = GenerationBatcher(backend, max_batch=8, window_s=0.1)
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = batcher.generate(GenRequest(prompt=f"q{i}")).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"answer to q{i}" for i in range(4)}
    assert backend.batches == [4]
    batcher.close()


def test_a_cancelled_request_returns_at_once():
    backend = RecordingBackend(delay=2.0)
    batcher = GenerationBatcher(backend, window_s=0.01)
    flag = threading.Event()
    threading.Timer(0.2, flag.set).start()
    started = time.monotonic()
    result = batcher.generate(GenRequest(prompt="slow", cancelled=flag.is_set))
    assert result.finish_reason == "cancelled"
    assert time.monotonic() - started < 1.0
    batcher.close()
