"""`ragraft up` (what `make run` calls): starts the nodes of cluster.toml as separate
processes, shows the models loading, prints every node's URLs, and stops them all
on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_up_shows_progress_prints_urls_and_stops_every_node_on_ctrl_c(tmp_path: Path) -> None:
    layout = NodeCluster(tmp_path, models=True)  # only for its cluster.toml and environment
    data = tmp_path / "elsewhere"
    # A first start: `up` writes the cluster's secrets itself (secure without configuration).
    bundle = tmp_path / ".ragraft" / "secrets" / "cluster-secrets.json"
    bundle.unlink()
    env = {k: v for k, v in layout.env.items() if k != "RAGRAFT_ADMIN_PASSWORD"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node.cli.main",
            "up",
            "--config",
            str(layout.config),
            "--data-dir",
            str(data),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its nodes share the group: a failed test can kill them all
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "Press Ctrl-C" in line:
                break
        output = "\n".join(lines)
        assert "Press Ctrl-C" in output, output
        assert f"cluster secrets: {bundle} (0600" in output, output
        assert bundle.stat().st_mode & 0o777 == 0o600
        for node in layout.ids:
            assert f"{node} is up" in output
            assert f"{node}: models: ready in" in output  # the last progress line of each node
            assert f"API {layout.api[node]}/api/v1" in output, output
            with urllib.request.urlopen(layout.api[node] + "/readyz", timeout=5) as resp:
                ready = json.loads(resp.read())
            assert ready["ready"] and ready["models"]["generator"] == "SmolLM2-135M-Instruct"
            assert (data / node / "raft").is_dir()  # --data-dir moved every node's data
            assert (data / node).stat().st_mode & 0o777 == 0o700
            assert "insecure" not in ready
            assert "INSECURE" not in (data / f"{node}.log").read_text()
        # No RAGRAFT_ADMIN_PASSWORD: the password is generated, shown on this terminal,
        # kept in a 0600 file beside the bundle, and never written into a node's log.
        shown = [
            line.split("admin password: ", 1)[1] for line in lines if "admin password: " in line
        ]
        assert len(shown) == 1, output
        password_file = bundle.parent / "admin-password"
        assert password_file.read_text().strip() == shown[0]
        assert password_file.stat().st_mode & 0o777 == 0o600
        for node in layout.ids:
            assert shown[0] not in (data / f"{node}.log").read_text()
        login = urllib.request.Request(
            layout.api[layout.ids[0]] + "/api/v1/auth/token",
            data=json.dumps({"username": "admin", "password": shown[0]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(login, timeout=10) as resp:
            assert json.loads(resp.read())["access_token"]
        assert "models: loading embedding model" in output, (
            output
        )  # progress was shown while the models loaded
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not any(answers(layout.api[node] + "/healthz") for node in layout.ids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _Lines:
    """The launcher's output, read as it comes by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self.lines: list[str] = []
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in:\n" + "\n".join(self.lines[-60:]))

    def pids(self) -> dict[str, int]:
        """node -> pid, from the launcher's "  n1: pid 123, log ..." lines."""
        return {
            line.split(":")[0].strip(): int(line.split("pid ")[1].split(",")[0])
            for line in list(self.lines)
            if ": pid " in line
        }


def _up(layout: NodeCluster, cwd: Path) -> tuple[subprocess.Popen, _Lines]:
    """`ragraft up` of the layout's cluster.toml, in a process group of its own."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli.main", "up", "--config", str(layout.config)],
        env=layout.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )
    return proc, _Lines(proc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its dead parent) does not count
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_up_restarts_a_killed_node_while_the_others_serve_and_sigterm_stops_everything(
    tmp_path: Path,
) -> None:
    layout = NodeCluster(tmp_path)  # control-plane nodes: noop tasks, no models
    proc, out = _up(layout, tmp_path)
    try:
        out.wait_for("Press Ctrl-C", 120)
        pids = out.pids()
        assert set(pids) == set(layout.ids), out.lines
        leader = layout.wait_ready(layout.ids)
        acked = []
        status, task = layout.request(leader, "POST", "/api/v1/tasks", {"type": "noop"})
        assert status == 201, task
        acked.append(task["id"])
        survivors = [n for n in layout.ids if n != leader]
        # kill -9 the leader: the others keep serving, writes come back within 2 s
        os.kill(pids[leader], signal.SIGKILL)
        killed = time.monotonic()
        accepted = None
        while accepted is None and time.monotonic() - killed < 30:
            try:
                status, task = layout.request(
                    survivors[0], "POST", "/api/v1/tasks", {"type": "noop"}, timeout=2
                )
            except OSError:
                status = 0
            if status == 201:
                accepted = time.monotonic() - killed
                acked.append(task["id"])
            else:
                time.sleep(0.05)
        assert accepted is not None and accepted < 2.0, accepted
        print(f"writes accepted again {accepted:.2f} s after kill -9 of the leader {leader}")
        # the launcher says what happened and restarts it; it catches up
        out.wait_for(f"node {leader} killed by SIGKILL", 10)
        out.wait_for(f"restarting {leader} in 1 s", 10)
        out.wait_for(f"{leader}: restarted", 20)
        layout.wait_ready([leader], timeout=60)
        deadline = time.monotonic() + 30
        for task_id in acked:  # nothing acknowledged is lost, the restarted node has it all
            for node in layout.ids:
                while layout.request(node, "GET", f"/api/v1/tasks/{task_id}")[0] != 200:
                    assert time.monotonic() < deadline, f"{node} lacks acknowledged {task_id}"
                    time.sleep(0.2)
        out.wait_for("(1 restarts)", 15)  # the status line counts it
        # SIGTERM (docker stop, systemd, a CI time-out): every node stops, none is orphaned
        new_pid = int(out.wait_for(f"{leader}: restarted (pid ", 1).split("pid ")[1].split(",")[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0, out.lines[-20:]
        _all_gone(layout, [*pids.values(), new_pid], within=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_nodes_die_with_a_launcher_killed_outright(tmp_path: Path) -> None:
    layout = NodeCluster(tmp_path)
    proc, out = _up(layout, tmp_path)
    try:
        out.wait_for("Press Ctrl-C", 120)
        pids = list(out.pids().values())
        assert len(pids) == len(layout.ids)
        proc.kill()  # SIGKILL: the launcher cannot stop anything itself
        proc.wait()
        # PR_SET_PDEATHSIG gave each node a SIGTERM: it stops gracefully
        _all_gone(layout, pids, within=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None


def _all_gone(layout: NodeCluster, pids: list[int], within: float) -> None:
    """Every node process has ended (none outlived the launcher) and no API answers."""
    deadline = time.monotonic() + within
    for pid in pids:
        while _pid_alive(pid):
            assert time.monotonic() < deadline, f"node pid {pid} outlived its launcher"
            time.sleep(0.1)
    assert not any(answers(layout.api[node] + "/healthz") for node in layout.ids)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
