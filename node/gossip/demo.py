"""A standalone gossip node, for trying gossip out and for the process tests.

    python -m node.gossip.demo --id n1 --bind 127.0.0.1:7101 \\
        --seeds n2=127.0.0.1:7102,n3=127.0.0.1:7103 [--out n1.json] [--interval 0.2]

Every `interval` seconds (and at once on any status change) it writes its
member table as JSON: to `--out` (atomically, via a rename) or as one line on
stdout.  SIGTERM or Ctrl-C leaves the cluster gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from consensus.zmq_transport import CurveKeys
from node.gossip.driver import Gossip
from node.gossip.metrics import NodeMetrics


def _parse_seeds(text: str) -> dict[str, str]:
    seeds = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, address = item.partition("=")
        if not sep or not node or not address:
            raise argparse.ArgumentTypeError(f"seed {item!r}: expected id=host:port")
        seeds[node] = address
    return seeds


def _table(gossip: Gossip) -> dict[str, Any]:
    return {
        "id": gossip.node_id,
        "pid": os.getpid(),
        "time_ms": time.monotonic_ns() // 1_000_000,  # same clock as status_since_ms
        "incarnation": gossip.core.incarnation,
        "members": dict(sorted(gossip.snapshot().items())),
        "stats": gossip.stats(),
    }


def _write(table: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(table, sort_keys=True)
    if out is None:
        print(text, flush=True)
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


async def _main(args: argparse.Namespace) -> None:
    curve = CurveKeys.cluster(args.curve_public, args.curve_secret) if args.curve_public else None
    changed = asyncio.Event()
    gossip = Gossip(
        args.id,
        args.bind,
        args.seeds,
        NodeMetrics(lambda: {"slots_total": args.slots}),
        lambda event: changed.set(),
        curve=curve,
        advertise_address=args.advertise,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gossip.start()
    try:
        while not stop.is_set():
            _write(_table(gossip), args.out)
            changed.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (changed, stop)]
            await asyncio.wait(waits, timeout=args.interval, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
    finally:
        await gossip.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m node.gossip.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--id", required=True)
    parser.add_argument("--bind", required=True, help="host:port or tcp://host:port")
    parser.add_argument("--advertise", help="address the others reach us at (default: --bind)")
    parser.add_argument("--seeds", type=_parse_seeds, default={}, help="id=host:port,...")
    parser.add_argument("--out", type=Path, help="JSON file to keep up to date (default: stdout)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between writes")
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument("--curve-public")
    parser.add_argument("--curve-secret")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
