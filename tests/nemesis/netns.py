"""Network namespaces for the nemesis: one namespace per node (rg1, rg2, ...), each with
one veth `eth0` (10.77.0.N/24) plugged into a bridge that lives in a namespace of its own
(rgbr), plus one veth pair `rgh0` (10.77.0.254/24) from the root namespace to that bridge,
through which the test's clients reach the nodes.

The bridge sits in its own namespace so that nothing of the root namespace's firewall
(a FORWARD policy of DROP with br_netfilter loaded, as Docker leaves it) can touch the
traffic between the nodes, and so that teardown is "delete the namespaces": every fault
(iptables rules, tc qdiscs) lives inside a node's namespace and goes with it.

Setup first removes what an earlier run left (a crashed test: processes still inside the
namespaces, the namespaces, the root-side veth), so it is idempotent; teardown does the
same. A lock file keeps two runs on one machine from tearing down each other's network.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUBNET = "10.77.0"
BRIDGE_NS = "rgbr"
HOST_IF = "rgh0"
HOST_IP = f"{SUBNET}.254"
NODE_IF = "eth0"
LOCK_PATH = Path(tempfile.gettempdir()) / "ragraft-nemesis.lock"
_OURS = re.compile(r"^(rg\d+|rgbr)$")


class NetnsUnavailable(RuntimeError):
    """Namespaces (or the tools to build them) are not available here."""


def sh(*args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return sh("ip", "link", "show", name, check=False).returncode == 0


def cleanup() -> list[str]:
    """Remove every namespace of ours (rgN, rgbr), the processes inside them and the
    root-side veth. Idempotent; returns what it removed."""
    removed = []
    for ns in list_namespaces():
        if not _OURS.match(ns):
            continue
        pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.05)
        sh("ip", "netns", "del", ns, check=False)
        removed.append(ns)
    if _link_exists(HOST_IF):
        sh("ip", "link", "del", HOST_IF, check=False)
        removed.append(HOST_IF)
    # Namespaces are destroyed asynchronously: wait until their veths are gone.
    deadline = time.monotonic() + 10
    while _link_exists(HOST_IF) and time.monotonic() < deadline:
        time.sleep(0.05)
    return removed


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def preflight() -> None:
    """Raise NetnsUnavailable, saying what is missing, when namespaces cannot be built."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "the nemesis needs root (network namespaces, iptables, tc); CI runs as root"
        )
    missing = [tool for tool in ("ip", "iptables", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(
            f"missing {', '.join(missing)}: apt-get install -y iproute2 iptables (.ci/run does it)"
        )
    for line in sh("ip", "-o", "-4", "addr", "show", check=False).stdout.splitlines():
        fields = line.split()
        if f" {SUBNET}." in f" {line}" and fields[1] != HOST_IF:
            raise NetnsUnavailable(
                f"{SUBNET}.0/24 is already used on this machine ({line.strip()}); "
                "the nemesis needs that subnet"
            )


class Network:
    """Namespaces rg1..rgN on one bridge. Use as a context manager (or setup/teardown)."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [f"n{i}" for i in range(1, size + 1)]
        self.ns = {node: f"rg{i}" for i, node in enumerate(self.nodes, 1)}
        self.ip = {node: f"{SUBNET}.{i}" for i, node in enumerate(self.nodes, 1)}
        self.host_ip = HOST_IP
        self._lock = None
        self.up = False

    # ------------------------------------------------------------ lifecycle
    def setup(self) -> None:
        preflight()
        self._take_lock()
        try:
            cleanup()
            self._build()
            self.up = True
            self._check_reachable()
        except NetnsUnavailable:
            self.teardown()
            raise
        except Exception as exc:
            self.teardown()
            raise NetnsUnavailable(f"could not build the namespaces: {exc}") from exc

    def teardown(self) -> None:
        try:
            cleanup()
        finally:
            self.up = False
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> Network:  # noqa: PYI034
        self.setup()
        return self

    def __exit__(self, *_: object) -> None:
        self.teardown()

    def _take_lock(self, wait: float = 150) -> None:
        self._lock = open(LOCK_PATH, "a+")  # noqa: SIM115 (held for the whole run)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock.close()
                    self._lock = None
                    raise NetnsUnavailable(
                        f"another nemesis run holds {LOCK_PATH} for more than {wait:.0f} s"
                    )
                time.sleep(0.5)

    def _build(self) -> None:
        sh("ip", "netns", "add", BRIDGE_NS)
        in_ns(BRIDGE_NS, "ip", "link", "set", "lo", "up")
        in_ns(BRIDGE_NS, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(BRIDGE_NS, "ip", "link", "set", "br0", "up")
        # root namespace <-> bridge: the clients' way in
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "host", "netns", BRIDGE_NS)
        in_ns(BRIDGE_NS, "ip", "link", "set", "host", "master", "br0", "up")
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        for i, node in enumerate(self.nodes, 1):
            ns = self.ns[node]
            sh("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
            sh(
                "ip",
                "link",
                "add",
                NODE_IF,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"v{i}",
                "netns",
                BRIDGE_NS,
            )
            in_ns(BRIDGE_NS, "ip", "link", "set", f"v{i}", "master", "br0", "up")
            in_ns(ns, "ip", "addr", "add", f"{self.ip[node]}/24", "dev", NODE_IF)
            in_ns(ns, "ip", "link", "set", NODE_IF, "up")
            # Every fault rule goes into this chain, so a heal is one flush.
            in_ns(ns, "iptables", "-w", "-N", "NEMESIS")
            in_ns(ns, "iptables", "-w", "-I", "INPUT", "-j", "NEMESIS")
            in_ns(ns, "iptables", "-w", "-I", "OUTPUT", "-j", "NEMESIS")

    def _check_reachable(self, timeout: float = 10) -> None:
        """Every node address answers from the root namespace (a refused connection on a
        closed port proves the path: the RST came back over the bridge)."""
        for node, ip in self.ip.items():
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection((ip, 9), timeout=1).close()
                    break
                except ConnectionRefusedError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise NetnsUnavailable(
                            f"{node} ({ip}) is not reachable over the bridge: {exc}"
                        ) from exc
                    time.sleep(0.1)

    # ------------------------------------------------------------ helpers
    def exec_prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node]]

    def run(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return in_ns(self.ns[node], *args, check=check)


def netem_available(net: Network) -> bool:
    """Whether this kernel has sch_netem (many minimal VM kernels do not)."""
    node = net.nodes[0]
    ok = (
        net.run(
            node, "tc", "qdisc", "add", "dev", NODE_IF, "root", "netem", "delay", "1ms", check=False
        ).returncode
        == 0
    )
    if ok:
        net.run(node, "tc", "qdisc", "del", "dev", NODE_IF, "root", check=False)
    return ok
