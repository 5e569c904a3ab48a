"""Real `ragraft node` processes from a generated cluster.toml, for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt

from tests.kvcluster import free_ports

# Converted GGUF weights, shared by every test cluster of every run: the first node
# to load the generator converts it (~15 s), the others load the cache (<1 s).
MODEL_CACHE = Path(__file__).resolve().parent.parent / ".ragraft" / "test-model-cache"
ADMIN_PASSWORD = "admin-password-for-tests"
TOKEN_SECRET = "token-secret-for-tests-0123456789"


def mint_token(
    cluster_name: str, user: str = "admin", secret: str = TOKEN_SECRET, ttl: int = 3600
) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "sub": user,
            "role": "admin",
            "iat": now,
            "exp": now + ttl,
            "iss": f"ragraft:{cluster_name}",
        },
        secret,
        algorithm="HS256",
    )


def write_secrets(root: Path, cluster_name: str, nodes: list[str]) -> Path:
    """The secrets bundle a cluster.toml in `root` reads by default (.ragraft/secrets),
    with the key pairs of the cluster's first `nodes`, as `ragraft up` writes it."""
    from node.secrets import ClusterSecrets, write_bundle

    bundle = ClusterSecrets.generate(cluster_name, nodes)
    return write_bundle(bundle, root / ".ragraft" / "secrets")


