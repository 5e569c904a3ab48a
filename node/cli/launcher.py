"""`ragraft up`: start every node of cluster.toml as its own OS process, show
progress until the cluster has a leader and every node has loaded its models, print
the URLs, then supervise: a node that exits is reported and restarted
(node/cli/supervisor.py) while the others serve; Ctrl-C or SIGTERM stops them all."""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from node.cli.supervisor import Supervisor
from node.config import ClusterConfig
from node.secrets import announced_password_file, holds_raft_state

STOP_GRACE_S = 15.0  # how long the nodes get to stop after SIGTERM before they are killed


def _get_json(
    url: str, timeout: float = 0.5, context: ssl.SSLContext | None = None
) -> dict[str, Any] | None:
    body: dict[str, Any]  # a node's /readyz answers a JSON object
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            body = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:  # e.g. 503 from /readyz: the body still says why
        try:
            body = json.loads(exc.read())
            return body
        except ValueError:
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


class _Progress:
    """Relays the progress lines a node prints ("node n1: models: ...") from its log."""

    def __init__(self, node_id: str, path: Path) -> None:
        self.prefix = f"node {node_id}: "
        self.node_id = node_id
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""
        self.password_shown = False

    def relay(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if line.startswith(self.prefix):
                print(f"  {self.node_id}: {line[len(self.prefix) :]}", flush=True)
                self._show_password(line)

    def _show_password(self, line: str) -> None:
        """The node wrote a generated admin password to a private file and logged
        where: the terminal of whoever started the cluster shows the password itself
        (the node's log never holds it)."""
        path = announced_password_file(line)
        if path is None:
            return
        try:
            password = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"  {self.node_id}: could not read {path}: {exc}", flush=True)
            return
        print(f"  admin password: {password}", flush=True)
        self.password_shown = True


def _trust(config: ClusterConfig) -> ssl.SSLContext | None:
    """With [tls], how the launcher verifies the nodes it started: they serve the
    file's certificate, pinned (node/tls.py), so a self-signed one needs no
    RAGRAFT_CA_FILE here; None for plain http."""
    if config.tls.cert_file is None:
        return None
    from node.tls import pinned_client_context

    return pinned_client_context(config.tls.cert_file)


def up(
    config: ClusterConfig,
    startup_timeout: float = 120.0,
    models_timeout: float = 900.0,
    restart: bool | None = None,
) -> int:
    """Start and supervise the nodes (node/cli/supervisor.py) until Ctrl-C or SIGTERM.
    `restart`: None for the file's [launcher] restart policy."""
    trust = _trust(config)
    logs_dir = Path(config.nodes[0].data_dir).parent
    logs_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"starting {len(config.nodes)} nodes of cluster {config.name!r} from {config.path}",
        flush=True,
    )
    # A first start without RAGRAFT_ADMIN_PASSWORD: the first leader generates the
    # admin's password; it is shown before the URLs, so that it is not missed.
    expect_password = not os.environ.get("RAGRAFT_ADMIN_PASSWORD") and not any(
        holds_raft_state(Path(spec.data_dir)) for spec in config.nodes
    )
    policy = config.launcher
    supervisor = Supervisor(
        config,
        logs_dir,
        restart=policy.restart == "on-failure" if restart is None else restart,
        max_restarts=policy.max_restarts,
        say=lambda line: print(line, flush=True),
        warn=lambda line: print(line, file=sys.stderr, flush=True),
    )
    # SIGTERM (systemd, docker stop, a CI time-out) stops as gracefully as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    progress = [_Progress(spec.id, logs_dir / f"{spec.id}.log") for spec in config.nodes]
    supervisor.start_all()
    try:
        leader = _wait_for_leader(config, supervisor, progress, startup_timeout, trust)
        if leader is None:
            return 1
        print(f"  leader elected: {leader}; waiting for the models to load", flush=True)
        if not _wait_for_models(config, supervisor, logs_dir, models_timeout, progress, trust):
            return 1
        if expect_password:
            _wait_for_password(progress, PASSWORD_WAIT_S)
        print(f"\ncluster {config.name!r} is up; leader: {leader}\n", flush=True)
        for spec in config.nodes:
            print(
                f"  {spec.id}:  dashboard {spec.public_dashboard_url}   "
                f"API {spec.public_api_url}/api/v1   "
                f"raft {spec.raft_address}",
                flush=True,
            )
        if config.tls.enabled:
            print(
                f"\n  https with {config.tls.cert_file}; if it is self-signed, let the CLI and "
                f"the TUI trust it: export RAGRAFT_CA_FILE={config.tls.cert_file}",
                flush=True,
            )
        print("\nPress Ctrl-C to stop every node.", flush=True)
        status = _StatusLine(config, supervisor, trust)
        while supervisor.alive():
            for relay in progress:
                relay.relay()  # (a later line, such as where a generated password went)
            supervisor.check()
            status.show()
            time.sleep(0.5)
        print(
            f"every node has stopped ({', '.join(supervisor.gave_up())} given up on); "
            f"see the logs in {logs_dir}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nstopping every node...", flush=True)
        return 0
    finally:
        supervisor.stop_all(STOP_GRACE_S)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _tick(supervisor: Supervisor, progress: list[_Progress], doing: str) -> bool:
    """One step of waiting: relay the nodes' lines, supervise; False once a node was
    given up on (the start cannot go on as configured)."""
    for relay in progress:
        relay.relay()
    supervisor.check()
    if supervisor.gave_up():
        print(
            f"could not {doing} {', '.join(supervisor.gave_up())}; stopping the others",
            file=sys.stderr,
        )
        return False
    return True


