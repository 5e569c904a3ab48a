"""Clients of the REST API, failing over between nodes: rest.py (blocking, for the
CLI) and aio.py (asyncio, shared by the terminal UI and the dashboard).

May import: node.replica.vocabulary, node.http.idempotency (the header's name and
key format).  Never consensus/ or the server side.
"""
