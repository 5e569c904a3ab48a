"""The cluster's secrets, kept in a bundle outside the Raft log: the nodes' CURVE keys,
the data encryption key and the token secret.

Every node has a CURVE key pair of its own: its secret key in `node-<id>.key` (0600),
the public keys of the cluster's first nodes in the bundle, which every node trusts
from the start.  A node whose id the bundle does not name makes its key pair at its
first start; the cluster trusts it once an admin (or a join token) admits it
(node/replica/peers.py), and forgets it when it is removed.  Bundles of the first
release (version 1) hold one key pair for the whole cluster, and are still read.

A cluster is secure without configuration: the first `ragraft up` writes a bundle
(`<secrets_dir>/cluster-secrets.json`, the directory 0700 and the file 0600), and every
node started from the same cluster.toml reads it, so Raft and gossip traffic is
authenticated and encrypted with CURVE and what the log and snapshots hold is sealed
with AES-GCM.  For several hosts, `ragraft init` writes the bundle once; it is copied to
each host.  A key set in cluster.toml or the environment wins over the bundle's.

Plaintext needs `insecure = true` in [security] (env RAGRAFT_INSECURE=1): then no bundle
is read and every start, /readyz and the dashboard say what is unprotected.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node.config import ClusterConfig, ConfigError

BUNDLE_NAME = "cluster-secrets.json"
BUNDLE_VERSION = 2
_SHARED_KEY_VERSION = 1  # one CURVE key pair for the whole cluster
_FIELDS = ("encryption_key", "token_secret")
_V1_FIELDS = ("curve_public_key", "curve_secret_key", *_FIELDS)


@dataclass(frozen=True)
class ClusterSecrets:
    cluster: str  # the cluster.toml name it was made for: a bundle is not shared by two
    encryption_key: str
    token_secret: str
    # node id -> public key (z85): the nodes every node trusts from the start
    node_keys: dict[str, str] = field(default_factory=dict)
    # The secret keys of those nodes, written to node-<id>.key beside the bundle (never
    # into it); empty once read back.
    node_secrets: dict[str, str] = field(default_factory=dict, repr=False)
    # A version 1 bundle's one key pair for the whole cluster.
    curve_public_key: str | None = None
    curve_secret_key: str | None = field(default=None, repr=False)

    @classmethod
    def generate(cls, cluster: str, node_ids: Iterable[str] = ()) -> ClusterSecrets:
        from consensus.cipher import Cipher
        from consensus.keyring import generate_keypair

        pairs = {node: generate_keypair() for node in node_ids}
        return cls(
            cluster,
            Cipher.generate_key(),
            secrets.token_urlsafe(32),
            node_keys={node: public for node, (public, _) in pairs.items()},
            node_secrets={node: secret for node, (_, secret) in pairs.items()},
        )


def bundle_path(config: ClusterConfig) -> Path:
    return config.secrets_dir / BUNDLE_NAME


def write_bundle(
    bundle: ClusterSecrets, directory: Path, *, replace_existing: bool = False
) -> Path:
    """Write `bundle` into `directory` (made 0700), as a 0600 file; never over an existing
    bundle unless asked (its keys are what the cluster's data is sealed with)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / BUNDLE_NAME
    if path.exists() and not replace_existing:
        raise ConfigError(
            f"{path}: a secrets bundle is already there; the cluster's data is sealed with "
            "its keys. Remove it first if you really mean to start a new cluster"
        )
    for node, secret in bundle.node_secrets.items():
        write_node_key(directory, node, bundle.node_keys[node], secret)
    document = {
        "version": BUNDLE_VERSION,
        "cluster": bundle.cluster,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{name: getattr(bundle, name) for name in _FIELDS},
        "node_keys": bundle.node_keys,
    }
    write_private_file(path, json.dumps(document, indent=2) + "\n")
    return path


def node_key_path(directory: Path, node: str) -> Path:
    return directory / f"node-{node}.key"


def write_node_key(directory: Path, node: str, public: str, secret: str) -> Path:
    path = node_key_path(directory, node)
    document = {"node": node, "public_key": public, "secret_key": secret}
    write_private_file(path, json.dumps(document, indent=2) + "\n")
    return path


def node_key(directory: Path, node: str, *, create: bool = False) -> tuple[str, str]:
    """This node's CURVE key pair (public, secret) from `node-<id>.key`, checked; made
    now when `create` and there is none (a node the bundle does not name)."""
    from consensus.keyring import generate_keypair, z85_key

    path = node_key_path(directory, node)
    if not path.exists():
        if not create:
            raise ConfigError(
                f"{path}: no key for node {node}; copy it from where `ragraft init` wrote the "
                "secrets (each host needs the bundle and its own node's key)"
            )
        public, secret = generate_keypair()
        write_node_key(directory, node, public, secret)
        return public, secret
    _private(path, directory)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        public, secret = document["public_key"], document["secret_key"]
        z85_key(public)
        z85_key(secret)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a node key ({exc})") from None
    if document.get("node") != node:
        raise ConfigError(f"{path}: the key of node {document.get('node')!r}, not {node!r}")
    return str(public), str(secret)


def _private(path: Path, directory: Path) -> None:
    for where in (path, directory):
        bits = stat.S_IMODE(where.stat().st_mode)
        if bits & 0o077:
            wanted = "700" if where == directory else "600"
            raise ConfigError(
                f"{where}: other users can read it (mode {bits:03o}); "
                f"it holds the cluster's keys: chmod {wanted} {where}"
            )


ADMIN_PASSWORD_NAME = "admin-password"
# What a node prints (into its log) when it has generated the admin password: where the
# password is, never the password itself.  The launcher recognises it and shows the
# password on its own terminal.
ADMIN_PASSWORD_NOTICE = "the generated admin password is in "


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600, its directory 0700),
    atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)  # whatever the umask was
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def admin_password_path(config: ClusterConfig) -> Path:
    return (config.secrets_dir / ADMIN_PASSWORD_NAME).resolve()


