"""Gossip over real ZeroMQ sockets: three OS processes (node/gossip/demo.py) on
loopback, kill -9 and restart; and CURVE between in-process nodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from consensus.zmq_transport import CurveKeys, generate_cluster_keys
from node.gossip.core import SwimConfig
from node.gossip.driver import Gossip

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class DemoCluster:
    def __init__(self, root: Path, ids: list[str]) -> None:
        self.root = root
        self.ids = ids
        self.ports = dict(zip(ids, free_ports(len(ids))))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def addr(self, node: str) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def out(self, node: str) -> Path:
        return self.root / f"{node}.json"

    def start(self, node: str) -> None:
        self.out(node).unlink(missing_ok=True)
        seeds = ",".join(f"{n}={self.addr(n)}" for n in self.ids if n != node)
        log = open(self.root / f"{node}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.gossip.demo",
                "--id",
                node,
                "--bind",
                self.addr(node),
                "--seeds",
                seeds,
                "--out",
                str(self.out(node)),
                "--interval",
                "0.05",
                "--slots",
                "2",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def terminate(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for node in list(self.procs):
            self.terminate(node)

    def table(self, node: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.out(node).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def status(self, observer: str, about: str) -> str | None:
        table = self.table(observer)
        member = table["members"].get(about) if table else None
        return member["status"] if member else None

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )


def wait_for(predicate, timeout: float, what: str, cluster: DemoCluster) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            tables = {n: cluster.table(n) for n in cluster.ids}
            pytest.fail(
                f"{what}: not within {timeout} s\n{json.dumps(tables, indent=1)[:4000]}\n{cluster.logs()}"
            )
        time.sleep(0.02)
    return time.monotonic() - start


def test_three_processes_detect_kill_and_restart(tmp_path: Path) -> None:
    ids = ["n1", "n2", "n3"]
    cluster = DemoCluster(tmp_path, ids)
    try:
        for node in ids:
            cluster.start(node)

        def all_alive_with_meta(observers: list[str]) -> bool:
            for obs in observers:
                table = cluster.table(obs)
                if table is None or sorted(table["members"]) != ids:
                    return False
                for m in table["members"].values():
                    meta = m["meta"]
                    if (
                        m["status"] != "alive"
                        or not {"cpu_percent", "mem_used", "mem_total", "version"} <= meta.keys()
                    ):
                        return False
            return True

        took = wait_for(lambda: all_alive_with_meta(ids), 10, "all alive with metadata", cluster)
        print(f"\n3 processes: all alive with metadata {took:.2f} s after the start")
        meta = cluster.table("n1")["members"]["n2"]["meta"]
        assert meta["mem_total"] > 0 and meta["slots_total"] == 2 and meta["version"]

        time.sleep(1.0)  # let the meta refreshes and probe rotations settle in
        old_incarnation = cluster.table("n1")["members"]["n3"]["incarnation"]
        kill_ms = time.monotonic_ns() // 1_000_000
        cluster.kill("n3")
        killed = time.monotonic()
        seen: dict[str, float] = {}

        def both_dead() -> bool:
            for obs in ("n1", "n2"):
                if obs not in seen and cluster.status(obs, "n3") == "dead":
                    seen[obs] = time.monotonic() - killed
            return len(seen) == 2

        wait_for(both_dead, 8, "n3 dead at both survivors", cluster)
        bound = SwimConfig().detection_bound_ms(3) / 1000
        for obs, elapsed in sorted(seen.items()):
            since = cluster.table(obs)["members"]["n3"]["status_since_ms"] - kill_ms
            print(
                f"kill -9 n3 -> dead at {obs}: {elapsed:.2f} s observed ({since} ms by its clock); bound {bound:.1f} s"
            )
        assert max(seen.values()) < 6.0
        for obs in ("n1", "n2"):
            assert cluster.status(obs, "n2" if obs == "n1" else "n1") == "alive"

        cluster.start("n3")
        restarted = time.monotonic()

        def back() -> bool:
            if not all_alive_with_meta(ids):
                return False
            return all(
                cluster.table(obs)["members"]["n3"]["incarnation"] > old_incarnation
                for obs in ("n1", "n2")
            )

        wait_for(back, 8, "n3 alive again everywhere", cluster)
        print(f"restarted n3 alive everywhere {time.monotonic() - restarted:.2f} s after its start")

        cluster.terminate("n1")  # graceful: the others hear goodbye, not silence
        wait_for(
            lambda: cluster.status("n2", "n1") == "left" and cluster.status("n3", "n1") == "left",
            3,
            "n1 left",
            cluster,
        )
        for obs in ("n2", "n3"):
            stats = cluster.table(obs)["stats"]
            assert stats["decode_errors"] == 0 and stats["spoofed"] == 0
    finally:
        cluster.stop_all()


def test_curve_members_gossip_and_outsiders_are_shut_out() -> None:
    keys = CurveKeys.cluster(*generate_cluster_keys())
    stranger = CurveKeys.cluster(*generate_cluster_keys())
    ports = free_ports(3)
    addr = {f"c{i}": f"tcp://127.0.0.1:{p}" for i, p in enumerate(ports)}

    def meta() -> dict[str, Any]:
        return {"version": "test"}

    async def main() -> None:
        nodes = [
            Gossip(
                f"c{i}",
                addr[f"c{i}"],
                {n: a for n, a in addr.items() if n != f"c{i}"},
                meta,
                curve=stranger if i == 2 else keys,
            )
            for i in range(3)
        ]
        for node in nodes:
            await node.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                views = [n.members() for n in nodes[:2]]
                if all(
                    v.get(o) is not None and v[o].status.value == "alive"
                    for v, o in zip(views, ["c1", "c0"])
                ):
                    break
                await asyncio.sleep(0.05)
            assert nodes[0].members()["c1"].status.value == "alive"
            assert nodes[1].members()["c0"].status.value == "alive"
            assert nodes[0].members()["c1"].meta == {"version": "test"}
            await asyncio.sleep(2.6)  # past the suspicion timeout for never-heard seeds
            for node in nodes[:2]:
                assert node.members()["c2"].status.value == "dead"  # it never got in
                assert node.members()["c2"].incarnation == 0
            assert set(nodes[2].members()) == {"c0", "c1", "c2"}
            assert all(m.incarnation == 0 for n, m in nodes[2].members().items() if n != "c2")
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(main())


class _FakeNvml(types.ModuleType):
    """Stands in for pynvml: `devices` GPUs, `init_error` raised by nvmlInit, and
    every query failing once `gone` is set (a GPU that fell off the bus)."""

    def __init__(self, devices: int = 1, init_error: Exception | None = None) -> None:
        super().__init__("pynvml")
        self.devices, self.init_error, self.gone = devices, init_error, False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def _query(self, value: Any) -> Any:
        if self.gone:
            raise RuntimeError("GPU is lost")
        return value

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return self._query(types.SimpleNamespace(gpu=40))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return self._query(types.SimpleNamespace(used=1 << 30, total=8 << 30))

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._query(b"Fake GPU")


GPU_FIELDS = {"gpus", "gpu_util_percent", "gpu_mem_used", "gpu_mem_total"}


def test_no_gpu_degrades_gracefully(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way of having no GPU (switched off, no nvidia-ml-py, no driver, no
    device, a GPU lost while running) gives a full sample without the GPU fields,
    whatever GPU this machine has; a GPU that is there does give them."""
    from node.gossip.metrics import NodeMetrics

    def runtime() -> dict[str, Any]:
        return {"slots_used": 1, "running": [{"id": "t", "progress": 0.5}]}

    def check_sample(sample: dict[str, Any]) -> None:
        assert sample["mem_total"] > 0 and 0 <= sample["cpu_percent"] <= 100 * os.cpu_count()
        assert sample["running"] == [{"id": "t", "progress": 0.5}] and sample["slots_used"] == 1

    no_gpu: dict[str, tuple[types.ModuleType | None, bool]] = {
        "switched off": (_FakeNvml(), False),
        "no nvidia-ml-py": (None, True),  # None in sys.modules: `import pynvml` raises ImportError
        "no driver": (_FakeNvml(init_error=RuntimeError("NVML Shared Library Not Found")), True),
        "no device": (_FakeNvml(devices=0), True),
    }
    for case, (module, gpu) in no_gpu.items():
        monkeypatch.setitem(sys.modules, "pynvml", module)
        metrics = NodeMetrics(runtime, gpu=gpu)
        assert not metrics.has_gpu, case
        sample = metrics()
        check_sample(sample)
        assert not GPU_FIELDS & sample.keys(), (case, sample)

    nvml = _FakeNvml(devices=2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    metrics = NodeMetrics(runtime)
    assert metrics.has_gpu
    sample = metrics()
    check_sample(sample)
    assert [g["name"] for g in sample["gpus"]] == ["Fake GPU", "Fake GPU"]
    assert sample["gpu_util_percent"] == 40.0 and sample["gpu_mem_total"] == 16 << 30
    nvml.gone = True
    for _ in range(2):  # the first failure turns GPU sampling off for good, quietly
        sample = metrics()
        check_sample(sample)
        assert not GPU_FIELDS & sample.keys() and not metrics.has_gpu, sample
