"""One PySyncObj node for `python -m bench.consensus` (bench-only dependency).

    python -m bench.pysyncobj_node --self 127.0.0.1:7201 --partners 127.0.0.1:7202,127.0.0.1:7203

A SyncObj with one @replicated `put`, PySyncObj's defaults otherwise (in-memory
journal: it never fsyncs).  The process is driven over a line protocol on
stdin/stdout, one JSON object per line:

    {"op": "status"}  -> {"self": ..., "leader": ..., "ready": bool}
    {"op": "bench", "concurrency": C, "seconds": S, "size": N, "warmup": W}
        -> {"ops": ..., "seconds": ..., "ops_per_s": ..., "p50_ms": ..., "p99_ms": ...}
    {"op": "quit"}

`bench` runs the same workload as the kvserver's `bench` op, inside this
(leader) process: C commands kept in flight with the callback form of a
@replicated call, each completion recording its latency (call -> applied here)
and issuing the next one.  Callbacks run on PySyncObj's own tick thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON


class KV(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf: dict | None = None) -> None:
        super().__init__(self_addr, partners, SyncObjConf(**(conf or {})))
        self._data: dict[str, bytes] = {}

    @replicated
    def put(self, key: str, value: bytes) -> int:
        self._data[key] = value
        return len(self._data)


def _value_for(size: int) -> bytes:
    """A value whose command, as PySyncObj pickles it, is `size` bytes."""
    from pysyncobj import pickle

    padding = 0
    while padding <= size:
        if len(pickle.dumps((0, ("bench-00000000", b"x" * padding)))) >= size:
            break
        padding += 1
    return b"x" * padding


def run_bench(
    node: KV, concurrency: int, seconds: float, size: int, warmup: float, keys: int
) -> dict:
    clock = time.perf_counter
    value = _value_for(size)
    latencies: list[float] = []
    state = {"record": False, "stop": False, "inflight": 0, "failed": 0}
    lock = threading.Lock()
    drained = threading.Event()

    keys = max(1, keys)

    def issue(worker: int, seq: int) -> None:
        start = clock()

        def done(result, error) -> None:
            with lock:
                if error != FAIL_REASON.SUCCESS:
                    state["failed"] += 1
                elif state["record"] and not state["stop"]:
                    latencies.append(clock() - start)
                if state["stop"]:
                    state["inflight"] -= 1
                    if state["inflight"] == 0:
                        drained.set()
                    return
            issue(worker, (seq + concurrency) % keys)

        node.put(f"bench-{seq:08d}", value, callback=done)

    with lock:
        state["inflight"] = concurrency
    for worker in range(concurrency):
        issue(worker, worker % keys)
    if warmup > 0:
        time.sleep(warmup)
    with lock:
        state["record"] = True
        del latencies[:]
    began, cpu_began = clock(), time.process_time()
    time.sleep(seconds)
    with lock:
        state["stop"] = True
        elapsed, cpu = clock() - began, time.process_time() - cpu_began
        ops = len(latencies)
        samples = sorted(latencies)
    drained.wait(10)

    def pct(q: float) -> float:
        return samples[min(ops - 1, int(q * ops))] * 1000 if ops else 0.0

    return {
        "ops": ops,
        "seconds": elapsed,
        "ops_per_s": ops / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "failed": state["failed"],
        "leader_cpu_s": cpu,
        "concurrency": concurrency,
        "keys": keys,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pysyncobj_node")
    parser.add_argument("--self", dest="self_addr", required=True)
    parser.add_argument("--partners", required=True)
    parser.add_argument("--conf", default="{}", help="SyncObjConf keyword arguments, as JSON")
    args = parser.parse_args(argv)
    node = KV(args.self_addr, [p for p in args.partners.split(",") if p], json.loads(args.conf))

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        if op == "status":
            leader = node._getLeader()
            reply(
                {
                    "self": args.self_addr,
                    "leader": str(leader) if leader is not None else None,
                    "ready": node.isReady(),
                }
            )
        elif op == "bench":
            reply(
                run_bench(
                    node,
                    int(request["concurrency"]),
                    float(request["seconds"]),
                    int(request["size"]),
                    float(request.get("warmup", 0.0)),
                    int(request.get("keys", 10_000)),
                )
            )
        elif op == "quit":
            break
        else:
            reply({"error": f"unknown op {op!r}"})
    node.destroy()


if __name__ == "__main__":
    main()