def announced_password_file(line: str) -> Path | None:
    """The file a node's "generated admin password" notice names, if `line` is one."""
    at = line.find(ADMIN_PASSWORD_NOTICE)
    if at < 0:
        return None
    rest = line[at + len(ADMIN_PASSWORD_NOTICE) :].split(" (", 1)[0].strip()
    return Path(rest) if rest else None


def read_bundle(directory: Path, cluster: str) -> ClusterSecrets:
    """The bundle in `directory`, checked: readable by its owner only, made for this
    cluster, every key well formed."""
    path = directory / BUNDLE_NAME
    try:
        path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no cluster secrets. `ragraft up` makes them at a local cluster's first "
            "start; for several hosts run `ragraft init` once and copy the directory to every "
            "host (or point RAGRAFT_SECRETS_DIR at it). For a plaintext cluster set "
            "insecure = true in [security]"
        ) from None
    _private(path, directory)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a secrets bundle ({exc}); make one with `ragraft init`")
    version = document.get("version") if isinstance(document, dict) else None
    if version not in (BUNDLE_VERSION, _SHARED_KEY_VERSION):
        raise ConfigError(f"{path}: not a version {BUNDLE_VERSION} secrets bundle")
    if document.get("cluster") != cluster:
        raise ConfigError(
            f"{path}: made for cluster {document.get('cluster')!r}, not {cluster!r}; "
            "each cluster has its own secrets"
        )
    names = _FIELDS if version == BUNDLE_VERSION else _V1_FIELDS
    values = {name: document.get(name) for name in names}
    bad = [name for name, value in values.items() if not isinstance(value, str) or not value]
    node_keys = document.get("node_keys", {}) if version == BUNDLE_VERSION else {}
    if not isinstance(node_keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in node_keys.items()
    ):
        bad.append("node_keys")
    if bad:
        raise ConfigError(f"{path}: {', '.join(bad)} missing; make a new one with `ragraft init`")
    text = {k: str(v) for k, v in values.items()}
    bundle = ClusterSecrets(
        cluster,
        text["encryption_key"],
        text["token_secret"],
        node_keys=dict(node_keys),
        curve_public_key=text.get("curve_public_key"),
        curve_secret_key=text.get("curve_secret_key"),
    )
    _check_keys(bundle, path)
    return bundle


def _check_keys(bundle: ClusterSecrets, path: Path) -> None:
    from consensus.cipher import Cipher
    from consensus.keyring import z85_key

    try:
        for key in (bundle.curve_public_key, bundle.curve_secret_key, *bundle.node_keys.values()):
            if key is not None:
                z85_key(key)
    except ValueError:
        raise ConfigError(f"{path}: the CURVE keys are not 40-character z85 keys") from None
    try:
        Cipher.from_base64(bundle.encryption_key)
    except ValueError as exc:
        raise ConfigError(f"{path}: encryption_key: {exc}") from None
    if len(bundle.token_secret) < 16:
        raise ConfigError(f"{path}: token_secret is shorter than 16 characters")


