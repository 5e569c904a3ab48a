"""A small synchronous client of the REST API, for the `ragraft` CLI.

Stdlib only (urllib), so that the CLI starts in tens of milliseconds.  Every
node serves the whole API and accepts writes, so the client tries the nodes in
order and moves on when one does not answer (refused, timed out, dropped) or
answers 502/503/504 (no leader, no quorum, models still loading); the node that
answered goes first for the rest of the command, so a dead node costs one try.
A submission is sent with one Idempotency-Key (`idempotency_key=`) on every try,
so a write a node applied before it stopped answering is not applied again by
the next node: the next node answers with what the first one created.

Credentials: RAGRAFT_TOKEN, else RAGRAFT_API_KEY (sent as the bearer), else the
token `ragraft login` kept in `credentials.json` under RAGRAFT_CONFIG_DIR
(default ~/.config/ragraft), one entry per cluster, readable by its owner only.

https URLs (a cluster with [tls]) are verified against the system's trust store
plus the PEM bundle RAGRAFT_CA_FILE names, e.g. a self-signed cluster certificate
(`ssl_context`, which the asyncio client uses too).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from node.http.idempotency import HEADER as IDEMPOTENCY_HEADER

ProgressFn = Callable[[int, int], None]  # (bytes sent, bytes in all)

# Statuses after which another node may do better: 503 = this node has no leader
# or quorum, or its models are loading; 502/504 = a proxy in front lost the node.
_FAIL_OVER_STATUSES = frozenset({502, 503, 504})
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UPLOAD_CHUNK = 64 * 1024
CA_FILE_VARIABLE = "RAGRAFT_CA_FILE"


class ClientError(Exception):
    """The API refused a request, or no node answered; `str()` is meant for people."""

    def __init__(
        self,
        message: str,
        status: int = 0,
        code: str = "",
        details: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = dict(details or {})
        self.body = body  # the raw JSON error, for --json


class Unreachable(ClientError):
    """No node of the list answered at all."""

    def __init__(self, tried: list[tuple[str, str]]) -> None:
        where = "; ".join(f"{url} ({reason})" for url, reason in tried)
        super().__init__(
            f"no node answers — tried {where}. Is the cluster running? Start it with `ragraft up`, "
            "or pass --url of a running node",
            code="unreachable",
        )
        self.tried = tried


# ------------------------------------------------------------------ TLS
def ssl_context(cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """How https answers are verified: the system's trust store, plus the certificates
    in RAGRAFT_CA_FILE and in `cafile` (PEM), e.g. a cluster's self-signed certificate
    or a private CA.  A certificate of those may be the trust anchor itself (partial
    chain), so a CA-issued leaf can be trusted alone.  The host name is checked."""
    context = ssl.create_default_context()
    extra = [(CA_FILE_VARIABLE, os.environ.get(CA_FILE_VARIABLE)), ("CA file", cafile)]
    loaded = False
    for what, path in extra:
        if not path:
            continue
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(
                f"{what} {os.fspath(path)!r} does not load as PEM certificates ({exc}); "
                "name a readable PEM bundle (the cluster's certificate or its CA)",
                code="bad_ca_file",
            ) from None
        loaded = True
    if loaded:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


# ------------------------------------------------------------------ credentials
def config_dir() -> Path:
    return Path(os.environ.get("RAGRAFT_CONFIG_DIR") or Path.home() / ".config" / "ragraft")


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _read_credentials() -> dict[str, Any]:
    try:
        stored = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def token_source(cluster: str) -> tuple[str | None, str]:
    """The bearer to send for `cluster` and where it came from (for messages)."""
    for name in ("RAGRAFT_TOKEN", "RAGRAFT_API_KEY"):
        if os.environ.get(name):
            return os.environ[name], name
    entry = _read_credentials().get(cluster)
    if isinstance(entry, str):  # the first file format: cluster -> token
        return entry, str(credentials_path())
    if isinstance(entry, dict) and isinstance(entry.get("token"), str):
        return entry["token"], str(credentials_path())
    return None, ""


def saved_token(cluster: str) -> str | None:
    return token_source(cluster)[0]


def save_token(keys: list[str], token: str, user: str, expires_in: int) -> Path:
    """Keep `token` under every name in `keys`; the file is created 0600 (it holds
    bearer tokens) and rewritten whole, other clusters' entries kept."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    stored = _read_credentials()
    entry = {"token": token, "user": user, "expires_at": int(time.time()) + int(expires_in)}
    for key in keys:
        stored[key] = entry
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stored, f, indent=1)
    os.chmod(temporary, 0o600)  # in case the file existed with wider rights
    os.replace(temporary, path)  # atomic: a crash never leaves half a file
    return path


