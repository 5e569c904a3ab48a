"""Adding a node at run time (`ragraft node --join`) and removing one
(`ragraft node remove`), on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e


def voters(cluster: NodeCluster, node: str) -> list[str]:
    return cluster.request(node, "GET", "/api/v1/cluster")[1]["members"]["voters"]


def test_join_as_learner_then_voter_and_remove(tmp_path):
    cluster = NodeCluster(tmp_path, joiners=1)
    cluster.start_all()
    try:
        cluster.wait_ready(["n1", "n2", "n3"])
        assert voters(cluster, "n1") == ["n1", "n2", "n3"]
        status, task = cluster.request("n2", "POST", "/api/v1/tasks", {"type": "noop"})
        assert status == 201
        cluster.start("n4", "--join", cluster.api["n2"])  # any member: it forwards to the leader
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and voters(cluster, "n1") != ["n1", "n2", "n3", "n4"]:
            time.sleep(0.2)
        assert voters(cluster, "n1") == ["n1", "n2", "n3", "n4"]
        # the new node has the whole log: the task submitted before it joined
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and cluster.request("n4", "GET", f"/api/v1/tasks/{task['id']}")[0] != 200
        ):
            time.sleep(0.2)
        assert cluster.request("n4", "GET", f"/api/v1/tasks/{task['id']}")[0] == 200
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "node.cli.main",
                "node",
                "remove",
                "n3",
                "--config",
                str(cluster.config),
                "--url",
                cluster.api["n4"],
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=cluster.env,
        )
        assert out.returncode == 0, out.stderr
        assert "removed n3" in out.stdout
        assert voters(cluster, "n1") == ["n1", "n2", "n4"]
        # n3's key is revoked by whoever leads now (n3 itself may have led): every
        # remaining node refuses it from then on
        deadline = time.monotonic() + 10
        for node in ("n1", "n2", "n4"):
            while "CURVE key of node n3 revoked" not in (cluster.root / f"{node}.log").read_text():
                assert time.monotonic() < deadline, f"{node} still trusts n3's key"
                time.sleep(0.2)
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "node.cli.main",
                "node",
                "remove",
                "n9",
                "--config",
                str(cluster.config),
                "--url",
                cluster.api["n1"],
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=cluster.env,
        )
        assert bad.returncode != 0 and "n9 is not a member" in bad.stderr
    finally:
        cluster.stop_all()
