"""An in-process Transport for asyncio driver tests: no sockets, with faults.

    net = MemoryNetwork(seed=7)
    a, b = net.transport("a"), net.transport("b")
    await a.start(handler_a); await b.start(handler_b)
    a.set_peers({"b": "mem://b"}); b.set_peers({"a": "mem://a"})
    net.partition("a", "b"); ...; net.heal()

It behaves like ZmqTransport where a driver could tell the difference:
- delivery is asynchronous (loop.call_soon), never re-entrant: a handler never
  runs inside the `send` that caused it, exactly as with a real socket;
- a message to a node missing from `set_peers`, closed, partitioned away or
  unlucky under `drop_rate` is dropped silently and counted, never raised;
- by default every message goes through the wire codec, so a message the core
  builds with a wrong field type fails here as it would between machines, and a
  receiver can never share (and mutate) the sender's objects.
Ordering between one pair of nodes is FIFO, as on a ZeroMQ connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Mapping

from consensus import codec
from consensus.messages import Message
from consensus.transport import MessageHandler
from consensus.types import NodeId

log = logging.getLogger(__name__)


class MemoryNetwork:
    """The switch every MemoryTransport of one test is plugged into.

    Faults are directional links that are cut: `partition(a, b)` cuts both
    directions, `block(a, b)` only a -> b (asymmetric partitions), `isolate(n)`
    cuts n from everyone (including nodes that join later), `heal()` restores
    everything.  `drop_rate` loses that fraction of the remaining messages, drawn
    from a seeded Random so that a failing run can be replayed.
    """

    def __init__(
        self, seed: int = 0, drop_rate: float = 0.0, codec_round_trip: bool = True
    ) -> None:
        self.rng = random.Random(seed)
        self.drop_rate = drop_rate
        self.codec_round_trip = codec_round_trip
        self._nodes: dict[NodeId, MemoryTransport] = {}
        self._blocked: set[tuple[NodeId, NodeId]] = set()
        self._isolated: set[NodeId] = set()

    def transport(self, node_id: NodeId) -> MemoryTransport:
        return MemoryTransport(self, node_id)

    # --- faults -------------------------------------------------------------------

    def block(self, src: NodeId, dst: NodeId) -> None:
        self._blocked.add((src, dst))

    def partition(self, a: NodeId, b: NodeId) -> None:
        self._blocked.add((a, b))
        self._blocked.add((b, a))

    def isolate(self, node: NodeId) -> None:
        self._isolated.add(node)

    def heal(self) -> None:
        self._blocked.clear()
        self._isolated.clear()

    def can_reach(self, src: NodeId, dst: NodeId) -> bool:
        return (
            (src, dst) not in self._blocked
            and src not in self._isolated
            and dst not in self._isolated
        )

    # --- plumbing used by MemoryTransport -----------------------------------------------

    def _attach(self, transport: MemoryTransport) -> None:
        current = self._nodes.get(transport.node_id)
        if current is not None and current is not transport and not current.closed:
            raise ValueError(f"node {transport.node_id!r} is already running on this network")
        # A restarted node (new transport, same id) simply replaces the old one,
        # like ROUTER_HANDOVER does for ZeroMQ.
        self._nodes[transport.node_id] = transport

    def _detach(self, transport: MemoryTransport) -> None:
        if self._nodes.get(transport.node_id) is transport:
            del self._nodes[transport.node_id]

    def _lookup(self, node: NodeId) -> MemoryTransport | None:
        return self._nodes.get(node)


class MemoryTransport:
    """One node's endpoint on a MemoryNetwork (implements consensus.transport.Transport)."""

    def __init__(self, network: MemoryNetwork, node_id: NodeId) -> None:
        self.network = network
        self.node_id = node_id
        self.closed = False
        self._handler: MessageHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[NodeId, str] = {}
        self._stats: Counter[str] = Counter()

    async def start(self, handler: MessageHandler) -> None:
        if self.closed:
            raise RuntimeError("transport is closed")
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self.network._attach(self)

    def set_peers(self, addresses: Mapping[NodeId, str]) -> None:
        self._peers = {node: addr for node, addr in addresses.items() if node != self.node_id}

    def send(self, message: Message) -> None:
        if self.closed:
            self._drop("dropped_closed")
            return
        dst = message.dst
        if dst not in self._peers:
            self._drop("dropped_no_peer")
            return
        net = self.network
        if not net.can_reach(self.node_id, dst):
            self._drop("dropped_partition")
            return
        if net.drop_rate > 0.0 and net.rng.random() < net.drop_rate:
            self._drop("dropped_random")
            return
        target = net._lookup(dst)
        if target is None or target._loop is None or target.closed:
            # Like a DEALER with IMMEDIATE=1 towards a peer that is down.
            self._drop("dropped_unreachable")
            return
        if net.codec_round_trip:
            data = codec.encode(message)  # a local bug: let CodecError reach the caller
            self._stats["bytes_sent"] += len(data)
            payload: Message | bytes = data
        else:
            payload = message
        self._stats["sent"] += 1
        self._schedule(target, payload)

    def _schedule(self, target: MemoryTransport, payload: Message | bytes) -> None:
        loop = target._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.call_soon(target._deliver, self.node_id, payload)
        else:  # a test driving nodes from another thread
            loop.call_soon_threadsafe(target._deliver, self.node_id, payload)

    def _deliver(self, src: NodeId, payload: Message | bytes) -> None:
        # Checked again on arrival: a partition, isolation or close that happened
        # while the message was "in flight" cuts it too, so a test that
        # partitions and then asserts sees no stragglers.
        if self.closed or self._handler is None or self.network._lookup(self.node_id) is not self:
            self._drop("dropped_closed")
            return
        if not self.network.can_reach(src, self.node_id):
            self._drop("dropped_partition")
            return
        if isinstance(payload, bytes):
            self._stats["bytes_received"] += len(payload)
            try:
                message = codec.decode(payload)
            except codec.CodecError:  # cannot happen for our own encoding; keep the contract anyway
                self._stats["decode_errors"] += 1
                log.exception("memtransport %s: undecodable message from %s", self.node_id, src)
                return
        else:
            message = payload
        self._stats["received"] += 1
        try:
            self._handler(message)
        except Exception:
            # Same contract as the ZeroMQ reader: a handler bug is logged and
            # counted, and the node keeps receiving.
            self._stats["handler_errors"] += 1
            log.exception(
                "memtransport %s: handler failed on %s", self.node_id, type(message).__name__
            )

    def _drop(self, reason: str) -> None:
        self._stats["dropped"] += 1
        self._stats[reason] += 1

    def stats(self) -> dict[str, int]:
        out = dict.fromkeys(("sent", "received", "dropped", "decode_errors", "handler_errors"), 0)
        out.update(self._stats)
        out["peers"] = len(self._peers)
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.network._detach(self)
