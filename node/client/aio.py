"""An asyncio client of the ragraft REST API, for the terminal UI (given every
node, failing over between them) and the dashboard (given its own node).

Every node serves the whole API and accepts writes, so when the node in use
stops answering, or answers 503 no_quorum (it is cut off from the majority), the
client moves on to the next one and says so through `on_switch`; a token from
any node is valid on all of them.  A submission (`submit`, `upload`) carries one
Idempotency-Key for all its tries, so a write that was applied by a node that
then failed to answer is not applied a second time by the next one.

https URLs are verified as the blocking client does (the system's trust store plus
RAGRAFT_CA_FILE), unless the caller gives its own `ssl_context` (the dashboard pins
its node's certificate: ui/server.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from node.client.rest import ClientError
from node.client.rest import ssl_context as default_ssl_context
from node.http.idempotency import HEADER as IDEMPOTENCY_HEADER
from node.http.idempotency import new_key

SwitchFn = Callable[[str], None]
# Builds a request body afresh for each try (aiohttp sends a FormData only once).
DataFn = Callable[[], Any]


def _fresh(data: Any) -> Any:
    """The body for one try: a DataFn's new product (FormData is callable itself,
    but it is a body, not a DataFn)."""
    return data() if callable(data) and not isinstance(data, aiohttp.FormData) else data


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Unreachable(ApiError):
    def __init__(self, urls: list[str]) -> None:
        super().__init__(
            0,
            "unreachable",
            f"no node answers ({', '.join(urls)}); is the cluster up? (`ragraft up`)",
        )


class ApiClient:
    def __init__(
        self,
        urls: list[str],
        token: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        discover: bool = False,
    ) -> None:
        if not urls:
            raise ValueError("give at least one node URL")
        self.urls = [u.rstrip("/") for u in urls]
        # discover: every node list fetched (GET /api/v1/nodes) adds the nodes it names
        # to the ones to fail over to: a node that joined, one missing from the config.
        self.discover = discover
        self.ssl_context = ssl_context  # None: the default (system store + RAGRAFT_CA_FILE)
        self.index = 0
        self.token = token
        self.user: str | None = None  # who logged in through login()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.on_switch: SwitchFn = lambda _message: None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.urls[self.index]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(ssl=self._tls())
            )
        return self._session

    def _tls(self) -> ssl.SSLContext | bool:
        if self.ssl_context is None and any(u.startswith("https://") for u in self.urls):
            try:
                self.ssl_context = default_ssl_context()
            except ClientError as exc:  # RAGRAFT_CA_FILE names no PEM bundle
                raise ApiError(0, exc.code, exc.message) from None
        return self.ssl_context or True  # True: aiohttp's default verification

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _fail_over(self, reason: str) -> None:
        failed = self.url
        self.index = (self.index + 1) % len(self.urls)
        self.on_switch(f"{failed} is unreachable ({reason}); now using {self.url}")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer; raises ApiError for an error answer, Unreachable when no node
        answers.  `data` may be a DataFn, called for each try.  Every try (one per node)
        sends the same `headers`, so an Idempotency-Key among them covers the fail-overs."""
        no_quorum: ApiError | None = None
        for _ in range(len(self.urls)):
            try:
                async with self._http().request(
                    method,
                    self.url + path,
                    json=body,
                    data=_fresh(data),
                    headers={**self._headers(), **(headers or {})},
                ) as response:
                    payload = await response.json(content_type=None)
                    if response.status >= 400:
                        error = (
                            (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
                        )
                        raise ApiError(
                            response.status,
                            error.get("code", "error"),
                            error.get("message", f"HTTP {response.status}"),
                        )
                    if self.discover and method == "GET" and path == "/api/v1/nodes":
                        self.learn(payload)
                    return payload
            except ApiError as exc:
                if exc.status != 503 or exc.code != "no_quorum":
                    raise
                # This node cannot reach a majority; another one may.
                no_quorum = exc
                self._fail_over("no quorum")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._fail_over(type(exc).__name__)
        if no_quorum is not None:
            raise no_quorum
        raise Unreachable(self.urls)

    def learn(self, nodes: Any) -> list[str]:
        """Add the API URLs a node list (GET /api/v1/nodes) publishes that this client
        does not know yet, after the known ones; the URLs added."""
        added = []
        for item in nodes.get("items", []) if isinstance(nodes, dict) else []:
            url = item.get("api_url") if isinstance(item, dict) else None
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                url = url.rstrip("/")
                if url not in self.urls:
                    self.urls.append(url)
                    added.append(url)
        return added

    async def submit(self, body: dict[str, Any], key: str | None = None) -> Any:
        """Submit one task (POST /api/v1/tasks) under one idempotency key for all tries."""
        return await self.request(
            "POST", "/api/v1/tasks", body, headers={IDEMPOTENCY_HEADER: key or new_key()}
        )

    async def login(self, username: str, password: str) -> None:
        answer = await self.request(
            "POST", "/api/v1/auth/token", {"username": username, "password": password}
        )
        self.token, self.user = answer["access_token"], username

    async def upload(
        self, filename: str, content: bytes, doc_id: str | None = None, key: str | None = None
    ) -> Any:
        """Upload one file; with `doc_id`, as the next version of that document.  One
        idempotency key for all tries: a retried upload makes no second version."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            if doc_id is not None:
                data.add_field("id", doc_id)
            data.add_field("file", content, filename=filename)
            return data

        return await self.request(
            "POST",
            "/api/v1/kb/documents",
            data=form,
            headers={IDEMPOTENCY_HEADER: key or new_key()},
        )

    async def events(
        self, types: str = "task,node,cluster"
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Server-sent events from the node in use; reconnects (failing over) when the
        stream breaks.  Yields ("reconnected", {}) after a break, so views can reload."""
        broken = False
        while True:
            try:
                async with self._http().get(
                    f"{self.url}/api/v1/events?types={types}",
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                ) as response:
                    if response.status != 200:
                        raise ApiError(
                            response.status,
                            "events",
                            f"the event stream answered {response.status}",
                        )
                    if broken:
                        broken = False
                        yield "reconnected", {}
                    kind = None
                    async for raw in response.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: ") and kind:
                            yield kind, json.loads(line[6:])
                    broken = True  # the node closed the stream (stopping?): reconnect
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                broken = True
                self._fail_over(type(exc).__name__)
                await asyncio.sleep(0.5)
