"""One nemesis run: namespaces, nodes, workload clients, the fault schedule, the final
state, the checker, and the artifacts (history.jsonl, final-state.json, report.json,
report.txt, logs/nN.log) under artifacts/nemesis/."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.nemesis import checker, schedule
from tests.nemesis.client import ClientSettings, Probes, WorkloadClient
from tests.nemesis.cluster import GOSSIP_PORT, RAFT_PORT, NemesisCluster
from tests.nemesis.faults import Faults
from tests.nemesis.history import History
from tests.nemesis.netns import Network, netem_available
from tests.nemesis.schedule import Fault

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "nemesis"


@dataclass
class RunConfig:
    seed: int = 1
    minutes: float | None = None  # None: the bounded schedule (every fault kind once)
    out_dir: Path = ARTIFACTS
    nodes: int = 3
    clients: int = 4
    warmup_s: float = 3.0
    quiet_s: float = 8.0  # after the final heal, clients still running
    drain_s: float = 45.0  # then until every task is terminal
    keep_data: bool = False
    client: ClientSettings = field(default_factory=ClientSettings)
    extra_toml: str = "[tasks]\nslots = 2\n"


class Run:
    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self._print = log
        self.t0 = time.monotonic()
        self.net = Network(cfg.nodes)
        self.cluster: NemesisCluster | None = None
        self.history: History | None = None
        self.faults: Faults | None = None
        self.probes: Probes | None = None
        self.clients: list[WorkloadClient] = []
        self.stop_clients = threading.Event()
        self.probe_threads: list[threading.Thread] = []
        self.crashes_seen: set[tuple[str, int]] = set()
        self.rng = random.Random(cfg.seed)
        self.netem = False

    def log(self, message: str) -> None:
        self._print(f"[{time.monotonic() - self.t0:7.1f}s] {message}")

    # ------------------------------------------------------------ the run
    def execute(self) -> dict:
        cfg = self.cfg
        out = cfg.out_dir
        out.mkdir(parents=True, exist_ok=True)
        for name in ("history.jsonl", "final-state.json", "report.json", "report.txt"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "logs", ignore_errors=True)
        data = Path(tempfile.mkdtemp(prefix="ragraft-nemesis-"))
        started = time.time()
        final: dict[str, dict[str, dict]] = {}
        self.net.setup()  # raises NetnsUnavailable: the test fails, it does not skip
        try:
            self.netem = netem_available(self.net)
            self.log(
                f"namespaces {sorted(self.net.ns.values())} + rgbr up; addresses {self.net.ip}; "
                f"netem {'available' if self.netem else 'not in this kernel'}"
            )
            self.history = History(out / "history.jsonl")
            self.cluster = NemesisCluster(self.net, data, out / "logs", cfg.extra_toml)
            self.faults = Faults(self.net, RAFT_PORT, GOSSIP_PORT)
            self.probes = Probes(self.cluster.http, self.history)
            self.cluster.start_all()
            leader = self.cluster.wait_ready(timeout=60)
            self.log(f"cluster ready, leader {leader}")
            plan: Iterable[Fault]
            if cfg.minutes is None:
                plan = schedule.bounded(cfg.seed, self.net.nodes, self.netem)
                self.history.nemesis(
                    "schedule",
                    seed=cfg.seed,
                    mode="bounded",
                    faults=[f.to_dict() for f in plan],
                    netem=self.netem,
                )
            else:
                plan = schedule.soak(cfg.seed, self.net.nodes, self.netem)
                self.history.nemesis(
                    "schedule", seed=cfg.seed, mode="soak", minutes=cfg.minutes, netem=self.netem
                )
            self._start_clients()
            time.sleep(cfg.warmup_s)
            deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes is not None else None
            for fault in plan:
                if deadline is not None and time.monotonic() + fault.duration > deadline:
                    break
                self._fault(fault)
            self._finish()
            final = self._final_state()
        finally:
            self.stop_clients.set()
            if self.cluster is not None:
                self.cluster.stop_all()
            self.net.teardown()  # the faults live in the namespaces: they go with them
            if not cfg.keep_data:
                shutil.rmtree(data, ignore_errors=True)
            for thread in self.probe_threads:
                thread.join(15)
            if self.history is not None:
                self.history.close()
        (out / "final-state.json").write_text(json.dumps(final))
        report = checker.check(self.history.entries, final)
        report["run"] = {
            "seed": cfg.seed,
            "mode": "bounded" if cfg.minutes is None else f"soak {cfg.minutes} min",
            "nodes": self.net.nodes,
            "addresses": self.net.ip,
            "clients": cfg.clients,
            "netem": self.netem,
            "wall_s": round(time.time() - started, 1),
            "client_errors": [repr(c.error) for c in self.clients if c.error is not None],
        }
        write_report(report, out)
        self.log(
            f"done in {report['run']['wall_s']} s: {'OK' if report['ok'] else 'VIOLATIONS'} "
            f"{report['violation_counts']}"
        )
        return report

    def _start_clients(self) -> None:
        nodes = self.net.nodes
        for i in range(self.cfg.clients):
            client = WorkloadClient(
                f"c{i + 1}",
                nodes[i % len(nodes)],
                nodes,
                self.cluster.http,
                self.history,
                self.cfg.seed * 1000 + i,
                self.stop_clients,
                self.cfg.client,
            )
            client.start()
            self.clients.append(client)

    # ------------------------------------------------------------ one fault
    def _leader(self, wait: float = 5.0) -> str:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            leader = self.cluster.leader()
            if leader is not None:
                return leader
            time.sleep(0.2)
        return self.rng.choice(self.net.nodes)

    def _fault(self, fault: Fault) -> None:
        cluster, faults, history = self.cluster, self.faults, self.history
        nodes = self.net.nodes
        kind, params = fault.kind, fault.params
        leader = self._leader()
        cut_off: list[str] = []
        targets: list[str] = []
        killed_at = None
        if kind == "isolate-leader":
            targets = cut_off = [leader]
            faults.isolate(leader)
        elif kind == "split":
            minority = params["minority"]
            targets = cut_off = list(minority)
            faults.partition([minority, [n for n in nodes if n not in minority]])
        elif kind == "one-way":
            others = [n for n in nodes if n != leader]
            targets = cut_off = [leader]
            if params["orientation"] == "mute":
                faults.one_way(leader, others)
            else:
                for other in others:
                    faults.one_way(other, [leader])
        elif kind == "loss":
            faults.loss(params["p"])
        elif kind == "bandwidth":
            faults.bandwidth(params["kbit"])
        elif kind == "delay":
            faults.delay(params["ms"], params.get("jitter_ms", 0))
        elif kind in ("pause", "kill"):
            target = leader if params["target"] == "leader" else params["target"]
            targets = [target]
            if kind == "pause":
                cluster.pause(target)
            else:
                cluster.kill(target)
                killed_at = time.time()
        else:
            raise ValueError(kind)
        applied = time.time()
        history.nemesis(
            "start",
            fault=kind,
            params=params,
            leader=leader,
            targets=targets,
            cut_off=cut_off,
            rules=list(faults.active),
            time=applied,
        )
        if killed_at is not None:
            history.nemesis("kill", node=targets[0], time=killed_at)
        self.log(f"start {kind} {params} targets={targets} (leader was {leader})")
        stop_probe = threading.Event()
        for node in cut_off:
            self.probe_threads.append(
                self.probes.cut_off(
                    node, stop_probe, interval=0.5, timeout=fault.duration + 2, fault=kind
                )
            )
        time.sleep(fault.duration)
        # heal
        if kind in ("pause",):
            cluster.resume(targets[0])
        elif kind == "kill":
            cluster.start(targets[0])
            history.nemesis("restart", node=targets[0])
        else:
            faults.heal()
        healed = time.time()
        history.nemesis("heal", fault=kind, targets=targets, time=healed)
        stop_probe.set()
        gaps = self.probes.after_heal(nodes, limit=15.0, timeout=2.0, fault=kind)
        self.log(f"heal {kind}: first write per node after heal {_fmt(gaps)}")
        if kind == "kill":
            node = targets[0]
            caught = cluster.wait_caught_up(node, timeout=20)
            try:
                ids = cluster.task_ids(node)
            except Exception as exc:  # noqa: BLE001
                ids, caught = [], False
                self.log(f"restart check of {node}: could not list tasks: {exc!r}")
            history.nemesis(
                "restart-check", node=node, killed_at=killed_at, caught_up=caught, ids=ids
            )
            self.log(f"restart check of {node}: caught up {caught}, {len(ids)} tasks")
        self._check_crashes()
        rest = fault.rest - (time.time() - healed)
        if rest > 0:
            time.sleep(rest)

    def _check_crashes(self) -> None:
        for node, code in self.cluster.crashed().items():
            tag = (node, self.cluster.starts.get(node, 0))
            if tag in self.crashes_seen:
                continue
            self.crashes_seen.add(tag)
            tail = self.cluster.log_tail(node)
            self.history.nemesis("crash", node=node, code=code, log=tail)
            self.log(f"{node} EXITED with {code}; restarting it. Log tail:\n{tail}")
            self.cluster.start(node)
            self.history.nemesis("restart", node=node, reason="crash")

    # ------------------------------------------------------------ the end
    def _finish(self) -> None:
        self.faults.heal()
        for node in list(self.cluster.paused):
            self.cluster.resume(node)
        self.history.nemesis("final-heal")
        self.log("final heal; quiet period")
        gaps = self.probes.after_heal(self.net.nodes, limit=15.0, timeout=2.0, fault="final")
        self.log(f"after the final heal: first write per node {_fmt(gaps)}")
        time.sleep(self.cfg.quiet_s)
        self._check_crashes()
        self.stop_clients.set()
        for client in self.clients:
            client.join(self.cfg.client.timeout * 2 + 5)
        self.history.nemesis("clients-stopped")
        self.log("clients stopped; waiting for every task to finish")
        deadline = time.monotonic() + self.cfg.drain_s
        busy = None
        while time.monotonic() < deadline:
            busy = self._busy()
            if busy == 0:
                break
            time.sleep(0.5)
        self.log(f"drained: {busy} tasks still queued/running")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            views = [self.cluster.status(n) for n in self.net.nodes]
            if all(views) and len({v["applied_index"] for v in views}) == 1:
                break
            time.sleep(0.2)
        self._check_crashes()

    def _busy(self) -> int | None:
        total = 0
        for node in self.net.nodes:
            try:
                reply = self.cluster.http.call(
                    node, "GET", "/api/v1/tasks?state=queued,running&limit=1", timeout=3
                )
                total += reply.body["total"]
            except Exception:  # noqa: BLE001
                return None
        return total

    def _final_state(self) -> dict[str, dict[str, dict]]:
        """Every node's tasks; a copy that differs from the others is read again (a
        lagging replica converges, a diverged one does not)."""
        final = {n: self.cluster.all_tasks(n, timeout=20) for n in self.net.nodes}
        for _ in range(3):
            differing = [n for n in self.net.nodes if final[n] != final[self.net.nodes[0]]]
            if not differing:
                break
            time.sleep(1.0)
            final = {n: self.cluster.all_tasks(n, timeout=20) for n in self.net.nodes}
        self.log(f"final state read: {', '.join(f'{n}: {len(t)} tasks' for n, t in final.items())}")
        return final


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.txt").write_text(checker.render(report))


def _fmt(gaps: dict[str, float | None]) -> str:
    return ", ".join(f"{n} {'-' if g is None else f'{g:.2f}s'}" for n, g in sorted(gaps.items()))


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    return Run(cfg, log).execute()
