"""Authentication: salted scrypt password hashes, JWT bearer tokens, API keys.

Every route needs `Authorization: Bearer <token or API key>` except health,
readiness, metrics, the OpenAPI document and the login route.  The middleware
puts the caller in `request["user"]` and `request["role"]` (a UserRole).

Who exists, all in the replicated accounts: the built-in `admin` (its hash set at
the cluster's first start by node/runtime/housekeeping.py from
RAGRAFT_ADMIN_PASSWORD or a generated password kept in the secrets directory),
the users (made through /api/v1/users, or seeded once from `[[security.users]]`),
and API keys (from `[[security.api_keys]]` or created through the API; only their
SHA-256 is kept).  Reads go to this node's replica of the accounts; changes are
proposed as commands (node/http/users.py for users).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import math
import secrets
import time
from typing import Any

import jwt
from aiohttp import web
from aiohttp.typedefs import Middleware

from node.config import SecuritySettings
from node.http.body import BadBody, read_json_object
from node.http.errors import Handler, error, propose, write
from node.http.throttle import LoginThrottle
from node.ids import new_task_id, now_ms
from node.replica import commands as c
from node.replica.accounts import Accounts
from node.replica.replica import Replica
from node.replica.vocabulary import (
    MAX_AUTH_BODY_BYTES,
    MAX_KEY_TTL_S,
    MIN_KEY_TTL_S,
    KeyScope,
    UserRole,
)

# The join route's credential is the join token in its body (node/http/join.py).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/api/v1/auth/token",
        "/api/v1/cluster/join",
    }
)
EVENTS_PATH = "/api/v1/events"
API_KEY_PREFIX = "rgk_"
ADMIN = "admin"  # the built-in admin's user name
# scrypt with n=2**14, r=8: ~16 MiB and tens of ms per check; slow enough to make
# guessing expensive, fast enough for a login route.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


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


def is_admin(request: web.Request) -> bool:
    role: str = request["role"]  # set by the authentication middleware
    return role == UserRole.ADMIN


class Authenticator:
    """Who a credential belongs to.  Reads this node's replica of the accounts
    (the admin's hash, the generated token secret, API keys) and the configured
    users; never writes."""

    def __init__(self, settings: SecuritySettings, replica: Replica, cluster_name: str) -> None:
        self.settings = settings
        self.replica = replica
        # Tokens name their cluster: one minted by another cluster with the same
        # secret is not accepted here.
        self.issuer = f"ragraft:{cluster_name}"
        self._config_keys = {digest: user for user, digest in settings.api_keys}
        # Made now, not at the first unknown user's login: that one would otherwise take
        # two hashes' time, and tell a prober the name does not exist.
        _dummy_hash()

    @property
    def accounts(self) -> Accounts:
        return self.replica.state.accounts

    @property
    def secret(self) -> str | None:
        return self.settings.token_secret or self.accounts.token_secret

    def role_of(self, user: str) -> UserRole | None:
        """The role of an enabled user (a disabled or deleted one's tokens and keys
        stop working at once)."""
        return self.accounts.role_of(user)

    def check_password(self, user: str, password: str) -> UserRole | None:
        """The user's role if the password is right, else None."""
        hashed = self.accounts.password_hash(user)
        if hashed is None:
            verify_password(password, _dummy_hash())  # same time for unknown users
            return None
        if not verify_password(password, hashed):
            return None
        return self.accounts.role_of(user)

    def issue(self, user: str, role: UserRole) -> dict[str, Any]:
        secret = self.secret
        if secret is None:
            raise LookupError("no token secret yet")
        now = int(time.time())
        ttl = self.settings.token_ttl_seconds
        token = jwt.encode(
            {"sub": user, "role": str(role), "iat": now, "exp": now + ttl, "iss": self.issuer},
            secret,
            algorithm="HS256",
        )
        return {"access_token": token, "token_type": "bearer", "expires_in": ttl}

    def identify(self, credential: str) -> tuple[str, UserRole] | None:
        """(user, role) for a bearer token or an API key, else None."""
        who = self.identify_scoped(credential)
        return (who[0], who[1]) if who is not None else None

    def identify_scoped(self, credential: str) -> tuple[str, UserRole, KeyScope] | None:
        """(user, role, scope) for a bearer token (scope admin: all its user may do) or
        an API key that has not expired, else None."""
        if credential.startswith(API_KEY_PREFIX):
            return self._identify_key(credential)
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
        return (user, role, KeyScope.ADMIN) if role is not None else None

    def _identify_key(self, key: str) -> tuple[str, UserRole, KeyScope] | None:
        digest = key_digest(key)
        user = self._config_keys.get(digest)
        scope = KeyScope.ADMIN  # a key in cluster.toml: its user's rights, for ever
        if user is None:
            stored = self.accounts.key_by_digest(digest)
            if stored is None:
                return None
            expires_at = stored.get("expires_at")
            if expires_at is not None and now_ms() >= expires_at:
                return None  # (each node's clock decides; they agree within NTP's error)
            user, scope = stored["user"], KeyScope(stored.get("scope", KeyScope.ADMIN))
        role = self.role_of(user)
        return (user, role, scope) if role is not None else None

    def middleware(self) -> Middleware:
        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
                return await handler(request)
            header = _authorization(request)
            scheme, _, credential = header.partition(" ")
            who = (
                self.identify_scoped(credential.strip())
                if scheme.lower() == "bearer" and credential
                else None
            )
            if who is None:
                return _unauthorized(missing=not header)
            request["user"], request["role"], request["scope"] = who
            if not scope_allows(who[2], request.method, request.path):
                return error(
                    403,
                    "forbidden",
                    f"this API key's scope is {who[2]}: it may not {request.method} "
                    f"{request.path} ({SCOPE_HELP[who[2]]})",
                )
            return await handler(request)

        return authenticate


SCOPE_HELP = {
    KeyScope.READ: "read: GET and HEAD only",
    KeyScope.SUBMIT: "submit: reads, and submitting, cancelling and retrying tasks",
    KeyScope.ADMIN: "admin: everything its user may do",
}
_SUBMIT_PATHS = ("/api/v1/tasks", "/v1/chat/completions")


# Reads that hand over everything (every user's password hash): not for a read key.
ADMIN_SCOPE_READS = ("/api/v1/cluster/backup",)


def scope_allows(scope: KeyScope, method: str, path: str) -> bool:
    """Whether a credential of `scope` may make this request at all (what its user may
    do is decided by the route, as for any request)."""
    if scope is KeyScope.ADMIN:
        return True
    if method in ("GET", "HEAD"):
        return path not in ADMIN_SCOPE_READS
    if scope is KeyScope.READ:
        return False
    task_route = path in _SUBMIT_PATHS or path.startswith("/api/v1/tasks/")
    return task_route and method in ("POST", "DELETE")


def _authorization(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header and request.path == EVENTS_PATH and request.query.get("access_token"):
        # Browsers' EventSource cannot send headers: the stream accepts the token in the URL.
        return "Bearer " + request.query["access_token"]
    return header


def _unauthorized(missing: bool) -> web.Response:
    message = (
        "missing bearer token: log in with POST /api/v1/auth/token {username, password} "
        "and send Authorization: Bearer <access_token> (or an API key)"
        if missing
        else "invalid or expired token: log in again"
    )
    response = error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="ragraft"'
    return response


@functools.cache
def _dummy_hash() -> str:
    """Checked against for an unknown user, so that its login takes as long as a
    known user's (made once: hashing it is as slow as a check)."""
    return hash_password("x", b"0" * 16)


class AuthAPI:
    """/api/v1/auth: login, who am I, and API keys (created and revoked through the log)."""

    def __init__(
        self, auth: Authenticator, replica: Replica, throttle: LoginThrottle | None = None
    ) -> None:
        self.auth = auth
        self.replica = replica
        self.throttle = throttle or LoginThrottle()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/auth/token", self.login)
        app.router.add_get("/api/v1/auth/me", self.me)
        app.router.add_post("/api/v1/auth/keys", self.create_key)
        app.router.add_get("/api/v1/auth/keys", self.list_keys)
        app.router.add_delete("/api/v1/auth/keys/{id}", self.delete_key)

    async def login(self, request: web.Request) -> web.Response:
        try:
            # public: a stranger's body, so the small bound
            body = await read_json_object(
                request, MAX_AUTH_BODY_BYTES, hint='send JSON {"username", "password"}'
            )
        except BadBody as exc:
            return exc.response()
        if not isinstance(body.get("username"), str) or not isinstance(body.get("password"), str):
            return error(422, "invalid", "username and password must be strings", field="username")
        user = body["username"]
        address = request.remote or ""
        wait = self.throttle.retry_after(user, address)
        if wait is not None:
            response = error(
                429,
                "too_many_attempts",
                f"too many failed logins for this user or from this address; retry in "
                f"{math.ceil(wait)} s",
                retry_after_s=math.ceil(wait),
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        # scrypt takes tens of milliseconds: off the event loop.
        role = await asyncio.get_running_loop().run_in_executor(
            None, self.auth.check_password, user, body["password"]
        )
        if role is None:
            self.throttle.failed(user, address)
            if not self.auth.accounts.initialized:
                return error(
                    503,
                    "initialising",
                    "the cluster has not set up its admin account yet "
                    "(it needs a leader); retry in a few seconds",
                )
            return error(401, "bad_credentials", "wrong username or password")
        try:
            return web.json_response(self.auth.issue(user, role))
        except LookupError:
            return error(
                503, "initialising", "the cluster has no token secret yet; retry in a few seconds"
            )

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response({"user": request["user"], "role": request["role"]})

    async def create_key(self, request: web.Request) -> web.Response:
        try:  # no body: a key for the caller, without a label
            body = (
                await read_json_object(request, MAX_AUTH_BODY_BYTES)
                if request.can_read_body
                else {}
            )
        except BadBody as exc:
            return exc.response()
        user = request["user"]
        label, owner = body.get("label", ""), body.get("user", user)
        if not isinstance(label, str) or not isinstance(owner, str):
            return error(422, "invalid", "label and user must be strings", field="user")
        scope = body.get("scope", KeyScope.ADMIN)
        if scope not in tuple(KeyScope):
            return error(
                422, "invalid", f"scope must be one of {', '.join(KeyScope)}", field="scope"
            )
        ttl = body.get("expires_in_s")
        if ttl is not None and (type(ttl) is not int or not MIN_KEY_TTL_S <= ttl <= MAX_KEY_TTL_S):
            return error(
                422,
                "invalid",
                f"expires_in_s must be a whole number of seconds from {MIN_KEY_TTL_S} to "
                f"{MAX_KEY_TTL_S}, or left out for a key that never expires",
                field="expires_in_s",
            )
        if owner != user:
            if not is_admin(request):
                return error(403, "forbidden", "only an admin can create keys for another user")
            if self.auth.role_of(owner) is None:
                return error(422, "invalid", f"no user {owner!r}", field="user")
        key, digest = new_api_key()
        at = now_ms()
        cmd = c.PutKey(
            key_id="key-" + new_task_id().lower(),
            user=owner,
            sha256=digest,
            at=at,
            label=label,
            expires_at=None if ttl is None else at + ttl * 1000,
            scope=KeyScope(scope),
        )
        outcome = await propose(self.replica, cmd)
        if outcome.failure is not None:
            return outcome.failure
        return web.json_response(
            {**outcome.result, "key": key, "note": "shown once: only its SHA-256 is kept"},
            status=201,
        )

    async def list_keys(self, request: web.Request) -> web.Response:
        keys = [
            {k: v for k, v in key.items() if k != "sha256"}
            for key in self.auth.accounts.keys.values()
            if is_admin(request) or key["user"] == request["user"]
        ]
        return web.json_response({"items": keys})

    async def delete_key(self, request: web.Request) -> web.Response:
        # A user may revoke only their own keys: the state machine checks the owner
        # (answering not_found for another user's key, which it does not reveal).
        cmd = c.DeleteKey(
            key_id=request.match_info["id"],
            at=now_ms(),
            user=None if is_admin(request) else request["user"],
        )
        return await write(self.replica, cmd)