class NodeCluster:
    def __init__(
        self,
        root: Path,
        size: int = 3,
        extra_toml: str = "",
        env: dict[str, str] | None = None,
        joiners: int = 0,
        models: bool = False,
        dashboard: bool = False,
        insecure: bool = False,
    ) -> None:
        """`models=False` starts control-plane nodes (noop tasks only, no model loading);
        `models=True` loads the bundled models on every node, as in production.  The
        cluster is secure as shipped (a secrets bundle, as `ragraft up` writes at a first
        start: CURVE and encryption at rest); `insecure=True` writes none and sets
        insecure = true instead."""
        self.root = root
        self.ids = [f"n{i + 1}" for i in range(size + joiners)]
        ports = free_ports(4 * len(self.ids))
        self.api = {}
        lines = ['[cluster]\nname = "test"\n']
        for i, node in enumerate(self.ids):
            self.api[node] = f"http://127.0.0.1:{ports[4 * i + 2]}"
            self.dashboard_urls = getattr(self, "dashboard_urls", {})
            self.dashboard_urls[node] = f"http://127.0.0.1:{ports[4 * i + 3]}"
            lines.append(
                f'[[nodes]]\nid = "{node}"\nhost = "127.0.0.1"\nraft_port = {ports[4 * i]}\n'
                f"gossip_port = {ports[4 * i + 1]}\napi_port = {ports[4 * i + 2]}\n"
                f'dashboard_port = {ports[4 * i + 3]}\ndata_dir = "data/{node}"\n'
                + ("join = true\n" if i >= size else "")
            )
        lines.append(extra_toml)
        if insecure:
            lines.append("[security]\ninsecure = true\n")
        self.config = root / "cluster.toml"
        self.config.write_text("\n".join(lines))
        if not insecure:
            write_secrets(root, "test", self.ids[:size])
        model_env = (
            {"RAGRAFT_LOAD_MODELS": "1", "RAGRAFT_MODEL_CACHE": str(MODEL_CACHE)}
            if models
            else {"RAGRAFT_LOAD_MODELS": "0"}
        )
        auth_env = {
            "RAGRAFT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "RAGRAFT_TOKEN_SECRET": TOKEN_SECRET,
            "RAGRAFT_DASHBOARD": "1" if dashboard else "0",
        }
        self.env = {**os.environ, **auth_env, **model_env, **(env or {})}
        self._token: str | None = None
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, node: str, *extra: str, env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{node}.log", "ab")  # noqa: SIM115 - the child process holds it
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli.main",
                "node",
                "--config",
                str(self.config),
                "--id",
                node,
                *extra,
            ],
            env=env if env is not None else self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )

    def start_all(self) -> None:
        for node in self.ids:
            if "join = true" not in self._section(node):
                self.start(node)

    def _section(self, node: str) -> str:
        text = self.config.read_text()
        start = text.index(f'id = "{node}"')
        end = text.find("[[nodes]]", start)
        return text[start : end if end >= 0 else len(text)]

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def request(
        self,
        node: str,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10,
        token: str | None = None,
    ) -> tuple[int, Any]:
        """JSON request as the admin (or with `token`; token="" sends none)."""
        status, body, _ = self.request_with_headers(node, method, path, body, timeout, token)
        return status, body

    def login(self, node: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        status, body, _ = self.request_with_headers(
            node,
            "POST",
            "/api/v1/auth/token",
            {"username": username, "password": password},
            token="",
        )
        assert status == 200, body
        return body["access_token"]

    def admin_token(self, node: str = "") -> str:
        # Signed with the cluster's token secret, as a login would be; minted here so
        # that tests can talk to nodes that have no leader (and no admin account) yet.
        if self._token is None:
            self._token = mint_token("test")
        return self._token

    def request_with_headers(
        self,
        node: str,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10,
        token: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        needs_auth = path not in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/api/v1/auth/token",
        )
        if token is None and needs_auth:
            token = self.admin_token(node)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.api[node] + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)

    def wait_models(self, nodes: list[str] | None = None, timeout: float = 180) -> None:
        """Until every node's /readyz says its models are loaded."""
        deadline = time.monotonic() + timeout
        pending = set(nodes or self.procs)
        last: dict[str, Any] = {}
        while pending and time.monotonic() < deadline:
            for node in sorted(pending):
                try:
                    _, body = self.request(node, "GET", "/readyz", timeout=2)
                except OSError:
                    continue
                last[node] = body.get("models") if isinstance(body, dict) else body
                if isinstance(body, dict) and body.get("models", {}).get("state") == "failed":
                    raise AssertionError(f"{node} failed to load its models: {body['models']}")
                if isinstance(body, dict) and body.get("ready"):
                    pending.discard(node)
            time.sleep(0.5)
        if pending:
            raise AssertionError(
                f"models not loaded within {timeout} s on {sorted(pending)}: {last}; "
                f"logs in {self.root}"
            )

    def _accounts_ready(self, nodes: list[str]) -> bool:
        """The leader sets up the admin account a moment after the first election;
        until then a login (what a user does first) is refused."""
        password = self.env.get("RAGRAFT_ADMIN_PASSWORD")
        if not password:
            return True
        status, _, _ = self.request_with_headers(
            nodes[0],
            "POST",
            "/api/v1/auth/token",
            {"username": "admin", "password": password},
            token="",
        )
        return status == 200

    def wait_applied(self, reader: str, writer: str, timeout: float = 10) -> None:
        """Wait until `reader` has applied everything `writer` knew committed: a read
        from a follower right after a write elsewhere may otherwise be a heartbeat behind."""
        commit = self.request(writer, "GET", "/api/v1/cluster")[1]["commit_index"]
        deadline = time.monotonic() + timeout
        while self.request(reader, "GET", "/api/v1/cluster")[1]["applied_index"] < commit:
            assert time.monotonic() < deadline, (
                f"{reader} did not apply index {commit} within {timeout} s"
            )
            time.sleep(0.05)

    def read_barrier(self, reader: str, timeout: float = 10, token: str | None = None) -> int:
        """Wait until `reader` has applied everything committed before this call: the
        highest commit index any running node reports (the leader's, or more when a
        new leader has yet to learn it) bounds every write acknowledged so far.  After
        it, a read from `reader` that finds something absent means it is absent, not
        that `reader` lags.  Returns that index.  `token` as for request()."""
        commits = []
        for node in self.procs:
            with contextlib.suppress(OSError):
                status, view = self.request(node, "GET", "/api/v1/cluster", timeout=2, token=token)
                if status == 200:
                    commits.append(view["commit_index"])
        assert commits, "no node answered /api/v1/cluster"
        commit = max(commits)
        deadline = time.monotonic() + timeout
        while self._applied_index(reader, token) < commit:
            assert time.monotonic() < deadline, f"{reader} did not apply {commit} in {timeout} s"
            time.sleep(0.02)
        return commit

    def _applied_index(self, node: str, token: str | None = None) -> int:
        return self.request(node, "GET", "/api/v1/cluster", token=token)[1]["applied_index"]

    def wait_ready(self, nodes: list[str] | None = None, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            for node in nodes or list(self.procs):
                try:  # /readyz is public and names the leader even while models load (503)
                    _status, view = self.request(node, "GET", "/readyz", timeout=0.5)
                except OSError:
                    break
                if not isinstance(view, dict) or not view.get("leader"):
                    break
                leaders.add(view["leader"])
            else:
                if len(leaders) == 1 and self._accounts_ready(nodes or list(self.procs)):
                    return leaders.pop()
            time.sleep(0.1)
        raise AssertionError(f"cluster not ready within {timeout} s; logs in {self.root}")


def users_toml(**passwords: str) -> str:
    """[[security.users]] sections: a user of role "user" per name=password."""
    from node.http.auth import hash_password

    return "".join(
        f'[[security.users]]\nname = "{name}"\nrole = "user"\n'
        f'password_hash = "{hash_password(password)}"\n'
        for name, password in passwords.items()
    )


@contextlib.contextmanager
def running_cluster(root: Path, **kwargs: Any) -> Iterator[NodeCluster]:
    """A started cluster (models loaded when models=True), stopped afterwards."""
    cluster = NodeCluster(root, **kwargs)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=90)
        if kwargs.get("models"):
            cluster.wait_models()
        yield cluster
    finally:
        cluster.stop_all()


def add_text_document(cluster: NodeCluster, title: str, text: str, timeout: float = 60) -> dict:
    """Upload a text document through the API and wait until it is ingested."""
    status, body = cluster.request(
        "n1", "POST", "/api/v1/kb/documents", {"title": title, "text": text}
    )
    assert status == 202, body
    task_id = body["tasks"][0]["id"]
    deadline = time.monotonic() + timeout
    while True:
        task = cluster.request("n1", "GET", f"/api/v1/tasks/{task_id}")[1]
        if task["state"] == "completed":
            return body["documents"][0]
        assert task["state"] in ("queued", "running") and time.monotonic() < deadline, task
        time.sleep(0.3)
