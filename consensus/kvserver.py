"""A replicated key-value server: the smallest real program built on RaftNode
(etcd's raftexample plays the same part).  The real-process tests and
`python -m bench.consensus` run it as separate OS processes.

    python -m consensus.kvserver --id n1 \\
        --members n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103 \\
        --rpc 127.0.0.1:7301 --data-dir /tmp/kv/n1 [--memory]

Clients speak msgpack over a ZeroMQ DEALER to the --rpc ROUTER
(consensus/kvclient.py): [request_id, op, args] -> [request_id, ok, payload].
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from consensus.driver import NodeOptions, RaftNode
from consensus.errors import NotLeader, RaftError
from consensus.filestore import FileLogStore, FileSnapshotStore, FileStableStore
from consensus.memstore import MemoryLogStore, MemorySnapshotStore, MemoryStableStore
from consensus.session import Request
from consensus.storage import LogStore, SnapshotStore, StableStore
from consensus.tuning import tune_gc
from consensus.zmq_transport import ZmqTransport

log = logging.getLogger("ragraft.kvserver")


class KVStateMachine:
    """put/delete on a dict.  Deterministic: the index comes from the log."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.applied = 0

    def apply(self, index: int, command: bytes) -> Any:
        op, key, value = msgpack.unpackb(command, raw=False)
        self.applied = index
        if op == "put":
            self.data[key] = value
            return index
        if op == "delete":
            return self.data.pop(key, None) is not None
        if op == "noop":
            return index
        return f"unknown op {op!r}"

    def snapshot(self) -> bytes:
        return msgpack.packb([self.applied, self.data], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self.applied, self.data = msgpack.unpackb(data, raw=False)


def parse_members(text: str) -> dict[str, str]:
    members = {}
    for item in filter(None, text.split(",")):
        node, _, address = item.partition("=")
        if not node or not address:
            raise SystemExit(f"--members: expected id=host:port, got {item!r}")
        members[node] = address if address.startswith("tcp://") else f"tcp://{address}"
    return members


class KVServer:
    def __init__(self, node: RaftNode, machine: KVStateMachine, rpc_address: str) -> None:
        self.node = node
        self.machine = machine
        self.rpc_address = rpc_address
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        self._sock.bind(self.rpc_address)
        while True:
            identity, frame = await self._sock.recv_multipart()
            task = asyncio.create_task(self._handle(identity, frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, identity: bytes, frame: bytes) -> None:
        try:
            request_id, op, args = msgpack.unpackb(frame, raw=False)
        except Exception:  # noqa: BLE001 - not a request of ours: no one to answer
            return
        try:
            payload = await self._dispatch(op, args)
            reply = [request_id, True, payload]
        except NotLeader as exc:
            reply = [
                request_id,
                False,
                {"code": "not_leader", "message": str(exc), "leader": exc.leader},
            ]
        except RaftError as exc:
            reply = [request_id, False, {"code": type(exc).__name__, "message": str(exc)}]
        except Exception as exc:  # report, never crash the server for one request
            log.exception("request %s failed", op)
            reply = [request_id, False, {"code": "internal", "message": repr(exc)}]
        try:
            await self._sock.send_multipart(
                [identity, msgpack.packb(reply, use_bin_type=True)], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass

    async def _dispatch(self, op: str, args: dict[str, Any]) -> Any:
        node = self.node
        if op == "put":
            command = msgpack.packb(["put", args["key"], args["value"]], use_bin_type=True)
            request = Request(*args["request"]) if args.get("request") else None
            applied = await node.propose(command, timeout=args.get("timeout"), request=request)
            return {"index": applied.index, "result": applied.result}
        if op == "get":
            if args.get("linearizable", True):
                await node.read_barrier(timeout=args.get("timeout"))
            assert node.raw is not None  # set by node.start(), which runs before serve()
            return {"value": self.machine.data.get(args["key"]), "applied": node.raw.applied_index}
        if op == "keys":
            if args.get("linearizable", True):
                await node.read_barrier(timeout=args.get("timeout"))
            return {"keys": sorted(self.machine.data)}
        if op == "status":
            status = node.status()
            status["process_cpu_s"] = time.process_time()
            return status
        if op == "add_member":
            await node.add_member(args["id"], args["address"])
            return {}
        if op == "remove_member":
            await node.remove_member(args["id"])
            return {}
        if op == "transfer":
            await node.transfer_leadership(args["id"])
            return {}
        if op == "bench":
            return await self._bench(
                concurrency=int(args.get("concurrency", 1)),
                seconds=float(args.get("seconds", 5.0)),
                size=int(args.get("size", 100)),
                warmup=float(args.get("warmup", 0.0)),
                keys=int(args.get("keys", 10_000)),
            )
        raise ValueError(f"unknown op {op!r}")

    async def _bench(
        self, concurrency: int, seconds: float, size: int, warmup: float, keys: int
    ) -> dict[str, Any]:
        """Load generated inside this process (no client RPC in the measured
        path): `concurrency` proposers, each looping propose() of a `size`-byte
        put to one of `keys` keys in turn; latency is propose() call -> applied
        here (so committed).  Used by `python -m bench.consensus` on the leader."""
        node = self.node
        node._require_leader()
        concurrency = max(1, concurrency)
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        padding = 0
        keys = max(1, keys)
        while True:  # the put's encoded size is exactly `size` bytes (when size allows)
            command = msgpack.packb(["put", "bench-00000000", b"x" * padding], use_bin_type=True)
            if len(command) >= size or padding > size:
                break
            padding += 1
        value = b"x" * padding
        latencies: list[float] = []
        phase = {"record": False, "stop": False}

        pack = msgpack.Packer(use_bin_type=True).pack

        async def proposer(worker: int) -> int:
            done, seq = 0, worker
            propose = node.propose
            while not phase["stop"]:
                seq = (seq + concurrency) % keys
                command = pack(["put", f"bench-{seq:08d}", value])
                start = clock()
                await propose(command)
                if phase["record"] and not phase["stop"]:
                    latencies.append(clock() - start)
                    done += 1
            return done

        workers = [loop.create_task(proposer(w)) for w in range(concurrency)]
        try:
            if warmup > 0:
                await asyncio.sleep(warmup)
            phase["record"] = True
            began, cpu_began = clock(), time.process_time()
            await asyncio.sleep(seconds)
            phase["stop"] = True
            elapsed, cpu = clock() - began, time.process_time() - cpu_began
            await asyncio.gather(*workers)
        except BaseException:
            phase["stop"] = True
            for task in workers:
                task.cancel()
            raise
        latencies.sort()
        ops = len(latencies)

        def pct(q: float) -> float:
            return latencies[min(ops - 1, int(q * ops))] * 1000 if ops else 0.0

        return {
            "ops": ops,
            "seconds": elapsed,
            "ops_per_s": ops / elapsed if elapsed > 0 else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "leader_cpu_s": cpu,  # CPU time of this process during the window
            "command_bytes": len(command),
            "concurrency": concurrency,
            "keys": keys,
            "driver": dict(node.metrics),
            "transport": node._transport.stats(),
        }

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._sock.close(0)


async def main_async(args: argparse.Namespace) -> None:
    members = parse_members(args.members)
    known = parse_members(args.peers) if args.peers else {}
    address = members.get(args.id) or known.get(args.id)
    if address is None:
        raise SystemExit(f"--id {args.id} is not in --members or --peers")
    stores: tuple[LogStore, StableStore, SnapshotStore]
    if args.memory:
        stores = (MemoryLogStore(), MemoryStableStore(), MemorySnapshotStore())
    else:
        data_dir = Path(args.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        stores = (
            FileLogStore(data_dir / "log"),
            FileStableStore(data_dir / "state"),
            FileSnapshotStore(data_dir / "snapshots"),
        )
    options = NodeOptions(
        id=args.id,
        initial_members=members if not args.join else {},
        known_addresses={**members, **known},
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        snapshot_entries=args.snapshot_entries,
        durable=not args.memory,
    )
    bind = address.replace("tcp://", "")
    host, _, port = bind.rpartition(":")
    transport = ZmqTransport(args.id, f"tcp://{host}:{port}")
    machine = KVStateMachine()
    log_store, stable_store, snapshot_store = stores
    node = RaftNode(options, machine, log_store, stable_store, snapshot_store, transport)
    await node.start()
    tune_gc()
    server = KVServer(
        node, machine, args.rpc if args.rpc.startswith("tcp://") else f"tcp://{args.rpc}"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serve = asyncio.create_task(server.serve())
    print(f"kvserver {args.id} ready: raft {address}, rpc {args.rpc}", flush=True)
    await stop.wait()
    serve.cancel()
    server.close()
    await node.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m consensus.kvserver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--id", required=True)
    parser.add_argument("--members", required=True, help="initial members: id=host:port,...")
    parser.add_argument("--peers", default="", help="extra known addresses (for a joining node)")
    parser.add_argument("--join", action="store_true", help="start empty and wait to be added")
    parser.add_argument("--rpc", required=True, help="host:port for client requests")
    parser.add_argument("--data-dir", default="")
    parser.add_argument(
        "--memory", action="store_true", help="in-memory stores (no fsync; for benchmarks)"
    )
    parser.add_argument("--tick-ms", type=int, default=50)
    parser.add_argument("--election-ticks", type=int, default=10)
    parser.add_argument("--snapshot-entries", type=int, default=10_000)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if not args.memory and not args.data_dir:
        parser.error("--data-dir is required unless --memory")
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s {args.id} %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
