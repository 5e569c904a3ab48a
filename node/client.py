"""A small synchronous client of the REST API for the `ragraft` CLI.

It talks to the nodes of cluster.toml (or --url) in order and fails over to the
next one when a node does not answer; every node serves the whole API.  The
bearer token comes from RAGRAFT_TOKEN or RAGRAFT_API_KEY, else from the
credentials file `ragraft login` writes (~/.config/ragraft/credentials.json,
or under RAGRAFT_CONFIG_DIR), kept per cluster and readable only by its owner.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code


def credentials_path() -> Path:
    base = os.environ.get("RAGRAFT_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "ragraft")
    return Path(base) / "credentials.json"


def saved_token(cluster: str) -> str | None:
    env = os.environ.get("RAGRAFT_TOKEN") or os.environ.get("RAGRAFT_API_KEY")
    if env:
        return env
    try:
        return json.loads(credentials_path().read_text()).get(cluster)
    except (OSError, ValueError):
        return None


def save_token(cluster: str, token: str) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    stored[cluster] = token
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stored, f)
    os.chmod(path, 0o600)
    return path


class Client:
    def __init__(self, urls: list[str], token: str | None = None, timeout: float = 30.0) -> None:
        self.urls = [u.rstrip("/") if u.startswith("http") else "http://" + u.rstrip("/") for u in urls]
        self.token = token
        self.timeout = timeout
        self.answered_by: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                content_type: str = "application/json", auth: bool = True) -> Any:
        payload = json.dumps(body).encode() if body is not None else data
        tried = []
        for url in self.urls:
            headers = {"Content-Type": content_type} if payload is not None else {}
            if auth and self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            request = urllib.request.Request(url + path, data=payload, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    self._note(url, tried)
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                answer = _json(exc.read())
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                if exc.code == 503 and error.get("code") in ("no_leader",) and url != self.urls[-1]:
                    tried.append(url)
                    continue
                self._note(url, tried)
                message = error.get("message") or f"HTTP {exc.code}"
                if exc.code == 401:
                    message += " — run `ragraft login` (or set RAGRAFT_API_KEY)"
                raise ClientError(message, exc.code, error.get("code", "")) from None
            except (urllib.error.URLError, OSError) as exc:
                tried.append(url)
                reason = getattr(exc, "reason", exc)
                print(f"ragraft: {url} does not answer ({reason}); trying the next node", file=sys.stderr)
        raise ClientError(f"no node answers (tried {', '.join(tried)}); is the cluster up? start it with "
                          "`ragraft up`, or pass --url of a running node")

    def _note(self, url: str, tried: list[str]) -> None:
        if tried:
            print(f"ragraft: answered by {url}", file=sys.stderr)
        self.answered_by = url

    def upload(self, filename: str, content: bytes, fields: dict[str, str]) -> Any:
        boundary = "ragraft" + uuid.uuid4().hex
        body = bytearray()
        for name, value in fields.items():
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self.request("POST", "/api/v1/kb/documents", data=bytes(body),
                            content_type=f"multipart/form-data; boundary={boundary}")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return None