def _needs_bundle(config: ClusterConfig) -> bool:
    return not config.insecure and (
        not config.curve_enabled
        or config.encryption_key is None
        or config.security.token_secret is None
    )


def with_secrets(config: ClusterConfig) -> ClusterConfig:
    """`config` with the bundle's keys where cluster.toml and the environment set none.
    An insecure config is returned as it is; a secure one without a bundle is refused."""
    if not _needs_bundle(config):
        return config
    bundle = read_bundle(config.secrets_dir, config.name)
    public, secret = config.curve_public, config.curve_secret
    if public is None:  # a version 1 bundle's shared pair, else each node's own
        public, secret = bundle.curve_public_key, bundle.curve_secret_key
    return replace(
        config,
        curve_public=public,
        curve_secret=secret,
        node_keys=bundle.node_keys if public is None else {},
        encryption_key=config.encryption_key or bundle.encryption_key,
        security=replace(
            config.security, token_secret=config.security.token_secret or bundle.token_secret
        ),
    )


def ensure_bundle(config: ClusterConfig) -> Path | None:
    """For `ragraft up`: the bundle's path, written now if this is the cluster's first
    start; None when no bundle is needed (insecure, or every key set explicitly)."""
    if not _needs_bundle(config):
        return None
    path = bundle_path(config)
    if path.exists():
        read_bundle(config.secrets_dir, config.name)  # refused now, not in three node logs
        return path
    if config.encryption_key is None:
        written = [spec.data_dir for spec in config.nodes if holds_raft_state(spec.data_dir)]
        if written:
            raise ConfigError(
                f"{written[0]}: holds a node's data from before this cluster had secrets "
                "(it is not encrypted, and new keys cannot read it). Keep running it as it "
                "was with insecure = true in [security], or remove the data directories "
                "(`make clean`) to start a secure cluster"
            )
    initial = [spec.id for spec in config.nodes if not spec.join]
    return write_bundle(ClusterSecrets.generate(config.name, initial), config.secrets_dir)


def holds_raft_state(data_dir: Path) -> bool:
    raft = data_dir / "raft"
    return raft.is_dir() and any(raft.iterdir())


def insecurity(config: ClusterConfig) -> list[str]:
    """What this configuration leaves unprotected, in words for a log line, /readyz and
    the dashboard (empty for a secure cluster)."""
    warnings: list[str] = []
    if not config.curve_enabled:
        warnings.append(
            "cluster traffic (Raft and gossip) is plaintext and unauthenticated: anyone who "
            "reaches a Raft port can write the log"
        )
    if config.encryption_key is None:
        warnings.append("data at rest (log, snapshots) is not encrypted")
    return warnings


# ------------------------------------------------------------------ join tokens
JOIN_TOKEN_PREFIX = "rgj_"


def new_join_token(token_id: str) -> tuple[str, str]:
    """A join token naming `token_id`, and the SHA-256 hex digest that is kept of it."""
    token = f"{JOIN_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return token, join_token_digest(token)


def join_token_digest(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def join_token_id(token: str) -> str | None:
    """The id a join token names, or None for something that is not one."""
    if not token.startswith(JOIN_TOKEN_PREFIX):
        return None
    token_id, sep, rest = token[len(JOIN_TOKEN_PREFIX) :].partition("_")
    return token_id if sep and token_id and rest else None


def _join_cipher(token: str) -> Any:
    import hashlib

    from consensus.cipher import Cipher

    # Only the holder of the token can open what the cluster hands a node joining with it.
    return Cipher(hashlib.sha256(b"ragraft join secrets\0" + token.encode()).digest())


def seal_for_joiner(token: str, bundle: ClusterSecrets) -> str:
    """The shared secrets a node joining with `token` needs (the data key, the token
    secret, the trusted nodes' public keys), sealed with a key made from the token."""
    document = {
        "cluster": bundle.cluster,
        "encryption_key": bundle.encryption_key,
        "token_secret": bundle.token_secret,
        "node_keys": bundle.node_keys,
    }
    sealed = _join_cipher(token).seal(json.dumps(document).encode())
    return base64.b64encode(sealed).decode("ascii")


def open_as_joiner(token: str, sealed: str) -> ClusterSecrets:
    """What seal_for_joiner sealed; ConfigError if it does not open with `token`."""
    try:
        plain = _join_cipher(token).open(base64.b64decode(sealed))
        document = json.loads(plain)
        return ClusterSecrets(
            str(document["cluster"]),
            str(document["encryption_key"]),
            str(document["token_secret"]),
            node_keys={str(k): str(v) for k, v in document["node_keys"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the cluster's answer does not open with this join token ({exc})")
