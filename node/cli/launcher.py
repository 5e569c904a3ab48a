"""`ragraft up`: start every node of cluster.toml as its own OS process, show
progress until the cluster has a leader and every node has loaded its models,
print the URLs, stop all on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


def up(config: ClusterConfig, startup_timeout: float = 120.0, models_timeout: float = 900.0) -> int:
    procs: dict[str, subprocess.Popen[bytes]] = {}
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
    progress: list[_Progress] = []
    for spec in config.nodes:
        log_path = logs_dir / f"{spec.id}.log"
        progress.append(_Progress(spec.id, log_path))
        cmd = [
            sys.executable,
            "-m",
            "node.cli.main",
            "node",
            "--config",
            str(config.path),
            "--id",
            spec.id,
        ]
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            procs[spec.id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        print(f"  {spec.id}: pid {procs[spec.id].pid}, log {log_path}", flush=True)

    def stop_all(*_: object) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # One deadline for all: the nodes stop side by side, not one after another.
        deadline = time.monotonic() + STOP_GRACE_S
        for node_id, proc in procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(
                    f"node {node_id} did not stop within {STOP_GRACE_S:.0f} s of SIGTERM and was "
                    f"killed; its log ({logs_dir / (node_id + '.log')}) says which part was slow",
                    file=sys.stderr,
                )

    try:
        deadline = time.monotonic() + startup_timeout
        up_nodes: set[str] = set()
        leader = None
        while time.monotonic() < deadline and (leader is None or len(up_nodes) < len(config.nodes)):
            for relay in progress:
                relay.relay()
            for spec in config.nodes:
                proc = procs[spec.id]
                if proc.poll() is not None:
                    print(
                        f"node {spec.id} exited with code {proc.returncode}; "
                        f"see {logs_dir / (spec.id + '.log')}",
                        file=sys.stderr,
                    )
                    stop_all()
                    return 1
                # public; 503 while models load
                view = _get_json(f"{spec.api_url}/readyz", context=trust)
                if view is not None and spec.id not in up_nodes:
                    up_nodes.add(spec.id)
                    print(f"  {spec.id} is up ({len(up_nodes)}/{len(config.nodes)})", flush=True)
                if view is not None and view.get("leader"):
                    leader = view["leader"]
            time.sleep(0.2)
        if leader is None:
            print(
                f"no leader elected within {startup_timeout:.0f} s; see the logs in {logs_dir}",
                file=sys.stderr,
            )
            stop_all()
            return 1
        print(f"  leader elected: {leader}; waiting for the models to load", flush=True)
        if not _wait_for_models(config, procs, logs_dir, models_timeout, progress, trust):
            stop_all()
            return 1
        if expect_password:
            _wait_for_password(progress, PASSWORD_WAIT_S)
        print(f"\ncluster {config.name!r} is up; leader: {leader}\n", flush=True)
        for spec in config.nodes:
            print(
                f"  {spec.id}:  dashboard {spec.dashboard_url}   API {spec.api_url}/api/v1   "
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
        while all(p.poll() is None for p in procs.values()):
            for relay in progress:
                relay.relay()  # (a later line, such as where a generated password went)
            time.sleep(0.5)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        print(f"node(s) {', '.join(dead)} exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping every node...", flush=True)
        return 0
    finally:
        stop_all()


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
    procs: dict[str, subprocess.Popen[bytes]],
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
        for relay in progress:
            relay.relay()
        for spec in config.nodes:
            if spec.id not in pending:
                continue
            if procs[spec.id].poll() is not None:
                print(
                    f"node {spec.id} exited with code {procs[spec.id].returncode}; "
                    f"see {logs_dir / (spec.id + '.log')}",
                    file=sys.stderr,
                )
                return False
            ready = _get_json(f"{spec.api_url}/readyz", timeout=1.0, context=trust)
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
