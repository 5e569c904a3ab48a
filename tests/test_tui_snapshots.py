"""Snapshots of every TUI screen at 80×24 (pytest-textual-snapshot).

The views render canned API answers here, so that the pictures are stable; the
behaviour against a real cluster is tested in tests/test_tui.py.  After an
intended change of the UI: `pytest tests/test_tui_snapshots.py --snapshot-update`
and review the SVGs under tests/__snapshots__/.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from node.client.aio import ApiClient
from tui.app import RagraftApp
from tui.views.detail import TaskDetail
from tui.views.login import LoginScreen

os.environ["TZ"] = "UTC"
time.tzset()

T0 = 1_795_000_000_000
TASKS = [
    {
        "id": f"01M85TASK{i:04d}",
        "type": ("qa", "noop", "retrieve")[i % 3],
        "state": ("completed", "running", "queued", "failed", "cancelled")[i % 5],
        "priority": (5, 9, 0)[i % 3],
        "owner": "admin",
        "node": (None if i % 5 == 2 else f"n{1 + i % 3}"),
        "attempt": 1,
        "submitted_at": T0 + i * 1000,
        "started_at": T0 + i * 1000 + 40,
        "finished_at": T0 + i * 1000 + 900,
        "waited_ms": 40,
        "ran_ms": 860,
        "progress": 0.5 if i % 5 == 1 else 1.0,
        "progress_note": "generating",
        "error": "connection refused" if i % 5 == 3 else None,
        "input_excerpt": f"question {i} about lighthouses",
    }
    for i in range(12)
]
DETAIL = {
    **TASKS[0],
    "input": {"query": "What does the keeper polish?"},
    "params": {},
    "max_attempts": 3,
    "history": [
        {"state": "queued", "node": None, "attempt": 0, "at": T0, "note": "submitted"},
        {"state": "running", "node": "n1", "attempt": 1, "at": T0 + 40, "note": "claimed"},
        {"state": "completed", "node": "n1", "attempt": 1, "at": T0 + 900, "note": ""},
    ],
    "result": {
        "answer": "The keeper polishes the great lens [1].",
        "citations": [{"n": 1, "doc_id": "doc-1", "chunk": 0, "title": "Lighthouses"}],
        "passages": [
            {
                "n": 1,
                "doc_id": "doc-1",
                "title": "Lighthouses",
                "chunk": 0,
                "page": 1,
                "text": "The lighthouse keeper polishes the great lens every Tuesday.",
                "score": 0.0328,
                "vector_score": 0.61,
                "keyword_score": 2.3,
            }
        ],
        "timings": {"retrieve_ms": 12.5, "generate_ms": 840.0, "new_tokens": 11},
    },
}


def _grounded_detail() -> dict[str, Any]:
    """A qa task with a grounded answer (node/rag/grounding.py's shape): a sentence the
    model cited, one the check attributed, one the model cited wrongly (unsupported),
    one too short to check."""
    lens = "The lighthouse keeper polishes the great lens every Tuesday."
    lamp = (
        "The lamp is lit at dusk and burns until dawn, its beam turning once every ten "
        "seconds so that ships far out at sea can tell this light from its neighbours."
    )
    first = f"{lens} {lamp}"
    second = "Keepers once trimmed the wicks of the oil lamps by hand."
    said = [
        "The keeper polishes the great lens every Tuesday [1].",
        "The lamp burns from dusk until dawn.",
        "The tower was built in 1850 [2].",
        "Yes.",
    ]
    answer = " ".join(said)
    starts = [answer.index(s) for s in said]

    def cite(
        n: int,
        sentence: int,
        source: str,
        span: tuple[int, int] | None,
        score: float | None,
        ok: bool = True,
    ) -> dict[str, Any]:
        text = (first, second)[n - 1]
        return {
            "n": n,
            "doc_id": f"doc-{n}",
            "chunk": 0,
            "title": ("Lighthouses", "Old lamps")[n - 1],
            "source": source,
            "sentence": sentence,
            "span": list(span) if span else None,
            "quote": text[span[0] : span[1]] if span else None,
            "score": score,
            "supported": ok,
        }

    lamp_at = first.index(lamp)
    citations = [
        cite(1, 0, "model", (0, len(lens)), 0.91),
        cite(1, 1, "attributed", (lamp_at, lamp_at + len(lamp)), 0.64),
        cite(2, 2, "model", (0, len(second)), 0.12, ok=False),
    ]
    sentences = [
        {
            "start": at,
            "end": at + len(s),
            "checked": k < 3,
            "supported": (True, True, False, None)[k],
            "citations": [i for i, c in enumerate(citations) if c["sentence"] == k],
        }
        for k, (at, s) in enumerate(zip(starts, said))
    ]
    passages = [
        {
            "n": n,
            "doc_id": f"doc-{n}",
            "title": title,
            "chunk": 0,
            "page": 1,
            "text": text,
            "score": score,
            "vector_score": 0.6,
            "keyword_score": 2.0,
        }
        for n, title, text, score in (
            (1, "Lighthouses", first, 0.0328),
            (2, "Old lamps", second, 0.0161),
        )
    ]
    return {
        **DETAIL,
        "id": "01M85GROUNDED",
        "result": {
            "answer": answer,
            "citations": citations,
            "grounding": {
                "mode": "annotate",
                "score": 0.667,
                "supported": 2,
                "unsupported": 1,
                "extractive": False,
                "sentences": sentences,
                "attribution_ms": 31.5,
            },
            "passages": passages,
            "timings": {"retrieve_ms": 12.5, "generate_ms": 840.0, "attribution_ms": 31.5},
        },
    }


GROUNDED = _grounded_detail()

ANSWERS: dict[str, Any] = {
    "/api/v1/stats": {
        "queued": 4,
        "running": 2,
        "completed": 120,
        "failed": 3,
        "cancelled": 1,
        "throughput": {"completed_per_s_1m": 1.5, "completed_per_s_5m": 1.2},
        "wait_ms": {"p50": 40, "p95": 350},
        "run_ms": {"p50": 860, "p95": 2400},
    },
    "/api/v1/cluster": {
        "leader": "n1",
        "term": 3,
        "commit_index": 1042,
        "applied_index": 1042,
        "quorum": True,
    },
    "/api/v1/nodes": {
        "items": [
            {
                "id": f"n{i}",
                "raft_role": "leader" if i == 1 else "follower",
                "status": "dead" if i == 3 else "alive",
                "running": ["x"] * (i - 1),
                "slots": 2,
                "metrics": {
                    "cpu_percent": 10.0 * i,
                    "mem_used": 2 * 2**30,
                    "mem_total": 8 * 2**30,
                    "slots_used": i - 1,
                    "slots_total": 2,
                    "models": "ready",
                },
            }
            for i in (1, 2, 3)
        ]
    },
    "/api/v1/tasks?": {"items": TASKS, "next_cursor": "c2", "total": 126},
    "/api/v1/tasks/01M85GROUNDED": GROUNDED,  # before the prefix of every other task
    "/api/v1/tasks/": DETAIL,
    "/api/v1/kb/documents": {
        "items": [
            {
                "id": "doc-1",
                "title": "Lighthouses",
                "state": "ready",
                "version": 2,
                "size": 5321,
                "chunk_count": 7,
                "ingested_by": "n2",
                "tags": ["sea"],
            },
            {
                "id": "doc-2",
                "title": "scan.pdf",
                "state": "failed",
                "version": 1,
                "size": 80_000,
                "chunk_count": 0,
                "ingested_by": None,
                "tags": [],
            },
        ],
        "total": 2,
    },
}


class CannedApi(ApiClient):
    async def request(self, method: str, path: str, body: Any = None, data: Any = None) -> Any:
        for prefix, answer in ANSWERS.items():
            if path.startswith(prefix):
                return answer
        return {}

    async def events(self, types: str = "") -> AsyncIterator[tuple[str, dict]]:
        await asyncio.Event().wait()
        yield "never", {}


def app(token: str | None = "t") -> RagraftApp:
    return RagraftApp(CannedApi(["http://127.0.0.1:8101"], token), refresh_s=3600, clock=False)


async def settle(pilot: Any) -> None:
    await pilot.pause(0.3)


def test_overview(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=(80, 24), run_before=settle)


def test_tasks(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=(80, 24), press=["t"], run_before=settle)


def test_task_detail(snap_compare: Any) -> None:
    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        pilot.app.push_screen(TaskDetail(TASKS[0]["id"]))
        await settle(pilot)

    assert snap_compare(app(), terminal_size=(80, 24), run_before=open_detail)


def test_task_detail_grounded(snap_compare: Any) -> None:
    """A grounded answer: its marks, the unsupported sentence, the grounding line and the
    citations with their quotes, wrapped within 80 columns (scrolled to the answer)."""

    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        pilot.app.push_screen(TaskDetail(GROUNDED["id"]))
        await settle(pilot)
        pilot.app.screen.query_one("#detail").scroll_to(y=13, animate=False)  # to "answer"
        await settle(pilot)

    assert snap_compare(app(), terminal_size=(80, 24), run_before=open_detail)


def test_submit(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=(80, 24), press=["n"], run_before=settle)


def test_knowledge(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=(80, 24), press=["k"], run_before=settle)


def test_login(snap_compare: Any) -> None:
    async def wait_login(pilot: Any) -> None:
        await settle(pilot)
        assert isinstance(pilot.app.screen, LoginScreen)

    assert snap_compare(app(token=None), terminal_size=(80, 24), run_before=wait_login)
