"""`ragraft node` processes started from a cluster.toml: leader election over
ZeroMQ with the cluster's CURVE key, and a node holding another key shut out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from consensus.zmq_transport import generate_cluster_keys
from tests.kvcluster import free_ports
from tests.nodecluster import TOKEN_SECRET, mint_token

pytestmark = pytest.mark.e2e


def write_config(tmp_path) -> dict[str, int]:
    ports = free_ports(12)
    lines = ['[cluster]\nname = "curve-test"\n']
    api = {}
    for i in range(3):
        node = f"n{i + 1}"
        api[node] = ports[4 * i + 2]
        lines.append(
            f'[[nodes]]\nid = "{node}"\nhost = "127.0.0.1"\nraft_port = {ports[4 * i]}\n'
            f"gossip_port = {ports[4 * i + 1]}\napi_port = {ports[4 * i + 2]}\n"
            f'dashboard_port = {ports[4 * i + 3]}\ndata_dir = "data/{node}"\n'
        )
    lines.append("[raft]\ntick_ms = 50\nelection_ticks = 10\nheartbeat_ticks = 1\n")
    (tmp_path / "cluster.toml").write_text("\n".join(lines))
    return api


def cluster_view(port: int) -> dict | None:
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/cluster",
            headers={"Authorization": f"Bearer {mint_token('curve-test')}"},
        )
        with urllib.request.urlopen(request, timeout=0.5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_nodes_with_the_cluster_key_elect_and_an_outsider_cannot_join(tmp_path):
    api = write_config(tmp_path)
    good = generate_cluster_keys()
    bad = generate_cluster_keys()
    # The bundle `ragraft init` writes (encryption key, token secret, CURVE keys); the
    # CURVE keys in each node's environment win over the bundle's.
    init = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "init", "--config", str(tmp_path / "cluster.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    bundle = tmp_path / ".ragraft" / "secrets" / "cluster-secrets.json"
    assert "copy" in init.stdout and str(bundle) in init.stdout
    assert bundle.stat().st_mode & 0o777 == 0o600
    assert bundle.parent.stat().st_mode & 0o777 == 0o700
    procs = []
    try:
        for node, keys in (("n1", good), ("n2", good), ("n3", bad)):
            env = {
                **os.environ,
                "RAGRAFT_CLUSTER_PUBLIC_KEY": keys[0],
                "RAGRAFT_CLUSTER_SECRET_KEY": keys[1],
                "RAGRAFT_TOKEN_SECRET": TOKEN_SECRET,
                "RAGRAFT_LOAD_MODELS": "0",
            }
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "node.cli.main",
                        "node",
                        "--config",
                        str(tmp_path / "cluster.toml"),
                        "--id",
                        node,
                    ],
                    env=env,
                    stdout=open(tmp_path / f"{node}.log", "wb"),  # noqa: SIM115 - the node holds it
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                )
            )
        deadline = time.monotonic() + 30
        leader = None
        while time.monotonic() < deadline and leader is None:
            view = cluster_view(api["n1"])
            leader = view and view["leader"]
            time.sleep(0.1)
        assert leader in ("n1", "n2"), f"no leader among the key holders: {view}"
        time.sleep(1.5)  # several election timeouts
        outsider = None
        deadline = time.monotonic() + 20  # its API may still be starting on a loaded machine
        while outsider is None and time.monotonic() < deadline:
            outsider = cluster_view(api["n3"])
        assert outsider is not None and outsider["leader"] is None, outsider
        assert outsider["commit_index"] == 1  # only its own bootstrap entry: it read nothing
        insider = cluster_view(api["n1"])
        assert insider["leader"] == leader and insider["commit_index"] >= 2
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
