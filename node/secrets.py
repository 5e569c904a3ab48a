"""The cluster's secrets, kept in a bundle outside the Raft log: CURVE keys, the data
encryption key and the token secret.

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

import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path

from node.config import ClusterConfig, ConfigError

BUNDLE_NAME = "cluster-secrets.json"
BUNDLE_VERSION = 1
_FIELDS = ("curve_public_key", "curve_secret_key", "encryption_key", "token_secret")


@dataclass(frozen=True)
class ClusterSecrets:
    cluster: str  # the cluster.toml name it was made for: a bundle is not shared by two
    curve_public_key: str
    curve_secret_key: str
    encryption_key: str
    token_secret: str

    @classmethod
    def generate(cls, cluster: str) -> ClusterSecrets:
        from consensus.cipher import Cipher
        from consensus.zmq_transport import generate_cluster_keys

        public, secret = generate_cluster_keys()
        return cls(cluster, public, secret, Cipher.generate_key(), secrets.token_urlsafe(32))


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
    document = {
        "version": BUNDLE_VERSION,
        "cluster": bundle.cluster,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{name: getattr(bundle, name) for name in _FIELDS},
    }
    write_private_file(path, json.dumps(document, indent=2) + "\n")
    return path


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
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no cluster secrets. `ragraft up` makes them at a local cluster's first "
            "start; for several hosts run `ragraft init` once and copy the directory to every "
            "host (or point RAGRAFT_SECRETS_DIR at it). For a plaintext cluster set "
            "insecure = true in [security]"
        ) from None
    for where, bits in ((path, mode), (directory, directory.stat().st_mode)):
        if stat.S_IMODE(bits) & 0o077:
            wanted = "700" if where == directory else "600"
            raise ConfigError(
                f"{where}: other users can read it (mode {stat.S_IMODE(bits):03o}); "
                f"it holds the cluster's keys: chmod {wanted} {where}"
            )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a secrets bundle ({exc}); make one with `ragraft init`")
    if not isinstance(document, dict) or document.get("version") != BUNDLE_VERSION:
        raise ConfigError(f"{path}: not a version {BUNDLE_VERSION} secrets bundle")
    if document.get("cluster") != cluster:
        raise ConfigError(
            f"{path}: made for cluster {document.get('cluster')!r}, not {cluster!r}; "
            "each cluster has its own secrets"
        )
    values = {name: document.get(name) for name in _FIELDS}
    bad = [name for name, value in values.items() if not isinstance(value, str) or not value]
    if bad:
        raise ConfigError(f"{path}: {', '.join(bad)} missing; make a new one with `ragraft init`")
    bundle = ClusterSecrets(cluster, **{k: str(v) for k, v in values.items()})
    _check_keys(bundle, path)
    return bundle


def _check_keys(bundle: ClusterSecrets, path: Path) -> None:
    from consensus.cipher import Cipher

    if len(bundle.curve_public_key) != 40 or len(bundle.curve_secret_key) != 40:
        raise ConfigError(f"{path}: the CURVE keys are not 40-character z85 keys")
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
    if public is None:
        public, secret = bundle.curve_public_key, bundle.curve_secret_key
    return replace(
        config,
        curve_public=public,
        curve_secret=secret,
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
    return write_bundle(ClusterSecrets.generate(config.name), config.secrets_dir)


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
