"""Keeping this node's CURVE key ring (consensus/keyring.py) equal to the replicated
node keys (node/replica/peers.py): a node admitted through the log is trusted, and a
revoked one refused, on every node as soon as it applies the entry; a snapshot
installed from the leader is caught by the periodic check.

And revoking: the leader proposes RevokeNode for a trusted node that was a member and
is no longer one, once the removal has committed.  Done by whoever leads, not by the
request that removed it: the removed node may have been the leader."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from consensus.keyring import KeyRing
from node.ids import now_ms
from node.replica import commands as c
from node.replica.refusal import Refused
from node.replica.replica import NoQuorum, Replica
from node.replica.state import NodeState

log = logging.getLogger("ragraft.node")


class RingKeeper:
    def __init__(self, ring: KeyRing, state: NodeState, bootstrap: dict[str, str]) -> None:
        self.ring = ring
        self.state = state
        self.bootstrap = dict(bootstrap)  # the bundle's first nodes (this node included)
        self.seen: set[str] = set()  # nodes seen in the membership since this node started

    def sync(self) -> None:
        wanted = self.state.peers.trusted(self.bootstrap)
        current = self.ring.peers()
        for node in sorted(set(current) - set(wanted)):
            self.ring.revoke(node)
        for node, key in sorted(wanted.items()):
            if current.get(node) != key.encode("ascii"):
                try:
                    self.ring.trust(node, key)
                except ValueError as exc:  # a key the log holds but the ring cannot take
                    log.error("cannot trust node %s's key: %s", node, exc)
                    continue
                log.info("node %s's CURVE key is trusted", node)

    def on_apply(self, cmd: c.Command, outcome: Any) -> None:
        if isinstance(cmd, (c.AdmitNode, c.RevokeNode)):
            self.sync()
        if isinstance(cmd, c.AdmitNode):
            # admitted again (a removed id rejoining): a member-to-be, not a removed one
            self.seen.discard(cmd.node)

    async def revoke_removed(self, replica: Replica, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            status = replica.status()
            members = {*status["voters"], *status["learners"]}
            self.seen |= members
            if not replica.is_leader or not replica.membership_settled:
                continue
            trusted = self.state.peers.trusted(self.bootstrap)
            for node in sorted((self.seen - members) & set(trusted)):
                try:
                    await replica.propose(c.RevokeNode(node, now_ms()))
                except (NoQuorum, Refused) as exc:
                    log.warning("could not revoke removed node %s's key yet: %s", node, exc)
                    continue
                self.seen.discard(node)
                log.info("node %s left the membership: its CURVE key is revoked", node)

    async def run(self, interval: float = 1.0) -> None:
        while True:
            self.sync()
            await asyncio.sleep(interval)
