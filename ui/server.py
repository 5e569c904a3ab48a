"""Serving the dashboard from a node: Panel (Bokeh on tornado) on the node's own
asyncio loop, on the node's dashboard_port."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.config import TlsSettings

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
    peers: Callable[[], dict[str, str]],
    warnings: Sequence[str] = (),
    origins: Sequence[str] = (),
    tls: TlsSettings | None = None,
) -> Callable[[], Awaitable[None]]:
    """Start serving; returns the function that stops it.  Panel is imported here,
    so a node with the dashboard off never pays for it.  With `tls` enabled the page
    is served over https, and the session's client reaches the API (https too) with
    the node's own certificate pinned."""
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

    local_api = api_url.replace("0.0.0.0", "127.0.0.1")  # (the runtime gives a loopback one)
    ssl_options: dict[str, str] = {}
    api_ssl = None
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        from node.tls import pinned_client_context

        # Bokeh's Server builds its TLS context from these two (bokeh/server/server.py).
        ssl_options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
        # The API at local_api is this node's own, at an address its certificate need not
        # name (127.0.0.1 for a node on 0.0.0.0, say): trust that one certificate and
        # nothing else, without a host name check (node/tls.py says why that is safe).
        api_ssl = pinned_client_context(tls.cert_file)

    def session() -> object:  # a plain function: Panel calls it once per browser session
        # The other nodes' dashboards as the cluster knows them now (config and gossip),
        # so a page also offers the nodes that joined after this one started.
        return page(local_api, node_id, peers(), warnings, ssl_context=api_ssl)

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
        # Panel's own "Launching server at http://..." line says http even with TLS:
        # with TLS only our line below names the address.
        verbose=not ssl_options,
        **ssl_options,
    )
    server.start()
    log.info("dashboard on %s://%s:%d", "https" if ssl_options else "http", host, port)

    async def stop() -> None:
        server.stop()

    return stop
