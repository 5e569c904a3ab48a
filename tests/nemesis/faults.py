"""Network faults, all inside the nodes' namespaces (iptables chain NEMESIS, tc on eth0).

Only traffic between nodes is cut (rules name peer addresses), never the clients'
address: a node cut off from its peers still answers the clients, which is how the
checker sees how fast it refuses writes.

- partition(groups): drop every packet between nodes of different groups (both ways).
- one_way(src, dsts): messages from src to dsts are lost, dsts to src still arrive. Every
  node sends only on the TCP connections it opened itself (a DEALER per peer, into the
  peer's ROUTER; gossip the same), so the cut drops src's connections to the dsts' Raft
  and gossip ports (both directions of those connections) and leaves the connections the
  dsts opened to src alone. An IP-level one-way drop would kill both (TCP needs its ACKs).
- loss(p): each node drops incoming packets from its peers at random with probability p
  (iptables `-m statistic --mode random --probability p`; no netem needed).
- bandwidth(rate): `tc tbf` on each node's eth0 (everything the node sends, clients'
  answers too: its link is slow).
- delay(ms): `tc netem delay`, only where the kernel has netem.
- heal(): flush the chain, delete the qdiscs.
"""

from __future__ import annotations

from tests.nemesis.netns import NODE_IF, Network


class Faults:
    def __init__(self, net: Network, raft_port: int, gossip_port: int) -> None:
        self.net = net
        self.ports = f"{raft_port},{gossip_port}"
        self.active: list[str] = []

    def _rule(self, node: str, *rule: str) -> None:
        self.net.run(node, "iptables", "-w", "-A", "NEMESIS", *rule)
        self.active.append(f"{node}: iptables -A NEMESIS {' '.join(rule)}")

    def _tc(self, node: str, *args: str) -> None:
        self.net.run(node, "tc", "qdisc", "add", "dev", NODE_IF, "root", *args)
        self.active.append(f"{node}: tc qdisc add dev {NODE_IF} root {' '.join(args)}")

    def peers(self, node: str) -> list[str]:
        return [n for n in self.net.nodes if n != node]

    def partition(self, groups: list[list[str]]) -> None:
        where = {node: i for i, group in enumerate(groups) for node in group}
        for node in self.net.nodes:
            for other in self.net.nodes:
                if other != node and where.get(node, -1) != where.get(other, -2):
                    ip = self.net.ip[other]
                    self._rule(node, "-s", ip, "-j", "DROP")
                    self._rule(node, "-d", ip, "-j", "DROP")

    def isolate(self, node: str) -> None:
        self.partition([[node], self.peers(node)])

    def one_way(self, src: str, dsts: list[str]) -> None:
        for dst in dsts:
            ip = self.net.ip[dst]
            self._rule(
                src, "-d", ip, "-p", "tcp", "-m", "multiport", "--dports", self.ports, "-j", "DROP"
            )
            self._rule(
                src, "-s", ip, "-p", "tcp", "-m", "multiport", "--sports", self.ports, "-j", "DROP"
            )

    def loss(self, probability: float) -> None:
        for node in self.net.nodes:
            for other in self.peers(node):
                self._rule(
                    node,
                    "-s",
                    self.net.ip[other],
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    f"{probability:.3f}",
                    "-j",
                    "DROP",
                )

    def bandwidth(self, kbit: int) -> None:
        for node in self.net.nodes:
            self._tc(node, "tbf", "rate", f"{kbit}kbit", "burst", "8kb", "latency", "300ms")

    def delay(self, ms: int, jitter_ms: int = 0) -> None:
        for node in self.net.nodes:
            self._tc(node, "netem", "delay", f"{ms}ms", *([f"{jitter_ms}ms"] if jitter_ms else []))

    def heal(self) -> None:
        for node in self.net.nodes:
            self.net.run(node, "iptables", "-w", "-F", "NEMESIS")
            self.net.run(node, "tc", "qdisc", "del", "dev", NODE_IF, "root", check=False)
        self.active.clear()

    def rules(self, node: str) -> str:
        return self.net.run(node, "iptables", "-w", "-S", "NEMESIS", check=False).stdout
