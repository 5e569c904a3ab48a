"""Submit: a form for qa / generate / retrieve tasks."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SUBMITTABLE_TYPES,
    SearchMode,
    TaskType,
)

# The types a form can fill: those that take a text (a query or a prompt).
FORM_TYPES = tuple(t for t in SUBMITTABLE_TYPES if t.text_field)
# Hybrid first: the default of [rag] mode, and the best choice when in doubt.
FORM_MODES = (SearchMode.HYBRID, SearchMode.VECTOR, SearchMode.KEYWORD)


class SubmitForm(Vertical):
    DEFAULT_CSS = """
    SubmitForm { padding: 1 2; }
    SubmitForm Horizontal { height: 3; }
    SubmitForm Horizontal > * { width: 1fr; }
    SubmitForm #submit-status { height: auto; margin-top: 1; }
    """

    class Submitted(Message):
        def __init__(self, body: dict) -> None:
            super().__init__()
            self.body = body

    def compose(self) -> ComposeResult:
        yield Label("question or prompt")
        yield Input(placeholder="What does the lighthouse keeper polish?", id="submit-query")
        with Horizontal():
            yield Select(
                [(t.value, t.value) for t in FORM_TYPES],
                value=TaskType.QA.value,
                allow_blank=False,
                id="submit-type",
            )
            yield Select(
                [(m.value, m.value) for m in FORM_MODES],
                value=SearchMode.HYBRID.value,
                allow_blank=False,
                id="submit-mode",
            )
            yield Input(
                value=str(DEFAULT_PRIORITY),
                placeholder=f"priority {PRIORITY_MIN}-{PRIORITY_MAX}",
                id="submit-priority",
            )
        with Horizontal():
            yield Input(value="5", placeholder="top k", id="submit-topk")
            yield Input(value="128", placeholder="max tokens", id="submit-tokens")
            yield Input(value="0", placeholder="temperature", id="submit-temperature")
        yield Button("Submit", variant="primary", id="submit-go")
        yield Static("", id="submit-status")

    def body(self) -> dict:
        kind = TaskType(str(self.query_one("#submit-type", Select).value))
        text = self.query_one("#submit-query", Input).value.strip()

        def number(name: str, cast: type) -> object:
            raw = self.query_one(f"#submit-{name}", Input).value.strip()
            try:
                return cast(raw)
            except ValueError:
                return raw  # the API names the bad field

        params: dict = {
            "top_k": number("topk", int),
            "mode": str(self.query_one("#submit-mode", Select).value),
        }
        if kind != TaskType.RETRIEVE:
            params.update(
                max_new_tokens=number("tokens", int), temperature=number("temperature", float)
            )
        return {
            "type": kind.value,
            "input": {kind.text_field: text},
            "priority": number("priority", int),
            "params": params,
        }

    @on(Button.Pressed, "#submit-go")
    @on(Input.Submitted, "#submit-query")
    def go(self) -> None:
        self.post_message(self.Submitted(self.body()))
