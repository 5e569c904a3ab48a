"""The dashboard page: one `Dashboard` per browser session, built by `page()`.

After login it shows the Overview, Tasks, Submit, Knowledge and Nodes tabs, and
Users for an admin.
Updates are pushed over Panel's websocket, never by reloading the page:

- the session follows the node's event stream (GET /api/v1/events); a task,
  document or node event marks the page stale, and a 0.25 s tick re-reads what
  changed at most every 0.5 s, so a change shows within a second;
- every 2 s the tick also re-reads the slower-moving parts (charts, node
  resources), which also covers any event lost while reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

import panel as pn

from node.client.aio import ApiClient, ApiError
from ui.views.knowledge import KnowledgeView
from ui.views.nodes import NodesView
from ui.views.overview import OverviewView
from ui.views.submit import SubmitView
from ui.views.tasks import TasksView
from ui.views.users import UsersView
from ui.watchdog import watchdog

log = logging.getLogger("ragraft.ui")
TICK_MS = 250
FAST_MIN_S = 0.5  # at most this often after events
SLOW_S = 2.0


class Dashboard:
    def __init__(
        self,
        api_url: str,
        node_id: str,
        peers: dict[str, str],
        warnings: Sequence[str] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Its own node only: the page dies with it.  `ssl_context`: how an https API is
        # verified (ui/server.py pins the node's own certificate).
        self.api = ApiClient([api_url], timeout=15.0, ssl_context=ssl_context)
        self.node_id = node_id
        self.peers = peers
        # What an insecure cluster leaves open, on every view (node/secrets.py insecurity).
        self.insecure = pn.pane.Alert(
            "**INSECURE cluster** (insecure = true): "
            + "; ".join(html.escape(w) for w in warnings),
            alert_type="danger",
            visible=bool(warnings),
            sizing_mode="stretch_width",
            css_classes=["insecure"],
        )
        self.status = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["status"])
        self.root = pn.Column(sizing_mode="stretch_width")
        self._stale = True
        self._busy = False
        self._last_fast = self._last_slow = 0.0
        self._follower: asyncio.Task | None = None
        self._login_view()

    # ------------------------------------------------------------ login
    def _login_view(self) -> None:
        self.user = pn.widgets.TextInput(name="Username", value="admin", placeholder="username")
        self.password = pn.widgets.PasswordInput(name="Password", placeholder="password")
        button = pn.widgets.Button(name="Log in", button_type="primary")
        self.login_error = pn.pane.Markdown("")
        button.on_click(self._login)
        self.root[:] = [
            self.insecure,
            pn.pane.Markdown(f"## ragraft · node {html.escape(self.node_id)}"),
            self.user,
            self.password,
            button,
            self.login_error,
        ]

    async def _login(self, _: Any) -> None:
        try:
            await self.api.login(self.user.value, self.password.value)
            me = await self.api.request("GET", "/api/v1/auth/me")
        except ApiError as exc:
            self.login_error.object = f"**{html.escape(str(exc))}**"
            return
        self._main_view(admin=me.get("role") == "admin")
        await self.refresh(slow=True)
        self._follower = asyncio.create_task(
            self._follow_events(), name=f"dashboard-events-{self.api.user}"
        )
        pn.state.add_periodic_callback(self._tick, period=TICK_MS)

    # ------------------------------------------------------------ layout
    def _main_view(self, admin: bool) -> None:
        nodes = sorted({self.node_id, *self.peers})
        self.overview = OverviewView(nodes)
        self.tasks = TasksView(self.api, nodes, self._changed)
        self.submit = SubmitView(self.api)
        self.knowledge = KnowledgeView(self.api)
        self.nodes = NodesView()
        self.users = UsersView(self.api) if admin else None
        views: list[Any] = [self.overview, self.tasks, self.submit, self.knowledge, self.nodes]
        if self.users is not None:
            views.append(self.users)
        self.tabs = pn.Tabs(
            *(v.panel for v in views),
            dynamic=False,
            sizing_mode="stretch_width",
        )
        header = pn.pane.Markdown(
            f"## ragraft · node {html.escape(self.node_id)} · {html.escape(self.api.user)}"
        )
        self.root[:] = [
            watchdog(self.node_id, self.peers),
            self.insecure,
            header,
            self.status,
            self.tabs,
        ]

    # ------------------------------------------------------------ live updates
    async def _follow_events(self) -> None:
        while True:
            try:
                async for kind, _ in self.api.events(types="task,kb,node,cluster"):
                    if kind != "hello":
                        self._stale = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the node went away or the stream ended: reconnect
                log.debug("dashboard event stream ended (%s); reconnecting", exc)
            self._stale = True
            await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        if self._busy:
            return
        now = time.monotonic()
        slow = now - self._last_slow >= SLOW_S
        if slow or (self._stale and now - self._last_fast >= FAST_MIN_S):
            await self.refresh(slow=slow)

    async def _changed(self) -> None:
        self._stale = True
        await self.refresh(slow=False)

    async def refresh(self, slow: bool) -> None:
        self._busy = True
        self._stale = False
        self._last_fast = time.monotonic()
        try:
            self.overview.show_stats(await self.api.request("GET", "/api/v1/stats"))
            await self.tasks.refresh()
            await self.submit.refresh()
            await self.knowledge.refresh()
            if slow and self.users is not None:
                await self.users.refresh()
            if slow:
                self._last_slow = time.monotonic()
                nodes = (await self.api.request("GET", "/api/v1/nodes"))["items"]
                self.overview.show_nodes(nodes)
                self.overview.show_history(
                    await self.api.request("GET", "/api/v1/stats/history?minutes=10&points=60")
                )
                self.nodes.show(await self.api.request("GET", "/api/v1/cluster"), nodes)
                self.nodes.show_history(await self.api.request("GET", "/api/v1/nodes/history"))
            self.status.object = ""
        except ApiError as exc:
            self.status.object = f"⚠ {html.escape(str(exc))}"
        finally:
            self._busy = False

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
        await self.api.close()


def page(
    api_url: str,
    node_id: str,
    peers: dict[str, str],
    warnings: Sequence[str] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> pn.viewable.Viewable:
    pn.extension("tabulator")
    dashboard = Dashboard(api_url, node_id, peers, warnings, ssl_context)

    def closed(_: Any) -> None:
        asyncio.get_running_loop().create_task(dashboard.close())

    pn.state.on_session_destroyed(closed)
    return dashboard.root
