"""Batches the generation requests of the tasks a node runs at the same time.

Each task runs in its own worker thread and calls `generate(request)`; one
batcher thread collects whatever arrived within a short window (or until the
batch is full) and runs it as a single `backend.generate` call, which on a CPU
or GPU costs little more than one request alone.  A task that is cancelled
while it waits or runs is answered at once; its row finishes with the batch.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from node.rag.generation import GenerationBackend, GenRequest, GenResult


class GenerationBatcher:
    def __init__(
        self, backend: GenerationBackend, max_batch: int = 8, window_s: float = 0.02
    ) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.window_s = window_s
        self._inbox: queue.Queue[tuple[GenRequest, Future[GenResult]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="generation-batcher", daemon=True)
        self._thread.start()
        self.batches = 0
        self.batched_requests = 0

    def generate(self, request: GenRequest, poll_s: float = 0.05) -> GenResult:
        """Blocking: the result of `request`, generated together with its neighbours."""
        done: Future[GenResult] = Future()
        self._inbox.put((request, done))
        while True:
            try:
                return done.result(timeout=poll_s)
            except TimeoutError:
                if request.cancelled is not None and request.cancelled():
                    return GenResult("", 0, 0, 0.0, "cancelled")

    def close(self) -> None:
        self._inbox.put(None)

    def _serve(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._inbox.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    self._inbox.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            live = []
            for request, fut in batch:
                if request.cancelled is not None and request.cancelled():
                    fut.set_result(GenResult("", 0, 0, 0.0, "cancelled"))
                else:
                    live.append((request, fut))
            if not live:
                continue
            self.batches += 1
            self.batched_requests += len(live)
            try:
                results = self.backend.generate([r for r, _ in live])
            except BaseException as exc:  # noqa: BLE001 - whatever it is, every waiting task gets it
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results):
                fut.set_result(result)
