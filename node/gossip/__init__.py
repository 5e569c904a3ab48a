"""SWIM gossip: who is alive, and each node's metrics (CPU, memory, GPU, slots,
running tasks, version).

core.py is the pure state machine, messages.py and codec.py its wire format,
driver.py runs it over ZeroMQ on asyncio, metrics.py gathers a node's metadata,
demo.py is a tiny standalone runner.  Gossip decides liveness and spreads
metrics; Raft membership stays the source of truth for voting.
"""

from node.gossip.core import Event, Member, Out, Swim, SwimConfig
from node.gossip.messages import Status

__all__ = ["Event", "Member", "Out", "Status", "Swim", "SwimConfig"]
