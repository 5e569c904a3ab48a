"""cluster.toml: loaded once, validated at start, with environment overrides.

Every problem is reported with the key it concerns and what to do about it,
e.g. ``cluster.toml: nodes[2].raft_port: 7101 is already used by nodes[1].raft_port;
give every node its own ports``.  Secrets may come from the environment
instead of the file:

    RAGRAFT_CLUSTER_PUBLIC_KEY / RAGRAFT_CLUSTER_SECRET_KEY
                                                         CURVE keys (z85)
    RAGRAFT_ENCRYPTION_KEY                               [security] encryption_key
    RAGRAFT_TOKEN_SECRET                                 [security] token_secret
    RAGRAFT_SECRETS_DIR                                  [security] secrets_dir
    RAGRAFT_INSECURE=1                                   [security] insecure = true
    RAGRAFT_DASHBOARD_ORIGINS=a:1,b:2                    [security] dashboard_origins
    RAGRAFT_ADMIN_PASSWORD                               the built-in admin's password
    RAGRAFT_TICK_MS                                      [raft] tick_ms
    RAGRAFT_DATA_DIR                                     every node's data_dir becomes <dir>/<id>
    RAGRAFT_MODEL_CACHE                                  [models] cache_dir
    RAGRAFT_LOAD_MODELS=0                                [models] load = false
    RAGRAFT_GENERATOR                                    [models] generator
    RAGRAFT_TLS_CERT / RAGRAFT_TLS_KEY                   [tls] cert_file / key_file
    RAGRAFT_CLUSTER_NAME                                 [cluster] name
    RAGRAFT_BIND_HOST                                    every node's bind_host

With no cluster.toml at all, the environment describes the cluster (containers,
Kubernetes):

    RAGRAFT_NODES=n1=host1,n2=host2,n3=host3             the first nodes, replacing [[nodes]]
    RAGRAFT_RAFT_PORT / _GOSSIP_PORT / _API_PORT / _DASHBOARD_PORT
                                                         their ports (7100, 7200, 8100, 8300)
    RAGRAFT_NODE_ID                                      the node this process is (`ragraft node`)
    RAGRAFT_HOST                                         its host, when it is not listed: a
                                                         node that joins (join = true)
    RAGRAFT_API_URL / RAGRAFT_DASHBOARD_URL              the URLs it publishes to clients
    RAGRAFT_JOIN / RAGRAFT_JOIN_TOKEN                    (node/cli/main.py) the member a
                                                         joining node asks, and its token

A node listens on bind_host (default: host) and is dialled by the others at host;
clients are told api_url / dashboard_url (default: host and the port).

Sections not validated here yet are kept as plain tables in `ClusterConfig.extra`.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.rag.vector_index import IndexKind  # (faiss: not imported at run time)


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
    slots: int | None = None  # overrides [tasks] slots for this node (e.g. a GPU node runs more)
    tls: bool = False  # from [tls]: the API and the dashboard speak https
    # Where the node listens, when that is not `host` (which the other nodes dial):
    # 0.0.0.0 in a container, say.  The ports are the same.
    bind_host: str | None = None
    # The URLs clients are told (gossip, GET /api/v1/nodes) when they do not reach the
    # node at host:port: a port mapping, an ingress, a load balancer's name.
    published_api_url: str | None = None
    published_dashboard_url: str | None = None

    @property
    def listen_host(self) -> str:
        return self.bind_host or self.host

    @property
    def raft_address(self) -> str:
        """What the other nodes dial (and the membership records)."""
        return f"tcp://{self.host}:{self.raft_port}"

    @property
    def gossip_address(self) -> str:
        return f"tcp://{self.host}:{self.gossip_port}"

    @property
    def raft_bind_address(self) -> str:
        return f"tcp://{self.listen_host}:{self.raft_port}"

    @property
    def gossip_bind_address(self) -> str:
        return f"tcp://{self.listen_host}:{self.gossip_port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def api_url(self) -> str:
        """The API as the other nodes reach it (host:port)."""
        return f"{self.scheme}://{self.host}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.dashboard_port}"

    @property
    def public_api_url(self) -> str:
        """The API as clients are told to reach it."""
        return self.published_api_url or self.api_url

    @property
    def public_dashboard_url(self) -> str:
        return self.published_dashboard_url or self.dashboard_url

    @property
    def local_api_url(self) -> str:
        """This node's API as the node itself reaches it (its dashboard's server side):
        the listen address, or loopback when that is a wildcard."""
        host = self.listen_host
        if host in WILDCARD_HOSTS:
            host = "[::1]" if ":" in host else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.api_port}"


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*"})


@dataclass(frozen=True)
class RaftSettings:
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10_000
    segment_bytes: int = 64 * 1024 * 1024  # log segment size: compaction frees whole segments


@dataclass(frozen=True)
class TaskSettings:
    slots: int = 2  # tasks one node runs at once (a GPU node may say more)
    max_attempts: int = 3
    retry_backoff_ms: int = 2_000  # doubles on each retry
    retention_seconds: int = 7 * 24 * 3600  # finished tasks are expired after this
    sweep_seconds: int = 60  # how often the leader expires old tasks


@dataclass(frozen=True)
class LauncherSettings:
    """[launcher]: what `ragraft up` does when one of its nodes exits unexpectedly."""

    restart: str = "on-failure"  # on-failure: restart it (with backoff); never: report it
    max_restarts: int = 5  # restarts of a node that keeps failing soon after start


@dataclass(frozen=True)
class ModelSettings:
    embedding: str = "bundled:all-MiniLM-L6-v2"  # or a sentence-transformers model directory
    # bundled:<name>, a Hugging Face model directory, a .gguf file, openai:<base_url>#<model>,
    # or "none" for a node that retrieves but does not generate.
    generator: str = "bundled:SmolLM2-135M-Instruct"
    device: str = "auto"  # auto = CUDA when present, else CPU
    context_tokens: int | None = None  # None = the model's own context length
    max_batch: int = 8  # generation requests run together in one batch
    cache_dir: Path | None = None  # converted GGUF weights; None = <data_dir>/model-cache
    load: bool = True  # false: the node runs only noop tasks (control-plane testing)


@dataclass(frozen=True)
class RagConfig:
    chunk_size: int = 800  # characters
    chunk_overlap: int = 120
    max_upload_mb: int = 16  # an upload travels through the log in one entry
    index: IndexKind = "flat"  # flat (exact) or hnsw (faster for large knowledge bases)
    top_k: int = 5
    mode: str = "hybrid"
    max_new_tokens: int = 256


@dataclass(frozen=True)
class UserSpec:
    name: str
    role: str  # admin | editor | user
    password_hash: str  # from `ragraft hash-password`


@dataclass(frozen=True)
class SecuritySettings:
    users: tuple[UserSpec, ...] = ()
    # HS256 secret for bearer tokens; None = generated at the cluster's first start and
    # kept in the replicated state (set it, or an encryption_key, in production).
    token_secret: str | None = None
    token_ttl_seconds: int = 12 * 3600
    api_keys: tuple[tuple[str, str], ...] = ()  # (user, sha256 of the key)
    admin_password: str | None = None  # RAGRAFT_ADMIN_PASSWORD, only from the environment


@dataclass(frozen=True)
class TlsSettings:
    """[tls]: the certificate chain (PEM, leaf first) and its private key with which
    every node's REST API and dashboard serve https; both unset = plain http."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class ClusterConfig:
    path: Path
    name: str
    nodes: tuple[NodeSpec, ...]
    raft: RaftSettings
    tasks: TaskSettings
    curve_public: str | None = None  # one key pair for the whole cluster (the old model)
    curve_secret: str | None = None
    encryption_key: str | None = None  # base64 AES-256 key: encrypts replicated data at rest
    models: ModelSettings = field(default_factory=ModelSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    rag: RagConfig = field(default_factory=RagConfig)
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the secrets bundle lives (node/secrets.py), outside every data_dir.
    secrets_dir: Path = Path(".ragraft/secrets")
    insecure: bool = False  # plaintext, unauthenticated cluster traffic: only when asked
    # Origins (host[:port]) besides the node's own from which a browser may open the
    # dashboard's websocket, e.g. a reverse proxy's name.
    dashboard_origins: tuple[str, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)
    launcher: LauncherSettings = field(default_factory=LauncherSettings)
    # node id -> CURVE public key: the first nodes, each with a key pair of its own
    # (node/secrets.py reads them from the bundle; the secret halves stay in its files)
    node_keys: dict[str, str] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        known = ", ".join(n.id for n in self.nodes)
        if not self.path.exists():  # described by the environment (RAGRAFT_NODES)
            raise ConfigError(
                f"RAGRAFT_NODES: no node with id {node_id!r} (it lists: {known}); a node that "
                "joins later is given its host by RAGRAFT_HOST"
            )
        raise ConfigError(f"{self.path}: no node with id {node_id!r} (the file has: {known})")

    @property
    def curve_enabled(self) -> bool:
        return self.curve_public is not None or bool(self.node_keys)

    @property
    def per_node_keys(self) -> bool:
        """Each node has a CURVE key pair of its own (not one for the whole cluster):
        joins name the new key, removals revoke it."""
        return self.curve_public is None and bool(self.node_keys)


_NODE_KEYS = {
    "id",
    "host",
    "raft_port",
    "gossip_port",
    "api_port",
    "dashboard_port",
    "data_dir",
    "join",
    "slots",
    "bind_host",
    "api_url",
    "dashboard_url",
}
_PORT_KEYS = ("raft_port", "gossip_port", "api_port", "dashboard_port")


def load(
    path: str | os.PathLike[str] = "cluster.toml", env: dict[str, str] | None = None
) -> ClusterConfig:
    env = dict(os.environ) if env is None else env
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if env.get("RAGRAFT_NODES"):  # configured entirely from the environment (containers)
            return parse({}, path, env)
        raise ConfigError(
            f"{path}: file not found; pass --config PATH, create it (see README.md), or "
            "describe the cluster in the environment (RAGRAFT_NODES=n1=host1,n2=host2,...)"
        ) from None
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
    name = env.get("RAGRAFT_CLUSTER_NAME") or cluster.get("name", "ragraft")
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
            raise fail(
                f"cluster.{key}",
                "is not a 40-character z85 key",
                "generate a pair with `ragraft keys`",
            )

    nodes_raw = raw.get("nodes")
    if env.get("RAGRAFT_NODES"):
        nodes_raw = _nodes_from_env(env, fail)
    nodes_raw = _this_node_from_env(nodes_raw, env, fail)
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise fail(
            "nodes", "no [[nodes]] entries", "list at least one node (three for fault tolerance)"
        )
    nodes: list[NodeSpec] = []
    seen_ids: dict[str, int] = {}
    seen_ports: dict[tuple[str, int], str] = {}
    base = path.parent
    tls = _tls(raw.get("tls", {}), base, env, fail)
    for i, item in enumerate(nodes_raw):
        key = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise fail(key, "must be a table", "write each node as a [[nodes]] section")
        unknown = set(item) - _NODE_KEYS
        if unknown:
            raise fail(
                f"{key}.{min(unknown)}",
                "unknown key",
                f"use only {', '.join(sorted(_NODE_KEYS))}",
            )
        node_id = item.get("id")
        if (
            not isinstance(node_id, str)
            or not node_id
            or len(node_id.encode()) > 64
            or not node_id.isprintable()
        ):
            raise fail(
                f"{key}.id", f"{node_id!r} is not a valid node id", 'use a short name such as "n1"'
            )
        if node_id in seen_ids:
            raise fail(
                f"{key}.id",
                f"{node_id!r} is already used by nodes[{seen_ids[node_id]}]",
                "give every node its own id",
            )
        seen_ids[node_id] = i
        host = item.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise fail(f"{key}.host", f"{host!r} is not a host name", 'use e.g. "127.0.0.1"')
        ports = {}
        for port_key in _PORT_KEYS:
            value = item.get(port_key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise fail(
                    f"{key}.{port_key}", f"{value!r} is not a port (1-65535)", "set a free TCP port"
                )
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
            raise fail(
                f"{key}.data_dir",
                f"{data_dir!r} is not a path",
                'set e.g. data_dir = ".ragraft/n1"',
            )
        join = item.get("join", False)
        if not isinstance(join, bool):
            raise fail(
                f"{key}.join",
                f"{join!r} is not true or false",
                "write join = true for a node added later",
            )
        slots = item.get("slots")
        if slots is not None and (
            not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 256
        ):
            raise fail(
                f"{key}.slots",
                f"{slots!r} is out of range",
                "use a whole number from 1 to 256, or leave it out",
            )
        root = (
            Path(env["RAGRAFT_DATA_DIR"]) / node_id
            if env.get("RAGRAFT_DATA_DIR")
            else base / data_dir
        )
        bind_host = env.get("RAGRAFT_BIND_HOST") or item.get("bind_host")
        if bind_host is not None and (not isinstance(bind_host, str) or not bind_host):
            raise fail(
                f"{key}.bind_host",
                f"{bind_host!r} is not an address",
                'use e.g. "0.0.0.0" (every interface), or leave it out to listen on host',
            )
        if host in WILDCARD_HOSTS:
            raise fail(
                f"{key}.host",
                f"{host!r} is a wildcard, which the other nodes cannot dial",
                f'set host to this node\'s name or address and bind_host = "{host}"',
            )
        published: dict[str, str | None] = {}
        for url_key in ("api_url", "dashboard_url"):
            url = item.get(url_key)
            if url is not None and not (
                isinstance(url, str)
                and url.startswith(("http://", "https://"))
                and len(url) > len("http://")
            ):
                raise fail(
                    f"{key}.{url_key}",
                    f"{url!r} is not an http(s) URL",
                    'give the URL clients reach it by, e.g. "https://n1.example.com:8100", '
                    "or leave it out",
                )
            published[url_key] = url.rstrip("/") if url else None
        nodes.append(
            NodeSpec(
                node_id,
                host,
                data_dir=root,
                join=join,
                slots=slots,
                tls=tls.enabled,
                bind_host=bind_host,
                published_api_url=published["api_url"],
                published_dashboard_url=published["dashboard_url"],
                **ports,
            )
        )

    raft_raw = dict(raw.get("raft", {}))
    if "RAGRAFT_TICK_MS" in env:
        try:
            raft_raw["tick_ms"] = int(env["RAGRAFT_TICK_MS"])
        except ValueError:
            raise fail(
                "RAGRAFT_TICK_MS",
                f"{env['RAGRAFT_TICK_MS']!r} is not a number",
                "unset it or set milliseconds",
            ) from None
    defaults = RaftSettings()
    settings = {}
    for name_, low, high in (
        ("tick_ms", 1, 10_000),
        ("election_ticks", 2, 1000),
        ("heartbeat_ticks", 1, 1000),
        ("snapshot_entries", 10, 10**9),
        ("segment_bytes", 64 * 1024, 2**34),
    ):
        value = raft_raw.pop(name_, getattr(defaults, name_))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail(
                f"raft.{name_}",
                f"{value!r} is out of range",
                f"use a whole number from {low} to {high}",
            )
        settings[name_] = value
    if "dedup_entries" in raft_raw:
        raise fail(
            "raft.dedup_entries",
            "no longer exists: retried requests are recognised by client "
            "session, for as long as their client waits",
            "remove it",
        )
    if raft_raw:
        raise fail(f"raft.{min(raft_raw)}", "unknown key", f"use only {', '.join(settings)}")
    raft = RaftSettings(**settings)

    tasks_raw = raw.get("tasks", {})
    if not isinstance(tasks_raw, dict):
        raise fail("tasks", "must be a table", "write a [tasks] section")
    tasks_raw = dict(tasks_raw)
    task_defaults = TaskSettings()
    task_settings = {}
    for name_, low, high in (
        ("slots", 1, 256),
        ("max_attempts", 1, 100),
        ("retry_backoff_ms", 0, 3_600_000),
        ("retention_seconds", 1, 10 * 365 * 86400),
        ("sweep_seconds", 1, 86400),
    ):
        value = tasks_raw.pop(name_, getattr(task_defaults, name_))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail(
                f"tasks.{name_}",
                f"{value!r} is out of range",
                f"use a whole number from {low} to {high}",
            )
        task_settings[name_] = value
    if tasks_raw:
        raise fail(f"tasks.{min(tasks_raw)}", "unknown key", f"use only {', '.join(task_settings)}")
    tasks = TaskSettings(**task_settings)
    if raft.election_ticks <= raft.heartbeat_ticks:
        raise fail(
            "raft.election_ticks",
            "must exceed heartbeat_ticks",
            "e.g. election_ticks = 10, heartbeat_ticks = 1",
        )

    security = raw.get("security", {})
    if not isinstance(security, dict):
        raise fail("security", "must be a table", "write a [security] section")
    encryption_key = env.get("RAGRAFT_ENCRYPTION_KEY") or security.get("encryption_key")
    if encryption_key is not None:
        from consensus.cipher import Cipher

        try:
            Cipher.from_base64(encryption_key)
        except ValueError as exc:
            raise fail(
                "security.encryption_key", str(exc), "generate one with `ragraft keys`"
            ) from None

    models = _models(raw.get("models", {}), base, env, fail)
    access = _security(security, env, fail)
    insecure = security.get("insecure", False)
    if "RAGRAFT_INSECURE" in env:
        insecure = env["RAGRAFT_INSECURE"].strip().lower() in ("1", "true", "yes")
    if not isinstance(insecure, bool):
        raise fail(
            "security.insecure",
            f"{insecure!r} is not true or false",
            "leave it out (secure) or set insecure = true for plaintext",
        )
    secrets_dir = env.get("RAGRAFT_SECRETS_DIR") or security.get("secrets_dir", ".ragraft/secrets")
    if not isinstance(secrets_dir, str) or not secrets_dir:
        raise fail("security.secrets_dir", f"{secrets_dir!r} is not a path", "name a directory")
    origins: Any = security.get("dashboard_origins", [])
    if "RAGRAFT_DASHBOARD_ORIGINS" in env:
        origins = [o.strip() for o in env["RAGRAFT_DASHBOARD_ORIGINS"].split(",") if o.strip()]
    if not isinstance(origins, list) or not all(
        isinstance(o, str) and o and "/" not in o for o in origins
    ):
        raise fail(
            "security.dashboard_origins",
            f"{origins!r} is not a list of host[:port] origins",
            'list the names browsers reach the dashboard by, e.g. ["ragraft.example.com:443"]',
        )
    rag = _rag(raw.get("rag", {}), fail)
    launcher = _launcher(raw.get("launcher", {}), env, fail)
    known = ("cluster", "nodes", "raft", "tasks", "models", "rag", "security", "tls", "launcher")
    extra = {k: v for k, v in raw.items() if k not in known}
    return ClusterConfig(
        path,
        name,
        tuple(nodes),
        raft,
        tasks,
        public,
        secret,
        encryption_key,
        models,
        access,
        rag,
        extra,
        secrets_dir=base / secrets_dir,
        insecure=insecure,
        dashboard_origins=tuple(origins),
        tls=tls,
        launcher=launcher,
    )


_ENV_PORTS = {
    "raft_port": ("RAGRAFT_RAFT_PORT", 7100),
    "gossip_port": ("RAGRAFT_GOSSIP_PORT", 7200),
    "api_port": ("RAGRAFT_API_PORT", 8100),
    "dashboard_port": ("RAGRAFT_DASHBOARD_PORT", 8300),
}


def _env_ports(env: dict[str, str], fail: Any) -> dict[str, int]:
    ports = {}
    for key, (variable, default) in _ENV_PORTS.items():
        raw = env.get(variable)
        try:
            ports[key] = int(raw) if raw else default
        except ValueError:
            raise fail(variable, f"{raw!r} is not a port", "set a TCP port (1-65535)") from None
    return ports


def _nodes_from_env(env: dict[str, str], fail: Any) -> list[dict[str, Any]]:
    """RAGRAFT_NODES="n1=host1,n2=host2,n3=host3": the first nodes (the ones that
    bootstrap the cluster), all on the same ports (RAGRAFT_RAFT_PORT and the others),
    one host each: how a container platform names its replicas."""
    ports = _env_ports(env, fail)
    items = []
    for part in env["RAGRAFT_NODES"].split(","):
        node_id, sep, host = part.strip().partition("=")
        if not part.strip():
            continue
        if not sep or not node_id.strip() or not host.strip():
            raise fail(
                "RAGRAFT_NODES",
                f"{part.strip()!r} is not id=host",
                'list the first nodes as id=host, comma-separated: "n1=10.0.0.1,n2=10.0.0.2"',
            )
        items.append({"id": node_id.strip(), "host": host.strip(), **ports})
    return items


def _this_node_from_env(nodes_raw: Any, env: dict[str, str], fail: Any) -> Any:
    """What the environment says of the node that reads it (RAGRAFT_NODE_ID): its
    host when it is not one of the listed nodes (RAGRAFT_HOST: then it is one that
    joins later), and the URLs it publishes (RAGRAFT_API_URL, RAGRAFT_DASHBOARD_URL)."""
    node_id = env.get("RAGRAFT_NODE_ID")
    published = {
        key: env[variable]
        for key, variable in (
            ("api_url", "RAGRAFT_API_URL"),
            ("dashboard_url", "RAGRAFT_DASHBOARD_URL"),
        )
        if env.get(variable)
    }
    if not node_id:
        if published or env.get("RAGRAFT_HOST"):
            given = ", ".join(sorted({*published, *(["host"] if env.get("RAGRAFT_HOST") else [])}))
            raise fail(
                "RAGRAFT_NODE_ID",
                f"is not set, so there is no node to give the {given} of the environment to",
                "set RAGRAFT_NODE_ID to this node's id",
            )
        return nodes_raw
    if not isinstance(nodes_raw, list):
        nodes_raw = []
    items = [dict(item) if isinstance(item, dict) else item for item in nodes_raw]
    mine = next((i for i in items if isinstance(i, dict) and i.get("id") == node_id), None)
    host = env.get("RAGRAFT_HOST")
    if mine is None:
        if not host:
            return items  # `ragraft node` says which ids there are
        mine = {"id": node_id, "host": host, "join": True, **_env_ports(env, fail)}
        items.append(mine)
    elif host and mine.get("host", "127.0.0.1") != host:
        raise fail(
            "RAGRAFT_HOST",
            f"{host!r} differs from the host {mine.get('host')!r} the cluster lists for {node_id}",
            "unset RAGRAFT_HOST (a listed node's host is the one the others dial)",
        )
    mine.update(published)
    return items


_RESTART_POLICIES = ("on-failure", "never")


def _launcher(section: Any, env: dict[str, str], fail: Any) -> LauncherSettings:
    if not isinstance(section, dict):
        raise fail("launcher", "must be a table", "write a [launcher] section")
    unknown = sorted(set(section) - {"restart", "max_restarts"})
    if unknown:
        raise fail(f"launcher.{unknown[0]}", "unknown key", "use only restart, max_restarts")
    restart = env.get("RAGRAFT_RESTART") or section.get("restart", "on-failure")
    if restart not in _RESTART_POLICIES:
        where = "RAGRAFT_RESTART" if env.get("RAGRAFT_RESTART") else "launcher.restart"
        raise fail(where, f"{restart!r} is not a restart policy", 'use "on-failure" or "never"')
    most = section.get("max_restarts", 5)
    if not isinstance(most, int) or isinstance(most, bool) or not 0 <= most <= 100:
        raise fail("launcher.max_restarts", f"{most!r} is out of range", "use 0 to 100")
    return LauncherSettings(restart, most)


_TLS_KEYS = {"cert_file": "RAGRAFT_TLS_CERT", "key_file": "RAGRAFT_TLS_KEY"}


def _tls(section: Any, base: Path, env: dict[str, str], fail: Any) -> TlsSettings:
    """[tls] cert_file and key_file (env RAGRAFT_TLS_CERT, RAGRAFT_TLS_KEY), relative to
    the file's directory as secrets_dir is; both or neither.  Checked now, not when the
    API starts listening: each file is read and the pair loaded into a server context."""
    if not isinstance(section, dict):
        raise fail("tls", "must be a table", "write a [tls] section with cert_file and key_file")
    unknown = set(section) - set(_TLS_KEYS)
    if unknown:
        raise fail(f"tls.{min(unknown)}", "unknown key", f"use only {', '.join(_TLS_KEYS)}")
    paths: dict[str, Path] = {}
    named: dict[str, str] = {}  # key -> what set it (tls.cert_file or the variable), for errors
    for item, variable in _TLS_KEYS.items():
        value = env.get(variable) or section.get(item)
        named[item] = variable if env.get(variable) else f"tls.{item}"
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise fail(named[item], f"{value!r} is not a path", "name a PEM file, or leave it out")
        paths[item] = base / value
    if len(paths) == 1:
        (given,) = paths
        raise fail(
            named[given],
            f"is set without {'key_file' if given == 'cert_file' else 'cert_file'}",
            "set both (the certificate chain and its private key, PEM) or neither for plain http",
        )
    if not paths:
        return TlsSettings()
    cert, key = paths["cert_file"], paths["key_file"]
    for name, file in paths.items():
        try:
            with open(file, "rb"):
                pass
        except OSError as exc:
            raise fail(
                named[name],
                f"cannot read {file} ({exc.strerror})",
                "name an existing PEM file this user may read",
            ) from None
    from node.tls import EncryptedKey, server_context

    try:
        server_context(cert, key)
    except EncryptedKey:
        raise fail(
            named["key_file"],
            f"{key} is encrypted with a passphrase, which a node cannot be given",
            f"write it without one (e.g. `openssl pkey -in {key} -out plain.key`), 0600",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise fail(
            "tls.cert_file/key_file",
            f"{cert} and {key} do not load as a certificate chain and its key ({exc})",
            "give the PEM certificate (leaf first) and the unencrypted PEM private key "
            "that belongs to it",
        ) from None
    return TlsSettings(cert, key)


_SECURITY_KEYS = {
    "encryption_key",
    "users",
    "token_secret",
    "token_ttl_seconds",
    "api_keys",
    "insecure",
    "secrets_dir",
    "dashboard_origins",
}


def _security(section: dict[str, Any], env: dict[str, str], fail: Any) -> SecuritySettings:
    unknown = set(section) - _SECURITY_KEYS
    if unknown:
        raise fail(
            f"security.{min(unknown)}",
            "unknown key",
            f"use only {', '.join(sorted(_SECURITY_KEYS))}",
        )
    users: list[UserSpec] = []
    raw_users = section.get("users", [])
    if not isinstance(raw_users, list):
        raise fail(
            "security.users", "must be a list of tables", "write [[security.users]] sections"
        )
    for i, item in enumerate(raw_users):
        key = f"security.users[{i}]"
        if not isinstance(item, dict):
            raise fail(key, "must be a table", "write name, role and password_hash")
        name, role, hashed = item.get("name"), item.get("role", "user"), item.get("password_hash")
        if (
            not isinstance(name, str)
            or not name
            or name == "admin"
            or any(u.name == name for u in users)
        ):
            raise fail(
                f"{key}.name",
                f"{name!r} is missing, repeated or reserved (admin is built in)",
                "give every user a unique name",
            )
        if role not in ("admin", "editor", "user"):
            raise fail(f"{key}.role", f"{role!r} is not a role", 'use "admin", "editor" or "user"')
        if not isinstance(hashed, str) or not hashed.startswith("scrypt$"):
            raise fail(
                f"{key}.password_hash",
                "is not a password hash",
                "make one with `ragraft hash-password`",
            )
        users.append(UserSpec(name, role, hashed))
    token_secret = env.get("RAGRAFT_TOKEN_SECRET") or section.get("token_secret")
    if token_secret is not None and (not isinstance(token_secret, str) or len(token_secret) < 16):
        raise fail(
            "security.token_secret",
            "is shorter than 16 characters",
            "generate one with `ragraft keys`",
        )
    ttl = section.get("token_ttl_seconds", SecuritySettings.token_ttl_seconds)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 60 <= ttl <= 30 * 86400:
        raise fail(
            "security.token_ttl_seconds", f"{ttl!r} is out of range", "use 60 to 2592000 seconds"
        )
    keys: list[tuple[str, str]] = []
    for i, item in enumerate(section.get("api_keys", [])):
        digest = item.get("key_sha256") if isinstance(item, dict) else None
        user = item.get("user", "admin") if isinstance(item, dict) else None
        if not isinstance(digest, str) or len(digest) != 64 or not isinstance(user, str):
            raise fail(
                f"security.api_keys[{i}]",
                "needs user and key_sha256 (64 hex digits)",
                "make a key with `ragraft keys` and paste the line it prints",
            )
        keys.append((user, digest.lower()))
    return SecuritySettings(
        tuple(users), token_secret, ttl, tuple(keys), env.get("RAGRAFT_ADMIN_PASSWORD") or None
    )


def _models(section: Any, base: Path, env: dict[str, str], fail: Any) -> ModelSettings:
    if not isinstance(section, dict):
        raise fail("models", "must be a table", "write a [models] section")
    raw = dict(section)
    defaults = ModelSettings()
    values: dict[str, Any] = {}
    for key in ("embedding", "generator", "device"):
        value = raw.pop(key, getattr(defaults, key))
        if key == "generator" and "RAGRAFT_GENERATOR" in env:
            value = env["RAGRAFT_GENERATOR"]
        if not isinstance(value, str) or not value:
            raise fail(
                f"models.{key}",
                f"{value!r} is not a model name",
                'e.g. generator = "bundled:SmolLM2-135M-Instruct"',
            )
        values[key] = value
    if (
        values["device"] != "auto"
        and values["device"] != "cpu"
        and not values["device"].startswith("cuda")
    ):
        raise fail(
            "models.device",
            f"{values['device']!r} is not a device",
            'use "auto", "cpu" or "cuda" (or "cuda:1")',
        )
    context = raw.pop("context_tokens", None)
    if context is not None and (
        not isinstance(context, int) or isinstance(context, bool) or not 256 <= context <= 1_048_576
    ):
        raise fail(
            "models.context_tokens",
            f"{context!r} is out of range",
            "use a whole number from 256 up, or leave it out",
        )
    values["context_tokens"] = context
    batch = raw.pop("max_batch", defaults.max_batch)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 64:
        raise fail(
            "models.max_batch", f"{batch!r} is out of range", "use a whole number from 1 to 64"
        )
    values["max_batch"] = batch
    cache = env.get("RAGRAFT_MODEL_CACHE") or raw.pop("cache_dir", None)
    raw.pop("cache_dir", None)
    if cache is not None and (not isinstance(cache, str) or not cache):
        raise fail(
            "models.cache_dir", f"{cache!r} is not a path", "set a directory, or leave it out"
        )
    values["cache_dir"] = (base / cache) if cache else None
    load = raw.pop("load", True)
    if env.get("RAGRAFT_LOAD_MODELS") is not None:
        load = env["RAGRAFT_LOAD_MODELS"].strip().lower() not in ("0", "false", "no", "off")
    if not isinstance(load, bool):
        raise fail(
            "models.load",
            f"{load!r} is not true or false",
            "write load = true (or false for a noop-only node)",
        )
    values["load"] = load
    if raw:
        raise fail(f"models.{min(raw)}", "unknown key", f"use only {', '.join(values)}")
    return ModelSettings(**values)


def _rag(section: Any, fail: Any) -> RagConfig:
    if not isinstance(section, dict):
        raise fail("rag", "must be a table", "write a [rag] section")
    raw = dict(section)
    defaults = RagConfig()
    values: dict[str, Any] = {}
    for key, low, high in (
        ("chunk_size", 100, 32_000),
        ("chunk_overlap", 0, 16_000),
        ("max_upload_mb", 1, 48),
        ("top_k", 1, 100),
        ("max_new_tokens", 1, 2048),
    ):
        value = raw.pop(key, getattr(defaults, key))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail(
                f"rag.{key}",
                f"{value!r} is out of range",
                f"use a whole number from {low} to {high}",
            )
        values[key] = value
    if values["chunk_overlap"] >= values["chunk_size"] // 2:
        raise fail(
            "rag.chunk_overlap",
            "must be less than half of chunk_size",
            "e.g. chunk_size = 800, chunk_overlap = 120",
        )
    for key, allowed in (("index", ("flat", "hnsw")), ("mode", ("vector", "keyword", "hybrid"))):
        value = raw.pop(key, getattr(defaults, key))
        if value not in allowed:
            raise fail(
                f"rag.{key}",
                f"{value!r} is not one of {', '.join(allowed)}",
                f"use one of {', '.join(allowed)}",
            )
        values[key] = value
    if raw:
        raise fail(f"rag.{min(raw)}", "unknown key", f"use only {', '.join(values)}")
    return RagConfig(**values)
