"""ragraft node processes, each inside its own network namespace.

The generated cluster.toml names only the namespaces' addresses (10.77.0.N): Raft,
gossip and the API listen there, nothing on 127.0.0.1. Every namespace has its own
port space, so every node uses the same ports. Models are off (noop tasks only), the
dashboard is off, the admin password and token secret come from the environment.

Each node runs as `ip netns exec rgN python -m node.cli.main node ...` (`ip` execs the
command, so the Popen pid is the node itself: kill -9, SIGSTOP and SIGCONT reach it).
Nodes get PR_SET_PDEATHSIG=SIGKILL: if the test process dies, they die with it (start
them from the main thread: the signal follows the thread that forked). The wrapper
execs `ip`, which execs python, so the pid stays the node's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.cli.supervisor import dying_with_parent
from tests.nemesis.client import Http
from tests.nemesis.netns import Network
from tests.nodecluster import ADMIN_PASSWORD, TOKEN_SECRET, mint_token, write_secrets

RAFT_PORT, GOSSIP_PORT, API_PORT, DASHBOARD_PORT = 7101, 7201, 8101, 8301
CLUSTER_NAME = "nemesis"


class NemesisCluster:
    def __init__(self, net: Network, data_root: Path, log_dir: Path, extra_toml: str = "") -> None:
        self.net = net
        self.nodes = list(net.nodes)
        self.data_root = data_root
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        data_root.mkdir(parents=True, exist_ok=True)
        self.api = {n: f"http://{net.ip[n]}:{API_PORT}" for n in self.nodes}
        lines = [f'[cluster]\nname = "{CLUSTER_NAME}"\n']
        for node in self.nodes:
            lines.append(
                f'[[nodes]]\nid = "{node}"\nhost = "{net.ip[node]}"\nraft_port = {RAFT_PORT}\n'
                f"gossip_port = {GOSSIP_PORT}\napi_port = {API_PORT}\ndashboard_port = {DASHBOARD_PORT}\n"
                f'data_dir = "{data_root / node}"\n'
            )
        lines.append(extra_toml)
        self.config = data_root / "cluster.toml"
        self.config.write_text("\n".join(lines))
        write_secrets(data_root, CLUSTER_NAME, self.nodes)  # secure as shipped: CURVE, sealed log
        self.env = {
            **os.environ,
            "RAGRAFT_LOAD_MODELS": "0",
            "RAGRAFT_DASHBOARD": "0",
            "RAGRAFT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "RAGRAFT_TOKEN_SECRET": TOKEN_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        self.http = Http(self.api, mint_token(CLUSTER_NAME))
        self.procs: dict[str, subprocess.Popen] = {}
        self.paused: set[str] = set()
        self.expected_down: set[str] = set()  # killed on purpose
        self.starts: dict[str, int] = {}

    # ------------------------------------------------------------ processes
    def start(self, node: str) -> None:
        self.starts[node] = self.starts.get(node, 0) + 1
        with open(self.log_dir / f"{node}.log", "ab") as log:
            log.write(
                f"\n===== nemesis: start #{self.starts[node]} of {node} at {time.time():.3f}\n".encode()
            )
            log.flush()
            self.procs[node] = subprocess.Popen(
                # killed with the test process (SIGKILL: no node outlives a failed run)
                dying_with_parent(
                    [
                        *self.net.exec_prefix(node),
                        sys.executable,
                        "-m",
                        "node.cli.main",
                        "node",
                        "--config",
                        str(self.config),
                        "--id",
                        node,
                    ],
                    signal.SIGKILL,
                ),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_root,
            )
        self.expected_down.discard(node)

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def kill(self, node: str) -> None:
        proc = self.procs[node]
        self.expected_down.add(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.paused.discard(node)

    def pause(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGCONT)
        self.paused.discard(node)

    def crashed(self) -> dict[str, int]:
        """Nodes that exited without being killed on purpose: node -> exit code."""
        return {
            n: p.returncode
            for n, p in self.procs.items()
            if n not in self.expected_down and p.poll() is not None
        }

    def log_tail(self, node: str, lines: int = 30) -> str:
        try:
            return "\n".join(
                (self.log_dir / f"{node}.log").read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return ""

    def stop_all(self) -> None:
        for node, proc in self.procs.items():
            if proc.poll() is None:
                if node in self.paused:
                    proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.paused.clear()

    # ------------------------------------------------------------ views
    def status(self, node: str, timeout: float = 1.0) -> dict | None:
        try:
            reply = self.http.call(node, "GET", "/api/v1/cluster", timeout=timeout)
        except OSError:
            return None
        except Exception:  # noqa: BLE001 (a half-started node)
            return None
        return reply.body if reply.status == 200 and isinstance(reply.body, dict) else None

    def leader(self, among: list[str] | None = None) -> str | None:
        """The leader of the highest term any reachable node reports."""
        best: tuple[int, str] | None = None
        for node in among or self.nodes:
            if node in self.paused or node in self.expected_down:
                continue
            view = self.status(node)
            if view and view.get("leader") and (best is None or view["term"] > best[0]):
                best = (view["term"], view["leader"])
        return best[1] if best else None

    def wait_ready(self, nodes: list[str] | None = None, timeout: float = 60) -> str:
        """Until every given node names the same leader and accepts a login."""
        nodes = nodes or self.nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            for node in nodes:
                try:
                    reply = self.http.call(node, "GET", "/readyz", timeout=1)
                except Exception:  # noqa: BLE001
                    break
                if not isinstance(reply.body, dict) or not reply.body.get("leader"):
                    break
                leaders.add(reply.body["leader"])
            else:
                if len(leaders) == 1 and self._login_works(nodes[0]):
                    return leaders.pop()
            crashed = self.crashed()
            if crashed:
                raise RuntimeError(
                    f"node(s) exited while starting: {crashed}\n"
                    + "\n".join(self.log_tail(n) for n in crashed)
                )
            time.sleep(0.2)
        raise RuntimeError(f"cluster not ready within {timeout} s; logs in {self.log_dir}")

    def _login_works(self, node: str) -> bool:
        try:
            reply = self.http.call(
                node,
                "POST",
                "/api/v1/auth/token",
                {"username": "admin", "password": ADMIN_PASSWORD},
                timeout=2,
            )
        except Exception:  # noqa: BLE001
            return False
        return reply.status == 200

    def wait_caught_up(self, node: str, timeout: float = 15) -> bool:
        """Until `node` has applied what the leader had committed when this was called."""
        deadline = time.monotonic() + timeout
        target = None
        while time.monotonic() < deadline:
            if target is None:
                leader = self.leader([n for n in self.nodes if n != node]) or self.leader()
                view = self.status(leader) if leader else None
                target = view["commit_index"] if view else None
            mine = self.status(node)
            if target is not None and mine and mine["applied_index"] >= target:
                return True
            time.sleep(0.1)
        return False

    def all_tasks(self, node: str, timeout: float = 10) -> dict[str, dict]:
        """Every task of `node`'s replica, full records, by id."""
        tasks: dict[str, dict] = {}
        cursor = ""
        while True:
            path = "/api/v1/tasks?full=1&limit=500&sort=submitted" + (
                f"&cursor={cursor}" if cursor else ""
            )
            reply = self.http.call(node, "GET", path, timeout=timeout)
            if reply.status != 200:
                raise RuntimeError(f"{node}: GET {path} -> {reply.status} {reply.body}")
            for task in reply.body["items"]:
                tasks[task["id"]] = task
            cursor = reply.body.get("next_cursor") or ""
            if not cursor:
                return tasks

    def task_ids(self, node: str, timeout: float = 10) -> list[str]:
        ids: list[str] = []
        cursor = ""
        while True:
            path = "/api/v1/tasks?limit=500&sort=submitted" + (
                f"&cursor={cursor}" if cursor else ""
            )
            reply = self.http.call(node, "GET", path, timeout=timeout)
            if reply.status != 200:
                raise RuntimeError(f"{node}: GET {path} -> {reply.status} {reply.body}")
            ids.extend(t["id"] for t in reply.body["items"])
            cursor = reply.body.get("next_cursor") or ""
            if not cursor:
                return ids
