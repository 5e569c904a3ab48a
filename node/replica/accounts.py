"""Replicated accounts: the built-in admin's password hash, the token secret when
none is configured, the users (role, password hash, disabled, quota) and API keys.
A deterministic sub-machine of NodeState, so every node verifies the same logins and
tokens and makes the same authorization decisions.

Only hashes are kept: the admin password is printed once by the node that
initialises the cluster, an API key is shown once to whoever creates it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.replica import commands as c
from node.replica.refusal import RefusalCode, refuse
from node.replica.vocabulary import Quota, UserRole

ADMIN = "admin"  # the built-in admin: always there, always an admin, never disabled


class Accounts:
    def __init__(self) -> None:
        self.admin_hash: str | None = None
        self.token_secret: str | None = None  # only when [security] token_secret is not set
        # key id -> {id, user, sha256, created_at, label, expires_at, scope}; a key stored
        # before expiry and scopes lacks the last two (read as: never, admin).
        self.keys: dict[str, dict[str, Any]] = {}
        # name -> {name, role, password_hash, disabled, created_at, updated_at, quota}
        self.users: dict[str, dict[str, Any]] = {}
        # Names that were deleted: a seed from cluster.toml does not bring them back.
        self.retired: set[str] = set()

    @property
    def initialized(self) -> bool:
        return self.admin_hash is not None

    def apply(self, cmd: c.AccountCommand) -> dict[str, Any]:
        if isinstance(cmd, c.InitAccounts):
            return self._init(cmd)
        if isinstance(cmd, c.PutKey):
            return self._put_key(cmd)
        if isinstance(cmd, c.PutUser):
            return self._put_user(cmd)
        if isinstance(cmd, c.UpdateUser):
            return self._update_user(cmd)
        if isinstance(cmd, c.DeleteUser):
            return self._delete_user(cmd)
        return self._delete_key(cmd)

    # ------------------------------------------------------------ users
    def role_of(self, name: str) -> UserRole | None:
        """The role of an enabled user, else None (unknown or disabled)."""
        if name == ADMIN:
            # Always there: a replica that has not applied the accounts yet (no quorum,
            # or behind) still knows a token the cluster signed for its admin.
            return UserRole.ADMIN
        user = self.users.get(name)
        if user is None or user["disabled"]:
            return None
        return UserRole(user["role"])

    def password_hash(self, name: str) -> str | None:
        """The hash to check a login of `name` against (None: no such enabled user)."""
        if name == ADMIN:
            return self.admin_hash
        user = self.users.get(name)
        return user["password_hash"] if user is not None and not user["disabled"] else None

    def quota(self, name: str) -> Quota:
        user = self.users.get(name)
        return Quota(**user["quota"]) if user is not None else Quota()

    def user_view(self, name: str) -> dict[str, Any] | None:
        """A user as the API shows it: never the hash."""
        if name == ADMIN:
            return (
                {
                    "name": ADMIN,
                    "role": str(UserRole.ADMIN),
                    "disabled": False,
                    "builtin": True,
                    "quota": Quota().to_json(),
                }
                if self.initialized
                else None
            )
        user = self.users.get(name)
        if user is None:
            return None
        return {k: v for k, v in user.items() if k != "password_hash"} | {"builtin": False}

    def _put_user(self, cmd: c.PutUser) -> dict[str, Any]:
        if cmd.seed and (cmd.name in self.users or cmd.name in self.retired):
            return {"name": cmd.name, "seeded": False}
        if cmd.name == ADMIN or cmd.name in self.users:
            raise refuse(RefusalCode.CONFLICT, f"user {cmd.name} exists", field="name")
        if not cmd.name or not cmd.password_hash:
            raise refuse(RefusalCode.INVALID, "name and password hash must be non-empty")
        self.users[cmd.name] = {
            "name": cmd.name,
            "role": str(cmd.role),
            "password_hash": cmd.password_hash,
            "disabled": False,
            "created_at": cmd.at,
            "updated_at": cmd.at,
            "quota": cmd.quota.to_json(),
        }
        self.retired.discard(cmd.name)
        view = self.user_view(cmd.name)
        assert view is not None
        return view

    def _update_user(self, cmd: c.UpdateUser) -> dict[str, Any]:
        if cmd.name == ADMIN:
            if cmd.role not in (None, UserRole.ADMIN) or cmd.disabled or cmd.quota is not None:
                raise refuse(
                    RefusalCode.INVALID,
                    "the built-in admin keeps its role, cannot be disabled and has no quota; "
                    "only its password can be reset",
                )
            if cmd.password_hash is not None and self.initialized:
                self.admin_hash = cmd.password_hash
            view = self.user_view(ADMIN)
            if view is None:
                raise refuse(RefusalCode.NOT_FOUND, "no user admin yet")
            return view
        user = self.users.get(cmd.name)
        if user is None:
            raise refuse(RefusalCode.NOT_FOUND, f"no user {cmd.name}")
        if cmd.role is not None:
            user["role"] = str(cmd.role)
        if cmd.password_hash is not None:
            user["password_hash"] = cmd.password_hash
        if cmd.disabled is not None:
            user["disabled"] = cmd.disabled
        if cmd.quota is not None:
            user["quota"] = cmd.quota.to_json()
        user["updated_at"] = cmd.at
        view = self.user_view(cmd.name)
        assert view is not None
        return view

    def _delete_user(self, cmd: c.DeleteUser) -> dict[str, Any]:
        if cmd.name == ADMIN:
            raise refuse(RefusalCode.INVALID, "the built-in admin cannot be deleted")
        if self.users.pop(cmd.name, None) is None:
            raise refuse(RefusalCode.NOT_FOUND, f"no user {cmd.name}")
        self.retired.add(cmd.name)
        # Their keys go with them: a user made later with the same name does not inherit.
        keys = sorted(k for k, key in self.keys.items() if key["user"] == cmd.name)
        for key_id in keys:
            del self.keys[key_id]
        return {"name": cmd.name, "deleted": True, "keys_revoked": len(keys)}

    # ------------------------------------------------------------ keys

    def _init(self, cmd: c.InitAccounts) -> dict[str, Any]:
        # The first initialisation wins; a second leader racing to initialise learns
        # it lost from `initialized: False` and must not print its password.  A
        # copy of the winning command (a retry) answers as the first one did.
        if self.initialized:
            return {"initialized": self.admin_hash == cmd.admin_hash}
        self.admin_hash = cmd.admin_hash
        self.token_secret = cmd.token_secret or None
        for user in cmd.users:
            if user.name != ADMIN and user.name not in self.users:
                self._put_user(user)
        return {"initialized": True}

    def _put_key(self, cmd: c.PutKey) -> dict[str, Any]:
        if not (cmd.key_id and cmd.user and cmd.sha256):
            raise refuse(RefusalCode.INVALID, "id, user and sha256 must be non-empty")
        if cmd.key_id in self.keys:
            raise refuse(RefusalCode.CONFLICT, f"API key {cmd.key_id} exists")
        if self.initialized and self.role_of(cmd.user) is None:
            raise refuse(RefusalCode.INVALID, f"no user {cmd.user} (or disabled)", field="user")
        if cmd.expires_at is not None and cmd.expires_at <= cmd.at:
            raise refuse(RefusalCode.INVALID, "an API key must expire after it is made")
        self.keys[cmd.key_id] = {
            "id": cmd.key_id,
            "user": cmd.user,
            "sha256": cmd.sha256,
            "created_at": cmd.at,
            "label": cmd.label[:200],
            "expires_at": cmd.expires_at,
            "scope": str(cmd.scope),
        }
        return {
            "id": cmd.key_id,
            "user": cmd.user,
            "created_at": cmd.at,
            "expires_at": cmd.expires_at,
            "scope": str(cmd.scope),
        }

    def _delete_key(self, cmd: c.DeleteKey) -> dict[str, Any]:
        key = self.keys.get(cmd.key_id)
        if key is None or (cmd.user is not None and key["user"] != cmd.user):
            raise refuse(RefusalCode.NOT_FOUND, f"no API key {cmd.key_id}")
        del self.keys[cmd.key_id]
        return {"id": cmd.key_id, "deleted": True}

    def key_by_digest(self, digest: str) -> dict[str, Any] | None:
        for key in self.keys.values():
            if key["sha256"] == digest:
                return key
        return None

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {
                "admin_hash": self.admin_hash,
                "token_secret": self.token_secret,
                "keys": self.keys,
                "users": self.users,
                "retired": sorted(self.retired),
            },
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state: dict[str, Any] = msgpack.unpackb(data, raw=False)
        self.admin_hash = state["admin_hash"]
        self.token_secret = state["token_secret"]
        self.keys = state["keys"]
        # Snapshots from before replicated users have neither.
        self.users = state.get("users", {})
        self.retired = set(state.get("retired", ()))
