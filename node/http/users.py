"""/api/v1/users: an admin creates, lists, changes (role, disabled, quota, password)
and deletes users; every user reads themself and changes their own password.

Users live in the replicated accounts (node/replica/accounts.py); every change is a
command, so all nodes know it once it commits.  Passwords are hashed here (scrypt,
off the event loop) and only the hash enters the log.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from node.http.auth import Authenticator, hash_password, is_admin, verify_password
from node.http.body import BadBody, read_json_object
from node.http.errors import error, write
from node.ids import now_ms
from node.replica import commands as c
from node.replica.replica import Replica
from node.replica.vocabulary import (
    MAX_AUTH_BODY_BYTES,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    USER_NAME_PATTERN,
    InvalidField,
    Quota,
    UserRole,
)

_NAME = re.compile(USER_NAME_PATTERN)
_CREATE_FIELDS = frozenset({"name", "password", "role", "quota"})
_PATCH_FIELDS = frozenset({"password", "current_password", "role", "disabled", "quota"})


class UsersAPI:
    def __init__(self, auth: Authenticator, replica: Replica) -> None:
        self.auth = auth
        self.replica = replica

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/users", self.list_users)
        app.router.add_post("/api/v1/users", self.create)
        app.router.add_get("/api/v1/users/{name}", self.get_user)
        app.router.add_patch("/api/v1/users/{name}", self.update)
        app.router.add_delete("/api/v1/users/{name}", self.delete)

    async def list_users(self, request: web.Request) -> web.Response:
        if not is_admin(request):
            return _admins_only()
        accounts = self.auth.accounts
        names = ["admin", *sorted(accounts.users)] if accounts.initialized else []
        items = [view for name in names if (view := accounts.user_view(name)) is not None]
        return web.json_response({"items": items, "total": len(items)})

    async def get_user(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != request["user"] and not is_admin(request):
            return _no_user(name)  # another user's name: not revealed
        view = self.auth.accounts.user_view(name)
        return web.json_response(view) if view is not None else _no_user(name)

    async def create(self, request: web.Request) -> web.Response:
        if not is_admin(request):
            return _admins_only()
        try:
            body = await read_json_object(request, MAX_AUTH_BODY_BYTES)
            _known_fields(body, _CREATE_FIELDS)
            name = _name(body.get("name"))
            password = _password(body.get("password"), "password")
            role = _role(body.get("role", UserRole.USER))
            quota = Quota.parse(body.get("quota", {}))
        except BadBody as exc:
            return exc.response()
        except InvalidField as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        hashed = await _hash(password)
        cmd = c.PutUser(name=name, role=role, password_hash=hashed, at=now_ms(), quota=quota)
        return await write(self.replica, cmd, ok_status=201)

    async def update(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        own = name == request["user"]
        if not own and not is_admin(request):
            return _no_user(name)
        try:
            body = await read_json_object(request, MAX_AUTH_BODY_BYTES)
            _known_fields(body, _PATCH_FIELDS)
            if not body:
                raise InvalidField(
                    "body", "send at least one of " + ", ".join(sorted(_PATCH_FIELDS))
                )
            if not is_admin(request) and set(body) - {"password", "current_password"}:
                return error(
                    403, "forbidden", "only an admin can change a role, a quota or disable a user"
                )
            current = self.auth.accounts.user_view(name)
            if current is None:
                return _no_user(name)
            update = await self._update(request, name, body, own)
        except BadBody as exc:
            return exc.response()
        except InvalidField as exc:
            return error(422, "invalid", str(exc), field=exc.field)
        if isinstance(update, web.Response):
            return update
        return await write(self.replica, update)

    async def _update(
        self, request: web.Request, name: str, body: dict[str, Any], own: bool
    ) -> c.UpdateUser | web.Response:
        hashed = None
        if "password" in body:
            password = _password(body["password"], "password")
            if own and not is_admin(request):
                # A stolen token alone must not be enough to take the account over.
                stored = self.auth.accounts.password_hash(name)
                given = body.get("current_password")
                if not isinstance(given, str) or stored is None:
                    raise InvalidField("current_password", "send current_password too")
                loop = asyncio.get_running_loop()
                if not await loop.run_in_executor(None, verify_password, given, stored):
                    return error(403, "forbidden", "current_password is wrong")
            hashed = await _hash(password)
        disabled = body.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise InvalidField("disabled", "disabled must be true or false")
        if disabled and own:
            raise InvalidField("disabled", "you cannot disable yourself")
        role = _role(body["role"]) if "role" in body else None
        quota = None
        if "quota" in body:
            quota = Quota.parse(body["quota"], base=self.auth.accounts.quota(name))
        return c.UpdateUser(
            name=name,
            at=now_ms(),
            role=role,
            password_hash=hashed,
            disabled=disabled,
            quota=quota,
        )

    async def delete(self, request: web.Request) -> web.Response:
        if not is_admin(request):
            return _admins_only()
        name = request.match_info["name"]
        if name == request["user"]:
            return error(422, "invalid", "you cannot delete yourself", field="name")
        return await write(self.replica, c.DeleteUser(name=name, at=now_ms()))


def _known_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidField(
            unknown[0], f"unknown field {unknown[0]!r}: use {', '.join(sorted(allowed))}"
        )


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidField(
            "name",
            "name must be 1-64 lower-case letters, digits or . _ - starting with a letter",
        )
    if value == "admin":
        raise InvalidField("name", "admin is the built-in admin's name")
    return value


def _password(value: Any, field: str) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD_CHARS <= len(value) <= MAX_PASSWORD_CHARS:
        raise InvalidField(
            field,
            f"{field} must be a string of {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters",
        )
    return value


def _role(value: Any) -> UserRole:
    if value not in tuple(UserRole):
        raise InvalidField("role", f"role must be one of {', '.join(UserRole)}")
    return UserRole(value)


async def _hash(password: str) -> str:
    # scrypt takes tens of milliseconds: off the event loop that drives Raft.
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)


def _admins_only() -> web.Response:
    return error(403, "forbidden", "only an admin can list, create or delete users")


def _no_user(name: str) -> web.Response:
    return error(404, "not_found", f"no user {name}")
