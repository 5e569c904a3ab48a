"""Several hosts: three nodes in three network namespaces with their own addresses
(the partition test's bed, tests/nemesis/netns.py), configured only through the
environment (no cluster.toml anywhere), each listening on 0.0.0.0 and dialled at
its own address; a fourth host joins at run time with a join token through a member
that is not the leader; the first node is removed; and a client that was only ever
given the first node's URL fails over to the nodes it learnt from the cluster, also
when the leader is killed.

Needs root, iproute2 and iptables (`.ci/run` installs them); without them it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from node.cli.supervisor import dying_with_parent
from node.client.aio import ApiClient
from tests.nemesis.netns import Network

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "hosts-admin-password"
FIRST = ["n1", "n2", "n3"]


class Hosts:
    """Nodes as an operator of separate machines would run them: one secrets
    directory and one data directory per host, everything else in the environment."""

    def __init__(self, net: Network, root: Path) -> None:
        self.net, self.root = net, root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nodes_env = ",".join(f"{n}={net.ip[n]}" for n in FIRST)
        self.cli_dir = root / "cli"  # the client's own home: credentials, nodes learnt

    def url(self, node: str) -> str:
        return f"http://{self.net.ip[node]}:8100"

    def host_dir(self, node: str) -> Path:
        path = self.root / node
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, node: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RAGRAFT_NODES": self.nodes_env,
            "RAGRAFT_NODE_ID": node,
            "RAGRAFT_BIND_HOST": "0.0.0.0",  # listen everywhere, be dialled at the address
            "RAGRAFT_DATA_DIR": str(self.host_dir(node) / "data"),
            "RAGRAFT_SECRETS_DIR": str(self.host_dir(node) / "secrets"),
            "RAGRAFT_ADMIN_PASSWORD": PASSWORD,
            "RAGRAFT_LOAD_MODELS": "0",
            "RAGRAFT_DASHBOARD": "0",
            **extra,
        }

    def start(self, node: str, **extra: str) -> None:
        log = open(self.host_dir(node) / "node.log", "ab")  # noqa: SIM115 (the node's)
        self.procs[node] = subprocess.Popen(
            dying_with_parent(
                [*self.net.exec_prefix(node), sys.executable, "-m", "node.cli.main", "node"],
                signal.SIGKILL,
            ),
            env=self.env(node, **extra),
            cwd=self.host_dir(node),  # no cluster.toml there
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGKILL)
        self.procs[node].wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def log(self, node: str) -> str:
        return (self.host_dir(node) / "node.log").read_text(errors="replace")[-3000:]

    def ragraft(self, *args: str, stdin: str = "", admin_env: bool = False) -> Any:
        """The CLI from the root namespace, as a client machine runs it."""
        env = {**os.environ, "RAGRAFT_CONFIG_DIR": str(self.cli_dir)}
        for name in ("RAGRAFT_TOKEN", "RAGRAFT_API_KEY", "RAGRAFT_NODES"):
            env.pop(name, None)
        if admin_env:  # an admin's shell on a cluster host: the cluster's description
            env.update(RAGRAFT_NODES=self.nodes_env, RAGRAFT_ADMIN_PASSWORD=PASSWORD)
        proc = subprocess.run(
            [sys.executable, "-m", "node.cli.main", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"ragraft {' '.join(args)}: {proc.stderr}{proc.stdout}")
        return proc


def _get(url: str, token: str | None = None, timeout: float = 2.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _login(url: str) -> str:
    body = json.dumps({"username": "admin", "password": PASSWORD}).encode()
    request = urllib.request.Request(
        f"{url}/api/v1/auth/token", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["access_token"]


def _until(what: str, check: Any, timeout: float, hosts: Hosts) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        for node, proc in hosts.procs.items():
            if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                raise AssertionError(f"{node} exited ({proc.returncode}):\n{hosts.log(node)}")
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s: {what} (last: {last})")


def _ready(url: str) -> bool:
    try:
        return bool(_get(f"{url}/readyz").get("ready"))
    except urllib.error.HTTPError:
        return False


@pytest.mark.timeout(300)
def test_three_hosts_a_fourth_joins_one_leaves_and_clients_fail_over(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "cli", ignore_errors=True)
    with Network(4) as net:
        hosts = Hosts(net, tmp_path)
        try:
            _run(hosts)
        finally:
            hosts.stop_all()


def _run(hosts: Hosts) -> None:
    # --- secrets, as an operator makes them: `ragraft init` from the environment alone,
    # then each host gets the bundle and only its own node key.
    made = hosts.root / "made"
    hosts.ragraft("init", "--secrets-dir", str(made), admin_env=True)
    for node in FIRST:
        secrets = hosts.host_dir(node) / "secrets"
        secrets.mkdir(mode=0o700)
        for name in ("cluster-secrets.json", f"node-{node}.key"):
            shutil.copy2(made / name, secrets / name)
    for node in FIRST:
        hosts.start(node)
    for node in FIRST:
        _until(f"{node} ready", lambda n=node: _ready(hosts.url(n)), 90, hosts)
    token = _login(hosts.url("n2"))
    nodes = _get(f"{hosts.url('n2')}/api/v1/nodes", token)["items"]
    published = {item["id"]: item["api_url"] for item in nodes}
    assert published == {n: hosts.url(n) for n in FIRST}  # what each node says of itself
    raft = {item["id"]: item["raft_address"] for item in nodes}
    assert raft == {n: f"tcp://{hosts.net.ip[n]}:7100" for n in FIRST}  # not 0.0.0.0

    # --- a client given only n1's URL learns the others when it logs in
    only_n1 = ("--url", hosts.url("n1"))
    hosts.ragraft("login", *only_n1, "--password-stdin", stdin=PASSWORD + "\n")
    learnt = json.loads((hosts.cli_dir / "nodes.json").read_text())
    assert set(next(iter(learnt.values()))["nodes"]) == {hosts.url(n) for n in FIRST}
    acknowledged = [_submit(hosts, only_n1)]
    # the terminal UI's client learns them from the node list it shows
    assert asyncio.run(_tui_client_learns(hosts.url("n1"), token)) == [hosts.url(n) for n in FIRST]

    # --- a fourth host joins with a token, through a member that is not the leader
    leader = _get(f"{hosts.url('n2')}/api/v1/cluster", token)["leader"]
    through = next(n for n in FIRST if n != leader)
    join_token = hosts.ragraft(
        "node", "token", "--url", hosts.url(through), "--for-node", "n4", admin_env=True
    ).stdout.strip()
    hosts.start(
        "n4",
        RAGRAFT_HOST=hosts.net.ip["n4"],
        RAGRAFT_JOIN=hosts.url(through),
        RAGRAFT_JOIN_TOKEN=join_token,
    )

    def n4_votes() -> bool:
        view = _get(f"{hosts.url('n2')}/api/v1/cluster", token)
        return "n4" in view["members"]["voters"]

    _until("n4 a voter", n4_votes, 90, hosts)
    _until("n4 ready", lambda: _ready(hosts.url("n4")), 60, hosts)
    listed = _until(
        "n4 published in /api/v1/nodes",
        lambda: {
            i["id"]: i["api_url"] for i in _get(f"{hosts.url('n1')}/api/v1/nodes", token)["items"]
        }.get("n4"),
        30,
        hosts,
    )
    assert listed == hosts.url("n4")
    # The client, still told only of n1, learns the newcomer at its next login, and
    # may then name it: the login it has is that cluster's.
    hosts.ragraft("login", *only_n1, "--password-stdin", stdin=PASSWORD + "\n")
    learnt = json.loads((hosts.cli_dir / "nodes.json").read_text())
    assert hosts.url("n4") in next(iter(learnt.values()))["nodes"]
    acknowledged.append(_submit(hosts, ("--url", hosts.url("n4"))))  # the newcomer serves

    # --- the first node leaves the cluster; the client fails over to the others
    hosts.ragraft("node", "remove", "n1", "--url", hosts.url("n3"), admin_env=True)
    _until(
        "n1 out of the voters",
        lambda: "n1" not in _get(f"{hosts.url('n3')}/api/v1/cluster", token)["members"]["voters"],
        30,
        hosts,
    )
    hosts.kill("n1")
    proc = hosts.ragraft("tasks", *only_n1, "--json")
    assert "answered by" in proc.stderr
    acknowledged.append(_submit(hosts, only_n1))

    # --- kill -9 the leader of the three that are left: the client goes on
    survivors = ["n2", "n3", "n4"]
    leader = _until(
        "a leader among n2-n4",
        lambda: _get(f"{hosts.url('n2')}/api/v1/cluster", token)["leader"],
        20,
        hosts,
    )
    assert leader in survivors
    hosts.kill(leader)
    acknowledged.append(_submit(hosts, only_n1, retry_s=30))
    hosts.start(leader)  # it comes back and catches up
    _until(f"{leader} ready again", lambda: _ready(hosts.url(leader)), 60, hosts)

    def everyone_has_all() -> bool:
        for node in survivors:
            tasks = _get(f"{hosts.url(node)}/api/v1/tasks?limit=100", _login(hosts.url(node)))
            done = {t["id"] for t in tasks["items"] if t["state"] == "completed"}
            if not set(acknowledged) <= done:
                return False
        return True

    _until("every acknowledged task completed on every member", everyone_has_all, 60, hosts)


async def _tui_client_learns(url: str, token: str) -> list[str]:
    client = ApiClient([url], token, discover=True)
    try:
        await client.request("GET", "/api/v1/nodes")
        return client.urls
    finally:
        await client.close()


def _submit(hosts: Hosts, where: tuple[str, str], retry_s: float = 0.0) -> str:
    """One noop task through the CLI; its id once acknowledged (retried while the
    cluster elects a leader, as a user would: the idempotency key is per command)."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            proc = hosts.ragraft("submit", "10", "--type", "noop", *where, "--json")
            return json.loads(proc.stdout)["id"]
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
