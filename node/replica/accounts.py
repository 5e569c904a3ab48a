"""Replicated accounts: the built-in admin's password hash, the token secret when
none is configured, and API keys.  A deterministic sub-machine of NodeState, so
every node verifies the same logins and tokens.

Only hashes are kept: the admin password is printed once by the node that
initialises the cluster, an API key is shown once to whoever creates it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.replica import commands as c
from node.replica.refusal import RefusalCode, refuse


class Accounts:
    def __init__(self) -> None:
        self.admin_hash: str | None = None
        self.token_secret: str | None = None  # only when [security] token_secret is not set
        # key id -> {id, user, sha256, created_at, label, expires_at, scope}; a key stored
        # before expiry and scopes lacks the last two (read as: never, admin).
        self.keys: dict[str, dict[str, Any]] = {}

    @property
    def initialized(self) -> bool:
        return self.admin_hash is not None

    def apply(self, cmd: c.AccountCommand) -> dict[str, Any]:
        if isinstance(cmd, c.InitAccounts):
            return self._init(cmd)
        if isinstance(cmd, c.PutKey):
            return self._put_key(cmd)
        return self._delete_key(cmd)

    def _init(self, cmd: c.InitAccounts) -> dict[str, Any]:
        # The first initialisation wins; a second leader racing to initialise learns
        # it lost from `initialized: False` and must not print its password.  A
        # copy of the winning command (a retry) answers as the first one did.
        if self.initialized:
            return {"initialized": self.admin_hash == cmd.admin_hash}
        self.admin_hash = cmd.admin_hash
        self.token_secret = cmd.token_secret or None
        return {"initialized": True}

    def _put_key(self, cmd: c.PutKey) -> dict[str, Any]:
        if not (cmd.key_id and cmd.user and cmd.sha256):
            raise refuse(RefusalCode.INVALID, "id, user and sha256 must be non-empty")
        if cmd.key_id in self.keys:
            raise refuse(RefusalCode.CONFLICT, f"API key {cmd.key_id} exists")
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
            {"admin_hash": self.admin_hash, "token_secret": self.token_secret, "keys": self.keys},
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state: dict[str, Any] = msgpack.unpackb(data, raw=False)
        self.admin_hash = state["admin_hash"]
        self.token_secret = state["token_secret"]
        self.keys = state["keys"]
