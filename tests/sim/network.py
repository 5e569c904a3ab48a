"""The simulation's virtual network.

Every message gets its own random delay (so messages overtake each other), may
be dropped or duplicated, and is lost when its directed link is cut, either when
it is sent or while it is in flight.  Faults are directed link cuts, which
compose into symmetric and one-way partitions, an isolated leader, and
FoundationDB's "swizzle": cut the links of a random subset of nodes one node at
a time, then heal them in reverse order.

Nothing here reads a clock or draws from anything but the simulation's rng.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from consensus import codec
from consensus.messages import SnapshotRequest

if TYPE_CHECKING:
    from tests.sim.world import Sim


@dataclass
class NetKnobs:
    delay_min: int = 1  # virtual time units (a tick is world.TICK units)
    delay_max: int = 20
    slow_prob: float = 0.03  # this fraction of messages takes up to slow_max longer
    slow_max: int = 300
    drop_prob: float = 0.02
    dup_prob: float = 0.02


class Network:
    def __init__(self, sim: Sim, knobs: NetKnobs) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.knobs = knobs
        self.base = NetKnobs(**vars(knobs))  # restored by calm()/end of a lossy burst
        self.cut: set[tuple[str, str]] = set()
        self.generation = 0  # bumped by heal_all(): cancels a swizzle under way
        self.calmed = False
        self.codec = sim.knobs.codec
        self.stats = {"sent": 0, "delivered": 0, "dropped": 0, "cut": 0, "duplicated": 0}

    # ------------------------------------------------------------------
    # traffic
    # ------------------------------------------------------------------
    def send(self, msg) -> None:
        stats = self.stats
        stats["sent"] += 1
        if self.cut and (msg.src, msg.dst) in self.cut:
            stats["cut"] += 1
            return
        k = self.knobs
        rng = self.rng
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

    def deliver(self, msg) -> None:
        if self.cut and (msg.src, msg.dst) in self.cut:
            self.stats["cut"] += 1
            return
        node = self.sim.nodes.get(msg.dst)
        if node is None or not node.up:
            self.stats["dropped"] += 1
            return
        self.stats["delivered"] += 1
        node.step(msg)

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
