"""Small formatting helpers shared by the views."""

from __future__ import annotations

import time

from rich.markup import escape

from node.replica.vocabulary import TaskState

STATE_STYLE = {
    TaskState.QUEUED: "yellow",
    TaskState.RUNNING: "cyan",
    TaskState.COMPLETED: "green",
    TaskState.FAILED: "red",
    TaskState.CANCELLED: "magenta",
}


def text(value: object) -> str:
    """Data (titles, queries, answers, errors, node names) as literal text: Rich markup
    in it is shown, not applied; an unbalanced tag such as "[/x]" in a document title
    would otherwise stop the view that renders it (MarkupError)."""
    return escape(str(value))


def state(value: str) -> str:
    return f"[{STATE_STYLE.get(value, 'white')}]{text(value)}[/]"


def ms(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1000:
        return f"{value} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    return f"{value / 60_000:.1f} min"


def clock(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "—"
    return time.strftime("%H:%M:%S", time.localtime(epoch_ms / 1000))


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
