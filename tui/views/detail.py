"""A task's detail: input, timeline, answer with citations and passages, or error."""

from __future__ import annotations

import json
import textwrap
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from node.client.answers import answer_view, mark
from tui import format as fmt

QUOTE_WIDTH = 60  # a quote's lines, indented by 6: within the detail box at 80 columns
QUOTE_LINES = 3


def render_task(task: dict) -> str:
    lines = [
        (
            f"[b]{fmt.text(task['id'])}[/b]  {fmt.text(task['type'])}  "
            f"{fmt.state(task['state'])}  priority {task['priority']}  "
            f"owner {fmt.text(task['owner'])}  "
            f"attempt {task['attempt']}/{task.get('max_attempts', '?')}"
        ),
        (
            f"node {fmt.text(task.get('node') or '—')}  "
            f"progress {task.get('progress', 0) * 100:.0f}% "
            f"{fmt.text(task.get('progress_note', ''))}"
        ),
        "",
        "[b]input[/b]",
        fmt.text(json.dumps(task.get("input"), indent=1)[:800]),
        "",
        "[b]timeline[/b]",
    ]
    for step in task.get("history", []):
        lines.append(
            f"  {fmt.clock(step['at'])}  {fmt.state(step['state']):<24} "
            f"node {fmt.text(step.get('node') or '—')}  attempt {step['attempt']}  "
            f"{fmt.text(step.get('note', ''))}"
        )
    result = task.get("result")
    if isinstance(result, dict):
        if "answer" in result and isinstance(result.get("grounding"), dict):
            lines += grounded_lines(result)
        elif "answer" in result:
            lines += ["", "[b]answer[/b]", fmt.text(result["answer"])]
        if result.get("citations") and not isinstance(result.get("grounding"), dict):
            lines += ["", "[b]citations[/b]"]
            lines += [
                fmt.text(
                    f"  [{c['n']}] {c.get('title') or c['doc_id']} "
                    f"(doc {c['doc_id']}, chunk {c['chunk']})"
                )
                for c in result["citations"]
            ]
        if result.get("passages"):
            lines += ["", "[b]passages[/b]"]
            for p in result["passages"]:
                lines.append(
                    fmt.text(
                        f"  [{p['n']}] {p.get('title') or p['doc_id']} · score {p['score']:.3f} "
                        f"(vector {p.get('vector_score')}, keyword {p.get('keyword_score')})"
                    )
                )
                lines.append("      " + fmt.text(p["text"][:300].replace("\n", " ")))
        if result.get("timings"):
            lines += [
                "",
                "[b]timings[/b] "
                + fmt.text(", ".join(f"{k} {v}" for k, v in result["timings"].items())),
            ]
    if task.get("error"):
        lines += ["", "[b red]error[/b red]", fmt.text(task["error"])]
    return "\n".join(lines)


def grounded_lines(result: dict[str, Any]) -> list[str]:
    """A grounded answer (node/rag/grounding.py), as node/cli shows it: its marks after
    each sentence ([n]; [n?] in yellow: the model cited a passage that does not support
    it), an unsupported sentence followed by a red (unsupported), the grounding line,
    then each citation with the passage text that supports it, wrapped."""
    view = answer_view(result)
    sentences = []
    for sentence in view.sentences:
        marks = "".join(
            fmt.text(mark(view.citations[i]))
            if view.citations[i].get("supported", True)
            else f"[yellow]{fmt.text(mark(view.citations[i]))}[/yellow]"
            for i in sentence.citations
        )
        note = " [red](unsupported)[/red]" if sentence.supported is False else ""
        said = " ".join(part for part in (fmt.text(sentence.text), marks) if part)
        if said:  # a sentence of marks only (the model's "… lens. [1]") follows the last
            sentences.append(f"{said}{note}")
    lines = ["", "[b]answer[/b]", " ".join(sentences) or "(the model gave an empty answer)"]
    checked = [s for s in view.sentences if s.supported is not None]
    if view.score is not None and checked:
        supported = sum(1 for s in checked if s.supported)
        colour = "green" if supported == len(checked) else "yellow"
        line = (
            f"[{colour}]grounding {view.score:.0%}[/{colour}]: {supported} of {len(checked)} "
            "sentences supported"
        )
    else:
        line = "grounding: no sentence says enough to be checked"
    if view.mode and view.mode != "annotate":
        line += f" · {fmt.text(view.mode)} mode"
    if view.extractive:
        line += " · [b]extractive answer[/b] (the passages' own sentences)"
    lines.append(line)
    if view.citations:
        lines += ["", "[b]citations[/b]"]
    for c in view.citations:
        source = f" · {c['source']}" if c.get("source") else ""
        support = f" {c['score']:.2f}" if isinstance(c.get("score"), (int, float)) else ""
        where = fmt.text(
            f" {c.get('title') or c.get('doc_id')} (doc {c.get('doc_id')}, "
            f"chunk {c.get('chunk')}){source}"
        )
        if c.get("supported", True):
            lines.append(f"  {fmt.text(mark(c))}{where}{' · support' + support if support else ''}")
        else:  # the model cited it, the check found no support in it
            lines.append(
                f"  [yellow]{fmt.text(mark(c))}[/yellow]{where} · [yellow]not supported[/]{support}"
            )
        if c.get("quote"):
            quote = textwrap.wrap(
                f"“{' '.join(str(c['quote']).split())}”",
                QUOTE_WIDTH,
                max_lines=QUOTE_LINES,
                placeholder=" …”",
            )
            lines += [f"      [dim]{fmt.text(part)}[/dim]" for part in quote]
    return lines


class TaskDetail(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "back"),
        Binding("c", "act('cancel')", "cancel"),
        Binding("a", "act('abort')", "abort"),
        Binding("r", "act('retry')", "retry"),
    ]
    DEFAULT_CSS = """
    TaskDetail { align: center middle; }
    #detail { width: 95%; height: 90%; border: round $accent; padding: 0 1; background: $surface; }
    """

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail"):
            yield Static("loading…", id="detail-body")
        yield Footer()

    async def on_mount(self) -> None:
        await self.reload()
        self.set_interval(1.0, self.reload)

    async def reload(self) -> None:
        try:
            task = await self.app.api.request("GET", f"/api/v1/tasks/{self.task_id}")  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - shown, not raised: the screen stays usable
            self.query_one("#detail-body", Static).update(f"[red]{fmt.text(exc)}[/]")
            return
        self.query_one("#detail-body", Static).update(render_task(task))

    async def action_act(self, action: str) -> None:
        await self.app.task_action(action, self.task_id)  # type: ignore[attr-defined]
        await self.reload()
