"""GET /api/v1/cluster/backup: the whole replicated state, as a backup file
(node/backup/archive.py), from any node.

The node first makes sure it has applied everything committed before the request
(a read barrier through the leader), then takes the state between two applies:
the file is a consistent cut at one log index, the same on whichever node served
it.  Admins only: it holds every user's password hash and every task.
"""

from __future__ import annotations

import time

from aiohttp import web

from node.backup import archive
from node.config import ClusterConfig
from node.http import errors
from node.http.auth import is_admin
from node.http.errors import error
from node.replica.replica import NoQuorum, Replica

BACKUP_CONTENT_TYPE = "application/octet-stream"


class BackupAPI:
    def __init__(self, config: ClusterConfig, replica: Replica) -> None:
        self.config = config
        self.replica = replica

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/cluster/backup", self.backup)

    async def backup(self, request: web.Request) -> web.Response:
        if not is_admin(request):
            return error(403, "forbidden", "only an admin can take a backup")
        try:
            taken, summary = await self.replica.backup(
                lambda: archive.Summary.of(self.replica.state)
            )
        except NoQuorum as exc:
            return errors.no_quorum_response(exc)
        created = int(time.time() * 1000)
        payload = taken.data
        header = archive.Header(
            format=archive.FORMAT,
            cluster=self.config.name,
            node=self.replica.node_id,
            index=taken.index,
            term=taken.term,
            created_at_ms=created,
            sealed=taken.sealed,
            payload_bytes=len(payload),
            payload_sha256=archive.sha256(payload),
            summary=summary,
        )
        name = f"ragraft-{self.config.name}-{taken.index}.backup"
        return web.Response(
            body=archive.encode(header, payload),
            content_type=BACKUP_CONTENT_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Ragraft-Backup-Index": str(taken.index),
            },
        )
