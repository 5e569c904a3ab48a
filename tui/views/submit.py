"""Submit: a form for qa / generate / retrieve tasks."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static


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
                [("qa", "qa"), ("generate", "generate"), ("retrieve", "retrieve")],
                value="qa",
                allow_blank=False,
                id="submit-type",
            )
            yield Select(
                [(m, m) for m in ("hybrid", "vector", "keyword")],
                value="hybrid",
                allow_blank=False,
                id="submit-mode",
            )
            yield Input(value="5", placeholder="priority 0-9", id="submit-priority")
        with Horizontal():
            yield Input(value="5", placeholder="top k", id="submit-topk")
            yield Input(value="128", placeholder="max tokens", id="submit-tokens")
            yield Input(value="0", placeholder="temperature", id="submit-temperature")
        yield Button("Submit", variant="primary", id="submit-go")
        yield Static("", id="submit-status")

    def body(self) -> dict:
        kind = str(self.query_one("#submit-type", Select).value)
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
        if kind != "retrieve":
            params.update(
                max_new_tokens=number("tokens", int), temperature=number("temperature", float)
            )
        key = "prompt" if kind == "generate" else "query"
        return {
            "type": kind,
            "input": {key: text},
            "priority": number("priority", int),
            "params": params,
        }

    @on(Button.Pressed, "#submit-go")
    @on(Input.Submitted, "#submit-query")
    def go(self) -> None:
        self.post_message(self.Submitted(self.body()))
