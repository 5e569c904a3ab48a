"""Joining a running cluster: ask a member (any: it forwards to the leader) to add
this node, as a learner first and a voter once it has caught up."""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import ClientSession

from node.config import SecuritySettings

log = logging.getLogger("ragraft.node")


async def admin_headers(
    session: ClientSession, url: str, settings: SecuritySettings
) -> dict[str, str]:
    """Credentials for a node's own admin calls to a member: RAGRAFT_API_KEY (an
    admin's API key) or the admin password from RAGRAFT_ADMIN_PASSWORD."""
    key = os.environ.get("RAGRAFT_API_KEY")
    if key:
        return {"Authorization": f"Bearer {key}"}
    assert settings.admin_password is not None  # run_node checked before starting
    async with session.post(
        f"{url}/api/v1/auth/token", json={"username": "admin", "password": settings.admin_password}
    ) as r:
        body = await r.json()
        if r.status != 200:
            raise OSError(f"login refused ({r.status}): {body.get('error', body)}")
        return {"Authorization": f"Bearer {body['access_token']}"}


async def ask_to_join(
    seed_url: str, node_id: str, raft_address: str, settings: SecuritySettings
) -> None:
    """Ask a member (any: it forwards to the leader) to add us: learner first,
    voter once caught up.  Retries until the cluster answers."""
    url = seed_url.rstrip("/")
    if not url.startswith("http"):
        url = "http://" + url
    print(
        f"node {node_id}: asking {url} to add it to the cluster (learner, then voter)...",
        flush=True,
    )
    async with ClientSession() as session:
        while True:
            try:
                headers = await admin_headers(session, url, settings)
                async with session.post(
                    f"{url}/api/v1/cluster/members",
                    headers=headers,
                    json={"id": node_id, "raft_address": raft_address},
                ) as r:
                    body = await r.json()
                    if r.status == 200:
                        print(
                            f"node {node_id}: joined; voters now {body['members']['voters']}",
                            flush=True,
                        )
                        return
                    log.warning(
                        "join refused (%s): %s; retrying", r.status, body.get("error", body)
                    )
            except (OSError, ValueError) as exc:
                log.warning("cannot reach %s to join (%s); retrying", url, exc)
            await asyncio.sleep(2)
