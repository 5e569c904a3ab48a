"""The simulation's virtual network, and the Transport the real driver sends on.

Every message gets its own random delay (so messages overtake each other), may
be dropped or duplicated, and is lost when its directed link is cut, either when
it is sent or while it is in flight.  Faults are directed link cuts, which
compose into symmetric and one-way partitions, an isolated leader, and
FoundationDB's "swizzle": cut the links of a random subset of nodes one node at
a time, then heal them in reverse order.

Each directed link draws from its own random stream, seeded from the run's
seed and the link's name, so the fate of a message does not depend on the
order in which one Ready's messages to different peers are handed over.
Delivery goes to whichever process listens at the destination when the
message arrives (a restarted node gets what was sent to its predecessor, as
with ZeroMQ's ROUTER_HANDOVER); a message in flight outlives its sender.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from consensus import codec
from consensus.messages import (
    AppendResponse,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    VoteResponse,
)
from consensus.transport import MessageHandler
from consensus.types import NodeId

if TYPE_CHECKING:
    from tests.sim.loop import Process
    from tests.sim.world import Sim


@dataclass
class NetKnobs:
    delay_min: int = 1  # in hundredths of a tick (world.TICK units)
    delay_max: int = 20
    slow_prob: float = 0.03  # this fraction of messages takes up to slow_max longer
    slow_max: int = 300
    drop_prob: float = 0.02
    dup_prob: float = 0.02


class Network:
    def __init__(self, sim: Sim, knobs: NetKnobs) -> None:
        self.sim = sim
        self.knobs = knobs
        self.base = NetKnobs(**vars(knobs))  # restored by calm()/end of a lossy burst
        self.cut: set[tuple[str, str]] = set()
        self.generation = 0  # bumped by heal_all(): cancels a swizzle under way
        self.calmed = False
        self.codec = sim.knobs.codec
        self.endpoints: dict[NodeId, SimTransport] = {}
        self._links: dict[tuple[str, str], random.Random] = {}
        self.stats = {"sent": 0, "delivered": 0, "dropped": 0, "cut": 0, "duplicated": 0}

    def endpoint(self, node_id: NodeId, proc: Process) -> SimTransport:
        return SimTransport(self, node_id, proc)

    def _link(self, src: str, dst: str) -> random.Random:
        rng = self._links.get((src, dst))
        if rng is None:
            rng = self._links[(src, dst)] = random.Random(f"{self.sim.seed}:{src}->{dst}")
        return rng

    # ------------------------------------------------------------------
    # traffic
    # ------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        stats = self.stats
        stats["sent"] += 1
        kind = type(msg)
        if kind is AppendResponse or kind is VoteResponse or kind is SnapshotResponse:
            self._check_durable(msg)
        if self.cut and (msg.src, msg.dst) in self.cut:
            stats["cut"] += 1
            return
        k = self.knobs
        rng = self._link(msg.src, msg.dst)
        if k.drop_prob and rng.random() < k.drop_prob:
            stats["dropped"] += 1
            return
        copies = 1
        if k.dup_prob and rng.random() < k.dup_prob:
            copies = 2
            stats["duplicated"] += 1
        if type(msg) is SnapshotRequest and msg.offset == 0:
            self.sim.stats["snapshot_chunks0_sent"] += 1
        if self.codec:
            # Through the wire format, as between real nodes; it must round-trip.
            decoded = codec.decode(codec.encode(msg))
            if decoded != msg:
                self.sim.checker.fail(f"codec round trip changed {msg!r} into {decoded!r}")
            msg = decoded
        for _ in range(copies):
            delay = rng.randint(k.delay_min, k.delay_max)
            if k.slow_prob and rng.random() < k.slow_prob:
                delay += rng.randint(1, k.slow_max)
            self.sim.at(delay, self.deliver, msg)

    def _check_durable(self, msg) -> None:
        """What an answer promises must be on the sender's disk when it leaves."""
        node = self.sim.nodes[msg.src]
        kind = type(msg)
        if kind is AppendResponse and msg.success:
            snap = node.disk.snaps.latest()
            last = max(node.disk.log.durable_bounds()[1], snap.index if snap else 0)
            if last < msg.index:
                self.sim.checker.fail(
                    f"{msg.src} acknowledges entries up to {msg.index} to {msg.dst}, but only "
                    f"{last} are durable (an acknowledgement before the fsync)"
                )
        elif kind is VoteResponse and msg.granted and not msg.pre:
            # Safe once durable: this vote, or a later term (in which this node
            # can never vote in msg.term again).
            hs = node.disk.stable.durable()
            if hs.term < msg.term or (hs.term == msg.term and hs.vote != msg.dst):
                self.sim.checker.fail(
                    f"{msg.src} grants its vote to {msg.dst} in term {msg.term}, but its durable "
                    f"hard state says term {hs.term} vote {hs.vote}"
                )
        elif kind is SnapshotResponse and msg.done:
            snap = node.disk.snaps.latest()
            have = max(node.disk.log.durable_bounds()[1], snap.index if snap else 0)
            if have < msg.snapshot_index:
                self.sim.checker.fail(
                    f"{msg.src} reports snapshot {msg.snapshot_index} installed, but its disk has {have}"
                )

    def deliver(self, msg: Message) -> None:
        if self.cut and (msg.src, msg.dst) in self.cut:
            self.stats["cut"] += 1
            return
        target = self.endpoints.get(msg.dst)
        if target is None or target.closed or not target.proc.alive or target.handler is None:
            self.stats["dropped"] += 1
            return
        self.stats["delivered"] += 1
        self.sim.note("recv", msg.dst, msg)
        self.sim.loop.call_soon(target.receive, msg, context=target.proc.context)

    # ------------------------------------------------------------------
    # faults
    # ------------------------------------------------------------------
    def cut_link(self, src: str, dst: str) -> None:
        self.cut.add((src, dst))

    def cut_both(self, a: str, b: str) -> None:
        self.cut.add((a, b))
        self.cut.add((b, a))

    def isolate(
        self, node: str, others: list[str], inbound: bool = True, outbound: bool = True
    ) -> None:
        for other in others:
            if other == node:
                continue
            if outbound:
                self.cut.add((node, other))
            if inbound:
                self.cut.add((other, node))

    def partition(self, groups: list[list[str]]) -> None:
        """Symmetric: no link between nodes of different groups."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut_both(a, b)

    def heal_all(self) -> None:
        self.cut.clear()
        self.generation += 1

    def heal_node(self, node: str) -> None:
        self.cut = {(a, b) for (a, b) in self.cut if a != node and b != node}

    def swizzle(self, subset: list[str], everyone: list[str], step: int) -> None:
        """Cut `subset`'s links one node at a time every `step` time units,
        then heal them one at a time in reverse order."""
        gen = self.generation
        sim = self.sim
        order = list(subset)

        def cut_one(i: int) -> None:
            if self.generation != gen:
                return
            if i < len(order):
                self.isolate(order[i], everyone)
                sim.note("net", order[i], "swizzle-cut")
                sim.at(step, cut_one, i + 1)
            else:
                sim.at(step, heal_one, len(order) - 1)

        def heal_one(i: int) -> None:
            if self.generation != gen or i < 0:
                return
            self.heal_node(order[i])
            # heal_node also healed links to nodes still cut: re-cut those
            for j in range(i):
                self.isolate(order[j], everyone)
            sim.note("net", order[i], "swizzle-heal")
            sim.at(step, heal_one, i - 1)

        cut_one(0)

    def lossy_burst(self, drop: float, duration: int) -> None:
        self.knobs.drop_prob = drop

        def end() -> None:
            if not self.calmed:
                self.knobs.drop_prob = self.base.drop_prob

        self.sim.at(duration, end)

    def calm(self) -> None:
        """No more loss, duplication or long delays (the final quiet period)."""
        self.knobs = NetKnobs(self.base.delay_min, self.base.delay_max, 0.0, 0, 0.0, 0.0)
        self.calmed = True
        self.heal_all()


class SimTransport:
    """consensus.transport.Transport for one process of one node."""

    def __init__(self, network: Network, node_id: NodeId, proc: Process) -> None:
        self.network = network
        self.node_id = node_id
        self.proc = proc
        self.closed = False
        self.handler: MessageHandler | None = None
        self._peers: dict[NodeId, str] = {}
        self._stats: Counter[str] = Counter()

    async def start(self, handler: MessageHandler) -> None:
        self.handler = handler
        self.network.endpoints[self.node_id] = self

    def set_peers(self, addresses: Mapping[NodeId, str]) -> None:
        self._peers = dict(addresses)

    def send(self, message: Message) -> None:
        if self.closed or not self.proc.alive:
            self._stats["dropped"] += 1
            return
        if message.dst not in self._peers:
            self._stats["dropped_no_peer"] += 1
            return
        self._stats["sent"] += 1
        self.network.send(message)

    def receive(self, message: Message) -> None:
        if self.closed or self.handler is None:
            return
        self._stats["received"] += 1
        self.handler(message)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def close(self) -> None:
        self.closed = True
        if self.network.endpoints.get(self.node_id) is self:
            del self.network.endpoints[self.node_id]
