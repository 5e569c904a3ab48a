"""The `ragraft` client commands against real clusters, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodecluster import ADMIN_PASSWORD, NodeCluster

pytestmark = pytest.mark.e2e


def ragraft(cluster: NodeCluster, home: Path, *args: str, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**cluster.env, "RAGRAFT_CONFIG_DIR": str(home)}
    env.pop("RAGRAFT_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(cluster.config)],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd=cluster.root)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    cluster = NodeCluster(tmp_path_factory.mktemp("cli"))
    cluster.start_all()
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop_all()


def test_without_login_the_cli_says_what_to_do(cluster: NodeCluster, tmp_path: Path) -> None:
    out = ragraft(cluster, tmp_path, "tasks")
    assert out.returncode == 1 and "ragraft login" in out.stderr


def test_login_submit_wait_list_show_cancel(cluster: NodeCluster, tmp_path: Path) -> None:
    out = ragraft(cluster, tmp_path, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert out.returncode == 0, out.stderr
    credentials = tmp_path / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    out = ragraft(cluster, tmp_path, "login", "--password-stdin", stdin="wrong\n")
    assert out.returncode == 1 and "wrong username or password" in out.stderr

    out = ragraft(cluster, tmp_path, "submit", "200", "--type", "noop", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["state"] == "completed" and task["result"]["slept_ms"] >= 200

    out = ragraft(cluster, tmp_path, "tasks", "--state", "completed")
    assert out.returncode == 0 and task["id"] in out.stdout and "completed" in out.stdout
    listed = json.loads(ragraft(cluster, tmp_path, "tasks", "--json").stdout)
    assert listed["total"] >= 1
    out = ragraft(cluster, tmp_path, "show", task["id"])
    assert out.returncode == 0 and "queued" in out.stdout and "running" in out.stdout
    out = ragraft(cluster, tmp_path, "cancel", task["id"])
    assert out.returncode == 1 and "completed" in out.stderr  # says why: it already finished

    queued = ragraft(cluster, tmp_path, "submit", "1", "--type", "noop", "--priority", "0").stdout.strip()
    out = ragraft(cluster, tmp_path, "status")
    assert out.returncode == 0 and "leader" in out.stdout and "n1" in out.stdout and "tasks:" in out.stdout
    assert queued


def test_fails_over_when_the_first_node_is_down(cluster: NodeCluster, tmp_path: Path) -> None:
    ragraft(cluster, tmp_path, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    cluster.kill("n1")
    out = ragraft(cluster, tmp_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert "does not answer" in out.stderr and "answered by" in out.stderr
    assert json.loads(out.stdout)["cluster"]["node"] in ("n2", "n3")


@pytest.fixture(scope="module")
def model_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    cluster = NodeCluster(tmp_path_factory.mktemp("cli-models"), models=True)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=60)
        cluster.wait_models()
        yield cluster
    finally:
        cluster.stop_all()


def test_kb_add_ls_and_a_question_answered_with_citations(model_cluster: NodeCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ragraft(model_cluster, home, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    note = tmp_path / "lighthouse.md"
    note.write_text("# Lighthouses\n\nThe lighthouse keeper polishes the great lens every Tuesday.\n")
    out = ragraft(model_cluster, home, "kb", "add", str(note), str(tmp_path / "missing.txt"), "--tags", "sea")
    assert out.returncode == 1  # one of the two files cannot be read ...
    assert "cannot read" in out.stderr and "ingested as" in out.stdout  # ... the other went in
    out = ragraft(model_cluster, home, "kb", "ls")
    assert "lighthouse.md" in out.stdout and "ready" in out.stdout
    out = ragraft(model_cluster, home, "submit", "What does the lighthouse keeper polish?", "--max-tokens", "24",
                  "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "completed" in out.stderr
    out = ragraft(model_cluster, home, "kb", "search", "great lens", "-k", "1")
    assert "lens" in out.stdout
