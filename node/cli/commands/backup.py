"""ragraft backup FILE: the whole cluster's replicated state, from any node, into a
file only its owner can read (`ragraft restore` starts a new cluster from it)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from node.backup import archive
from node.cli.commands.output import Output, size
from node.client.rest import Client, ClientError

BACKUP_TIMEOUT_S = 300.0  # a large knowledge base is a large file


def backup(client: Client, args: argparse.Namespace, out: Output) -> int:
    target = Path(args.file)
    if target.exists() and not args.force:
        raise ClientError(f"{target} exists; give another name, or --force to replace it")
    if not target.parent.is_dir():
        raise ClientError(f"{target.parent} is not a directory")
    started = time.monotonic()
    data = client.request(
        "GET", "/api/v1/cluster/backup", timeout=max(args.timeout, BACKUP_TIMEOUT_S)
    )
    if not isinstance(data, bytes):
        raise ClientError("the node did not answer with a backup file; is it a ragraft node?")
    try:
        header, _ = archive.decode(data)  # what is written is what restore will read
    except archive.BadBackup as exc:
        raise ClientError(f"the backup received is not usable: {exc}") from None
    _write_private(target, data)
    if out.json_mode:
        out.json({"file": str(target), "bytes": len(data), **header.to_json()})
        return 0
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(header.created_at_ms / 1000))
    sealed = (
        "sealed with the cluster's encryption key"
        if header.sealed
        else "NOT encrypted (the cluster has no encryption key): keep it safe"
    )
    out.print(
        f"backup of cluster {header.cluster} at log index {header.index} (term {header.term}), "
        f"taken {taken} by {client.label(client.answered_by or '')} "
        f"in {time.monotonic() - started:.1f} s"
    )
    out.print(f"  {header.summary.describe()}; knowledge base digest {header.summary.kb_digest}")
    out.print(f"  written to {target} ({size(len(data))}, 0600), {sealed}")
    return 0


def _write_private(target: Path, data: bytes) -> None:
    """Whole or not at all: a file beside it, synced, then renamed over the name."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
