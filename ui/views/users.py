"""Users (shown to admins only): the users with their role, state and quota; a form
to create one; and, for the selected user, a new role, quota, password, disable or
enable, and delete.  Every change goes through /api/v1/users, so the state machine
decides and every node knows it."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import pandas as pd
import panel as pn

from node.client.aio import ApiClient, ApiError
from node.replica.vocabulary import (
    MAX_QUOTA_TASKS,
    PRIORITY_MAX,
    QUOTA_FIELDS,
    UserRole,
    quota_text,
)
from ui.tables import LiveTable

ROLES = [str(r) for r in UserRole]


class UsersView:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(),
            selectable=1,
            disabled=True,
            show_index=False,
            sortable=False,
            sizing_mode="stretch_width",
            height=240,
            css_classes=["users-table"],
        )
        self.live = LiveTable(self.table, key="name")
        self.name = pn.widgets.TextInput(name="name", placeholder="new user's name", width=180)
        self.password = pn.widgets.PasswordInput(
            name="password", width=180, css_classes=["users-password"]
        )
        self.role = pn.widgets.Select(
            name="role", options=ROLES, value="user", width=110, css_classes=["users-role"]
        )
        # 0 in a quota box means no limit (a blank IntInput is not possible in every browser)
        self.quota = {
            "max_queued": pn.widgets.IntInput(
                name="max queued (0: none)", value=0, start=0, end=MAX_QUOTA_TASKS, width=150
            ),
            "max_running": pn.widgets.IntInput(
                name="max running (0: none)", value=0, start=0, end=MAX_QUOTA_TASKS, width=150
            ),
            "max_priority": pn.widgets.IntInput(
                name="max priority (-1: none)",
                value=-1,
                start=-1,
                end=PRIORITY_MAX,
                width=150,
            ),
        }
        create = pn.widgets.Button(name="Create user", button_type="primary", width=130)
        create.on_click(self._create)
        apply_role = pn.widgets.Button(name="Set role and quota of selected", width=230)
        apply_role.on_click(self._set)
        toggle = pn.widgets.Button(name="Disable / enable selected", width=200)
        toggle.on_click(self._toggle)
        reset = pn.widgets.Button(name="Reset password of selected", width=210)
        reset.on_click(self._reset)
        delete = pn.widgets.Button(name="Delete selected user", button_type="danger", width=180)
        delete.on_click(self._delete)
        self.notice = pn.pane.Markdown(
            "", sizing_mode="stretch_width", css_classes=["users-notice"]
        )
        self.panel = pn.Column(
            self.table,
            pn.Row(self.name, self.password, self.role, *self.quota.values()),
            pn.Row(create, apply_role, toggle, reset, delete),
            self.notice,
            name="Users",
            sizing_mode="stretch_width",
        )

    async def refresh(self) -> None:
        users = (await self.api.request("GET", "/api/v1/users"))["items"]
        self.live.show(
            [
                {
                    "name": u["name"],
                    "role": u["role"],
                    "state": "disabled" if u["disabled"] else "enabled",
                    "quota": quota_text(u["quota"]),
                }
                for u in users
            ]
        )

    def _quota_body(self) -> dict[str, int | None]:
        body: dict[str, int | None] = {}
        for name in QUOTA_FIELDS:
            value = self.quota[name].value
            none = value < 0 if name == "max_priority" else value == 0
            body[name] = None if none else value
        return body

    def _selected(self) -> str | None:
        names = self.live.selected()
        if not names:
            self.notice.object = "select a user first"
            return None
        return str(names[0])

    async def _change(self, method: str, path: str, body: Any, done: str) -> None:
        try:
            await self.api.request(method, path, body)
            self.notice.object = done
            self.password.value = ""
        except ApiError as exc:
            self.notice.object = f"refused: {html.escape(str(exc))}"
        await self.refresh()

    async def _create(self, _: Any) -> None:
        name = self.name.value.strip()
        body = {
            "name": name,
            "password": self.password.value,
            "role": self.role.value,
            "quota": self._quota_body(),
        }
        await self._change("POST", "/api/v1/users", body, f"created {html.escape(name)}")

    async def _set(self, _: Any) -> None:
        name = self._selected()
        if name is not None:
            body = {"role": self.role.value, "quota": self._quota_body()}
            await self._change("PATCH", f"/api/v1/users/{quote(name)}", body, f"changed {name}")

    async def _toggle(self, _: Any) -> None:
        name = self._selected()
        if name is None:
            return
        row = next((r for r in self.live.rows if r["name"] == name), None)
        disable = row is not None and row["state"] == "enabled"
        what = "disabled" if disable else "enabled"
        path = f"/api/v1/users/{quote(name)}"
        await self._change("PATCH", path, {"disabled": disable}, f"{what} {html.escape(name)}")

    async def _reset(self, _: Any) -> None:
        name = self._selected()
        if name is not None:
            body = {"password": self.password.value}
            path = f"/api/v1/users/{quote(name)}"
            await self._change("PATCH", path, body, f"password of {html.escape(name)} reset")

    async def _delete(self, _: Any) -> None:
        name = self._selected()
        if name is not None:
            path = f"/api/v1/users/{quote(name)}"
            await self._change("DELETE", path, None, f"deleted {html.escape(name)}")
