"""The banner a page shows when the node serving it stops answering.

The check has to run in the browser: when the node is gone, so is the websocket
that would have told the page.  Every two seconds the page asks its own node's
/liveness; no answer shows the banner with links to the other nodes.
"""

from __future__ import annotations

import html
from typing import ClassVar

import param
from panel.reactive import ReactiveHTML


class NodeWatchdog(ReactiveHTML):
    message = param.String(doc="the banner's HTML (escaped by the caller)")

    # fixed at the top of the window: it must be seen whatever the page is scrolled to
    _template = (
        '<div id="banner" class="node-down" '
        'style="display:none;position:fixed;top:0;left:0;right:0;z-index:1000;background:#c53030;color:white;padding:8px;font-weight:bold"></div>'
    )
    _scripts: ClassVar[dict[str, str]] = {
        "render": """
            banner.innerHTML = data.message;
            state.timer = setInterval(function () {
              fetch('/liveness', {cache: 'no-store'})
                .then(function () { banner.style.display = 'none'; })
                .catch(function () { banner.style.display = 'block'; });
            }, 2000);
        """,
        "remove": "clearInterval(state.timer);",
    }


def watchdog(node_id: str, peers: dict[str, str]) -> NodeWatchdog:
    links = " · ".join(
        f'<a href="{html.escape(url)}" style="color:white">{html.escape(n)}</a>'
        for n, url in sorted(peers.items())
    )
    message = (
        f"Node {html.escape(node_id)}, which serves this page, stopped answering. "
        f"Open another node: {links}"
    )
    return NodeWatchdog(message=message, sizing_mode="stretch_width", height=0, min_height=0)