def token_cluster(token: str) -> str | None:
    """The cluster a login token was issued by (its `iss` claim, "ragraft:<name>");
    read without checking the signature — only to file the token under a name."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return (
        issuer.removeprefix("ragraft:")
        if isinstance(issuer, str) and issuer.startswith("ragraft:")
        else None
    )


# ------------------------------------------------------------------ nodes learnt
# The nodes a cluster listed the last time (GET /api/v1/nodes), per credentials entry:
# a command fails over to them too, not only to the ones its cluster.toml or --url
# names, so a node that joined later, or an address the file does not have, is used.
KNOWN_NODES_FRESH_S = 30.0  # a list younger than this is not asked for again


def known_nodes_path() -> Path:
    return config_dir() / "nodes.json"


def known_nodes(key: str) -> tuple[dict[str, str], float]:
    """url -> node id as last learnt for `key`, and how old that is (inf: never)."""
    try:
        stored = json.loads(known_nodes_path().read_text())
        entry = stored[key]
        nodes = {str(u): str(n) for u, n in entry["nodes"].items()}
        return nodes, max(0.0, time.time() - float(entry["at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, float("inf")


def known_under(urls: list[str]) -> str | None:
    """The credentials entry whose cluster last listed one of `urls`: a command given
    another node's --url is the same cluster's, and uses the same login."""
    try:
        stored = json.loads(known_nodes_path().read_text())
        for key, entry in stored.items():
            if any(normalize_url(u) in entry["nodes"] for u in urls):
                return str(key)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def remember_nodes(key: str, nodes: Mapping[str, str]) -> None:
    path = known_nodes_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored[key] = {"at": time.time(), "nodes": dict(nodes)}
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stored, f, indent=1)
    os.replace(temporary, path)


# ------------------------------------------------------------------ bodies
class Upload:
    """A multipart/form-data body: text fields and one file, sent in chunks so
    that `on_progress` can drive a progress bar.  Iterable more than once, so a
    fail-over can send it again."""

    def __init__(
        self,
        filename: str,
        content: bytes,
        fields: Mapping[str, str] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        boundary = "ragraft-" + uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = bytearray()
        for name, value in (fields or {}).items():
            head += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
                f"{value}\r\n"
            ).encode()
        # octet-stream: the node tells the format from the file name (and, for PDFs, the bytes).
        head += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quote(filename)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._parts = (bytes(head), content, f"\r\n--{boundary}--\r\n".encode())
        self.size = sum(len(p) for p in self._parts)
        self.on_progress = on_progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for part in self._parts:
            for start in range(0, len(part), _UPLOAD_CHUNK):
                chunk = part[start : start + _UPLOAD_CHUNK]
                yield chunk
                sent += len(chunk)
                if self.on_progress is not None:
                    self.on_progress(sent, self.size)


def _quote(value: str) -> str:
    # As browsers do: a quote or a line break would end the header value early.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# ------------------------------------------------------------------ the client
class Client:
    def __init__(
        self,
        urls: list[str],
        token: str | None = None,
        timeout: float = 15.0,
        names: Mapping[str, str] | None = None,
        log: TextIO | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("give at least one node URL")
        self.ca_file = ca_file  # trusted besides the system and RAGRAFT_CA_FILE
        self.urls = [normalize_url(u) for u in urls]
        self.token = token
        self.timeout = timeout
        self.names = {
            normalize_url(u): n for u, n in (names or {}).items()
        }  # url -> node id, for messages
        self.log = log or sys.stderr
        self.answered_by: str | None = None
        self.failed_over = False  # a node did not answer during this client's life
        self.stale = False  # the last answer came from a node without a leader
        self._ssl: ssl.SSLContext | None = None  # made at the first https request

    def learn_nodes(self, timeout: float = 5.0) -> dict[str, str]:
        """Ask the cluster which nodes it has (GET /api/v1/nodes) and add the API URLs
        they publish to the ones to fail over to; url -> node id of every node listed."""
        answer = self.request("GET", "/api/v1/nodes", timeout=timeout)
        nodes: dict[str, str] = {}
        for item in answer.get("items", []) if isinstance(answer, dict) else []:
            url, node_id = item.get("api_url"), item.get("id")
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                nodes[normalize_url(url)] = str(node_id)
        for url, node_id in nodes.items():
            if url not in self.urls:
                self.urls.append(url)
            self.names.setdefault(url, node_id)
        return nodes

    def label(self, url: str) -> str:
        return f"{self.names[url]} ({url})" if url in self.names else url

    def get(self, path: str, query: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return self.request("GET", path, query=query, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def upload(
        self, body: Upload, timeout: float = 300.0, idempotency_key: str | None = None
    ) -> Any:
        return self.request(
            "POST",
            "/api/v1/kb/documents",
            payload=body,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        payload: Upload | None = None,
        auth: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """The decoded answer of the first node that can serve it.  With
        `idempotency_key`, every try carries it, so a write is applied once however
        many nodes it reaches."""
        encoded = urllib.parse.urlencode(
            {k: v for k, v in (query or {}).items() if v not in (None, "")}
        )
        if encoded:
            path += "?" + encoded
        if self._ssl is None and any(u.startswith("https://") for u in self.urls):
            self._ssl = ssl_context(
                self.ca_file
            )  # (here, not in __init__: a bad CA file is a ClientError)
        tried: list[tuple[str, str]] = []
        refusal: ClientError | None = None  # the last 5xx, reported if every node gives one
        for url in list(self.urls):
            try:
                answer = self._send(
                    url, method, path, body, payload, auth, timeout or self.timeout, idempotency_key
                )
            except _Unanswered as exc:
                # A write that timed out after it was sent may have been applied all the same.
                tried.append((url, exc.reason))
                maybe = ""
                if exc.sent and method in _WRITES:
                    maybe = (
                        " (it may have been applied there; "
                        "the next node sees the same idempotency key)"
                        if idempotency_key
                        else " (the request may have been applied there)"
                    )
                self._say_moving_on(url, f"does not answer: {exc.reason}{maybe}")
                continue
            except ClientError as exc:
                if exc.status not in _FAIL_OVER_STATUSES:
                    self._answered(url, tried)
                    raise
                refusal = exc
                tried.append((url, f"{exc.status} {exc.code or 'unavailable'}"))
                self._say_moving_on(url, f"cannot serve this now: {exc.message}")
                continue
            self._answered(url, tried)
            return answer
        if refusal is not None:
            raise refusal
        raise Unreachable(tried)

    def _send(
        self,
        url: str,
        method: str,
        path: str,
        body: Any,
        payload: Upload | None,
        auth: bool,
        timeout: float,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        data: Any = None
        if payload is not None:
            data = payload
            headers["Content-Type"] = payload.content_type
            headers["Content-Length"] = str(payload.size)  # urllib needs it for an iterable body
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
        try:
            context = self._ssl if url.startswith("https://") else None
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                self.stale = response.headers.get("X-Ragraft-Stale") == "true"
                if response.headers.get_content_type() == "application/octet-stream":
                    return response.read()  # a file (a backup): the caller's to keep
                return _decode(response.read(), response.status, url)
        except urllib.error.HTTPError as exc:
            raise api_error(
                exc.code, _decode_error(exc.read()), authenticated=bool(auth and self.token)
            ) from None
        except urllib.error.URLError as exc:
            # Raised before anything was sent: the connection itself failed.
            raise _Unanswered(_reason(exc.reason), sent=False) from None
        except TimeoutError as exc:
            raise _Unanswered(_reason(exc), sent=True) from None
        except (http.client.HTTPException, ConnectionError) as exc:
            raise _Unanswered(_reason(exc), sent=True) from None

    def _say_moving_on(self, url: str, what: str) -> None:
        self.failed_over = True
        if url == self.urls[-1]:
            return  # nothing left to move on to; the final error says it all
        print(f"ragraft: {self.label(url)} {what}; trying the next node", file=self.log, flush=True)

    def _answered(self, url: str, tried: list[tuple[str, str]]) -> None:
        if tried:
            print(f"ragraft: answered by {self.label(url)}", file=self.log, flush=True)
            # The node that answered goes first from now on: a dead node costs one try per command.
            self.urls.remove(url)
            self.urls.insert(0, url)
        self.answered_by = url


class _Unanswered(Exception):
    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason, self.sent = reason, sent


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if url.startswith(("http://", "https://")) else "http://" + url


def api_error(status: int, body: Any, authenticated: bool = True) -> ClientError:
    """A ClientError from the API's `{"error": {"code", "message", "details"}}`,
    with what to do next where the API's message cannot know it."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": f"HTTP {status} without an API error body: {str(body)[:200]}"}
    code = str(error.get("code") or "")
    raw_details = error.get("details")
    details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
    message = str(error.get("message") or f"HTTP {status}")
    if details.get("field") and details["field"] not in message:
        message += f" (field {details['field']})"
    if status == 401 and code != "bad_credentials":
        message = (
            "not logged in: run `ragraft login` (or set RAGRAFT_TOKEN / RAGRAFT_API_KEY)"
            if not authenticated
            else f"the cluster refused the credentials ({message}): run `ragraft login` again"
        )
    elif status == 403:
        message += " — log in as an admin (`ragraft login --user admin`)"
    return ClientError(message, status, code, details, body)


def _decode(raw: bytes, status: int, url: str) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise ClientError(
            f"{url} answered {status} with something that is not JSON ({raw[:80]!r}); "
            "is that a ragraft node's API port?",
            status,
        ) from None


def _decode_error(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode("utf-8", "replace")


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
            return f"{exc.verify_message}: use a URL with a name its TLS certificate holds"
        return (
            f"its TLS certificate is not trusted ({exc.verify_message}); if the cluster's "
            f"certificate is self-signed or from a private CA, set {CA_FILE_VARIABLE} to it (PEM)"
        )
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
