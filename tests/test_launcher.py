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
