"""Partitions on a real network (tests/nemesis/): three nodes in three Linux network
namespaces on a bridge, real ZeroMQ between 10.77.0.x addresses, a seeded nemesis
(isolate the leader, a minority split, a one-way cut, random loss, a bandwidth limit,
SIGSTOP, kill -9 + restart), workload clients with idempotency keys failing over
between the nodes, and the checker over history + final state.

Needs root, iproute2 and iptables (`.ci/run` installs them). Without them these tests
FAIL, they do not skip: the test bed is part of the suite. The history and the report
are written to artifacts/nemesis/. Soak: `python -m tests.nemesis --minutes 30`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.nemesis import checker, netns, schedule
from tests.nemesis.faults import Faults
from tests.nemesis.runner import ARTIFACTS, RunConfig, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hi"); c.close()
"""
_CONNECT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    sys.exit(0 if c.recv(2) == b"hi" else 2)
except OSError:
    sys.exit(1)
"""


def _reaches(
    net: netns.Network, src: str | None, dst: str, port: int, timeout: float = 0.7
) -> bool:
    prefix = net.exec_prefix(src) if src else []
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", _CONNECT, net.ip[dst], str(port), str(timeout)],
        check=False,
        timeout=30,
    )
    return proc.returncode == 0


@pytest.mark.timeout(120)
def test_the_namespaces_and_the_faults_work():
    """The test bed itself: addresses reachable over the bridge, each fault cutting what it
    claims to cut (and not the clients' way in), heal restoring, teardown leaving nothing."""
    net = netns.Network(2)
    net.setup()  # NetnsUnavailable here fails the test
    servers = []
    try:
        for node in net.nodes:
            for port in (7101, 8101):
                servers.append(
                    subprocess.Popen(
                        [
                            *net.exec_prefix(node),
                            sys.executable,
                            "-c",
                            _SERVER,
                            net.ip[node],
                            str(port),
                        ]
                    )
                )
        time.sleep(0.5)
        faults = Faults(net, raft_port=7101, gossip_port=7201)
        assert _reaches(net, "n1", "n2", 7101) and _reaches(net, "n2", "n1", 7101)
        assert _reaches(net, None, "n1", 8101), "the root namespace reaches the nodes over rgh0"

        faults.isolate("n1")
        assert not _reaches(net, "n1", "n2", 7101) and not _reaches(net, "n2", "n1", 7101)
        assert _reaches(net, None, "n1", 8101), "clients still reach a cut-off node"
        faults.heal()
        assert _reaches(net, "n1", "n2", 7101) and _reaches(net, "n2", "n1", 7101)

        faults.one_way("n1", ["n2"])  # n1's messages to n2 are lost, n2's to n1 arrive
        assert not _reaches(net, "n1", "n2", 7101)
        assert _reaches(net, "n2", "n1", 7101)
        assert _reaches(net, "n1", "n2", 8101), "only the Raft and gossip ports are cut"
        faults.heal()

        faults.loss(1.0)  # the statistic match with p=1 drops everything between the nodes
        assert not _reaches(net, "n1", "n2", 7101)
        assert _reaches(net, None, "n2", 8101)
        faults.heal()
        faults.bandwidth(128)
        assert "tbf" in net.run("n1", "tc", "qdisc", "show", "dev", netns.NODE_IF).stdout
        faults.heal()
        assert "tbf" not in net.run("n1", "tc", "qdisc", "show", "dev", netns.NODE_IF).stdout
        assert _reaches(net, "n1", "n2", 7101)
    finally:
        for server in servers:
            server.kill()
            server.wait(5)
        net.teardown()
    assert not [ns for ns in netns.list_namespaces() if ns.startswith("rg")]
    assert (
        subprocess.run(
            ["ip", "link", "show", netns.HOST_IF], capture_output=True, check=False
        ).returncode
        != 0
    )


@pytest.mark.timeout(300)
def test_partitions_on_a_real_network():
    """The bounded run: every fault kind once (about 2 minutes), then the checker."""
    seed = int(os.environ.get("RAGRAFT_NEMESIS_SEED", "1"))
    report = run(RunConfig(seed=seed, out_dir=ARTIFACTS))
    text = checker.render(report)
    print(text)
    figures = report["figures"]
    # the run exercised what it claims to
    assert set(figures["faults"]) >= set(schedule.KINDS), figures["faults"]
    assert figures["acknowledged_by_workload"] >= 100, text
    assert figures["cancels"]["ok"] > 0 and figures["aborts"]["ok"] > 0, text
    assert len(figures["refusals"]) == len(schedule.CUT_OFF_KINDS), text
    assert all(r["requests"] > 0 for r in figures["refusals"]), text
    assert figures["restarts"] and "missing" in figures["restarts"][0], text
    assert not report["run"]["client_errors"], report["run"]["client_errors"]
    assert report["ok"], f"the checker found violations (artifacts in {ARTIFACTS}):\n{text}"
