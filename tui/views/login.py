"""Login: username and password against the node in use."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Static

from node.client.aio import ApiError
from tui import format as fmt


class LoginScreen(Screen[None]):
    DEFAULT_CSS = """
    LoginScreen { align: center middle; }
    #login { width: 50; height: auto; border: round $accent; padding: 1 2; }
    #login Input { margin-bottom: 1; }
    #login-error { color: $error; height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Vertical(id="login"):
            yield Label(f"ragraft — log in to {self.app.api.url}")  # type: ignore[attr-defined]
            yield Input(placeholder="username", value="admin", id="username")
            yield Input(placeholder="password", password=True, id="password")
            yield Button("Log in", variant="primary", id="submit")
            yield Static("", id="login-error")

    def on_mount(self) -> None:
        self.query_one("#password", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#submit")
    async def attempt(self) -> None:
        user = self.query_one("#username", Input).value.strip()
        password = self.query_one("#password", Input).value
        try:
            await self.app.api.login(user, password)  # type: ignore[attr-defined]
        except ApiError as exc:
            self.query_one("#login-error", Static).update(fmt.text(exc))
            return
        self.dismiss(None)
