"""ragraft command line: ``ragraft up | node | keys | version``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

from node import config as cluster_config


def _version() -> str:
    try:
        return _dist_version("ragraft")
    except PackageNotFoundError:
        return "0.1.0"


def _load(path: str) -> cluster_config.ClusterConfig:
    try:
        return cluster_config.load(path)
    except cluster_config.ConfigError as exc:
        raise SystemExit(f"ragraft: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragraft", description="ragraft distributed RAG cluster")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start every node of cluster.toml locally, each as its own process")
    up.add_argument("--config", default="cluster.toml", help="cluster file (default: cluster.toml)")

    node = sub.add_parser("node", help="run one node of the cluster in this process")
    node.add_argument("--config", default="cluster.toml", help="cluster file (default: cluster.toml)")
    node.add_argument("--id", required=True, help="node id from the cluster file, e.g. n1")
    node.add_argument("--log-level", default="INFO")

    sub.add_parser("keys", help="print new CURVE keys and an encryption key for cluster.toml")
    sub.add_parser("version", help="print the ragraft version")

    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"ragraft {_version()}")
        return 0
    if args.command == "keys":
        from consensus.cipher import Cipher
        from consensus.zmq_transport import generate_cluster_keys

        public, secret = generate_cluster_keys()
        print("# paste into [cluster] of cluster.toml (or set RAGRAFT_CLUSTER_PUBLIC_KEY / _SECRET_KEY)")
        print(f'curve_public_key = "{public}"')
        print(f'curve_secret_key = "{secret}"')
        print("# paste into [security] (or set RAGRAFT_ENCRYPTION_KEY): encrypts replicated data at rest")
        print(f'encryption_key = "{Cipher.generate_key()}"')
        return 0
    if args.command == "up":
        from node.launcher import up as launch

        return launch(_load(args.config))
    if args.command == "node":
        from node.runtime import run_node

        config = _load(args.config)
        logging.basicConfig(level=args.log_level, format=f"%(asctime)s {args.id} %(levelname)s %(name)s: %(message)s")
        try:
            config.node(args.id)
        except cluster_config.ConfigError as exc:
            raise SystemExit(f"ragraft: {exc}") from None
        asyncio.run(run_node(config, args.id))
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
