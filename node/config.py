"""cluster.toml: loaded once, validated at start, with environment overrides.

Every problem is reported with the key it concerns and what to do about it,
e.g. ``cluster.toml: nodes[2].raft_port: 7101 is already used by nodes[1].raft_port;
give every node its own ports``.  Secrets may come from the environment
instead of the file:

    RAGRAFT_CLUSTER_PUBLIC_KEY / RAGRAFT_CLUSTER_SECRET_KEY   CURVE keys (z85)
    RAGRAFT_ENCRYPTION_KEY                                     [security] encryption_key
    RAGRAFT_TICK_MS                                            [raft] tick_ms

Sections the later parts of ragraft read ([models], [tasks], [security]) are
kept as plain tables in `ClusterConfig.extra` until their owners validate them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad cluster.toml; the message names the key and the fix."""


@dataclass(frozen=True)
class NodeSpec:
    id: str
    host: str
    raft_port: int
    gossip_port: int
    api_port: int
    dashboard_port: int
    data_dir: Path
    join: bool = False  # added at run time (`ragraft node --join`), not part of the first bootstrap

    @property
    def raft_address(self) -> str:
        return f"tcp://{self.host}:{self.raft_port}"

    @property
    def gossip_address(self) -> str:
        return f"tcp://{self.host}:{self.gossip_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"


@dataclass(frozen=True)
class RaftSettings:
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10_000
    segment_bytes: int = 64 * 1024 * 1024  # log segment size: compaction frees whole segments
    dedup_entries: int = 20_000  # a retried request is recognised within this many entries


@dataclass(frozen=True)
class TaskSettings:
    slots: int = 2  # tasks one node runs at once (a GPU node may say more)
    max_attempts: int = 3
    retry_backoff_ms: int = 2_000  # doubles on each retry
    retention_seconds: int = 7 * 24 * 3600  # finished tasks are expired after this
    sweep_seconds: int = 60  # how often the leader expires old tasks


@dataclass(frozen=True)
class ClusterConfig:
    path: Path
    name: str
    nodes: tuple[NodeSpec, ...]
    raft: RaftSettings
    tasks: TaskSettings
    curve_public: str | None = None
    curve_secret: str | None = None
    encryption_key: str | None = None  # base64 AES-256 key: encrypts replicated data at rest
    extra: dict[str, Any] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        known = ", ".join(n.id for n in self.nodes)
        raise ConfigError(f"{self.path}: no node with id {node_id!r} (the file has: {known})")

    @property
    def curve_enabled(self) -> bool:
        return self.curve_public is not None


_NODE_KEYS = {"id", "host", "raft_port", "gossip_port", "api_port", "dashboard_port", "data_dir", "join"}
_PORT_KEYS = ("raft_port", "gossip_port", "api_port", "dashboard_port")


def load(path: str | os.PathLike[str] = "cluster.toml", env: dict[str, str] | None = None) -> ClusterConfig:
    env = dict(os.environ) if env is None else env
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; pass --config PATH or create it (see README.md)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, path, env)


