"""The run's history: an append-only list of operations, one JSON object per line.

Every entry has `index` (order of recording), `time` (wall clock, seconds since the
epoch: the nodes stamp their task history with the same clock, all processes run on
one machine), `process` (a client, a probe, "nemesis"), `type` and `f`:

- clients: an `invoke` when a logical operation starts, then exactly one completion:
  `ok` (acknowledged: a 2xx), `fail` (definitely not done: a refusal such as 409) or
  `info` (indeterminate: timeouts, 503s, gave up). Completions carry `attempts`, one per
  HTTP request tried ({node, start, end, status, code, error}), and the operation's
  fields (`key`: the Idempotency-Key, `id`: the task id, `value`: what came back).
- nemesis: `info` entries, f = "schedule", "start" (a fault, with what it did and to
  which nodes), "heal", "kill", "restart", "restart-check", "crash".

The file is flushed after every line, so a run that dies leaves its history behind.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class History:
    def __init__(self, path: Path | None = None) -> None:
        self.entries: list[dict] = []
        self._lock = threading.Lock()
        self._file = open(path, "w", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def append(self, process: str, type_: str, f: str, **fields: Any) -> dict:
        with self._lock:
            entry = {
                "index": len(self.entries),
                "time": fields.pop("time", None) or time.time(),
                "process": process,
                "type": type_,
                "f": f,
                **fields,
            }
            self.entries.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(entry, default=str) + "\n")
                self._file.flush()
            return entry

    def invoke(self, process: str, f: str, **fields: Any) -> dict:
        return self.append(process, "invoke", f, **fields)

    def complete(self, process: str, type_: str, f: str, **fields: Any) -> dict:
        assert type_ in ("ok", "fail", "info"), type_
        return self.append(process, type_, f, **fields)

    def nemesis(self, f: str, **fields: Any) -> dict:
        return self.append("nemesis", "info", f, **fields)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.entries)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def load(path: Path) -> list[dict]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a run that died
    return entries
