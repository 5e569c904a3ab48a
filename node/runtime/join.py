"""Joining a running cluster: ask a member (any: it forwards to the leader) to add
this node, as a learner first and a voter once it has caught up."""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import ClientSession, TCPConnector

from node.client.rest import ClientError, ssl_context
from node.config import SecuritySettings, TlsSettings

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
    seed_url: str,
    node_id: str,
    raft_address: str,
    settings: SecuritySettings,
    tls: TlsSettings | None = None,
) -> None:
    """Ask a member (any: it forwards to the leader) to add us: learner first,
    voter once caught up.  Retries until the cluster answers.  With [tls] a bare
    HOST:PORT is reached over https, trusting the system's CAs, RAGRAFT_CA_FILE and
    the [tls] certificate of this node (as a rule the whole cluster serves that one)."""
    tls = tls or TlsSettings()
    url = seed_url.rstrip("/")
    if not url.startswith("http"):
        url = ("https://" if tls.enabled else "http://") + url
    print(
        f"node {node_id}: asking {url} to add it to the cluster (learner, then voter)...",
        flush=True,
    )
    try:
        trust = ssl_context(tls.cert_file) if url.startswith("https") else None
    except ClientError as exc:  # RAGRAFT_CA_FILE names no PEM bundle
        log.error("node %s cannot ask to join: %s", node_id, exc)
        return
    async with ClientSession(connector=TCPConnector(ssl=trust or True)) as session:
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
