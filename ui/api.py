"""The dashboard's client of its node's REST API (aiohttp, one per browser session).

The dashboard has no data path of its own: it calls the same API as every other
client, with the logged-in user's token, so it has exactly the API's users,
roles and rules (a user sees only their own tasks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SessionApi:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None
        self.user: str | None = None
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: Any = None, data: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._http().request(method, self.base_url + path, json=body, data=data,
                                            headers=headers) as response:
                payload = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise ApiError(0, f"this node's API does not answer ({exc})") from None
        if response.status >= 400:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise ApiError(response.status, error.get("message", f"HTTP {response.status}"))
        return payload

    async def login(self, user: str, password: str) -> None:
        answer = await self.call("POST", "/api/v1/auth/token", {"username": user, "password": password})
        self.token, self.user = answer["access_token"], user

    async def upload(self, filename: str, content: bytes, doc_id: str | None = None) -> Any:
        """Upload one file; with `doc_id`, as the next version of that document."""
        form = aiohttp.FormData()
        if doc_id is not None:
            form.add_field("id", doc_id)
        form.add_field("file", content, filename=filename)
        return await self.call("POST", "/api/v1/kb/documents", data=form)

    async def events(self) -> AsyncIterator[str]:
        """Yield the type of each event on the node's stream (GET /api/v1/events)
        until the stream ends; the dashboard only needs to know that something changed."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        async with self._http().get(self.base_url + "/api/v1/events", headers=headers,
                                    timeout=timeout) as response:
            if response.status != 200:
                raise ApiError(response.status, f"the event stream was refused (HTTP {response.status})")
            async for line in response.content:
                if line.startswith(b"event:"):
                    yield line[6:].strip().decode()
