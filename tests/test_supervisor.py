"""node/cli/supervisor.py on real child processes: an exit is reported with the end of
the node's log and restarted with backoff; a crash loop is given up on; "never" leaves
the node down; a stop reaches every child."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from node.cli.supervisor import Supervised, Supervisor, describe_exit, log_tail
from node.config import parse

NODES = [{"id": f"n{i}", "host": "127.0.0.1", "raft_port": 7100 + i, "gossip_port": 7200 + i,
          "api_port": 8100 + i, "dashboard_port": 8300 + i} for i in (1, 2)]  # fmt: skip


class Scripted(Supervisor):
    """Runs a small Python program per node instead of a node."""

    def __init__(self, tmp_path: Path, programs: dict[str, str], **kwargs: object) -> None:
        config = parse({"cluster": {"name": "s"}, "nodes": NODES}, tmp_path / "c.toml", {})
        self.said: list[str] = []
        super().__init__(
            config,
            tmp_path,
            say=self.said.append,
            warn=self.said.append,
            **kwargs,  # type: ignore[arg-type]
        )
        self.programs = programs
        self.backoff = (0.1, 0.2)

    def command(self, node: Supervised) -> list[str]:
        return [sys.executable, "-c", self.programs[node.spec.id]]


def run_until(sup: Supervisor, done, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, sup.said if hasattr(sup, "said") else None
        sup.check()
        time.sleep(0.05)


FAILS = "import sys; print('cannot listen on 8101: in use', flush=True); sys.exit(3)"
SERVES = "import time; time.sleep(60)"


def test_a_node_that_keeps_failing_is_restarted_with_backoff_then_given_up_on(
    tmp_path: Path,
) -> None:
    sup = Scripted(tmp_path, {"n1": FAILS, "n2": SERVES}, restart=True, max_restarts=3)
    sup.start_all()
    try:
        run_until(sup, lambda: "n1" in sup.gave_up())
        text = "\n".join(sup.said)
        assert "node n1 exited with code 3" in text
        assert "| cannot listen on 8101: in use" in text  # the end of its log
        assert text.count("restarting n1 in") == 3 and "giving up on n1" in text
        assert sup.nodes["n1"].restarts == 3
        assert sup.nodes["n2"].running and sup.alive()  # the other one went on
    finally:
        sup.stop_all(5)
    assert not sup.nodes["n2"].running


def test_never_leaves_a_killed_node_down(tmp_path: Path) -> None:
    sup = Scripted(tmp_path, {"n1": SERVES, "n2": SERVES}, restart=False, max_restarts=5)
    sup.start_all()
    try:
        proc = sup.nodes["n1"].proc
        assert proc is not None
        proc.kill()
        run_until(sup, lambda: sup.nodes["n1"].given_up)
        assert any("killed by SIGKILL" in line for line in sup.said)
        assert any("not restarting n1" in line for line in sup.said)
        assert sup.nodes["n1"].restarts == 0 and sup.nodes["n2"].running
    finally:
        sup.stop_all(5)


def test_exits_and_logs_are_described() -> None:
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(2) == "exited with code 2"
    assert log_tail(Path("/nonexistent")) == []
