"""Markup planted in data is shown as text by the terminal UI, never applied.

Rich markup in a task's query, a document's title, an answer or an error was
interpreted: an unbalanced tag ("[/x]") raised MarkupError and stopped the view,
and "[link=...]" or "[@click=...]" made live links and actions out of data.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from tests import test_tui_snapshots as canned
from tui.views.detail import TaskDetail

HOSTILE = "[/x] [link=https://evil.example]click[/link] [@click=app.quit]quit[/]"


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = copy.deepcopy(canned.ANSWERS)
    for task in answers["/api/v1/tasks?"]["items"]:
        task["input_excerpt"] = HOSTILE
        task["progress_note"] = HOSTILE
    detail = answers["/api/v1/tasks/"]
    detail["input"] = {"query": HOSTILE}
    detail["owner"] = HOSTILE
    detail["error"] = HOSTILE
    detail["result"]["answer"] = HOSTILE
    for item in detail["result"]["citations"] + detail["result"]["passages"]:
        item["title"] = HOSTILE
    for step in detail["history"]:
        step["note"] = HOSTILE
    plant_in_grounded(answers["/api/v1/tasks/01M85GROUNDED"]["result"])
    for doc in answers["/api/v1/kb/documents"]["items"]:
        doc["title"] = HOSTILE
        doc["tags"] = [HOSTILE]
    for node in answers["/api/v1/nodes"]["items"]:
        node["metrics"]["models"] = HOSTILE
    monkeypatch.setattr(canned, "ANSWERS", answers)


def plant_in_grounded(result: dict[str, Any]) -> None:
    """The planted markup as the first sentence of a grounded answer (unsupported), the
    title of its citations and passages, and in every citation's quote."""
    shift = len(HOSTILE) + 1
    result["answer"] = f"{HOSTILE} {result['answer']}"
    sentences = result["grounding"]["sentences"]
    for sentence in sentences:
        sentence["start"] += shift
        sentence["end"] += shift
    sentences.insert(
        0,
        {"start": 0, "end": len(HOSTILE), "checked": True, "supported": False, "citations": []},
    )
    for citation in result["citations"]:
        citation["title"] = HOSTILE
        citation["quote"] = f"quoted {HOSTILE}"
    for passage in result["passages"]:
        passage["title"] = HOSTILE


def table_text(table: DataTable) -> str:
    return " ".join(str(cell) for row in range(table.row_count) for cell in table.get_row_at(row))


def test_every_view_shows_planted_markup_as_text(hostile: None) -> None:
    async def scenario() -> dict[str, Any]:
        app = canned.app()
        seen: dict[str, Any] = {}
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause(0.3)
            seen["overview"] = table_text(app.screen.query(DataTable).first())
            await pilot.press("t")
            await pilot.pause(0.3)
            seen["tasks"] = table_text(app.screen.query(DataTable).first())
            await pilot.press("k")
            await pilot.pause(0.3)
            seen["knowledge"] = table_text(app.screen.query(DataTable).first())
            app.push_screen(TaskDetail(canned.TASKS[0]["id"]))
            await pilot.pause(0.5)
            body = app.screen.query_one("#detail-body", Static)
            seen["detail"] = str(body.render())
            app.pop_screen()
            app.push_screen(TaskDetail(canned.GROUNDED["id"]))
            await pilot.pause(0.5)
            body = app.screen.query_one("#detail-body", Static)
            seen["grounded"] = str(body.render())
            seen["running"] = app.is_running
        return seen

    seen = asyncio.run(scenario())
    assert seen["running"]  # nothing stopped the app (a MarkupError would have)
    for view in ("overview", "tasks", "knowledge", "detail", "grounded"):
        assert "[/x]" in seen[view] and "[link=https://evil.example]" in seen[view], view
    grounded = seen["grounded"]
    assert f"“quoted {HOSTILE}”" in " ".join(grounded.split())  # the quotes, wrapped
    assert f"[1] {HOSTILE} (doc doc-1" in grounded  # a citation's title
    assert f"{HOSTILE} (unsupported)" in grounded  # the planted sentence, marked
