"""The `ragraft` client commands against real clusters, run as a user runs them:
a subprocess with the cluster's environment and its own credentials directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kvcluster import free_ports
from tests.nodecluster import ADMIN_PASSWORD, NodeCluster, mint_token, running_cluster

pytestmark = pytest.mark.e2e

CITATION = re.compile(r"^\[\d+\] .+ \(doc \S+, chunk \d+\)", re.MULTILINE)


def ragraft(
    cluster: NodeCluster,
    home: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    full_env = {**cluster.env, "RAGRAFT_CONFIG_DIR": str(home), **(env or {})}
    if not env or "RAGRAFT_API_KEY" not in env:
        full_env.pop("RAGRAFT_API_KEY", None)  # only the credentials under test
    return subprocess.run(
        [sys.executable, "-m", "node.cli.main", *args, "--config", str(cluster.config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cluster.root,
        check=False,
    )


def login(cluster: NodeCluster, home: Path) -> None:
    out = ragraft(cluster, home, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli")) as cluster:
        yield cluster


def test_no_node_answers_lists_the_urls_and_suggests_ragraft_up(tmp_path: Path) -> None:
    urls = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    out = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "status", "--url", urls[0], "--url", urls[1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "RAGRAFT_CONFIG_DIR": str(tmp_path)},
    )
    assert out.returncode == 1
    assert all(url in out.stderr for url in urls) and "ragraft up" in out.stderr


def test_without_login_the_cli_says_what_to_do(cluster: NodeCluster, tmp_path: Path) -> None:
    out = ragraft(cluster, tmp_path, "tasks")
    assert out.returncode == 1 and "ragraft login" in out.stderr
    # A token in the environment works without a login; a bad one says to log in again.
    out = ragraft(cluster, tmp_path, "tasks", env={"RAGRAFT_TOKEN": mint_token("test")})
    assert out.returncode == 0, out.stderr
    out = ragraft(cluster, tmp_path, "tasks", env={"RAGRAFT_API_KEY": "rgk_not-a-key"})
    assert out.returncode == 1 and "ragraft login" in out.stderr


def test_login_submit_wait_list_show_cancel(cluster: NodeCluster, tmp_path: Path) -> None:
    login(cluster, tmp_path)
    credentials = tmp_path / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert "test" in json.loads(credentials.read_text())  # kept under the cluster's name
    out = ragraft(cluster, tmp_path, "login", "--password-stdin", stdin="wrong\n")
    assert out.returncode == 1 and "wrong username or password" in out.stderr

    out = ragraft(cluster, tmp_path, "submit", "200", "--type", "noop", "--wait")
    assert out.returncode == 0, out.stderr
    assert (
        "slept" in out.stdout and "completed" in out.stderr
    )  # the answer; progress lines on stderr
    out = ragraft(cluster, tmp_path, "submit", "200", "--type", "noop", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["state"] == "completed" and task["result"]["slept_ms"] >= 200

    out = ragraft(cluster, tmp_path, "tasks", "--state", "completed")
    assert out.returncode == 0 and task["id"] in out.stdout and "completed" in out.stdout
    assert out.stdout.splitlines()[0].split() == [
        "id",
        "type",
        "state",
        "priority",
        "node",
        "submitted",
        "progress",
    ]
    listed = json.loads(ragraft(cluster, tmp_path, "tasks", "--json").stdout)
    assert listed["total"] >= 2 and task["id"] in [t["id"] for t in listed["items"]]
    out = ragraft(cluster, tmp_path, "show", task["id"])
    assert out.returncode == 0 and "timeline" in out.stdout and "slept" in out.stdout
    assert all(state in out.stdout for state in ("queued", "running", "completed"))
    assert json.loads(ragraft(cluster, tmp_path, "show", task["id"], "--json").stdout)["history"]

    out = ragraft(cluster, tmp_path, "cancel", task["id"])
    assert out.returncode == 1 and "it is completed" in out.stderr  # says why: it already finished
    out = ragraft(cluster, tmp_path, "cancel", task["id"], "--json")
    assert (
        out.returncode == 1 and json.loads(out.stdout)["error"]["details"]["state"] == "completed"
    )
    out = ragraft(cluster, tmp_path, "show", "no-such-task")
    assert out.returncode == 1 and "no task no-such-task" in out.stderr

    out = ragraft(cluster, tmp_path, "status")
    assert out.returncode == 0, out.stderr
    assert (
        "leader" in out.stdout
        and "n1" in out.stdout
        and "quorum yes" in out.stdout
        and "tasks:" in out.stdout
    )
    status = json.loads(ragraft(cluster, tmp_path, "status", "--json").stdout)
    assert (
        status["cluster"]["quorum"]
        and len(status["nodes"]["items"]) == 3
        and status["stats"]["completed"] >= 2
    )


def test_cancel_abort_retry(cluster: NodeCluster, tmp_path: Path) -> None:
    login(cluster, tmp_path)
    # Fill all six slots (3 nodes x 2) with long urgent tasks: a low-priority one stays queued.
    busy = [
        ragraft(
            cluster, tmp_path, "submit", "30000", "--type", "noop", "--priority", "9"
        ).stdout.strip()
        for _ in range(6)
    ]
    waiting = ragraft(
        cluster, tmp_path, "submit", "1", "--type", "noop", "--priority", "0"
    ).stdout.strip()
    assert all(busy) and waiting
    try:
        deadline = time.monotonic() + 10
        while (
            "running" not in ragraft(cluster, tmp_path, "show", busy[0]).stdout.split("timeline")[0]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        out = ragraft(cluster, tmp_path, "cancel", busy[0])
        assert (
            out.returncode == 1 and "it is running" in out.stderr and "ragraft abort" in out.stderr
        )
        out = ragraft(cluster, tmp_path, "cancel", waiting)
        assert out.returncode == 0 and "cancelled" in out.stdout, out.stderr
        out = ragraft(cluster, tmp_path, "retry", waiting)
        assert out.returncode == 0, out.stderr
        retried = out.stdout.strip()
        assert retried and retried != waiting and "resubmitted" in out.stderr
    finally:
        for task_id in busy:
            ragraft(cluster, tmp_path, "abort", task_id)
    out = ragraft(cluster, tmp_path, "show", busy[-1], "--json")
    task = json.loads(out.stdout)
    assert task["state"] == "cancelled" or task["abort_requested"]


def test_api_key_create_ls_use_and_revoke(cluster: NodeCluster, tmp_path: Path) -> None:
    login(cluster, tmp_path)
    out = ragraft(
        cluster, tmp_path, "api-key", "create", "--scope", "read", "--expires-in-days", "1",
        "--label", "dashboards",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("rgk_") and "scope read" in out.stderr and "shown once" in out.stderr
    listed = ragraft(cluster, tmp_path, "api-key", "ls")
    assert listed.returncode == 0 and "dashboards" in listed.stdout and "read" in listed.stdout
    reader = {"RAGRAFT_API_KEY": key}
    assert ragraft(cluster, tmp_path, "tasks", env=reader).returncode == 0
    refused = ragraft(cluster, tmp_path, "submit", "5", "--type", "noop", env=reader)
    assert refused.returncode == 1 and "scope is read" in refused.stderr, refused.stderr
    key_id = json.loads(ragraft(cluster, tmp_path, "api-key", "ls", "--json").stdout)["items"]
    key_id = next(k["id"] for k in key_id if k["label"] == "dashboards")
    assert ragraft(cluster, tmp_path, "api-key", "revoke", key_id).returncode == 0
    cluster.read_barrier("n1")
    cluster.read_barrier("n2")
    cluster.read_barrier("n3")
    gone = ragraft(cluster, tmp_path, "tasks", env=reader)
    assert gone.returncode == 1, gone.stdout


def test_user_create_ls_set_passwd_rm_and_the_role_and_quota_hold_on_every_node(
    cluster: NodeCluster, tmp_path: Path
) -> None:
    login(cluster, tmp_path)
    made = ragraft(
        cluster, tmp_path, "user", "create", "dana", "--role", "user", "--max-queued", "1", "--max-running", "0",
        "--password-stdin", stdin="dana-password-1\n",
    )  # fmt: skip
    assert made.returncode == 0 and "created dana (user)" in made.stdout, made.stderr
    bad = ragraft(cluster, tmp_path, "user", "create", "Dana!", "--password-stdin", stdin="x\n")
    assert bad.returncode == 1 and "name must be" in bad.stderr, bad.stderr
    listed = json.loads(ragraft(cluster, tmp_path, "user", "ls", "--json").stdout)["items"]
    dana = next(u for u in listed if u["name"] == "dana")
    assert dana["quota"]["max_queued"] == 1 and dana["role"] == "user"
    assert dana["quota"]["max_running"] == 0
    # dana: none of her tasks may run, one may wait, the second is over her quota
    home = tmp_path / "dana"
    danas = ragraft(
        cluster, home, "login", "--user", "dana", "--password-stdin", stdin="dana-password-1\n"
    )
    assert danas.returncode == 0, danas.stderr
    first = ragraft(cluster, home, "submit", "60000", "--type", "noop", "--priority", "0")
    assert first.returncode == 0, first.stderr
    second = ragraft(cluster, home, "submit", "60000", "--type", "noop", "--priority", "0")
    assert second.returncode == 1 and "quota" in second.stderr, second.stderr
    upload = ragraft(cluster, home, "kb", "add", str(cluster.config))
    assert upload.returncode == 1 and "editors" in upload.stderr, upload.stderr
    # an admin lifts the quota and disables her: her saved token stops working
    lifted = ragraft(cluster, tmp_path, "user", "set", "dana", "--max-queued", "none", "--disable")
    assert lifted.returncode == 0 and "disabled" in lifted.stdout, lifted.stderr
    for node in cluster.ids:
        cluster.read_barrier(node)
    refused = ragraft(cluster, home, "tasks")
    assert refused.returncode == 1, refused.stdout
    reset = ragraft(
        cluster, tmp_path, "user", "passwd", "dana", "--password-stdin", stdin="dana-password-2\n"
    )
    assert reset.returncode == 0, reset.stderr
    gone = ragraft(cluster, tmp_path, "user", "rm", "dana")
    assert gone.returncode == 0 and "deleted dana" in gone.stdout, gone.stderr
    listed = json.loads(ragraft(cluster, tmp_path, "user", "ls", "--json").stdout)["items"]
    assert "dana" not in [u["name"] for u in listed]


def test_fails_over_when_the_first_node_is_down(cluster: NodeCluster, tmp_path: Path) -> None:
    # Last of this module's tests: it kills n1.
    login(cluster, tmp_path)
    cluster.kill("n1")
    out = ragraft(cluster, tmp_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert "does not answer" in out.stderr and "answered by" in out.stderr
    assert json.loads(out.stdout)["cluster"]["node"] in ("n2", "n3")
    out = ragraft(cluster, tmp_path, "submit", "50", "--type", "noop", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("does not answer") == 1  # the node that answered is used from then on


@pytest.fixture(scope="module")
def model_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-models"), models=True) as cluster:
        yield cluster


def test_kb_add_ls_rm_and_a_question_answered_with_citations(
    model_cluster: NodeCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    login(model_cluster, home)
    note = tmp_path / "lighthouse.md"
    note.write_text(
        "# Lighthouses\n\nThe lighthouse keeper polishes the great lens every Tuesday.\n"
    )
    out = ragraft(
        model_cluster, home, "kb", "add", str(note), str(tmp_path / "missing.txt"), "--tags", "sea"
    )
    assert out.returncode == 1  # one of the two files cannot be read ...
    assert (
        "cannot read" in out.stderr and "lighthouse.md: ingested as" in out.stdout
    )  # ... the other went in
    assert "completed" in out.stderr  # the ingest was followed to its end
    docs = json.loads(ragraft(model_cluster, home, "kb", "ls", "--json").stdout)["items"]
    doc = next(d for d in docs if d["title"] == "lighthouse.md")
    out = ragraft(model_cluster, home, "kb", "ls")
    assert doc["id"] in out.stdout and "ready" in out.stdout and "sea" in out.stdout

    out = ragraft(
        model_cluster,
        home,
        "submit",
        "What does the lighthouse keeper polish?",
        "--max-tokens",
        "24",
        "--wait",
    )
    assert out.returncode == 0, out.stderr
    answer, _, sources = out.stdout.partition("\n\n")
    assert answer.strip() and "completed" in out.stderr
    assert CITATION.search(sources) and f"(doc {doc['id']}, chunk 0)" in sources, out.stdout
    out = ragraft(model_cluster, home, "kb", "search", "great lens", "-k", "1")
    assert (
        out.returncode == 0 and "lens" in out.stdout and CITATION.search(out.stdout.splitlines()[0])
    )

    out = ragraft(model_cluster, home, "kb", "rm", doc["id"])
    assert out.returncode == 0 and f"deleted {doc['id']}" in out.stdout, out.stderr
    assert doc["id"] not in ragraft(model_cluster, home, "kb", "ls").stdout
    out = ragraft(model_cluster, home, "kb", "rm", doc["id"])
    assert out.returncode == 1 and doc["id"] in out.stderr
