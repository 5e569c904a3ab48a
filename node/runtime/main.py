"""One ragraft node process, wired from cluster.toml: the composition root.

The replica (node/replica: the node state, replicated by the Raft driver with
durable stores under the node's data_dir, ZeroMQ transport, CURVE when the
cluster has keys); the executor claims and runs tasks; gossip spreads liveness
and metrics; the RAG service loads the models and adds the RAG task types; the
REST API serves /api/v1 on api_port, the dashboard its own port.  This is the
only module that builds the Raft driver: everything else goes through Replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from consensus.cipher import Cipher
from consensus.driver import NodeOptions, RaftNode
from consensus.filestore import FileLogStore, FileSnapshotStore, FileStableStore
from consensus.keyring import KeyRing
from consensus.tuning import tune_gc
from consensus.zmq_transport import ZmqTransport
from node.config import ClusterConfig, ConfigError, NodeSpec
from node.execution.executor import Executor, NoopRunner
from node.execution.rag_service import RagService, import_libraries
from node.gossip.driver import Gossip
from node.gossip.history import MetricsHistory
from node.gossip.messages import Status
from node.gossip.metrics import NodeMetrics
from node.http.app import build_http
from node.http.events import EventHub
from node.http.metrics import MetricsExporter
from node.rag.knowledge import KnowledgeBase
from node.replica.codec import CODEC_VERSION
from node.replica.formats import announced_formats
from node.replica.replica import Replica
from node.replica.state import NodeState
from node.replica.vocabulary import TaskType
from node.runtime.housekeeping import (
    initialise_accounts,
    requeue_dead_nodes,
    seed_users,
    sweep_expired,
)
from node.runtime.join import ask_to_join
from node.runtime.peers import RingKeeper
from node.runtime.state import new_state
from node.secrets import admin_password_path, insecurity, node_key, node_key_path
from node.tls import server_ssl_context

log = logging.getLogger("ragraft.node")
SLOW_STOP_S = 2.0  # a part that takes longer to stop is named in a warning


def key_ring(config: ClusterConfig, node_id: str) -> KeyRing | None:
    """Who this node's Raft and gossip sockets talk to: its own CURVE key pair and the
    nodes it trusts (the bundle's first nodes; node/replica/peers.py adds the admitted
    ones and drops the removed).  A cluster.toml or version 1 bundle with one key pair
    for the whole cluster gives a ring of that pair.  None when CURVE is off."""
    if not config.curve_enabled:
        return None
    if config.curve_public is not None:
        if config.curve_secret is None:
            raise ConfigError(
                f"{config.path}: cluster.curve_public_key is set without curve_secret_key"
            )
        return KeyRing.shared_pair(config.curve_public, config.curve_secret)
    public, secret = node_key(config.secrets_dir, node_id, create=node_id not in config.node_keys)
    if node_id in config.node_keys and config.node_keys[node_id] != public:
        raise ConfigError(
            f"{node_key_path(config.secrets_dir, node_id)}: not the key the bundle names for "
            f"{node_id}; copy both from where `ragraft init` wrote them"
        )
    initial = {n.id for n in config.nodes if not n.join}
    trusted = {n: key for n, key in config.node_keys.items() if n in initial or n == node_id}
    return KeyRing(public, secret, trusted)


def build_replica(
    config: ClusterConfig,
    node_id: str,
    state: NodeState,
    joining: bool = False,
    ring: KeyRing | None = None,
) -> Replica:
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
    # Listens on the bind address; the membership records spec.raft_address, which the
    # others dial.
    transport = ZmqTransport(node_id, spec.raft_bind_address, ring)
    raft = RaftNode(
        options,
        state,
        FileLogStore(raft_dir / "log", segment_bytes=config.raft.segment_bytes),
        FileStableStore(raft_dir / "state"),
        FileSnapshotStore(raft_dir / "snapshots"),
        transport,
    )
    return Replica(raft, state)


async def run_node(
    config: ClusterConfig, node_id: str, join: str | None = None, by_token: bool = False
) -> None:
    """Run one node until SIGINT/SIGTERM.  `join`: a member's API, to be added through;
    `by_token`: the node was admitted with a join token (the leader adds it), so it
    asks for nothing more."""
    spec = config.node(node_id)
    if (
        join is not None
        and not by_token
        and not (os.environ.get("RAGRAFT_API_KEY") or config.security.admin_password)
    ):
        raise SystemExit(
            f"node {node_id}: to join a cluster a node needs admin credentials: "
            "set RAGRAFT_API_KEY to an admin's API key (POST /api/v1/auth/keys) "
            "or RAGRAFT_ADMIN_PASSWORD"
        )
    for warning in insecurity(config):  # on every start, not only the first
        log.warning("node %s: INSECURE: %s (insecure = true in [security])", node_id, warning)
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(spec.data_dir, 0o700)  # a data dir made before secure defaults was 0755
    settings = config.tasks
    dashboard = os.environ.get("RAGRAFT_DASHBOARD", "1") != "0"
    if config.models.load:
        import_libraries(node_id)
    if dashboard:
        import ui.app  # noqa: F401  (Panel and Bokeh: a few seconds of imports, done before Raft starts)
    state = new_state(config)
    kb = state.kb
    assert isinstance(kb, KnowledgeBase)
    ring = key_ring(config, node_id)
    keeper = None
    if ring is not None and not ring.shared:
        bootstrap = {n: key.decode("ascii") for n, key in ring.peers().items()}
        keeper = RingKeeper(ring, state, bootstrap)
        state.listen(keeper.on_apply)
    replica = build_replica(config, node_id, state, joining=join is not None, ring=ring)
    await replica.start()
    slots = spec.slots or settings.slots
    executor = Executor(replica, node_id, slots, {TaskType.NOOP: NoopRunner()})
    state.listen(executor.on_apply)
    await executor.start()
    rag = RagService(node_id, kb, config.models, config.rag, spec.data_dir, executor, replica)
    events = EventHub(node_id, state)
    state.listen(events.on_apply)
    sample = NodeMetrics(
        runtime=lambda: {
            **executor.status(),
            "models": rag.status.state,
            "generator": rag.status.generator,
            "raft": replica.brief(),
            # Where to reach this node, for clients and for nodes that do not have it in
            # their configuration (it joined later, or they were configured before it).
            **published_urls(spec),
            # The newest log format it reads: the cluster writes a new one only once
            # every voter says so (node/replica/formats.py).
            "format": CODEC_VERSION,
        }
    )
    gossip = Gossip(
        node_id,
        spec.gossip_bind_address,
        {n.id: n.gossip_address for n in config.nodes if n.id != node_id},
        sample,
        events.on_gossip,
        curve=ring,
        advertise_address=spec.gossip_address,
    )
    await gossip.start()
    replica.announced_formats = lambda: {
        **announced_formats(gossip.snapshot()),
        node_id: CODEC_VERSION,
    }
    metrics = MetricsExporter(node_id, replica, executor, gossip, rag, sample)
    history = MetricsHistory(gossip.snapshot)
    state.listen(metrics.on_apply)
    background = [
        asyncio.create_task(sweep_expired(replica, settings), name="housekeeper"),
        asyncio.create_task(history.run(), name="metrics-history"),
        asyncio.create_task(requeue_dead_nodes(replica, gossip), name="failover"),
        asyncio.create_task(events.publish_cluster(replica.status), name="cluster-events"),
        asyncio.create_task(
            initialise_accounts(replica, config.security, node_id, admin_password_path(config)),
            name="accounts",
        ),
        asyncio.create_task(seed_users(replica, config.security), name="seed-users"),
    ]
    if keeper is not None:
        background.append(asyncio.create_task(keeper.run(), name="key-ring"))
        background.append(
            asyncio.create_task(keeper.revoke_removed(replica), name="revoke-removed")
        )
    runner = web.AppRunner(
        build_http(config, replica, executor, gossip, rag, events, metrics, history),
        access_log=None,
    )
    await runner.setup()
    # https when [tls] is set (node/config.py loaded the pair once when it read the file)
    site = web.TCPSite(
        runner, spec.listen_host, spec.api_port, ssl_context=server_ssl_context(config.tls)
    )
    try:
        await site.start()
    except OSError as exc:
        await executor.stop()
        await replica.stop()
        raise SystemExit(
            f"node {node_id}: cannot listen on {spec.listen_host}:{spec.api_port} "
            f"({exc.strerror}); "
            f"is another ragraft running? stop it or change nodes.api_port"
        ) from None
    print(f"node {node_id}: raft {spec.raft_address}, api {spec.public_api_url}", flush=True)
    stop_dashboard = None
    if dashboard:
        from ui.server import start_dashboard

        try:
            stop_dashboard = await start_dashboard(
                node_id,
                spec.listen_host,
                spec.dashboard_port,
                spec.local_api_url,
                lambda: peer_dashboards(config, node_id, gossip.snapshot()),
                insecurity(config),
                (*config.dashboard_origins, *published_origin(spec)),
                config.tls,
            )
            print(f"node {node_id}: dashboard {spec.public_dashboard_url}", flush=True)
        except OSError as exc:
            log.error(
                "dashboard not started: cannot listen on %s:%d (%s); change nodes.dashboard_port",
                spec.listen_host,
                spec.dashboard_port,
                exc.strerror,
            )
    tune_gc()
    # Only now: the loader thread's imports (torch, transformers) would otherwise
    # hold up the start of the API for as long as the models take.
    await rag.start()
    if join is not None and not by_token:
        background.append(
            asyncio.create_task(
                ask_to_join(
                    join,
                    node_id,
                    spec.raft_address,
                    config.security,
                    config.tls,
                    public_key=keeper.ring.public.decode("ascii") if keeper is not None else None,
                ),
                name="join",
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Raft stopping on its own (an entry of a newer release, a failing disk) ends the
    # node too: serving reads of a state that no longer advances would mislead.
    failed = asyncio.create_task(replica.wait_failed(), name="raft-failed")
    stopped = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    cause = failed.result() if failed.done() else None
    failed.cancel()
    log.info("node %s stopping", node_id)
    for task in background:
        task.cancel()
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("executor", executor.stop),  # first, while Raft can still commit the hand-back
        ("dashboard", stop_dashboard or _nothing),
        ("gossip", gossip.stop),
        ("api", runner.cleanup),
        ("models", _as_async(rag.close)),
        ("raft", replica.stop),
    ]
    await _stop_in_order(node_id, steps)
    if cause is not None:
        raise SystemExit(f"node {node_id}: raft stopped: {cause}")


def published_urls(spec: NodeSpec) -> dict[str, str]:
    """What a node says in gossip of where it is: the URLs for clients, and the API
    as the other nodes reach it (they forward membership changes to the leader)."""
    return {
        "api_url": spec.public_api_url,
        "dashboard_url": spec.public_dashboard_url,
        "peer_api_url": spec.api_url,
    }


def published_origin(spec: NodeSpec) -> tuple[str, ...]:
    """A browser that opens the dashboard at its published URL sends that origin."""
    if spec.published_dashboard_url is None:
        return ()
    from urllib.parse import urlsplit

    parts = urlsplit(spec.published_dashboard_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (f"{parts.hostname}:{port}",)


def peer_dashboards(
    config: ClusterConfig, node_id: str, members: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """The other nodes' dashboards, for the page to offer when its own node stops: what
    each live node publishes in gossip (the URL a browser reaches, which the others'
    configuration may not know: a port mapping), else the configured one."""
    peers = {n.id: n.public_dashboard_url for n in config.nodes if n.id != node_id}
    for member, entry in members.items():
        url = (entry.get("meta") or {}).get("dashboard_url")
        if member != node_id and isinstance(url, str) and entry.get("status") == Status.ALIVE:
            peers[member] = url
    return peers


async def _nothing() -> None:
    return None


def _as_async(close: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return close()

    return run


async def _stop_in_order(
    node_id: str, steps: list[tuple[str, Callable[[], Awaitable[object]]]]
) -> None:
    """Each part stops in turn; how long each took is logged, so a slow stop says
    which part held it up (an operator's supervisor kills a node that takes too long)."""
    loop = asyncio.get_running_loop()
    took: list[str] = []
    started = loop.time()
    for name, stop_part in steps:
        t0 = loop.time()
        try:
            await stop_part()
        except Exception:
            log.exception("stopping %s failed; stopping the rest", name)
        elapsed = loop.time() - t0
        took.append(f"{name} {elapsed:.2f} s")
        if elapsed > SLOW_STOP_S:
            log.warning("stopping %s took %.1f s", name, elapsed)
    log.info("node %s stopped in %.2f s (%s)", node_id, loop.time() - started, ", ".join(took))
