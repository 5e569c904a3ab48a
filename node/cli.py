"""ragraft command line: ``ragraft up | node | version``."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version


def _version() -> str:
    try:
        return _dist_version("ragraft")
    except PackageNotFoundError:
        return "0.1.0"


def _not_implemented(what: str) -> int:
    print(
        f"ragraft: {what} is not implemented yet (the cluster runtime has not landed).",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragraft", description="ragraft distributed RAG cluster")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start every node of cluster.toml locally")
    up.add_argument("--config", default="cluster.toml", help="cluster file (default: cluster.toml)")

    node = sub.add_parser("node", help="run one node of the cluster")
    node.add_argument(
        "--config", default="cluster.toml", help="cluster file (default: cluster.toml)"
    )
    node.add_argument("--id", required=False, help="node id from the cluster file, e.g. n1")

    sub.add_parser("version", help="print the ragraft version")

    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"ragraft {_version()}")
        return 0
    if args.command == "up":
        return _not_implemented("`ragraft up` (local cluster)")
    if args.command == "node":
        return _not_implemented("`ragraft node`")
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
