"""Raft over real ZeroMQ sockets between real OS processes (consensus/kvserver.py),
with durable file stores and kill -9."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.kvcluster import KVCluster

pytestmark = pytest.mark.e2e

RECOVERY_BOUND_S = 6.0  # well below the driver's 10 s proposal timeout


async def _load(
    cluster: KVCluster,
    client,
    live: list[str],
    stop: asyncio.Event,
    acked: dict,
    issued: dict,
    worker: int,
) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        key = f"w{worker}-{seq}"
        node = live[(worker + seq) % len(live)]
        issued[key] = time.monotonic()
        try:
            await client.put(key, b"x" * 100, server=cluster.index_of(node), attempts=4)
        except TimeoutError:
            continue
        acked[key] = time.monotonic()


def test_kill_leader_under_load_loses_nothing_and_recovers_fast(tmp_path):
    cluster = KVCluster(tmp_path)
    cluster.start_all()

    async def main():
        client = cluster.client(timeout=3.0)
        try:
            leader = await cluster.wait_for_leader(client)
            live = list(cluster.ids)
            stop = asyncio.Event()
            acked: dict[str, float] = {}
            issued: dict[str, float] = {}
            workers = [
                asyncio.create_task(_load(cluster, client, live, stop, acked, issued, w))
                for w in range(8)
            ]
            await asyncio.sleep(1.5)
            before_kill = len(acked)
            cluster.kill(leader)
            killed_at = time.monotonic()
            live.remove(leader)  # the workers now send to the survivors only
            await asyncio.sleep(5.0)
            stop.set()
            await asyncio.gather(*workers)

            assert before_kill > 50, f"only {before_kill} puts before the kill"
            after = [acked[k] for k in acked if issued[k] > killed_at]
            assert after, "no put succeeded after the leader was killed"
            recovery = min(after) - killed_at
            print(
                f"\nleader {leader} killed; first put issued after the kill acknowledged in {recovery * 1000:.0f} ms"
            )
            # The figure itself is measured in bench/cluster.py.  What this checks is
            # the mechanism: held proposals go to the new leader (re-proposal) or fail
            # over to another node well before the 10 s proposal timeout.  The bound
            # leaves room for a split vote and one 3 s client timeout on a put that
            # failed over to the dead node, on a loaded 2-core CI machine (3.0 s seen).
            assert recovery < RECOVERY_BOUND_S, (
                f"no put acknowledged within {RECOVERY_BOUND_S} s of the kill "
                f"({len(after)} acknowledged later)"
            )

            new_leader = await cluster.wait_for_leader(client, among=live)
            assert new_leader != leader
            for node in live:
                keys = set((await client.call(cluster.index_of(node), "keys", {}))["keys"])
                missing = set(acked) - keys
                assert not missing, (
                    f"{node} lost {len(missing)} acknowledged puts, e.g. {sorted(missing)[:3]}"
                )

            # the killed leader restarts from its data dir and catches up
            cluster.start(leader)
            await asyncio.sleep(0.5)
            keys = set(
                (await client.call(cluster.index_of(leader), "keys", {}, timeout=10))["keys"]
            )
            assert set(acked) <= keys
        finally:
            client.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        cluster.stop_all()


def test_restarted_follower_catches_up_through_snapshot(tmp_path):
    cluster = KVCluster(tmp_path, extra_args=["--snapshot-entries", "100"])
    cluster.start_all()

    async def main():
        client = cluster.client(timeout=5.0)
        try:
            leader = await cluster.wait_for_leader(client)
            follower = next(n for n in cluster.ids if n != leader)
            await client.put("early", b"1", server=cluster.index_of(leader))
            cluster.kill(follower)
            lead = cluster.index_of(leader)
            await asyncio.gather(
                *(client.put(f"k{i}", b"v" * 100, server=lead) for i in range(1000))
            )
            status = await client.status(lead)
            assert status["snapshot_index"] > 0, "the leader should have compacted its log"
            cluster.start(follower)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    s = await client.status(cluster.index_of(follower), timeout=0.5)
                    if s["applied"] >= status["commit"]:
                        break
                except TimeoutError:
                    pass
                await asyncio.sleep(0.1)
            s = await client.status(cluster.index_of(follower))
            assert s["raft_stats"]["snapshots_installed"] >= 1
            keys = set((await client.call(cluster.index_of(follower), "keys", {}))["keys"])
            assert {"early", *(f"k{i}" for i in range(1000))} <= keys
        finally:
            client.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        cluster.stop_all()