def parse(raw: dict[str, Any], path: Path, env: dict[str, str]) -> ClusterConfig:
    where = str(path)

    def fail(key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {problem}; {fix}")

    cluster = raw.get("cluster", {})
    if not isinstance(cluster, dict):
        raise fail("cluster", "must be a table", "write a [cluster] section")
    name = cluster.get("name", "ragraft")
    if not isinstance(name, str) or not name:
        raise fail("cluster.name", f"{name!r} is not a name", 'set e.g. name = "ragraft-local"')

    public = env.get("RAGRAFT_CLUSTER_PUBLIC_KEY") or cluster.get("curve_public_key")
    secret = env.get("RAGRAFT_CLUSTER_SECRET_KEY") or cluster.get("curve_secret_key")
    if bool(public) != bool(secret):
        raise fail(
            "cluster.curve_public_key/curve_secret_key",
            "only one of the two CURVE keys is set",
            "set both (generate a pair with `ragraft keys`) or neither",
        )
    for key, value in (("curve_public_key", public), ("curve_secret_key", secret)):
        if value is not None and (not isinstance(value, str) or len(value) != 40):
            raise fail(f"cluster.{key}", "is not a 40-character z85 key", "generate a pair with `ragraft keys`")

    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise fail("nodes", "no [[nodes]] entries", "list at least one node (three for fault tolerance)")
    nodes: list[NodeSpec] = []
    seen_ids: dict[str, int] = {}
    seen_ports: dict[tuple[str, int], str] = {}
    base = path.parent
    for i, item in enumerate(nodes_raw):
        key = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise fail(key, "must be a table", "write each node as a [[nodes]] section")
        unknown = set(item) - _NODE_KEYS
        if unknown:
            raise fail(f"{key}.{sorted(unknown)[0]}", "unknown key", f"use only {', '.join(sorted(_NODE_KEYS))}")
        node_id = item.get("id")
        if not isinstance(node_id, str) or not node_id or len(node_id.encode()) > 64 or not node_id.isprintable():
            raise fail(f"{key}.id", f"{node_id!r} is not a valid node id", 'use a short name such as "n1"')
        if node_id in seen_ids:
            raise fail(f"{key}.id", f"{node_id!r} is already used by nodes[{seen_ids[node_id]}]", "give every node its own id")
        seen_ids[node_id] = i
        host = item.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise fail(f"{key}.host", f"{host!r} is not a host name", 'use e.g. "127.0.0.1"')
        ports = {}
        for port_key in _PORT_KEYS:
            value = item.get(port_key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise fail(f"{key}.{port_key}", f"{value!r} is not a port (1-65535)", "set a free TCP port")
            if (host, value) in seen_ports:
                raise fail(
                    f"{key}.{port_key}",
                    f"{value} is already used by {seen_ports[(host, value)]}",
                    "give every node its own ports",
                )
            seen_ports[(host, value)] = f"{key}.{port_key}"
            ports[port_key] = value
        data_dir = item.get("data_dir", f".ragraft/{node_id}")
        if not isinstance(data_dir, str) or not data_dir:
            raise fail(f"{key}.data_dir", f"{data_dir!r} is not a path", 'set e.g. data_dir = ".ragraft/n1"')
        join = item.get("join", False)
        if not isinstance(join, bool):
            raise fail(f"{key}.join", f"{join!r} is not true or false", "write join = true for a node added later")
        nodes.append(NodeSpec(node_id, host, data_dir=(base / data_dir), join=join, **ports))

    raft_raw = dict(raw.get("raft", {}))
    if "RAGRAFT_TICK_MS" in env:
        try:
            raft_raw["tick_ms"] = int(env["RAGRAFT_TICK_MS"])
        except ValueError:
            raise fail("RAGRAFT_TICK_MS", f"{env['RAGRAFT_TICK_MS']!r} is not a number", "unset it or set milliseconds") from None
    defaults = RaftSettings()
    settings = {}
    for name_, low, high in (("tick_ms", 1, 10_000), ("election_ticks", 2, 1000), ("heartbeat_ticks", 1, 1000),
                             ("snapshot_entries", 10, 10**9), ("segment_bytes", 64 * 1024, 2**34),
                             ("dedup_entries", 100, 10**8)):
        value = raft_raw.pop(name_, getattr(defaults, name_))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail(f"raft.{name_}", f"{value!r} is out of range", f"use a whole number from {low} to {high}")
        settings[name_] = value
    if raft_raw:
        raise fail(f"raft.{sorted(raft_raw)[0]}", "unknown key", f"use only {', '.join(settings)}")
    raft = RaftSettings(**settings)

    tasks_raw = raw.get("tasks", {})
    if not isinstance(tasks_raw, dict):
        raise fail("tasks", "must be a table", "write a [tasks] section")
    tasks_raw = dict(tasks_raw)
    task_defaults = TaskSettings()
    task_settings = {}
    for name_, low, high in (("slots", 1, 256), ("max_attempts", 1, 100), ("retry_backoff_ms", 0, 3_600_000),
                             ("retention_seconds", 1, 10 * 365 * 86400), ("sweep_seconds", 1, 86400)):
        value = tasks_raw.pop(name_, getattr(task_defaults, name_))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail(f"tasks.{name_}", f"{value!r} is out of range", f"use a whole number from {low} to {high}")
        task_settings[name_] = value
    if tasks_raw:
        raise fail(f"tasks.{sorted(tasks_raw)[0]}", "unknown key", f"use only {', '.join(task_settings)}")
    tasks = TaskSettings(**task_settings)
    if raft.election_ticks <= raft.heartbeat_ticks:
        raise fail("raft.election_ticks", "must exceed heartbeat_ticks", "e.g. election_ticks = 10, heartbeat_ticks = 1")

    security = raw.get("security", {})
    if not isinstance(security, dict):
        raise fail("security", "must be a table", "write a [security] section")
    encryption_key = env.get("RAGRAFT_ENCRYPTION_KEY") or security.get("encryption_key")
    if encryption_key is not None:
        from consensus.cipher import Cipher

        try:
            Cipher.from_base64(encryption_key)
        except ValueError as exc:
            raise fail("security.encryption_key", str(exc), "generate one with `ragraft keys`") from None

    extra = {k: v for k, v in raw.items() if k not in ("cluster", "nodes", "raft", "tasks")}
    return ClusterConfig(path, name, tuple(nodes), raft, tasks, public, secret, encryption_key, extra)
