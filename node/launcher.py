"""`ragraft up`: start every node of cluster.toml as its own OS process, show
progress until the cluster has a leader, print the URLs, stop all on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from node.config import ClusterConfig


def _get_json(url: str, timeout: float = 0.5) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def up(config: ClusterConfig, startup_timeout: float = 120.0) -> int:
    procs: dict[str, subprocess.Popen] = {}
    logs_dir = Path(config.nodes[0].data_dir).parent
    logs_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting {len(config.nodes)} nodes of cluster {config.name!r} from {config.path}", flush=True)
    for spec in config.nodes:
        log_path = logs_dir / f"{spec.id}.log"
        cmd = [sys.executable, "-m", "node.cli", "node", "--config", str(config.path), "--id", spec.id]
        procs[spec.id] = subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
        print(f"  {spec.id}: pid {procs[spec.id].pid}, log {log_path}", flush=True)

    def stop_all(*_: object) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    try:
        deadline = time.monotonic() + startup_timeout
        up_nodes: set[str] = set()
        leader = None
        while time.monotonic() < deadline and leader is None:
            for spec in config.nodes:
                proc = procs[spec.id]
                if proc.poll() is not None:
                    print(f"node {spec.id} exited with code {proc.returncode}; see {logs_dir / (spec.id + '.log')}",
                          file=sys.stderr)
                    stop_all()
                    return 1
                view = _get_json(f"{spec.api_url}/api/v1/cluster")
                if view is not None and spec.id not in up_nodes:
                    up_nodes.add(spec.id)
                    print(f"  {spec.id} is up ({len(up_nodes)}/{len(config.nodes)})", flush=True)
                if view is not None and view.get("leader"):
                    leader = view["leader"]
            time.sleep(0.2)
        if leader is None:
            print(f"no leader elected within {startup_timeout:.0f} s; see the logs in {logs_dir}", file=sys.stderr)
            stop_all()
            return 1
        print(f"\ncluster {config.name!r} is up; leader: {leader}\n", flush=True)
        for spec in config.nodes:
            print(f"  {spec.id}:  API {spec.api_url}/api/v1/cluster   raft {spec.raft_address}", flush=True)
        print("\nPress Ctrl-C to stop every node.", flush=True)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        print(f"node(s) {', '.join(dead)} exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping every node...", flush=True)
        return 0
    finally:
        stop_all()
