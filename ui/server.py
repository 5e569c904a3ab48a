"""Serving the dashboard from a node: Panel (Bokeh on tornado) on the node's own
asyncio loop, on the node's dashboard_port."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger("ragraft.ui")


def allowed_origins(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The origins (host:port, as Bokeh matches them) whose pages may open this
    dashboard's websocket: the address it serves on and, when that is a loopback or
    wildcard address, the machine's own names; plus `extra` (a reverse proxy, say).
    Never "*": a page on another site could otherwise drive the dashboard of a
    visitor who is logged in to it."""
    import socket

    names = {host}
    if host in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
        names |= {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
    origins = {f"{name}:{port}" for name in names if name and name not in ("0.0.0.0", "::")}
    return sorted(origins | set(extra))


async def start_dashboard(
    node_id: str,
    host: str,
    port: int,
    api_url: str,
    peers: dict[str, str],
    warnings: Sequence[str] = (),
    origins: Sequence[str] = (),
) -> Callable[[], Awaitable[None]]:
    """Start serving; returns the function that stops it.  Panel is imported here,
    so a node with the dashboard off never pays for it."""
    import os

    # No CDN: nodes may run without internet, so Bokeh's and Panel's scripts are served
    # by the node itself.
    os.environ.setdefault("BOKEH_RESOURCES", "server")
    import panel as pn
    from tornado.ioloop import IOLoop

    pn.config.inline = True
    # Every open page checks /liveness every 2 s (ui/watchdog.py): keep tornado's
    # per-request lines out of the node's log.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)

    from ui.app import page

    local_api = api_url.replace("0.0.0.0", "127.0.0.1")

    def session() -> object:  # a plain function: Panel calls it once per browser session
        return page(local_api, node_id, peers, warnings)

    server = pn.serve(
        {"/": session},
        port=port,
        address=host,
        websocket_origin=allowed_origins(host, port, origins),
        show=False,
        liveness=True,
        start=False,
        title=f"ragraft · {node_id}",
        loop=IOLoop.current(),
        check_unused_sessions=5000,
        unused_session_lifetime=15000,
    )
    server.start()
    log.info("dashboard on http://%s:%d", host, port)

    async def stop() -> None:
        server.stop()

    return stop
