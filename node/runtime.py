"""One ragraft node process: consensus from cluster.toml plus an HTTP status API.

What runs today: the Raft node (durable stores under the node's data_dir,
ZeroMQ transport, CURVE when the cluster has keys) and, on the node's api_port,
`GET /healthz`, `GET /readyz` and `GET /api/v1/cluster`.  The replicated state
machine is still the small key-value machine of consensus/kvserver.py; the task
queue, gossip, RAG engine and dashboard plug in here as they land.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from consensus.cipher import Cipher
from consensus.filestore import FileLogStore, FileSnapshotStore, FileStableStore
from consensus.kvserver import KVStateMachine
from consensus.node import NodeOptions, RaftNode
from consensus.zmq_transport import CurveKeys, ZmqTransport
from node.config import ClusterConfig

log = logging.getLogger("ragraft.node")


def build_raft(config: ClusterConfig, node_id: str) -> RaftNode:
    spec = config.node(node_id)
    raft_dir = spec.data_dir / "raft"
    raft_dir.mkdir(parents=True, exist_ok=True)
    members = {n.id: n.raft_address for n in config.nodes}
    options = NodeOptions(
        id=node_id,
        initial_members=members,
        known_addresses=members,
        tick_ms=config.raft.tick_ms,
        election_ticks=config.raft.election_ticks,
        heartbeat_ticks=config.raft.heartbeat_ticks,
        snapshot_entries=config.raft.snapshot_entries,
        cipher=Cipher.from_base64(config.encryption_key) if config.encryption_key else None,
    )
    curve = CurveKeys.cluster(config.curve_public, config.curve_secret) if config.curve_enabled else None
    transport = ZmqTransport(node_id, spec.raft_address, curve)
    return RaftNode(
        options,
        KVStateMachine(),
        FileLogStore(raft_dir / "log"),
        FileStableStore(raft_dir / "state"),
        FileSnapshotStore(raft_dir / "snapshots"),
        transport,
    )


def cluster_view(raft: RaftNode) -> dict:
    status = raft.status()
    return {
        "node": raft.id,
        "leader": status["leader"],
        "role": status["role"],
        "term": status["term"],
        "commit_index": status["commit"],
        "applied_index": status["applied"],
        "members": {
            "voters": status["voters"],
            "learners": status["learners"],
            "addresses": status["addresses"],
        },
        "quorum": status["leader"] is not None,
    }


def build_http(raft: RaftNode) -> web.Application:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": raft.id})

    async def readyz(_: web.Request) -> web.Response:
        ready = raft.leader is not None
        return web.json_response({"ready": ready, "leader": raft.leader}, status=200 if ready else 503)

    async def cluster(_: web.Request) -> web.Response:
        return web.json_response(cluster_view(raft))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/cluster", cluster)
    return app


async def run_node(config: ClusterConfig, node_id: str) -> None:
    spec = config.node(node_id)
    raft = build_raft(config, node_id)
    await raft.start()
    runner = web.AppRunner(build_http(raft), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, spec.host, spec.api_port)
    try:
        await site.start()
    except OSError as exc:
        await raft.stop()
        raise SystemExit(f"node {node_id}: cannot listen on {spec.host}:{spec.api_port} ({exc.strerror}); "
                         f"is another ragraft running? stop it or change nodes.api_port") from None
    print(f"node {node_id}: raft {spec.raft_address}, api {spec.api_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("node %s stopping", node_id)
    await runner.cleanup()
    await raft.stop()