def _wait_for_leader(
    config: ClusterConfig,
    supervisor: Supervisor,
    progress: list[_Progress],
    timeout: float,
    trust: ssl.SSLContext | None,
) -> str | None:
    """Until every node answers and one is the leader; nodes that fail meanwhile are
    restarted like later, and one given up on ends the start."""
    deadline = time.monotonic() + timeout
    up_nodes: set[str] = set()
    leader = None
    while time.monotonic() < deadline and (leader is None or len(up_nodes) < len(config.nodes)):
        if not _tick(supervisor, progress, "start"):
            return None
        for spec in config.nodes:
            view = _get_json(f"{spec.local_api_url}/readyz", context=trust)  # 503 while loading
            if view is not None and spec.id not in up_nodes:
                up_nodes.add(spec.id)
                print(f"  {spec.id} is up ({len(up_nodes)}/{len(config.nodes)})", flush=True)
            if view is not None and view.get("leader"):
                leader = view["leader"]
        time.sleep(0.2)
    if leader is None:
        logs = Path(config.nodes[0].data_dir).parent
        print(f"no leader elected within {timeout:.0f} s; see the logs in {logs}", file=sys.stderr)
    return leader


class _StatusLine:
    """One line with every node's role, state and restarts, printed when it changes."""

    def __init__(
        self, config: ClusterConfig, supervisor: Supervisor, trust: ssl.SSLContext | None
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.trust = trust
        self.last = ""
        self.checked = 0.0

    def show(self) -> None:
        now = time.monotonic()
        if now - self.checked < 1.0:
            return
        self.checked = now
        parts = []
        for spec in self.config.nodes:
            node = self.supervisor.nodes[spec.id]
            role = "-"
            if node.running:
                view = _get_json(f"{spec.local_api_url}/readyz", timeout=0.3, context=self.trust)
                leader = (view or {}).get("leader")
                role = "?" if view is None else "leader" if leader == spec.id else "follower"
            state = node.state.split(" in ")[0]  # no countdown: it would change every second
            parts.append(f"{spec.id} {role} {state} ({node.restarts} restarts)")
        line = "  status: " + " · ".join(parts)
        if line != self.last:
            print(line, flush=True)
            self.last = line


PASSWORD_WAIT_S = 30.0


def _wait_for_password(progress: list[_Progress], timeout: float) -> None:
    """Relay the nodes' lines until one has shown the generated admin password (the
    leader sets the accounts up within a second of its election, usually)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for relay in progress:
            relay.relay()
        if any(relay.password_shown for relay in progress):
            return
        time.sleep(0.2)
    print(
        "  no admin password was shown yet; it will be in the leader's notice and in "
        "the secrets directory's admin-password file once the accounts are set up",
        flush=True,
    )


def _wait_for_models(
    config: ClusterConfig,
    supervisor: Supervisor,
    logs_dir: Path,
    timeout: float,
    progress: list[_Progress],
    trust: ssl.SSLContext | None = None,
) -> bool:
    """Relay each node's model-loading steps until all are loaded.  A node whose
    models fail stays up (the others run its RAG tasks): say so, go on."""
    deadline = time.monotonic() + timeout
    pending = {spec.id for spec in config.nodes}
    while pending and time.monotonic() < deadline:
        if not _tick(supervisor, progress, "keep running"):
            return False
        for spec in config.nodes:
            if spec.id not in pending or not supervisor.nodes[spec.id].running:
                continue
            ready = _get_json(f"{spec.local_api_url}/readyz", timeout=1.0, context=trust)
            models = (ready or {}).get("models") or {}
            if models.get("state") in ("ready", "disabled"):
                pending.discard(spec.id)
            elif models.get("state") == "failed":
                print(
                    f"  {spec.id}: could not load its models ({models.get('error')}); "
                    "it runs noop tasks only, "
                    f"see {logs_dir / (spec.id + '.log')}",
                    file=sys.stderr,
                    flush=True,
                )
                pending.discard(spec.id)
        time.sleep(0.3)
    if pending:
        print(
            f"models still loading on {', '.join(sorted(pending))} after {timeout:.0f} s; "
            f"see the logs in {logs_dir}",
            file=sys.stderr,
        )
        return False
    return True
