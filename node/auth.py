"""Authentication: salted scrypt password hashes, JWT bearer tokens, API keys.

Every route needs `Authorization: Bearer <token or API key>` except health,
readiness, metrics, the OpenAPI document and the login route.  The middleware
puts the caller in `request["user"]` and `request["role"]` (admin | user).

Who exists: the built-in `admin` (its hash lives in the replicated accounts,
set at the cluster's first start from RAGRAFT_ADMIN_PASSWORD or a generated
password printed once), users from `[[security.users]]`, and API keys (from
`[[security.api_keys]]` or created through the API; only their SHA-256 is kept).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import msgpack
from aiohttp import web

from consensus.errors import RaftError
from consensus.node import RaftNode
from node.accounts import Accounts
from node.config import SecuritySettings
from node.ids import new_task_id, now_ms

log = logging.getLogger("ragraft.auth")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/api/v1/auth/token"})
API_KEY_PREFIX = "rgk_"
# scrypt with n=2**14, r=8: ~16 MiB and tens of ms per check; slow enough to make
# guessing expensive, fast enough for a login route.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1

ErrorFn = Callable[..., web.Response]
WriteFn = Callable[..., Awaitable[web.Response]]  # (command, ok_status=200) -> response


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.urlsafe_b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.urlsafe_b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_api_key() -> tuple[str, str]:
    """A new key and the SHA-256 hex digest that is stored instead of it."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key_digest(key)


