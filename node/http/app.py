"""The aiohttp application every node serves: the routes of node/http/, wired to
the replica and the node's services.

node/runtime/main.py builds the services and calls `build_http`; nothing here
starts anything.  Requests pass three middlewares, outermost first: json_errors
(aiohttp's own refusals and bugs answer in the API's JSON error format), the
stale mark (no leader known: this replica may be behind) and authentication.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from node.config import ClusterConfig
from node.gossip.history import MetricsHistory
from node.http import openapi
from node.http.auth import AuthAPI, Authenticator
from node.http.backup import BackupAPI
from node.http.cluster import ClusterAPI, Membership, ModelStatus
from node.http.drain import DrainAPI
from node.http.errors import json_errors
from node.http.events import EventHub
from node.http.join import JoinAPI
from node.http.kb import KnowledgeAPI, RagStatus
from node.http.metrics import MetricsExporter
from node.http.openai_compat import OpenAIRoutes
from node.http.tasks import TaskAPI
from node.http.users import UsersAPI
from node.rag.knowledge import KnowledgeBase
from node.replica.replica import Replica

STALE_HEADER = "X-Ragraft-Stale"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Rag(RagStatus, ModelStatus, Protocol):
    """What the routes use of the RAG service (node/execution/rag_service.py): the
    engine for searches, the model status for /readyz and uploads."""


def build_http(
    config: ClusterConfig,
    replica: Replica,
    executor: object,
    gossip: Membership,
    rag: Rag,
    events: EventHub,
    metrics: MetricsExporter,
    history: MetricsHistory | None,
) -> web.Application:
    """The node's REST API.  `executor` is not read by any route (its state reaches
    them through the replica, gossip and the metrics); the composition root hands
    every service over, so a route that needs it later has it here."""
    kb = replica.state.kb
    if not isinstance(kb, KnowledgeBase):
        raise TypeError("the HTTP API serves the replica's knowledge base; the replica has none")
    auth = Authenticator(config.security, replica, config.name)
    max_upload = config.rag.max_upload_mb * 1024 * 1024
    # Multipart uploads are streamed and checked per file; JSON bodies are read within
    # their route's smaller bound (node/http/body.py), so this is the uploads' ceiling.
    app = web.Application(
        client_max_size=max_upload + 1024 * 1024,
        middlewares=[json_errors, stale_marker(replica), auth.middleware()],
    )
    TaskAPI(replica, replica.node_id).routes(app)
    AuthAPI(auth, replica).routes(app)
    UsersAPI(auth, replica).routes(app)
    app.router.add_get("/api/v1/events", events.handle)
    app.router.add_get("/metrics", metrics.handle)
    OpenAIRoutes(replica).routes(app)
    KnowledgeAPI(replica, kb, rag, max_upload).routes(app)
    ClusterAPI(config, replica, gossip, rag, history).routes(app)
    JoinAPI(config, replica, gossip).routes(app)
    BackupAPI(config, replica).routes(app)
    DrainAPI(config, replica, gossip).routes(app)
    app.router.add_get("/openapi.json", openapi_handler())
    return app


def stale_marker(replica: Replica) -> Middleware:
    """Every answer of a node that knows no leader says so: its replica may be
    behind, so what it reads may be stale."""

    @web.middleware
    async def mark_stale(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if replica.leader is None and not response.prepared:
            response.headers[STALE_HEADER] = "true"
        return response

    return mark_stale


def openapi_handler() -> Handler:
    """GET /openapi.json: the document is generated from the vocabulary, which does
    not change while the node runs, so it is built once, on first use."""
    document: openapi.Schema | None = None

    async def serve(_: web.Request) -> web.StreamResponse:
        nonlocal document
        if document is None:
            document = openapi.document()
        return web.json_response(document)

    return serve
