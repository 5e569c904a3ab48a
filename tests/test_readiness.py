"""/readyz means ready: a client that waits for a node's 200 and then logs in is never
told "initialising" (the accounts come a moment after the first election); /healthz is
liveness only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.nodecluster import ADMIN_PASSWORD, NodeCluster

pytestmark = pytest.mark.e2e


def test_a_login_right_after_readiness_succeeds_on_every_node(tmp_path: Path) -> None:
    cluster = NodeCluster(tmp_path)
    cluster.start_all()
    try:
        pending = set(cluster.ids)
        alive: set[str] = set()
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, f"never ready: {pending}"
            for node in sorted(pending):
                try:
                    health, _ = cluster.request(node, "GET", "/healthz", timeout=0.5, token="")
                    status, view = cluster.request(node, "GET", "/readyz", timeout=0.5, token="")
                except OSError:
                    continue  # not listening yet
                if health == 200:
                    alive.add(node)
                if status != 200:
                    assert view["ready"] is False
                    continue
                assert view["leader"] and view["accounts"] is True and "models" in view
                # at once, as a load balancer's client would
                login = {"username": "admin", "password": ADMIN_PASSWORD}
                code, body = cluster.request(node, "POST", "/api/v1/auth/token", login, token="")
                assert code == 200, (node, body)
                pending.discard(node)
            time.sleep(0.02)
        assert alive == set(cluster.ids)
    finally:
        cluster.stop_all()