def key_digest(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, settings: SecuritySettings, accounts: Accounts, cluster_name: str) -> None:
        self.settings = settings
        self.accounts = accounts
        self.issuer = f"ragraft:{cluster_name}"
        self._users = {u.name: u for u in settings.users}
        self._config_keys = {digest: user for user, digest in settings.api_keys}

    @property
    def secret(self) -> str | None:
        return self.settings.token_secret or self.accounts.token_secret

    def role_of(self, user: str) -> str | None:
        if user == "admin":
            return "admin"
        spec = self._users.get(user)
        return spec.role if spec is not None else None

    def check_password(self, user: str, password: str) -> str | None:
        """The user's role if the password is right, else None."""
        if user == "admin":
            hashed = self.accounts.admin_hash
            if hashed is None:
                return None
            return "admin" if verify_password(password, hashed) else None
        spec = self._users.get(user)
        if spec is None:
            verify_password(password, hash_password("x", b"0" * 16))  # same time for unknown users
            return None
        return spec.role if verify_password(password, spec.password_hash) else None

    def issue(self, user: str, role: str) -> dict:
        secret = self.secret
        if secret is None:
            raise LookupError("no token secret yet")
        now = int(time.time())
        ttl = self.settings.token_ttl_seconds
        token = jwt.encode(
            {"sub": user, "role": role, "iat": now, "exp": now + ttl, "iss": self.issuer},
            secret,
            algorithm="HS256",
        )
        return {"access_token": token, "token_type": "bearer", "expires_in": ttl}

    def identify(self, credential: str) -> tuple[str, str] | None:
        """(user, role) for a bearer token or an API key, else None."""
        if credential.startswith(API_KEY_PREFIX):
            digest = key_digest(credential)
            user = self._config_keys.get(digest)
            if user is None:
                key = self.accounts.key_by_digest(digest)
                user = key["user"] if key is not None else None
            role = self.role_of(user) if user is not None else None
            return (user, role) if user is not None and role is not None else None
        secret = self.secret
        if secret is None:
            return None
        try:
            claims = jwt.decode(
                credential,
                secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        user = claims["sub"]
        role = self.role_of(user)  # a removed user's old tokens stop working
        return (user, role) if role is not None else None

    def middleware(self, error: ErrorFn) -> Any:
        @web.middleware
        async def authenticate(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
                return await handler(request)
            header = request.headers.get("Authorization", "")
            if (
                not header
                and request.path == "/api/v1/events"
                and request.query.get("access_token")
            ):
                # Browsers' EventSource cannot send headers: the stream accepts the token in the URL.
                header = "Bearer " + request.query["access_token"]
            scheme, _, credential = header.partition(" ")
            who = (
                self.identify(credential.strip())
                if scheme.lower() == "bearer" and credential
                else None
            )
            if who is None:
                message = (
                    (
                        "missing bearer token: log in with POST /api/v1/auth/token {username, password} "
                        "and send Authorization: Bearer <access_token> (or an API key)"
                    )
                    if not header
                    else "invalid or expired token: log in again"
                )
                response = error(401, "unauthorized", message)
                response.headers["WWW-Authenticate"] = 'Bearer realm="ragraft"'
                return response
            request["user"], request["role"] = who
            return await handler(request)

        return authenticate


class AuthAPI:
    def __init__(self, auth: Authenticator, write: WriteFn, error: ErrorFn) -> None:
        self.auth = auth
        self.write = write  # TaskAPI.write: commit a command, refusals and no-quorum as HTTP errors
        self.error = error

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/auth/token", self.login)
        app.router.add_get("/api/v1/auth/me", self.me)
        app.router.add_post("/api/v1/auth/keys", self.create_key)
        app.router.add_get("/api/v1/auth/keys", self.list_keys)
        app.router.add_delete("/api/v1/auth/keys/{id}", self.delete_key)

    async def login(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "bad_json", 'send JSON {"username", "password"}')
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("username"), str)
            or not isinstance(body.get("password"), str)
        ):
            return self.error(
                422, "invalid", "username and password must be strings", field="username"
            )
        loop = asyncio.get_running_loop()
        # scrypt takes tens of milliseconds: off the event loop.
        role = await loop.run_in_executor(
            None, self.auth.check_password, body["username"], body["password"]
        )
        if role is None:
            if self.auth.accounts.admin_hash is None and body["username"] == "admin":
                return self.error(
                    503,
                    "initialising",
                    "the cluster has not set up its admin account yet "
                    "(it needs a leader); retry in a few seconds",
                )
            return self.error(401, "bad_credentials", "wrong username or password")
        try:
            return web.json_response(self.auth.issue(body["username"], role))
        except LookupError:
            return self.error(
                503, "initialising", "the cluster has no token secret yet; retry in a few seconds"
            )

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response({"user": request["user"], "role": request["role"]})

    async def create_key(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return self.error(400, "bad_json", "the body is not valid JSON")
        user = request["user"]
        if not isinstance(body, dict):
            return self.error(422, "invalid", "the body must be a JSON object", field="body")
        if not isinstance(body.get("label", ""), str) or not isinstance(
            body.get("user", user), str
        ):
            return self.error(422, "invalid", "label and user must be strings", field="user")
        if body.get("user") not in (None, user):
            if request["role"] != "admin":
                return self.error(
                    403, "forbidden", "only an admin can create keys for another user"
                )
            user = body["user"]
            if self.auth.role_of(user) is None:
                return self.error(422, "invalid", f"no user {user!r}", field="user")
        key, digest = new_api_key()
        cmd = {
            "op": "auth.put_key",
            "id": "key-" + new_task_id().lower(),
            "user": user,
            "sha256": digest,
            "label": body.get("label", ""),
            "at": now_ms(),
        }
        response = await self.write(cmd, 201)
        if response.status != 201:
            return response
        assert isinstance(response.body, bytes)
        return web.json_response(
            {
                **json.loads(response.body),
                "key": key,
                "note": "shown once: only its SHA-256 is kept",
            },
            status=201,
        )

    async def list_keys(self, request: web.Request) -> web.Response:
        keys = [
            {k: v for k, v in key.items() if k != "sha256"}
            for key in self.auth.accounts.keys.values()
            if request["role"] == "admin" or key["user"] == request["user"]
        ]
        return web.json_response({"items": keys})

    async def delete_key(self, request: web.Request) -> web.Response:
        cmd = {
            "op": "auth.delete_key",
            "id": request.match_info["id"],
            "at": now_ms(),
            "user": None if request["role"] == "admin" else request["user"],
        }
        return await self.write(cmd)


async def initialise_accounts(
    raft: RaftNode,
    accounts: Accounts,
    settings: SecuritySettings,
    node_id: str,
    interval: float = 0.5,
) -> None:
    """On the leader of a cluster that has no admin yet: set its password (from
    RAGRAFT_ADMIN_PASSWORD, or generated and printed once) and, when none is
    configured, a token secret, in one committed entry.

    The command is made once and re-sent unchanged until the accounts are set
    up: a copy that committed although its proposal timed out is recognised by
    its hash, and only the node whose hash won prints its password."""
    cmd: dict | None = None
    password = settings.admin_password or secrets.token_urlsafe(12)
    while not accounts.initialized:
        await asyncio.sleep(interval)
        if not raft.is_leader or accounts.initialized:
            continue
        if cmd is None:
            hashed = await asyncio.get_running_loop().run_in_executor(None, hash_password, password)
            cmd = {
                "op": "auth.init",
                "admin_hash": hashed,
                "at": now_ms(),
                "token_secret": None if settings.token_secret else secrets.token_urlsafe(32),
            }
        try:
            await raft.propose(msgpack.packb(cmd, use_bin_type=True))
        except RaftError as exc:
            log.warning("could not initialise the admin account yet: %s", exc)
    if (
        cmd is not None
        and accounts.admin_hash == cmd["admin_hash"]
        and settings.admin_password is None
    ):
        print(
            f"node {node_id}: the admin password is {password} (shown once, only its hash is kept; "
            "set RAGRAFT_ADMIN_PASSWORD to choose it)",
            flush=True,
        )
