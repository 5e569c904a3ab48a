"""Replicated accounts: the built-in admin's password hash, the token secret when
none is configured, and API keys.  A deterministic sub-machine of the node state
(ops "auth.*"), so every node verifies the same logins and tokens.

Only hashes are kept: the admin password is printed once by the node that
initialises the cluster, an API key is shown once to whoever creates it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.tasks import TaskError


class Accounts:
    def __init__(self) -> None:
        self.admin_hash: str | None = None
        self.token_secret: str | None = None  # only when [security] token_secret is not set
        self.keys: dict[str, dict] = {}  # key id -> {id, user, sha256, created_at, label}

    @property
    def initialized(self) -> bool:
        return self.admin_hash is not None

    def execute(self, cmd: dict) -> dict:
        op = cmd.get("op")
        try:
            if op == "auth.init":
                return self._init(cmd)
            if op == "auth.put_key":
                return self._put_key(cmd)
            if op == "auth.delete_key":
                return self._delete_key(cmd)
        except (KeyError, TypeError, ValueError) as exc:
            return TaskError("bad_command", f"malformed {op} command: {exc!r}").to_dict()
        return TaskError("bad_command", f"unknown accounts op {op!r}").to_dict()

    def _init(self, cmd: dict) -> dict:
        # The first initialisation wins; a second leader racing to initialise learns
        # it lost from `initialized: False` and must not print its password.  A
        # copy of the winning command (a retry) answers as the first one did.
        if self.initialized:
            return {"initialized": self.admin_hash == cmd["admin_hash"]}
        if not isinstance(cmd["admin_hash"], str):
            raise ValueError("admin_hash must be a string")
        self.admin_hash = cmd["admin_hash"]
        secret = cmd.get("token_secret")
        self.token_secret = secret if isinstance(secret, str) and secret else None
        return {"initialized": True}

    def _put_key(self, cmd: dict) -> dict:
        key_id, user, digest = cmd["id"], cmd["user"], cmd["sha256"]
        if not all(isinstance(v, str) and v for v in (key_id, user, digest)):
            raise ValueError("id, user and sha256 must be non-empty strings")
        if key_id in self.keys:
            return TaskError("conflict", f"API key {key_id} exists").to_dict()
        self.keys[key_id] = {
            "id": key_id,
            "user": user,
            "sha256": digest,
            "created_at": int(cmd["at"]),
            "label": str(cmd.get("label", ""))[:200],
        }
        return {"id": key_id, "user": user, "created_at": int(cmd["at"])}

    def _delete_key(self, cmd: dict) -> dict:
        key = self.keys.get(cmd["id"])
        if key is None:
            return TaskError("not_found", f"no API key {cmd['id']}").to_dict()
        if cmd.get("user") is not None and key["user"] != cmd["user"]:
            return TaskError("not_found", f"no API key {cmd['id']}").to_dict()
        del self.keys[cmd["id"]]
        return {"id": cmd["id"], "deleted": True}

    def key_by_digest(self, digest: str) -> dict | None:
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
