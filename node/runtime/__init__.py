"""One node process: main.py wires the replica, the executor, gossip, the API and
the dashboard together and runs them (the composition root: the only place that
builds the Raft driver).
"""
