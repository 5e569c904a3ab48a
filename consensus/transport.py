"""How Raft messages travel between nodes.

The driver hands outgoing messages to `send` (never blocking, never raising for
an unreachable peer: Raft retries on its own) and receives incoming ones through
the handler it registers.  Implementations:

- consensus/zmq_transport.py: asyncio pyzmq, msgpack frames, optional CURVE.
- consensus/memtransport.py: in-process, with partition/heal/drop for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from consensus.messages import Message
from consensus.types import NodeId

MessageHandler = Callable[[Message], None]


class Transport(Protocol):
    async def start(self, handler: MessageHandler) -> None:
        """Bind/connect and start delivering incoming messages to `handler`."""

    def set_peers(self, addresses: Mapping[NodeId, str]) -> None:
        """The current members and their addresses (changes with membership)."""

    def send(self, message: Message) -> None:
        """Queue `message` for `message.dst`; drops it if the peer is unknown,
        gone or too slow (counted in stats())."""

    def stats(self) -> dict[str, int]:
        """Counters: sent, received, dropped, decode errors, ..."""

    async def close(self) -> None:
        """Stop at once; pending messages are discarded (LINGER=0)."""
