"""R10: finished tasks expire and snapshots compact the log, so under a steady
load a node's data directory stops growing."""

from __future__ import annotations

import time

import pytest

from tests.nodecluster import NodeCluster

pytestmark = pytest.mark.e2e


def dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_data_directory_levels_off_under_steady_load(tmp_path):
    cluster = NodeCluster(
        tmp_path,
        extra_toml=(
            "[raft]\nsnapshot_entries = 300\nsegment_bytes = 65536\n"
            "[tasks]\nslots = 2\nretention_seconds = 2\nsweep_seconds = 1\n"
        ),
    )
    cluster.start_all()
    try:
        cluster.wait_ready()
        data = tmp_path / "data" / "n1"
        sizes, totals = [], []
        start = time.monotonic()
        submitted = 0
        while time.monotonic() - start < 24:
            for _ in range(10):
                status, _ = cluster.request(
                    cluster.ids[submitted % 3],
                    "POST",
                    "/api/v1/tasks",
                    {"type": "noop", "input": {"duration_ms": 0}},
                )
                assert status == 201
                submitted += 1
            time.sleep(0.2)
            if int(time.monotonic() - start) % 3 == 0:
                sizes.append(dir_size(data))
                totals.append(cluster.request("n1", "GET", "/api/v1/tasks?limit=1")[1]["total"])
        third = len(sizes) // 3
        early, late = max(sizes[third : 2 * third]), max(sizes[2 * third :])
        print(
            f"\n{submitted} tasks submitted; data dir sizes (KiB): {[s // 1024 for s in sizes]}; "
            f"tasks kept: {totals}"
        )
        assert submitted > 300
        assert late <= early * 1.5, f"data dir still growing: {early} -> {late} bytes"
        assert max(totals[third:]) < submitted / 3, "finished tasks are not being expired"
    finally:
        cluster.stop_all()
