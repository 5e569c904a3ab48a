"""Replicated node keys: which nodes' CURVE public keys the cluster trusts beyond the
first nodes of its bundle, which it no longer trusts, and the join tokens that let a
new node admit itself.  A deterministic sub-machine of NodeState; node/runtime/peers.py
keeps each node's key ring (consensus/keyring.py) equal to it.

A join token is made by an admin, kept as its SHA-256 only, expires, and is spent by
the one AdmitNode that names it: a second use, an expired or an unknown token is
refused the same way on every replica.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.replica import commands as c
from node.replica.refusal import RefusalCode, refuse

Z85_KEY_CHARS = 40


class PeerKeys:
    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # node -> public key (z85), admitted through the log
        self.revoked: set[str] = set()  # removed nodes: their keys are refused
        # token id -> {id, sha256, created_at, expires_at, by, node, used_by, used_at}
        self.tokens: dict[str, dict[str, Any]] = {}

    def apply(self, cmd: c.PeerCommand) -> dict[str, Any]:
        if isinstance(cmd, c.AdmitNode):
            return self._admit(cmd)
        if isinstance(cmd, c.RevokeNode):
            return self._revoke(cmd)
        return self._put_token(cmd)

    def _admit(self, cmd: c.AdmitNode) -> dict[str, Any]:
        if len(cmd.public_key) != Z85_KEY_CHARS or not cmd.node:
            raise refuse(RefusalCode.INVALID, "a node id and a 40-character z85 public key")
        holder = next((n for n, k in self.keys.items() if k == cmd.public_key), None)
        if holder is not None and holder != cmd.node:
            raise refuse(RefusalCode.CONFLICT, f"that key is node {holder}'s")
        if cmd.token_id is not None:
            self._spend(cmd)
        elif cmd.by is None:
            raise refuse(RefusalCode.FORBIDDEN, "admitting a node takes an admin or a join token")
        self.keys[cmd.node] = cmd.public_key
        self.revoked.discard(cmd.node)
        return {"node": cmd.node, "public_key": cmd.public_key, "admitted": True}

    def _spend(self, cmd: c.AdmitNode) -> None:
        token = self.tokens.get(cmd.token_id or "")
        # One answer for every kind of bad token: it tells a guesser nothing.
        bad = refuse(RefusalCode.FORBIDDEN, "the join token is unknown, expired or used")
        if token is None or token["sha256"] != cmd.token_sha256:
            raise bad
        if token["used_by"] is not None or cmd.at >= token["expires_at"]:
            raise bad
        if token["node"] is not None and token["node"] != cmd.node:
            raise refuse(RefusalCode.FORBIDDEN, f"the join token is for node {token['node']}")
        token["used_by"], token["used_at"] = cmd.node, cmd.at

    def _revoke(self, cmd: c.RevokeNode) -> dict[str, Any]:
        self.keys.pop(cmd.node, None)
        self.revoked.add(cmd.node)
        return {"node": cmd.node, "revoked": True}

    def _put_token(self, cmd: c.PutJoinToken) -> dict[str, Any]:
        if cmd.token_id in self.tokens:
            raise refuse(RefusalCode.CONFLICT, f"join token {cmd.token_id} exists")
        if cmd.expires_at <= cmd.at:
            raise refuse(RefusalCode.INVALID, "a join token must expire after it is made")
        # Spent and expired tokens are of no use: forget them as new ones come.
        for old in [k for k, t in self.tokens.items() if t["expires_at"] <= cmd.at]:
            del self.tokens[old]
        self.tokens[cmd.token_id] = {
            "id": cmd.token_id,
            "sha256": cmd.sha256,
            "created_at": cmd.at,
            "expires_at": cmd.expires_at,
            "by": cmd.by,
            "node": cmd.node,
            "used_by": None,
            "used_at": None,
        }
        return {k: v for k, v in self.tokens[cmd.token_id].items() if k != "sha256"}

    def trusted(self, bootstrap: dict[str, str]) -> dict[str, str]:
        """The keys a node trusts: its bundle's first nodes, plus those admitted, minus
        those revoked (an admitted key replaces the bundle's)."""
        keys = {**bootstrap, **self.keys}
        return {n: k for n, k in keys.items() if n not in self.revoked}

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {"keys": self.keys, "revoked": sorted(self.revoked), "tokens": self.tokens},
            use_bin_type=True,
        )

    def restore(self, data: bytes) -> None:
        state: dict[str, Any] = msgpack.unpackb(data, raw=False)
        self.keys = state["keys"]
        self.revoked = set(state["revoked"])
        self.tokens = state["tokens"]
