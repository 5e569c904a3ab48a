"""Submit: a form for qa / generate / retrieve; the submitted task's detail is
then followed live (the dashboard's refresh re-reads it) to its answer."""

from __future__ import annotations

import html
from typing import Any

import panel as pn

from node.api_client import ApiClient, ApiError
from ui.render import task_detail


class SubmitView:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.followed: str | None = None
        self.s_type = pn.widgets.Select(
            name="type", options=["qa", "generate", "retrieve"], width=120, css_classes=["s-type"]
        )
        self.s_query = pn.widgets.TextAreaInput(
            name="question or prompt", height=80, sizing_mode="stretch_width"
        )
        self.s_priority = pn.widgets.IntInput(
            name="priority (0-9)", value=5, start=0, end=9, width=110
        )
        self.s_topk = pn.widgets.IntInput(name="top-k", value=5, start=1, end=50, width=90)
        self.s_mode = pn.widgets.Select(
            name="retrieval mode", options=["hybrid", "vector", "keyword"], width=120
        )
        self.s_tokens = pn.widgets.IntInput(
            name="max tokens", value=128, start=1, end=2048, width=110
        )
        self.s_temp = pn.widgets.FloatInput(
            name="temperature", value=0.0, start=0, end=2, step=0.1, width=110
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
        self.result.object = task_detail(task)
        if task["state"] in ("completed", "failed", "cancelled"):
            self.followed = None  # reached its end: stop re-reading it

    async def _submit(self, _: Any) -> None:
        kind = self.s_type.value
        params: dict = {"top_k": self.s_topk.value, "mode": self.s_mode.value}
        if kind != "retrieve":
            params.update(max_new_tokens=self.s_tokens.value, temperature=self.s_temp.value)
        body = {
            "type": kind,
            "priority": self.s_priority.value,
            "params": params,
            "input": {("prompt" if kind == "generate" else "query"): self.s_query.value},
        }
        try:
            task = await self.api.submit(body)  # one idempotency key per click, for all its tries
        except ApiError as exc:
            self.result.object = f'<b style="color:#c53030">{html.escape(str(exc))}</b>'
            return
        self.followed = task["id"]
        await self.refresh()
