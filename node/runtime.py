"""One ragraft node process, wired from cluster.toml.

Raft (durable stores under the node's data_dir, ZeroMQ transport, CURVE when
the cluster has keys) replicates the node state (node/state.py: the task queue);
the executor claims and runs tasks; gossip spreads liveness and metrics; the
RAG service loads the models and adds the RAG task types; the REST API serves
/api/v1 on api_port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import msgpack
from aiohttp import ClientSession, web

from consensus.cipher import Cipher
from consensus.errors import RaftError
from consensus.filestore import FileLogStore, FileSnapshotStore, FileStableStore
from consensus.node import NodeOptions, NodeStopped, RaftNode
from consensus.tuning import tune_gc
from consensus.zmq_transport import CurveKeys, ZmqTransport
from node.api import TaskAPI, error, json_errors
from node.auth import AuthAPI, Authenticator, initialise_accounts
from node.cluster_api import ClusterAPI
from node.config import ClusterConfig, SecuritySettings, TaskSettings
from node.events import EventHub
from node.executor import Executor, NoopRunner
from node.gossip.driver import Gossip
from node.gossip.history import MetricsHistory
from node.gossip.metrics import NodeMetrics
from node.ids import now_ms
from node.kb_api import KnowledgeAPI
from node.openai_api import OpenAIRoutes
from node.prom import MetricsExporter
from node.rag.knowledge import KnowledgeBase
from node.rag_service import RagService, import_libraries
from node.state import NodeState
from node.tasks import RetryPolicy, TaskQueue

log = logging.getLogger("ragraft.node")


def build_raft(
    config: ClusterConfig, node_id: str, state: NodeState, joining: bool = False
) -> RaftNode:
    spec = config.node(node_id)
    raft_dir = spec.data_dir / "raft"
    raft_dir.mkdir(parents=True, exist_ok=True)
    known = {n.id: n.raft_address for n in config.nodes}
    # Nodes marked join = true were added after the cluster's first start: they
    # are not in the bootstrap membership and learn everything from the leader.
    initial = (
        {} if spec.join or joining else {n.id: n.raft_address for n in config.nodes if not n.join}
    )
    options = NodeOptions(
        id=node_id,
        initial_members=initial,
        known_addresses=known,
        tick_ms=config.raft.tick_ms,
        election_ticks=config.raft.election_ticks,
        heartbeat_ticks=config.raft.heartbeat_ticks,
        snapshot_entries=config.raft.snapshot_entries,
        cipher=Cipher.from_base64(config.encryption_key) if config.encryption_key else None,
    )
    curve = (
        CurveKeys.cluster(config.curve_public, config.curve_secret)
        if config.curve_enabled
        else None
    )
    transport = ZmqTransport(node_id, spec.raft_address, curve)
    return RaftNode(
        options,
        state,
        FileLogStore(raft_dir / "log", segment_bytes=config.raft.segment_bytes),
        FileStableStore(raft_dir / "state"),
        FileSnapshotStore(raft_dir / "snapshots"),
        transport,
    )


def build_http(
    config: ClusterConfig,
    raft: RaftNode,
    state: NodeState,
    executor: Executor,
    gossip: Gossip,
    rag: RagService,
    events: EventHub,
    metrics: MetricsExporter,
    history: MetricsHistory | None = None,
) -> web.Application:
    api = TaskAPI(raft, state.tasks, raft.id)
    auth = Authenticator(config.security, state.accounts, config.name)
    max_upload = config.rag.max_upload_mb * 1024 * 1024
    # Multipart uploads are streamed and checked per file; JSON bodies are read whole.
    app = web.Application(
        client_max_size=max_upload + 1024 * 1024,
        middlewares=[json_errors, api.middleware(), auth.middleware(error)],
    )
    api.routes(app)
    AuthAPI(auth, api.write, error).routes(app)
    app.router.add_get("/api/v1/events", events.handle)
    app.router.add_get("/metrics", metrics.handle)
    OpenAIRoutes(raft, state.tasks).routes(app)
    KnowledgeAPI(state, api.write, error, rag, max_upload).routes(app)

    ClusterAPI(config, raft, state, gossip, rag, error, history).routes(app)
    return app


def raft_brief(raft: RaftNode) -> dict:
    """This node's Raft position, gossiped so that every dashboard shows every node's lag."""
    status = raft.status()
    return {
        "role": status["role"],
        "term": status["term"],
        "commit": status["commit"],
        "applied": status["applied"],
    }


async def sweep_expired(raft: RaftNode, settings: TaskSettings) -> None:
    """On the leader, expire finished tasks past the retention period (R10).
    The cut-off time travels in the command, so every node removes the same set."""
    while True:
        await asyncio.sleep(settings.sweep_seconds)
        if not raft.is_leader:
            continue
        cmd = {"op": "expire", "before": now_ms() - settings.retention_seconds * 1000}
        try:
            applied = await raft.propose(msgpack.packb(cmd, use_bin_type=True))
            if applied.result.get("expired"):
                log.info("expired %d finished tasks", applied.result["expired"])
        except RaftError as exc:
            log.warning("could not expire old tasks: %s", exc)


async def requeue_dead_nodes(
    raft: RaftNode, state: NodeState, gossip: Gossip, interval: float = 0.5
) -> None:
    """On the leader: when gossip has confirmed a node dead (or gone), commit
    that fact; applying it requeues the node's running tasks (attempt + 1 at the
    next claim).  A scan rather than a reaction to events, so that a leader
    elected after the death still does it."""
    while True:
        await asyncio.sleep(interval)
        if not raft.is_leader:
            continue
        members = gossip.members()
        for node_id, info in list(state.tasks.nodes.items()):
            member = members.get(node_id)
            if member is None or not info.get("alive", True):
                continue
            if str(getattr(member.status, "value", member.status)) in ("dead", "left"):
                cmd = {"op": "node", "node": node_id, "alive": False, "at": now_ms()}
                try:
                    applied = await raft.propose(msgpack.packb(cmd, use_bin_type=True))
                    log.warning(
                        "node %s is %s: requeued its tasks %s",
                        node_id,
                        getattr(member.status, "value", member.status),
                        applied.result.get("requeued"),
                    )
                except RaftError as exc:
                    log.warning("could not record that node %s is dead: %s", node_id, exc)


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


async def run_node(config: ClusterConfig, node_id: str, join: str | None = None) -> None:
    spec = config.node(node_id)
    if join is not None and not (
        os.environ.get("RAGRAFT_API_KEY") or config.security.admin_password
    ):
        raise SystemExit(
            f"node {node_id}: to join a cluster a node needs admin credentials: set RAGRAFT_API_KEY "
            "to an admin's API key (POST /api/v1/auth/keys) or RAGRAFT_ADMIN_PASSWORD"
        )
    settings = config.tasks
    dashboard = os.environ.get("RAGRAFT_DASHBOARD", "1") != "0"
    if config.models.load:
        import_libraries(node_id)
    if dashboard:
        import ui.app  # noqa: F401  (Panel and Bokeh: a few seconds of imports, done before Raft starts)
    kb = KnowledgeBase(index_kind=config.rag.index)
    state = NodeState(TaskQueue(RetryPolicy(settings.max_attempts, settings.retry_backoff_ms)), kb)
    raft = build_raft(config, node_id, state, joining=join is not None)
    await raft.start()
    slots = spec.slots or settings.slots
    executor = Executor(raft, state.tasks, node_id, slots, {"noop": NoopRunner()})
    state.listen(
        lambda cmd, result: (
            executor.poke() if cmd.get("op") in ("submit", "fail", "node", "kb.upload") else None
        )
    )
    await executor.start()
    loop = asyncio.get_running_loop()

    def commit(cmd: dict) -> object:
        """For worker threads: commit `cmd`, retrying while there is no quorum.
        A retry is a new request: the commands sent this way are idempotent
        (a chunk batch by its number, an ingest's finish by its version)."""
        packed = msgpack.packb(cmd, use_bin_type=True)
        while True:
            future = asyncio.run_coroutine_threadsafe(raft.propose(packed), loop)
            try:
                return future.result().result
            except NodeStopped:
                raise
            except RaftError as exc:
                log.warning("could not commit %s yet (%s); retrying", cmd.get("op"), exc)
                time.sleep(0.5)

    rag = RagService(node_id, kb, config.models, config.rag, spec.data_dir, executor, commit)
    events = EventHub(node_id, state)
    state.listen(events.on_apply)
    curve = (
        CurveKeys.cluster(config.curve_public, config.curve_secret)
        if config.curve_enabled
        else None
    )
    sample = NodeMetrics(
        runtime=lambda: {
            **executor.status(),
            "models": rag.status.state,
            "generator": rag.status.generator,
            "raft": raft_brief(raft),
        }
    )
    gossip = Gossip(
        node_id,
        spec.gossip_address,
        {n.id: n.gossip_address for n in config.nodes if n.id != node_id},
        sample,
        events.on_gossip,
        curve=curve,
    )
    await gossip.start()
    metrics = MetricsExporter(node_id, raft, state, executor, gossip, rag, sample)
    history = MetricsHistory(gossip.snapshot)
    state.listen(metrics.on_apply)
    background = [
        asyncio.create_task(sweep_expired(raft, settings), name="housekeeper"),
        asyncio.create_task(history.run(), name="metrics-history"),
        asyncio.create_task(requeue_dead_nodes(raft, state, gossip), name="failover"),
        asyncio.create_task(events.publish_cluster(raft.status), name="cluster-events"),
        asyncio.create_task(
            initialise_accounts(raft, state.accounts, config.security, node_id), name="accounts"
        ),
    ]
    runner = web.AppRunner(
        build_http(config, raft, state, executor, gossip, rag, events, metrics, history),
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, spec.host, spec.api_port)
    try:
        await site.start()
    except OSError as exc:
        await executor.stop()
        await raft.stop()
        raise SystemExit(
            f"node {node_id}: cannot listen on {spec.host}:{spec.api_port} ({exc.strerror}); "
            f"is another ragraft running? stop it or change nodes.api_port"
        ) from None
    print(f"node {node_id}: raft {spec.raft_address}, api {spec.api_url}", flush=True)
    stop_dashboard = None
    if dashboard:
        from ui.server import start_dashboard

        peers = {n.id: n.dashboard_url for n in config.nodes if n.id != node_id}
        try:
            stop_dashboard = await start_dashboard(
                node_id, spec.host, spec.dashboard_port, spec.api_url, peers
            )
            print(f"node {node_id}: dashboard {spec.dashboard_url}", flush=True)
        except OSError as exc:
            log.error(
                "dashboard not started: cannot listen on %s:%d (%s); change nodes.dashboard_port",
                spec.host,
                spec.dashboard_port,
                exc.strerror,
            )
    tune_gc()
    # Only now: the loader thread's imports (torch, transformers) would otherwise
    # hold up the start of the API for as long as the models take.
    await rag.start()
    if join is not None:
        background.append(
            asyncio.create_task(
                ask_to_join(join, node_id, spec.raft_address, config.security), name="join"
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("node %s stopping", node_id)
    for task in background:
        task.cancel()
    await executor.stop()  # first, while Raft can still commit the hand-back
    if stop_dashboard is not None:
        await stop_dashboard()
    await gossip.stop()
    await runner.cleanup()
    rag.close()
    await raft.stop()
