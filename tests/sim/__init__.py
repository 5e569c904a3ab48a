"""Deterministic simulation of a ragraft cluster (in the spirit of TigerBeetle's
VOPR and FoundationDB's simulator): one seed drives a virtual clock, a faulty
network, crashing nodes, clients and membership changes, while tests/sim/checker.py
checks Raft's safety properties after every event.

    python -m tests.sim --seed 42 -v      # replay one seed with its trace
    python -m tests.sim --seeds 0:2000    # a range
    python -m tests.sim --soak 30         # random seeds for 30 minutes
"""

from tests.sim.world import Result, Sim, run_seed

__all__ = ["Result", "Sim", "run_seed"]
