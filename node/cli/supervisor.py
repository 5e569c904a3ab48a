"""Keeping the nodes of `ragraft up` running.

A node that exits unexpectedly is reported (its exit code or signal and the last
lines of its log) and, with `[launcher] restart = "on-failure"` (the default), started
again after a backoff that doubles (1 s, 2 s, ... 30 s); the other nodes go on serving
meanwhile.  A node that keeps failing soon after its start is given up on after
`max_restarts` tries, with a message saying where its log is; a run that lasts
STABLE_S forgives its earlier failures.  Only the launcher's own stop (Ctrl-C, SIGTERM)
stops the nodes, gracefully.  Each node dies with the launcher (PR_SET_PDEATHSIG), so a
launcher killed outright leaves no node behind holding the ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.config import ClusterConfig, NodeSpec

STABLE_S = 60.0  # a run at least this long resets the count of failed starts
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
LOG_TAIL_LINES = 8

Say = Callable[[str], None]


# Run first in a child, then exec'd into the command: PR_SET_PDEATHSIG (kept across
# exec) signals the command when its parent dies, however the parent dies.  A wrapper
# rather than preexec_fn, which is unsafe in a process that may run threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "if sys.platform.startswith('linux'): ctypes.CDLL(None).prctl(1, int(sys.argv[2]))\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('ragraft: the parent process is gone')\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def dying_with_parent(argv: list[str], signum: int = signal.SIGTERM) -> list[str]:
    """`argv`, run so that it gets `signum` when this process dies."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), str(int(signum)), *argv]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


@dataclass
class Supervised:
    spec: NodeSpec
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # failed starts in a row (a run of STABLE_S resets it)
    restarts: int = 0  # restarts since the launcher started
    restart_at: float | None = None  # a restart is due at this time.monotonic()
    given_up: bool = False
    exits: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.given_up:
            return "given up"
        if self.restart_at is not None:
            return f"restarting in {max(0.0, self.restart_at - time.monotonic()):.0f} s"
        return "stopped"


class Supervisor:
    def __init__(
        self,
        config: ClusterConfig,
        logs_dir: Path,
        restart: bool,
        max_restarts: int,
        say: Say,
        warn: Say,
    ) -> None:
        self.config = config
        self.restart = restart
        self.max_restarts = max_restarts
        self.say, self.warn = say, warn
        self.nodes = {
            spec.id: Supervised(spec, logs_dir / f"{spec.id}.log") for spec in config.nodes
        }
        self.stopping = False
        self.backoff = BACKOFF_S

    def start_all(self) -> None:
        for node in self.nodes.values():
            self._start(node)
            assert node.proc is not None
            self.say(f"  {node.spec.id}: pid {node.proc.pid}, log {node.log_path}")

    def command(self, node: Supervised) -> list[str]:
        # the node gets SIGTERM when the launcher dies: it stops gracefully
        return dying_with_parent(
            [
                sys.executable,
                "-m",
                "node.cli.main",
                "node",
                "--config",
                str(self.config.path),
                "--id",
                node.spec.id,
            ]
        )

    def _start(self, node: Supervised) -> None:
        with open(node.log_path, "ab") as log:  # the child keeps its own descriptor
            node.proc = subprocess.Popen(self.command(node), stdout=log, stderr=subprocess.STDOUT)
        node.started_at = time.monotonic()
        node.restart_at = None

    def check(self) -> None:
        """Notice exits, schedule and make restarts; call it often."""
        now = time.monotonic()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None and not self.stopping:
                self._exited(node, now)
            elif node.restart_at is not None and now >= node.restart_at and not self.stopping:
                self._start(node)
                node.restarts += 1
                assert node.proc is not None
                self.say(
                    f"  {node.spec.id}: restarted (pid {node.proc.pid}, restart {node.restarts})"
                )
            elif node.running and node.failures and now - node.started_at >= STABLE_S:
                node.failures = 0

    def _exited(self, node: Supervised, now: float) -> None:
        assert node.proc is not None
        code = node.proc.returncode
        node.proc = None
        uptime = now - node.started_at
        how = describe_exit(code)
        node.exits.append(how)
        self.warn(f"node {node.spec.id} {how} after {uptime:.0f} s; last lines of {node.log_path}:")
        for line in log_tail(node.log_path):
            self.warn(f"    | {line}")
        if not self.restart:
            self.warn(f"  not restarting {node.spec.id}: restart = never (or --no-restart)")
            node.given_up = True
            return
        node.failures = node.failures + 1 if uptime < STABLE_S else 1
        if node.failures > self.max_restarts:
            node.given_up = True
            self.warn(
                f"  giving up on {node.spec.id}: it failed {node.failures} times in a row, each "
                f"within {STABLE_S:.0f} s of its start; fix what its log says, then restart "
                f"the cluster (or `ragraft node --id {node.spec.id}`)"
            )
            return
        delay = self.backoff[min(node.failures - 1, len(self.backoff) - 1)]
        node.restart_at = now + delay
        self.warn(
            f"  restarting {node.spec.id} in {delay:.0f} s (try {node.failures} of "
            f"{self.max_restarts}); the other nodes keep serving"
        )

    def alive(self) -> bool:
        """Whether any node runs or will be restarted."""
        return any(n.running or n.restart_at is not None for n in self.nodes.values())

    def gave_up(self) -> list[str]:
        return [n.spec.id for n in self.nodes.values() if n.given_up]

    def stop_all(self, grace: float) -> None:
        """SIGTERM to every node (they hand their running tasks back), SIGKILL to any
        still there after `grace` seconds."""
        self.stopping = True
        running = [n for n in self.nodes.values() if n.running]
        for node in running:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace  # one deadline: they stop side by side
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
                self.warn(
                    f"node {node.spec.id} did not stop within {grace:.0f} s of SIGTERM and was "
                    f"killed; its log ({node.log_path}) says which part was slow"
                )
