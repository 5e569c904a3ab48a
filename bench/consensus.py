"""Consensus throughput and commit latency: ragraft's Raft against PySyncObj.

    python -m bench.consensus [--quick] [--seconds S] [--warmup W] [--size N]

Both systems run as 3 OS processes on loopback, on this machine, in this run.
The load is generated inside the leader process (no client RPC in the measured
path): `concurrency` proposers each loop "propose a `size`-byte put, wait until
it is applied on the leader" and every proposal's latency (call -> applied,
which implies committed) is recorded.

- ours, durable: consensus/kvserver.py with file stores (fsync of every batch
  before the leader counts its own vote; followers fsync before they answer);
- ours, memory:  the same with in-memory stores (--memory), no fsync;
- PySyncObj:     bench/pysyncobj_node.py, its default in-memory journal (it
  never fsyncs, whatever the journal), in the configurations of
  PYSYNCOBJ_CONFIGS; the ratios compare against the best of them.

Each configuration gets a warm-up, then a measured window.  A table goes to
stdout and, as the LAST line, one JSON object with every figure, including
`durable_vs_pysyncobj` and `memory_vs_pysyncobj` (throughput ratios at the
highest concurrency, against PySyncObj's best configuration there) and
`p50_ms_c1_durable`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.kvcluster import KVCluster, free_ports

CONCURRENCIES = (1, 256)
# PySyncObj is measured in three configurations, and the ratios are taken
# against the best of them at each concurrency: its defaults (the journal in
# memory; appends batched and sent every appendEntriesPeriod = 100 ms, which
# caps a closed loop of C proposers at about C / 0.1 s), appends sent at once
# per command (what its own benchmarks/ use), and a 2 ms batching period.
PYSYNCOBJ_CONFIGS: dict[str, dict] = {
    "default": {},
    "nobatch": {"appendEntriesUseBatch": False},
    "batch2ms": {"appendEntriesPeriod": 0.002},
}


# --------------------------------------------------------------------------- ours


async def _bench_ours(memory: bool, runs: list[dict], args: argparse.Namespace, root: Path) -> None:
    storage = "memory" if memory else "durable"
    workdir = root / f"ours-{storage}"
    workdir.mkdir(parents=True)
    cluster = KVCluster(workdir, memory=memory)
    cluster.start_all()
    client = cluster.client(timeout=10.0)
    try:
        leader = await cluster.wait_for_leader(client, timeout=30.0)
        followers = [n for n in cluster.ids if n != leader]

        async def follower_cpu() -> float:
            total = 0.0
            for node in followers:
                total += (await client.status(cluster.index_of(node), timeout=5.0))["process_cpu_s"]
            return total

        for concurrency in args.concurrency:
            cpu_before = await follower_cpu()
            result = await client.call(
                cluster.index_of(leader),
                "bench",
                {
                    "concurrency": concurrency,
                    "seconds": args.seconds,
                    "size": args.size,
                    "warmup": args.warmup,
                    "keys": args.keys,
                },
                timeout=args.seconds + args.warmup + 60.0,
            )
            # The followers' CPU over warm-up + window + drain: an upper bound per op.
            result["followers_cpu_s"] = (
                (await follower_cpu() - cpu_before)
                * result["seconds"]
                / (result["seconds"] + args.warmup)
            )
            runs.append({"system": "ragraft", "storage": storage, **result})
            _print_row(runs[-1])
    finally:
        client.close()
        cluster.stop_all()


# --------------------------------------------------------------------------- PySyncObj


class _SyncObjCluster:
    def __init__(self, root: Path, conf: dict, size: int = 3) -> None:
        self.conf = conf
        ports = free_ports(size)
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.procs: list[subprocess.Popen] = []
        self.root = root

    def start(self) -> None:
        for addr in self.addresses:
            partners = ",".join(a for a in self.addresses if a != addr)
            log = open(self.root / f"pysyncobj-{addr.rsplit(':', 1)[1]}.log", "ab")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.pysyncobj_node",
                        "--self",
                        addr,
                        "--partners",
                        partners,
                        "--conf",
                        json.dumps(self.conf),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    bufsize=1,
                )
            )

    def ask(self, index: int, request: dict) -> dict:
        proc = self.procs[index]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"PySyncObj node {self.addresses[index]} exited; see {self.root}")
        return json.loads(line)

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, addr in enumerate(self.addresses):
                status = self.ask(i, {"op": "status"})
                if status.get("leader") == addr and status.get("ready"):
                    return i
            time.sleep(0.1)
        raise RuntimeError(f"PySyncObj elected no leader within {timeout} s")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _bench_pysyncobj(
    name: str, conf: dict, runs: list[dict], args: argparse.Namespace, root: Path
) -> None:
    workdir = root / f"pysyncobj-{name}"
    workdir.mkdir(parents=True)
    cluster = _SyncObjCluster(workdir, conf)
    cluster.start()
    try:
        leader = cluster.wait_for_leader()
        for concurrency in args.concurrency:
            result = cluster.ask(
                leader,
                {
                    "op": "bench",
                    "concurrency": concurrency,
                    "seconds": args.seconds,
                    "size": args.size,
                    "warmup": args.warmup,
                    "keys": args.keys,
                },
            )
            runs.append({"system": "pysyncobj", "storage": "memory", "config": name, **result})
            _print_row(runs[-1])
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- report

_HEADER = (
    f"{'system':<10} {'config':<9} {'storage':<8} {'concurrency':>11} {'ops/s':>9} {'p50 ms':>8}"
    f" {'p99 ms':>8} {'leader CPU us/op':>16}"
)


def _print_row(run: dict) -> None:
    print(
        f"{run['system']:<10} {run.get('config', '-'):<9} {run['storage']:<8} "
        f"{run['concurrency']:>11} {run['ops_per_s']:>9.0f} "
        f"{run['p50_ms']:>8.2f} {run['p99_ms']:>8.2f} {_cpu_per_op(run):>16.1f}",
        flush=True,
    )


def _cpu_per_op(run: dict) -> float:
    return run.get("leader_cpu_s", 0.0) / run["ops"] * 1e6 if run["ops"] else 0.0


def summarize(runs: list[dict], args: argparse.Namespace) -> dict:
    """Every figure in one flat JSON object, e.g. ops_ragraft_durable_c256."""
    summary: dict = {
        "size_bytes": args.size,
        "keys": args.keys,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    by_key = {}
    best_ref: dict[int, dict] = {}  # concurrency -> PySyncObj's best run
    for run in runs:
        if run["system"] == "pysyncobj":
            tag = f"pysyncobj_{run['config']}_c{run['concurrency']}"
            best = best_ref.get(run["concurrency"])
            if best is None or run["ops_per_s"] > best["ops_per_s"]:
                best_ref[run["concurrency"]] = run
        else:
            tag = f"{run['system']}_{run['storage']}_c{run['concurrency']}"
            by_key[(run["system"], run["storage"], run["concurrency"])] = run
        summary[f"ops_{tag}"] = round(run["ops_per_s"], 1)
        summary[f"p50_ms_{tag}"] = round(run["p50_ms"], 3)
        summary[f"p99_ms_{tag}"] = round(run["p99_ms"], 3)
        summary[f"leader_cpu_us_per_op_{tag}"] = round(_cpu_per_op(run), 1)
        if "followers_cpu_s" in run and run["ops"]:
            summary[f"followers_cpu_us_per_op_{tag}"] = round(
                run["followers_cpu_s"] / run["ops"] * 1e6, 1
            )
    top = max(args.concurrency)
    ref = best_ref.get(top)
    default_ref = next(
        (
            r
            for r in runs
            if r["system"] == "pysyncobj" and r["config"] == "default" and r["concurrency"] == top
        ),
        None,
    )
    for storage in ("durable", "memory"):
        ours = by_key.get(("ragraft", storage, top))
        if ours and ref and ref["ops_per_s"] > 0:
            summary[f"{storage}_vs_pysyncobj"] = round(ours["ops_per_s"] / ref["ops_per_s"], 3)
        if ours and default_ref and default_ref["ops_per_s"] > 0:
            summary[f"{storage}_vs_pysyncobj_default_config"] = round(
                ours["ops_per_s"] / default_ref["ops_per_s"], 3
            )
    if ref:
        summary[f"pysyncobj_best_config_c{top}"] = ref["config"]
    c1 = by_key.get(("ragraft", "durable", 1))
    if c1:
        summary["p50_ms_c1_durable"] = round(c1["p50_ms"], 3)
    c1m = by_key.get(("ragraft", "memory", 1))
    if c1m:
        summary["p50_ms_c1_memory"] = round(c1m["p50_ms"], 3)
    if ref:
        summary[f"pysyncobj_best_ops_c{top}"] = round(ref["ops_per_s"], 1)
    summary["targets"] = {
        "durable_vs_pysyncobj>=1.0": summary.get("durable_vs_pysyncobj", 0) >= 1.0,
        "memory_vs_pysyncobj>=2.0": summary.get("memory_vs_pysyncobj", 0) >= 2.0,
        "p50_ms_c1_durable<5": 0 < summary.get("p50_ms_c1_durable", 1e9) < 5.0,
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consensus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run (short windows)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured window per configuration"
    )
    parser.add_argument("--warmup", type=float, default=None, help="warm-up before each window")
    parser.add_argument("--size", type=int, default=100, help="bytes per command")
    parser.add_argument(
        "--keys",
        type=int,
        default=10_000,
        help="distinct keys the puts cycle through (the state machine's size)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    parser.add_argument(
        "--only",
        choices=("durable", "memory", "pysyncobj"),
        nargs="+",
        default=["durable", "memory", "pysyncobj"],
    )
    parser.add_argument(
        "--pysyncobj-conf",
        default=None,
        help="measure PySyncObj in this one configuration only (SyncObjConf keyword "
        "arguments as JSON) instead of the built-in set",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0

    root = Path(tempfile.mkdtemp(prefix="ragraft-bench-"))
    runs: list[dict] = []
    started = time.monotonic()
    print(
        f"consensus benchmark: 3 processes on loopback, "
        f"{args.size}-byte puts over {args.keys} keys, "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s per row, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(_HEADER, flush=True)
    try:
        if "durable" in args.only:
            asyncio.run(_bench_ours(False, runs, args, root))
        if "memory" in args.only:
            asyncio.run(_bench_ours(True, runs, args, root))
        if "pysyncobj" in args.only:
            configs = (
                PYSYNCOBJ_CONFIGS
                if args.pysyncobj_conf is None
                else {"custom": json.loads(args.pysyncobj_conf)}
            )
            for name, conf in configs.items():
                _bench_pysyncobj(name, conf, runs, args, root)
    finally:
        if args.keep:
            print(f"data and logs kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(runs, args)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    for name in ("durable_vs_pysyncobj", "memory_vs_pysyncobj", "p50_ms_c1_durable"):
        if name in summary:
            print(f"{name}: {summary[name]}")
    print(json.dumps(summary, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
