"""ragraft command line, the argparse front: ``ragraft up | node | init | restore | keys |
hash-password | version | tui`` here, and the REST client commands (login,
submit, tasks, show, cancel, abort, retry, kb, backup, status) declared and run by
`node.cli.parser`.  Heavy imports stay inside the branch that needs them, so that
a client command starts in well under a second (no torch, no asyncio)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

from node import config as cluster_config


def _version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _dist_version

    try:
        return _dist_version("ragraft")
    except PackageNotFoundError:
        return "0.1.0"


def _load(path: str) -> cluster_config.ClusterConfig:
    try:
        return cluster_config.load(path)
    except cluster_config.ConfigError as exc:
        raise SystemExit(f"ragraft: {exc}") from None


def _private_files() -> None:
    """What a node or the launcher creates (logs, data, secrets) is its owner's alone:
    0600 files, 0700 directories."""
    os.umask(0o077)


def _secured(config: cluster_config.ClusterConfig) -> cluster_config.ClusterConfig:
    from node.secrets import with_secrets

    try:
        return with_secrets(config)
    except cluster_config.ConfigError as exc:
        raise SystemExit(f"ragraft: {exc}") from None


def _admin_headers(base: str, context: ssl.SSLContext | None = None) -> dict[str, str]:
    """Admin credentials from the environment: RAGRAFT_API_KEY, or RAGRAFT_ADMIN_PASSWORD
    (exchanged for a token; `context` verifies an https node)."""
    import json
    import urllib.error
    import urllib.request

    if os.environ.get("RAGRAFT_API_KEY"):
        return {"Authorization": f"Bearer {os.environ['RAGRAFT_API_KEY']}"}
    password = os.environ.get("RAGRAFT_ADMIN_PASSWORD")
    if not password:
        raise SystemExit(
            "ragraft: this needs an admin: set RAGRAFT_API_KEY or RAGRAFT_ADMIN_PASSWORD"
        )
    login = urllib.request.Request(
        f"{base}/api/v1/auth/token",
        method="POST",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(login, timeout=30, context=context) as response:
            return {"Authorization": f"Bearer {json.loads(response.read())['access_token']}"}
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            f"ragraft: admin login refused ({exc.code}); check RAGRAFT_ADMIN_PASSWORD"
        ) from None


def _admin_call(
    config: cluster_config.ClusterConfig,
    url: str | None,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """One admin request to a member (--url, else the file's first node); its JSON
    answer, or a SystemExit that says what went wrong and what to do."""
    import json
    import urllib.error
    import urllib.request

    from node.client.rest import ClientError, ssl_context

    base = (url or config.nodes[0].api_url).rstrip("/")
    if not base.startswith("http"):  # a bare host:port speaks what the file's nodes speak
        base = ("https://" if config.tls.enabled else "http://") + base
    context = None
    if base.startswith("https://"):
        try:  # the system's CAs, RAGRAFT_CA_FILE and the file's own certificate ([tls])
            context = ssl_context(config.tls.cert_file)
        except ClientError as exc:
            raise SystemExit(f"ragraft: {exc}") from None
    headers = _admin_headers(base, context)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        reason = json.loads(exc.read() or b"{}").get("error", {})
        raise SystemExit(f"ragraft: {reason.get('message', exc)}") from None
    except OSError as exc:
        raise SystemExit(
            f"ragraft: cannot reach {base}: {exc}; pass --url of a running node"
        ) from None


def _remove_node(config: cluster_config.ClusterConfig, target: str | None, url: str | None) -> int:
    if not target:
        raise SystemExit("ragraft node remove: say which node, e.g. `ragraft node remove n4`")
    view = _admin_call(config, url, "DELETE", f"/api/v1/cluster/members/{target}")
    print(f"removed {target}; voters now {', '.join(view['members']['voters'])}")
    return 0


def _drain_node(
    config: cluster_config.ClusterConfig,
    target: str | None,
    url: str | None,
    wait_s: float,
    resume: bool,
) -> int:
    action = "resume" if resume else "drain"
    if not target:
        raise SystemExit(f"ragraft node {action}: say which node, e.g. `ragraft node {action} n2`")
    if resume:
        view = _admin_call(config, url, "POST", f"/api/v1/nodes/{target}/resume")
        print(f"{target} takes tasks again")
        return 0
    print(
        f"draining {target}: no new tasks for it; waiting up to {wait_s:g} s for its running ones"
    )
    view = _admin_call(
        config,
        url,
        "POST",
        f"/api/v1/nodes/{target}/drain",
        {"wait_s": wait_s},
        timeout=wait_s + 60,
    )
    if not view["drained"]:
        print(
            f"{target} still runs {', '.join(view['running'])} after {wait_s:g} s: it stays "
            "draining; wait longer (`ragraft node drain` again) or abort them"
        )
        return 1
    print(
        f"{target} is drained: nothing runs on it, leader {view['leader'] or 'none'}; "
        f"stop it for maintenance, then `ragraft node resume {target}`"
    )
    return 0


def _join_with_token(
    config: cluster_config.ClusterConfig, node_id: str, url: str, token: str
) -> None:
    """A first start with a join token: this node's own key pair, then the shared
    secrets from the cluster, written as this host's bundle.  A restart (the bundle is
    there) skips both: the token was spent on the first."""
    from node.runtime.join import fetch_secrets_with_token
    from node.secrets import bundle_path, node_key, write_bundle

    if bundle_path(config).exists():
        return
    try:
        spec = config.node(node_id)
        public, _ = node_key(config.secrets_dir, node_id, create=True)
    except cluster_config.ConfigError as exc:
        raise SystemExit(f"ragraft: {exc}") from None
    secrets = fetch_secrets_with_token(url, token, node_id, spec.raft_address, public, config.tls)
    if secrets.cluster != config.name:
        raise SystemExit(
            f"ragraft: the token is for cluster {secrets.cluster!r}, this file names "
            f"{config.name!r}"
        )
    path = write_bundle(secrets, config.secrets_dir)
    print(f"node {node_id}: admitted; the cluster's secrets are in {path} (0600)", flush=True)


def _join_from_env(config: cluster_config.ClusterConfig, node_id: str) -> str | None:
    """RAGRAFT_JOIN, for a node that is not one of the first: one container template
    can set it for every replica, and the first ones bootstrap instead of joining."""
    target = os.environ.get("RAGRAFT_JOIN")
    if not target:
        return None
    try:
        spec = config.node(node_id)
    except cluster_config.ConfigError as exc:
        hint = "" if os.environ.get("RAGRAFT_HOST") else "; set RAGRAFT_HOST to its host name"
        raise SystemExit(f"ragraft: {exc}{hint}") from None
    return target if spec.join else None


def _restore(config: cluster_config.ClusterConfig, file: str, nodes: list[str] | None) -> int:
    from pathlib import Path

    from node.backup.restore import RestoreError, restore
    from node.secrets import ensure_bundle

    _private_files()
    try:
        bundle = ensure_bundle(config)  # a new cluster's secrets, as `ragraft up` makes them
    except cluster_config.ConfigError as exc:
        raise SystemExit(f"ragraft: {exc}") from None
    if bundle is not None:
        print(f"cluster secrets: {bundle} (0600; the restored data is sealed with it)")
    config = _secured(config)
    try:
        header = restore(config, Path(file), nodes, os.environ.get("RAGRAFT_BACKUP_KEY"))
    except RestoreError as exc:
        raise SystemExit(
            f"ragraft restore: {exc}; nothing was written to the data directories"
        ) from None
    if header.cluster != config.name:
        print(
            f"note: the backup was taken of cluster {header.cluster!r}; this one is {config.name!r}"
        )
    if not config.encryption_key:
        print("note: this cluster has no encryption key: the restored state is stored in the clear")
    print("start the cluster as usual (`ragraft up`, or `ragraft node --id ID` on each host)")
    return 0


def _join_token(
    config: cluster_config.ClusterConfig, url: str | None, minutes: float, node: str | None
) -> int:
    import json
    import time
    import urllib.error
    import urllib.request

    from node.client.rest import ClientError, ssl_context

    base = (url or config.nodes[0].api_url).rstrip("/")
    if not base.startswith("http"):
        base = ("https://" if config.tls.enabled else "http://") + base
    try:
        context = ssl_context(config.tls.cert_file) if base.startswith("https://") else None
    except ClientError as exc:
        raise SystemExit(f"ragraft: {exc}") from None
    body: dict[str, object] = {"expires_in_s": round(minutes * 60)}
    if node:
        body["node"] = node
    request = urllib.request.Request(
        f"{base}/api/v1/cluster/join-tokens",
        data=json.dumps(body).encode(),
        method="POST",
        headers={**_admin_headers(base, context), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        reason = json.loads(exc.read() or b"{}").get("error", {})
        raise SystemExit(f"ragraft: no join token: {reason.get('message', exc)}") from None
    except OSError as exc:
        raise SystemExit(f"ragraft: cannot reach {base}: {exc}; pass --url") from None
    print(answer["token"])
    who = f"node {answer['node']}" if answer.get("node") else "one new node"
    print(
        f"join token {answer['id']} for {who}, single use, until "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(answer['expires_at'] / 1000))}: "
        f"on the new host, `ragraft node --id ID --join {base} --join-token TOKEN`",
        file=sys.stderr,
    )
    return 0


def _init(config: cluster_config.ClusterConfig, directory: str | None, force: bool) -> int:
    from pathlib import Path

    from node.secrets import ClusterSecrets, write_bundle

    _private_files()
    target = Path(directory) if directory else config.secrets_dir
    try:
        initial = [n.id for n in config.nodes if not n.join]
        bundle = ClusterSecrets.generate(config.name, initial)
        path = write_bundle(bundle, target, replace_existing=force)
    except cluster_config.ConfigError as exc:
        raise SystemExit(f"ragraft: {exc}") from None
    print(f"wrote the secrets of cluster {config.name!r} to {path} (0600)")
    print(
        f"copy {path.name} to every host, with only that host's node-<id>.key beside it, "
        f"into {target} or a directory named by RAGRAFT_SECRETS_DIR (0700; e.g. scp -p), "
        "and keep them out of version control: the bundle's keys read the cluster's data, "
        "a node key speaks as that node. Nodes added later make their own key and are "
        "admitted with `ragraft node token` (or an admin's credentials)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragraft", description="ragraft distributed RAG cluster")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start every node of cluster.toml locally, each as its own process"
    )
    up.add_argument("--config", default="cluster.toml", help="cluster file (default: cluster.toml)")
    up.add_argument(
        "--data-dir", help="keep every node's data under DIR/<id> instead of the file's data_dir"
    )
    up.add_argument(
        "--no-restart",
        action="store_true",
        help="do not restart a node that exits (for failover demos); [launcher] restart",
    )

    node = sub.add_parser("node", help="run one node of the cluster in this process")
    node.add_argument(
        "--config", default="cluster.toml", help="cluster file (default: cluster.toml)"
    )
    node.add_argument(
        "action",
        nargs="?",
        choices=["remove", "token", "drain", "resume"],
        help="remove: take a node out of the cluster; token: make a join token; drain: stop "
        "giving a node tasks, wait for its running ones and move the leadership away, for "
        "maintenance; resume: give it tasks again (admins)",
    )
    node.add_argument("target", nargs="?", help="with remove, drain, resume: the id of the node")
    node.add_argument(
        "--wait",
        type=float,
        default=300,
        metavar="SECONDS",
        help="with drain: how long to wait for its running tasks (default: 300)",
    )
    node.add_argument(
        "--join-token",
        default=os.environ.get("RAGRAFT_JOIN_TOKEN"),
        help="with --join: join with this token (from `ragraft node token`) instead of an "
        "admin's credentials and the bundle (env RAGRAFT_JOIN_TOKEN)",
    )
    node.add_argument(
        "--ttl-minutes",
        type=float,
        default=60,
        help="with token: how long it may be used (default: 60)",
    )
    node.add_argument("--for-node", help="with token: only a node of this id may use it")
    node.add_argument(
        "--id",
        default=os.environ.get("RAGRAFT_NODE_ID"),
        help="node id from the cluster file, e.g. n1 (env RAGRAFT_NODE_ID)",
    )
    node.add_argument(
        "--join",
        metavar="HOST:PORT",
        help="API address of a member: join the running cluster (env RAGRAFT_JOIN, which only "
        "a node that is not one of the first nodes follows)",
    )
    node.add_argument(
        "--url",
        help="with remove, drain, resume, token: API address of a member "
        "(default: the first node of the file)",
    )
    node.add_argument(
        "--data-dir", help="keep this node's data under DIR/<id> instead of the file's data_dir"
    )
    node.add_argument("--log-level", default="INFO")
    node.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("RAGRAFT_LOG_FORMAT", "text"),
        help="json: one object per line, for a log stack",
    )

    init = sub.add_parser(
        "init",
        help="write the cluster's secrets bundle (CURVE keys, encryption key, token secret) "
        "to copy to every host",
    )
    init.add_argument(
        "--config", default="cluster.toml", help="cluster file (default: cluster.toml)"
    )
    init.add_argument(
        "--secrets-dir", help="write it here instead of the file's [security] secrets_dir"
    )
    init.add_argument("--force", action="store_true", help="replace a bundle that is already there")

    restore = sub.add_parser(
        "restore",
        help="start a new cluster from a backup (`ragraft backup`): seeds the first nodes' "
        "empty data directories, before they start",
    )
    restore.add_argument("file", help="the backup file")
    restore.add_argument(
        "--config", default="cluster.toml", help="the new cluster's file (default: cluster.toml)"
    )
    restore.add_argument(
        "--node",
        action="append",
        metavar="ID",
        help="only this node (repeatable): on several hosts, each restores its own "
        "(default: every first node of the file)",
    )
    restore.add_argument(
        "--data-dir", help="seed DIR/<id> for every node instead of the file's data_dir"
    )

    sub.add_parser(
        "keys", help="print new CURVE keys, an encryption key, a token secret and an API key"
    )
    hasher = sub.add_parser("hash-password", help="print a password hash for [[security.users]]")
    hasher.add_argument("--password", help="the password (default: asked for, not echoed)")
    sub.add_parser("version", help="print the ragraft version")
    tui = sub.add_parser("tui", help="the terminal UI")
    tui.add_argument("--config", default="cluster.toml", help="cluster file: its nodes' API URLs")
    tui.add_argument(
        "--url", action="append", help="API URL of a node (repeatable); overrides --config"
    )

    from node.cli.parser import add_parsers

    add_parsers(sub)

    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None):
        # Through the environment, so that the nodes `up` starts inherit it.
        os.environ["RAGRAFT_DATA_DIR"] = os.path.abspath(args.data_dir)
    if args.command == "version":
        print(f"ragraft {_version()}")
        return 0
    if args.command == "keys":
        import secrets

        from consensus.cipher import Cipher
        from consensus.zmq_transport import generate_cluster_keys
        from node.http.auth import new_api_key

        public, secret = generate_cluster_keys()
        print(
            "# paste into [cluster] of cluster.toml "
            "(or set RAGRAFT_CLUSTER_PUBLIC_KEY / _SECRET_KEY)"
        )
        print(f'curve_public_key = "{public}"')
        print(f'curve_secret_key = "{secret}"')
        print(
            "# paste into [security] (or set RAGRAFT_ENCRYPTION_KEY): "
            "encrypts replicated data at rest"
        )
        print(f'encryption_key = "{Cipher.generate_key()}"')
        print("# also in [security] (or RAGRAFT_TOKEN_SECRET): signs the API's bearer tokens")
        print(f'token_secret = "{secrets.token_urlsafe(32)}"')
        key, digest = new_api_key()
        print(
            f"# an admin API key for scripts: keep {key} secret "
            "(send it as Authorization: Bearer ...)"
        )
        print(f'# [[security.api_keys]]\n# user = "admin"\n# key_sha256 = "{digest}"')
        return 0
    if args.command == "hash-password":
        import getpass

        from node.http.auth import hash_password

        password = args.password or getpass.getpass("password: ")
        if len(password) < 8:
            raise SystemExit("ragraft: use at least 8 characters")
        print(hash_password(password))
        return 0
    if args.command == "init":
        return _init(_load(args.config), args.secrets_dir, args.force)
    if args.command == "restore":
        return _restore(_load(args.config), args.file, args.node)
    if args.command == "up":
        from node.cli.launcher import up as launch
        from node.secrets import ensure_bundle

        _private_files()
        config = _load(args.config)
        try:
            bundle = ensure_bundle(config)
        except cluster_config.ConfigError as exc:
            raise SystemExit(f"ragraft: {exc}") from None
        if bundle is not None:
            print(f"cluster secrets: {bundle} (0600; keep it, the data is sealed with it)")
        return launch(config, restart=False if args.no_restart else None)
    if args.command == "node" and args.action == "remove":
        return _remove_node(_load(args.config), args.target, args.url)
    if args.command == "node" and args.action in ("drain", "resume"):
        return _drain_node(
            _load(args.config), args.target, args.url, args.wait, args.action == "resume"
        )
    if args.command == "node" and args.action == "token":
        return _join_token(_load(args.config), args.url, args.ttl_minutes, args.for_node)
    if args.command == "node":
        # Before torch or faiss is imported: OpenMP threads that spin while idle would
        # steal the CPU the event loop needs for Raft heartbeats.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("TQDM_DISABLE", "1")  # model loading reports its own progress lines
        import asyncio

        from node.runtime.main import run_node

        if not args.id:
            parser.error("node: --id (or RAGRAFT_NODE_ID) is required to run a node")
        _private_files()
        from node.logs import configure

        configure(args.id, args.log_level, args.log_format)
        join = args.join or _join_from_env(_load(args.config), args.id)
        if args.join_token:
            if not join:
                parser.error("node: --join-token needs --join URL of a member")
            _join_with_token(_load(args.config), args.id, join, args.join_token)
        config = _secured(_load(args.config))
        try:
            config.node(args.id)
        except cluster_config.ConfigError as exc:
            raise SystemExit(f"ragraft: {exc}") from None
        asyncio.run(run_node(config, args.id, join=join, by_token=bool(args.join_token)))
        # What runs after this (joining worker threads at exit) is not ours to time:
        # this line tells a slow exit from a slow stop.
        logging.getLogger("ragraft.node").info("node %s: exiting", args.id)
        return 0
    if args.command == "tui":
        from node.cli.parser import targets
        from node.client.rest import saved_token
        from tui.app import run as run_tui

        where = targets(args, _load)
        run_tui(where.urls, saved_token(where.credential_key))
        return 0
    if getattr(args, "handler", None):
        from node.cli.parser import run as run_command

        return run_command(args, _load)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
