"""The leader's chores, each a loop that commits a command now and then.

- sweep_expired: finished tasks past the retention period go (R10); the cut-off
  time travels in the command, so every node removes the same set;
- requeue_dead_nodes: a node gossip has confirmed dead gets its running tasks
  requeued (a scan, not a reaction to events, so a leader elected after the
  death still does it);
- initialise_accounts: the first leader of a new cluster sets the admin password
  (and the token secret when none is configured) and the users of cluster.toml; a
  generated password goes to a file only its owner can read, never into the node's
  log;
- seed_users: a user added to cluster.toml later is created once (an admin's
  deletion of it stays: the accounts remember deleted names).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

from node.config import SecuritySettings, TaskSettings
from node.gossip.driver import Gossip
from node.http.auth import hash_password
from node.ids import now_ms
from node.replica.commands import Expire, InitAccounts, NodeStatus, PutUser
from node.replica.refusal import Refused
from node.replica.replica import NoQuorum, Replica
from node.replica.vocabulary import UserRole
from node.secrets import ADMIN_PASSWORD_NOTICE, write_private_file

log = logging.getLogger("ragraft.node")


async def sweep_expired(replica: Replica, settings: TaskSettings) -> None:
    while True:
        await asyncio.sleep(settings.sweep_seconds)
        if not replica.is_leader:
            continue
        try:
            result = await replica.propose(
                Expire(before=now_ms() - settings.retention_seconds * 1000)
            )
        except (NoQuorum, Refused) as exc:
            log.warning("could not expire old tasks: %s", exc)
            continue
        if result.get("expired"):
            log.info("expired %d finished tasks", result["expired"])


async def requeue_dead_nodes(replica: Replica, gossip: Gossip, interval: float = 0.5) -> None:
    while True:
        await asyncio.sleep(interval)
        if not replica.is_leader:
            continue
        members = gossip.members()
        for node_id, info in list(replica.state.tasks.nodes.items()):
            member = members.get(node_id)
            if member is None or not info.get("alive", True):
                continue
            status = str(getattr(member.status, "value", member.status))
            if status not in ("dead", "left"):
                continue
            try:
                result = await replica.propose(NodeStatus(node_id, now_ms(), alive=False))
            except (NoQuorum, Refused) as exc:
                log.warning("could not record that node %s is dead: %s", node_id, exc)
                continue
            log.warning(
                "node %s is %s: requeued its tasks %s", node_id, status, result.get("requeued")
            )


async def initialise_accounts(
    replica: Replica,
    settings: SecuritySettings,
    node_id: str,
    password_file: Path,
    interval: float = 0.5,
) -> None:
    """The command is made once and re-sent unchanged until the accounts are set
    up: a copy that committed although its proposal timed out is recognised by
    its hash, and only the node whose hash won writes its password down, into
    `password_file` (0600); its log says where, not what (logs get shipped and
    shared; the node log would otherwise keep the password for ever)."""
    accounts = replica.state.accounts
    cmd: InitAccounts | None = None
    password = settings.admin_password or secrets.token_urlsafe(12)
    while not accounts.initialized:
        await asyncio.sleep(interval)
        if not replica.is_leader or accounts.initialized:
            continue
        if cmd is None:
            hashed = await asyncio.get_running_loop().run_in_executor(None, hash_password, password)
            cmd = InitAccounts(
                admin_hash=hashed,
                at=now_ms(),
                token_secret=None if settings.token_secret else secrets.token_urlsafe(32),
                users=config_users(settings, now_ms()),
            )
        try:
            await replica.propose(cmd)
        except (NoQuorum, Refused) as exc:
            log.warning("could not initialise the admin account yet: %s", exc)
    if (
        cmd is not None
        and accounts.admin_hash == cmd.admin_hash
        and settings.admin_password is None
    ):
        write_private_file(password_file, password + "\n")
        print(
            f"node {node_id}: {ADMIN_PASSWORD_NOTICE}{password_file} (readable only by its "
            "owner; log in, then delete the file; set RAGRAFT_ADMIN_PASSWORD to choose it)",
            flush=True,
        )


def config_users(settings: SecuritySettings, at: int) -> tuple[PutUser, ...]:
    return tuple(
        PutUser(name=u.name, role=UserRole(u.role), password_hash=u.password_hash, at=at, seed=True)
        for u in settings.users
    )


async def seed_users(replica: Replica, settings: SecuritySettings, interval: float = 5.0) -> None:
    """Create the users of cluster.toml that the accounts have never had."""
    accounts = replica.state.accounts
    while True:
        await asyncio.sleep(interval)
        if not replica.is_leader or not accounts.initialized:
            continue
        for seed in config_users(settings, now_ms()):
            if seed.name in accounts.users or seed.name in accounts.retired:
                continue
            try:
                await replica.propose(seed)
            except (NoQuorum, Refused) as exc:
                log.warning("could not create user %s of cluster.toml yet: %s", seed.name, exc)
            else:
                log.info("created user %s (%s) from cluster.toml", seed.name, seed.role)
