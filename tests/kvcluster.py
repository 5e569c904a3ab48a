"""Start consensus/kvserver.py nodes as real OS processes on loopback, for the
real-process tests (and the consensus benchmark)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from consensus.kvclient import KVClient


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class KVCluster:
    def __init__(
        self, root: Path, size: int = 3, memory: bool = False, extra_args: list[str] | None = None
    ) -> None:
        self.root = root
        self.ids = [f"n{i + 1}" for i in range(size)]
        ports = free_ports(2 * size)
        self.raft = {n: f"127.0.0.1:{ports[i]}" for i, n in enumerate(self.ids)}
        self.rpc = {n: f"127.0.0.1:{ports[size + i]}" for i, n in enumerate(self.ids)}
        self.memory = memory
        self.extra_args = extra_args or []
        self.procs: dict[str, subprocess.Popen] = {}

    def members_arg(self) -> str:
        return ",".join(f"{n}={a}" for n, a in self.raft.items())

    def start(self, node: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "consensus.kvserver",
            "--id",
            node,
            "--members",
            self.members_arg(),
            "--rpc",
            self.rpc[node],
            "--log-level",
            "INFO",
        ]
        cmd += ["--memory"] if self.memory else ["--data-dir", str(self.root / node)]
        cmd += self.extra_args
        log = open(self.root / f"{node}.log", "ab")  # noqa: SIM115 - the child process holds it
        self.procs[node] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}
        )

    def start_all(self) -> None:
        for node in self.ids:
            self.start(node)

    def kill(self, node: str) -> None:
        """kill -9: no clean shutdown, whatever was not fsynced may be lost."""
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def client(self, timeout: float = 5.0) -> KVClient:
        return KVClient([self.rpc[n] for n in self.ids], timeout=timeout)

    def index_of(self, node: str) -> int:
        return self.ids.index(node)

    async def wait_for_leader(
        self, client: KVClient, among: list[str] | None = None, timeout: float = 20.0
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in among or list(self.procs):
                try:
                    status = await client.status(self.index_of(node), timeout=0.5)
                except TimeoutError:
                    continue
                if status["role"] == "leader":
                    return node
            await asyncio.sleep(0.05)
        raise AssertionError(f"no leader within {timeout} s; logs in {self.root}")
