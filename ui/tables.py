"""Keeping a Tabulator current without fighting the user.

Replacing a table's whole value redraws it in the browser and drops a checkbox
the user ticked a moment ago (before the server heard of it).  So when the rows
are the same tasks in the same order — the common case on a live page — only the
changed cells are patched; the value is replaced only when the rows themselves
change, and the selection is carried over by row key.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn


class LiveTable:
    def __init__(self, table: pn.widgets.Tabulator, key: str = "id") -> None:
        self.table = table
        self.key = key
        self.rows: list[dict[str, Any]] = []

    def show(self, rows: list[dict[str, Any]]) -> None:
        same_rows = (
            bool(rows)
            and len(rows) == len(self.rows)
            and all(
                a[self.key] == b[self.key] and a.keys() == b.keys() for a, b in zip(rows, self.rows)
            )
        )
        if same_rows:
            patch: dict[str, list[tuple[int, Any]]] = {}
            for i, (old, new) in enumerate(zip(self.rows, rows)):
                for column, value in new.items():
                    if old[column] != value:
                        patch.setdefault(column, []).append((i, value))
            if patch:
                self.table.patch(patch, as_index=False)
        elif rows != self.rows:
            selected = set(self.selected())
            # object columns: a cell may go from None to a number and back without a dtype change
            self.table.value = pd.DataFrame(rows, dtype=object)
            self.table.selection = [i for i, row in enumerate(rows) if row[self.key] in selected]
        self.rows = rows

    def selected(self) -> list[Any]:
        return [self.rows[i][self.key] for i in self.table.selection if i < len(self.rows)]

    def row(self, index: int) -> dict[str, Any]:
        return self.rows[index]
