"""Joining a running cluster: ask a member (any: it forwards to the leader) to add
this node, as a learner first and a voter once it has caught up: with an admin's
credentials (ask_to_join), or with a join token, which also brings the shared
secrets a node without the bundle needs (fetch_secrets_with_token)."""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import ClientSession, TCPConnector

from node.client.rest import ClientError, ssl_context
from node.config import SecuritySettings, TlsSettings
from node.secrets import ClusterSecrets, open_as_joiner

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
    public_key: str | None = None,
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
                    json={
                        "id": node_id,
                        "raft_address": raft_address,
                        # this node's own CURVE key, for the cluster to trust
                        **({"curve_public_key": public_key} if public_key else {}),
                    },
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


def fetch_secrets_with_token(
    seed_url: str,
    token: str,
    node_id: str,
    raft_address: str,
    public_key: str,
    tls: TlsSettings | None = None,
    patience_s: float = 120.0,
) -> ClusterSecrets:
    """Present a join token and this node's public key to a member (it forwards to the
    leader); the answer is the cluster's shared secrets, sealed with the token.  Retries
    while the cluster cannot answer; a refused token is a SystemExit saying so."""
    import json
    import time
    import urllib.error
    import urllib.request

    tls = tls or TlsSettings()
    url = seed_url.rstrip("/")
    if not url.startswith("http"):
        url = ("https://" if tls.enabled else "http://") + url
    context = ssl_context(tls.cert_file) if url.startswith("https") else None
    body = json.dumps(
        {
            "token": token,
            "id": node_id,
            "raft_address": raft_address,
            "curve_public_key": public_key,
        }
    ).encode()
    print(f"node {node_id}: presenting its join token to {url}...", flush=True)
    deadline = time.monotonic() + patience_s
    while True:
        request = urllib.request.Request(
            f"{url}/api/v1/cluster/join",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                answer = json.loads(response.read())
            return open_as_joiner(token, answer["sealed"])
        except urllib.error.HTTPError as exc:
            reason = json.loads(exc.read() or b"{}").get("error", {})
            if exc.code < 500:
                raise SystemExit(
                    f"node {node_id}: the cluster refused the join token ({exc.code}: "
                    f"{reason.get('message', exc)}); ask an admin for a new one "
                    "(`ragraft node token`)"
                ) from None
            problem = f"{exc.code}: {reason.get('message', exc)}"
        except (OSError, ValueError, KeyError) as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            raise SystemExit(f"node {node_id}: could not join through {url} ({problem})")
        log.warning("cannot join through %s yet (%s); retrying", url, problem)
        time.sleep(2)
