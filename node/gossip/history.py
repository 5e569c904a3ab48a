"""Recent CPU, memory and GPU use of every node, as this node's gossip table saw it.

Each node samples its own table every few seconds and keeps the last several
minutes, so any node's dashboard can draw every node's history — including that
of a node which has since died — without asking the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

Snapshot = Callable[[], Mapping[str, Mapping[str, Any]]]
FIELDS = ("cpu_percent", "mem_percent", "gpu_util_percent", "slots_used")


class MetricsHistory:
    def __init__(self, snapshot: Snapshot, period_s: float = 2.0, keep: int = 300) -> None:
        self._snapshot = snapshot
        self.period_s = period_s
        self._keep = keep
        self._samples: dict[str, deque[tuple[int, dict[str, Any]]]] = {}

    def sample(self, now_ms: int | None = None) -> None:
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        for node, row in self._snapshot().items():
            meta = row.get("meta") or {}
            if row.get("status") == "dead" or not meta:
                continue  # a dead node's last metrics would draw a flat, false line
            series = self._samples.setdefault(node, deque(maxlen=self._keep))
            series.append((now, {field: meta.get(field) for field in FIELDS}))

    def series(self) -> dict[str, dict[str, list[Any]]]:
        """{node: {"t": [unix ms...], "cpu_percent": [...], ...}} (None where a node has no GPU)."""
        out = {}
        for node, samples in sorted(self._samples.items()):
            out[node] = {"t": [t for t, _ in samples]}
            for field in FIELDS:
                out[node][field] = [values[field] for _, values in samples]
        return out

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)
