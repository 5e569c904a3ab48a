"""Submit: a form for qa / generate / retrieve; the submitted task's detail is
then followed live (the dashboard's refresh re-reads it) to its answer."""

from __future__ import annotations

import html
from typing import Any

import panel as pn

from node.client.aio import ApiClient, ApiError
from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    FINISHED,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TaskType,
)
from ui.choices import FORM_MODES, FORM_TYPES, bounds
from ui.render import task_detail


class SubmitView:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.followed: str | None = None
        self.s_type = pn.widgets.Select(
            name="type", options=FORM_TYPES, width=120, css_classes=["s-type"]
        )
        self.s_query = pn.widgets.TextAreaInput(
            name="question or prompt", height=80, sizing_mode="stretch_width"
        )
        self.s_priority = pn.widgets.IntInput(
            name=f"priority ({PRIORITY_MIN}-{PRIORITY_MAX})",
            value=DEFAULT_PRIORITY,
            start=PRIORITY_MIN,
            end=PRIORITY_MAX,
            width=110,
        )
        self.s_topk = pn.widgets.IntInput(name="top-k", value=5, width=90, **bounds("top_k"))
        self.s_mode = pn.widgets.Select(name="retrieval mode", options=FORM_MODES, width=120)
        self.s_tokens = pn.widgets.IntInput(
            name="max tokens", value=128, width=110, **bounds("max_new_tokens")
        )
        self.s_temp = pn.widgets.FloatInput(
            name="temperature", value=0.0, step=0.1, width=110, **bounds("temperature")
        )
        submit = pn.widgets.Button(name="Submit", button_type="primary", width=120)
        submit.on_click(self._submit)
        self.result = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["submit-result"])
        self.panel = pn.Column(
            self.s_query,
            pn.Row(
                self.s_type, self.s_priority, self.s_topk, self.s_mode, self.s_tokens, self.s_temp
            ),
            submit,
            self.result,
            name="Submit",
            sizing_mode="stretch_width",
        )

    async def refresh(self) -> None:
        if self.followed is None:
            return
        try:
            task = await self.api.request("GET", f"/api/v1/tasks/{self.followed}")
        except ApiError as exc:
            self.result.object = html.escape(str(exc))
            return
        self.result.object = task_detail(task, scope="submit")
        if task["state"] in FINISHED:
            self.followed = None  # reached its end: stop re-reading it

    async def _submit(self, _: Any) -> None:
        kind = TaskType(self.s_type.value)
        params: dict = {"top_k": self.s_topk.value, "mode": self.s_mode.value}
        if kind != TaskType.RETRIEVE:
            params.update(max_new_tokens=self.s_tokens.value, temperature=self.s_temp.value)
        body = {
            "type": kind.value,
            "priority": self.s_priority.value,
            "params": params,
            "input": {kind.text_field: self.s_query.value},
        }
        try:
            task = await self.api.submit(body)  # one idempotency key per click, for all its tries
        except ApiError as exc:
            self.result.object = f'<b style="color:#c53030">{html.escape(str(exc))}</b>'
            return
        self.followed = task["id"]
        await self.refresh()
