"""What the CLI prints: results on stdout (plain text, rich tables on a
terminal, or the raw JSON with --json), progress and notices on stderr (a live
rich display on a terminal, one line per change otherwise — so logs and pipes
get readable text, and stdout stays clean for scripts).

rich is imported only when a terminal will show it: it costs ~50 ms to import.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, Self, TextIO

from node.replica.vocabulary import TaskState

# The colour of a table cell by its text: task states (a document's "failed" too),
# document states, gossip statuses and the Raft leader.
STATE_STYLES: dict[str, str] = {
    TaskState.QUEUED: "yellow",
    TaskState.RUNNING: "cyan",
    TaskState.COMPLETED: "green",
    TaskState.FAILED: "red",
    TaskState.CANCELLED: "magenta",
    "ready": "green",
    "uploaded": "yellow",
    "ingesting": "cyan",
    "alive": "green",
    "suspect": "yellow",
    "dead": "red",
    "leader": "bold",
}


def _fancy(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb" and not os.environ.get("NO_COLOR")


class Output:
    def __init__(
        self, json_mode: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.rich_tables = not json_mode and _fancy(self.stdout)
        self.live = not json_mode and _fancy(self.stderr)

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, ensure_ascii=False), file=self.stdout, flush=True)

    def print(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def note(self, text: str) -> None:
        """A notice for the person at the terminal (stderr: never mixed into results)."""
        print(text, file=self.stderr, flush=True)

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        style_column: int | None = None,
        title: str | None = None,
    ) -> None:
        """Rows as a table; `style_column`'s values (states) are coloured on a terminal."""
        cells = [["" if c is None else str(c) for c in row] for row in rows]
        widths = [max(len(r[i]) for r in [list(headers), *cells]) for i in range(len(headers))]
        # rich only when the table fits: on a narrow terminal it would cut or drop
        # columns, while plain lines wrap and lose nothing.
        if (
            self.rich_tables
            and sum(widths) + 2 * (len(widths) - 1) <= shutil.get_terminal_size().columns
        ):
            self._rich_table(headers, cells, style_column, title)
            return
        if title:
            self.print(title)
        for row in [list(headers), *cells]:
            self.print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())

    def _rich_table(
        self,
        headers: Sequence[str],
        cells: list[list[str]],
        style_column: int | None,
        title: str | None,
    ) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title=title, title_justify="left", box=None, header_style="bold", pad_edge=False
        )
        for header in headers:
            table.add_column(header, no_wrap=True)
        for row in cells:
            # Text(): the cells are data, not rich markup ("[1]" or "[b]" must print as is).
            table.add_row(
                *(
                    Text(c, style=STATE_STYLES.get(c, "") if i == style_column else "")
                    for i, c in enumerate(row)
                )
            )
        Console(file=self.stdout).print(table)


# ------------------------------------------------------------------ progress
class Progress:
    """Rows of progress on stderr, one per item (an upload, a task).  On a terminal
    a rich display with a spinner and a bar per row; otherwise a line whenever a
    row's text changes or passes another tenth."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self._rows: dict[str, Any] = {}
        self._last: dict[str, str] = {}
        self._display: Any = None
        if out.json_mode:
            return
        if out.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._display = RichProgress(
                SpinnerColumn(finished_text="•"),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=Console(file=out.stderr),
                transient=False,
            )

    def __enter__(self) -> Self:
        if self._display is not None:
            self._display.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._display is not None:
            self._display.stop()

    def update(
        self, key: str, text: str, fraction: float | None = None, done: bool = False
    ) -> None:
        """Show `text` for row `key`; `fraction` (0..1) fills its bar, None = unknown yet."""
        if self.out.json_mode:
            return
        if self._display is None:
            # A new line when the text changes or another tenth is done: a log reads
            # every step without a line per poll.
            step = f"{text}|{int(fraction * 10)}" if fraction is not None and not done else text
            if self._last.get(key) != step:
                self._last[key] = step
                self.out.note(
                    text if fraction is None or done else f"{text} ({fraction * 100:.0f}%)"
                )
            return
        from rich.text import Text

        if key not in self._rows:
            self._rows[key] = self._display.add_task("", total=None)
        row = self._rows[key]
        description = Text(text)  # data, not markup
        if not done and any(t.id == row and t.finished for t in self._display.tasks):
            # A new phase of the same row (upload done, ingest starting): rich keeps a
            # finished row finished, so start it afresh (spinner and clock running again).
            self._display.reset(row)
        if fraction is None:
            self._display.update(row, description=description, total=None)
        else:
            self._display.update(
                row, description=description, total=1.0, completed=max(0.0, min(1.0, fraction))
            )
        if done:
            self._display.update(row, total=1.0, completed=1.0 if fraction is None else fraction)
            self._display.stop_task(row)


# ------------------------------------------------------------------ formatting
def clock(ms: float | None) -> str:
    """A moment as local time: HH:MM:SS today, with the date otherwise."""
    if not ms:
        return "—"
    moment = time.localtime(ms / 1000)
    if time.strftime("%Y-%m-%d", moment) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)


def precise_clock(ms: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{int(ms) % 1000:03d}"


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(int(ms / 1000), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def size(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def percent(value: Any) -> str:
    return f"{value:.0f}%" if isinstance(value, (int, float)) else "—"


def one_line(text: Any, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
